import { defineConfig } from "vitest/config";

// The demo page (index.html) is the only entry of the production build; tests/ and scripts/ are not shipped.
// onnxruntime-web (the CPU path, src/ort.ts) is not pre-bundled in dev: its .wasm is imported by URL from the
// package, and vite copies it into dist/assets at build, so the page never needs a CDN.
export default defineConfig({
  base: "./",
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
  },
  optimizeDeps: { exclude: ["onnxruntime-web"] },
  server: { host: "127.0.0.1" },
  preview: { host: "127.0.0.1" },
  test: {
    include: ["tests/unit/**/*.test.ts"],
    environment: "node",
  },
});
