// Parity of the page's CPU path (onnxruntime-web wasm) in headless Chromium: serve the frontend with Vite on
// 127.0.0.1, open tests/browser/cpu.html, run window.runCpuParityTests() on the fixtures' ONNX files and print one
// line per case. --bench N adds N interleaved rounds of decode latency (batch 1): the page's model beside a bare
// onnxruntime-web session on the same file. --fixtures DIR serves another folder (a folder of exported models without
// manifest.json, e.g. make_bench_models.py's, is timed only).
// Usage: node scripts/cpu-parity.mjs [--only vit_tiny16] [--bench 30] [--fixtures DIR]
import fs from "node:fs";
import path from "node:path";
import { createServer } from "vite";
import { launchChromium } from "./chromium.mjs";

const root = path.resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const only = option("--only", null);
const bench = Number(option("--bench", 0));
const fixtures = path.resolve(option("--fixtures", path.join(root, "test-fixtures")));
if (!fs.existsSync(path.join(fixtures, "index.json"))) throw new Error(`no ${fixtures}/index.json: run npm run fixtures`);

// the fixtures under /fixtures/, wherever they are
const serveFixtures = {
  name: "serve-fixtures",
  configureServer(server) {
    server.middlewares.use("/fixtures", (request, response, next) => {
      const file = path.join(fixtures, decodeURIComponent(new URL(request.url, "http://x").pathname));
      if (!file.startsWith(fixtures)) return next();
      if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
        response.statusCode = 404; // not vite's index.html fallback
        return response.end("not found");
      }
      response.setHeader("content-type", file.endsWith(".json") ? "application/json" : "application/octet-stream");
      response.end(fs.readFileSync(file));
    });
  },
};
const server = await createServer({
  configFile: false,
  root,
  logLevel: "warn",
  plugins: [serveFixtures],
  optimizeDeps: { exclude: ["onnxruntime-web"] },
  server: { host: "127.0.0.1", port: 0, strictPort: false },
});
await server.listen();
const url = server.resolvedUrls.local[0];
const { browser, close } = await launchChromium();
let failed = 0;
try {
  const page = await browser.newPage();
  page.on("pageerror", (error) => console.error("page error:", error.message));
  page.on("console", (message) => {
    if (message.type() === "error") console.error("console:", message.text());
  });
  await page.goto(`${url}tests/browser/cpu.html`);
  await page.waitForFunction(() => "runCpuParityTests" in window, null, { timeout: 60_000 });
  const started = Date.now();
  const { threads, results } = await page.evaluate(({ only, bench }) => window.runCpuParityTests({ base: "/fixtures", only, bench }), {
    only,
    bench,
  });
  console.log(`onnxruntime-web wasm, ${threads} thread(s)`);
  for (const r of results) {
    const error = Number.isFinite(r.maxError) ? r.maxError.toExponential(2) : String(r.maxError);
    console.log(
      `${r.ok ? "ok  " : "FAIL"} ${r.name.padEnd(44)} max|err| ${error.padStart(9)} (tol ${r.tolerance.toExponential(0)}) ${r.ms.toFixed(0).padStart(6)} ms${r.detail ? `  ${r.detail}` : ""}`,
    );
    if (!r.ok) failed++;
  }
  console.log(`${results.length - failed}/${results.length} CPU path cases passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (results.length === 0) failed++;
} finally {
  await close();
  await server.close();
}
process.exit(failed ? 1 : 0);
