// Parity tests in headless Chromium: serve the frontend with Vite on 127.0.0.1 (a secure context, which
// WebGPU requires), open tests/browser/index.html, run window.runParityTests() and print one line per case.
// --gemm tiled|direct opens the page with ?gemm=... (the GEMM of hardware GPUs or of software adapters; without it
// the adapter picks: SwiftShader runs "direct", so --gemm tiled keeps the hardware path's parity checked here).
// --weights packed|expanded opens it with ?weights=... (fp16/q8/q4 matrices decoded in every GEMM, as hardware GPUs
// run them, or widened to float32 at load, as software adapters do by default).
// Usage: node scripts/browser-test.mjs [--only vit_tiny16/q4] [--no-kernels] [--gemm tiled|direct] [--weights packed|expanded]
import { createServer } from "vite";
import { launchChromium } from "./chromium.mjs";

const args = process.argv.slice(2);
const only = args.includes("--only") ? args[args.indexOf("--only") + 1] : null;
const kernels = !args.includes("--no-kernels");
const gemm = args.includes("--gemm") ? args[args.indexOf("--gemm") + 1] : null;
if (gemm !== null && gemm !== "tiled" && gemm !== "direct") throw new Error(`--gemm ${gemm}: expected tiled or direct`);
const weights = args.includes("--weights") ? args[args.indexOf("--weights") + 1] : null;
if (weights !== null && weights !== "packed" && weights !== "expanded")
  throw new Error(`--weights ${weights}: expected packed or expanded`);
const query = new URLSearchParams(Object.entries({ gemm, weights }).filter(([, value]) => value !== null));

const server = await createServer({
  configFile: false,
  root: new URL("..", import.meta.url).pathname,
  logLevel: "warn",
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
  await page.goto(`${url}tests/browser/index.html${query.size ? `?${query}` : ""}`);
  await page.waitForFunction(() => "runParityTests" in window, null, { timeout: 60_000 });
  const started = Date.now();
  const { adapter, results } = await page.evaluate(({ only, kernels }) => window.runParityTests({ only, kernels }), { only, kernels });
  console.log(`adapter: ${JSON.stringify(adapter)}${query.size ? `, forced: ${query}` : ""}`);
  for (const r of results) {
    const error = Number.isFinite(r.maxError) ? r.maxError.toExponential(2) : String(r.maxError);
    console.log(
      `${r.ok ? "ok  " : "FAIL"} ${r.name.padEnd(48)} max|err| ${error.padStart(9)} (tol ${r.tolerance.toExponential(0)}) ${r.ms.toFixed(0).padStart(6)} ms${r.detail ? `  ${r.detail}` : ""}`,
    );
    if (!r.ok) failed++;
  }
  console.log(`${results.length - failed}/${results.length} parity cases passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  if (results.length === 0) failed++;
} finally {
  await close();
  await server.close();
}
process.exit(failed ? 1 : 0);
