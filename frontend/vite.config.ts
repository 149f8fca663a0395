import { defineConfig } from "vitest/config";

// The demo page (index.html) is the only entry of the production build; tests/ and scripts/ are not shipped.
export default defineConfig({
  base: "./",
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
  },
  server: { host: "127.0.0.1" },
  preview: { host: "127.0.0.1" },
  test: {
    include: ["tests/unit/**/*.test.ts"],
    environment: "node",
  },
});
