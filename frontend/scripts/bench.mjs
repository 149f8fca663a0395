// Decode (and encode) latency per model and precision in headless Chromium: median of --runs timed calls
// after --warmup calls, batch --batch, each timed from submit to the result read back on the CPU.
// Models: --models DIR (a folder with index.json, as batch_export.py writes), default public/models/ when it
// has an index.json, else test-results/bench-models/ (python scripts/make_bench_models.py), else the tiny
// test fixtures. Usage: node scripts/bench.mjs [--models DIR] [--runs 10] [--warmup 2] [--batch 1] [--only vit]
import fs from "node:fs";
import path from "node:path";
import { createServer } from "vite";
import { launchChromium } from "./chromium.mjs";

const root = path.resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const candidates = [
  option("--models", null),
  path.join(root, "public", "models"),
  path.join(root, "test-results", "bench-models"),
  path.join(root, "test-fixtures"),
];
const modelsDir = candidates.find((dir) => dir && fs.existsSync(path.join(dir, "index.json")));
if (!modelsDir) throw new Error("no index.json found: export models (python batch_export.py) or run python scripts/make_bench_models.py");
const settings = {
  runs: Number(option("--runs", 10)),
  warmup: Number(option("--warmup", 2)),
  batch: Number(option("--batch", 1)),
  only: option("--only", ""),
};

// serve the chosen folder at /bench-models/ next to the sources
const serveModels = {
  name: "bench-models",
  configureServer(server) {
    server.middlewares.use("/bench-models", (request, response, next) => {
      const file = path.join(modelsDir, decodeURIComponent(request.url.split("?")[0]));
      if (!file.startsWith(modelsDir) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) return next();
      response.setHeader("content-type", file.endsWith(".json") ? "application/json" : "application/octet-stream");
      fs.createReadStream(file).pipe(response);
    });
  },
};
const server = await createServer({
  configFile: false,
  root,
  logLevel: "warn",
  plugins: [serveModels],
  server: { host: "127.0.0.1", port: 0 },
});
await server.listen();
const { browser, close } = await launchChromium();
try {
  const page = await browser.newPage();
  page.on("console", (message) => {
    if (message.type() === "log") console.log(message.text());
  });
  await page.goto(`${server.resolvedUrls.local[0]}tests/browser/index.html`);
  await page.waitForFunction(() => "runParityTests" in window);
  console.log(
    `models: ${path.relative(process.cwd(), modelsDir) || "."}; batch ${settings.batch}, median of ${settings.runs} after ${settings.warmup} warm-up`,
  );
  const rows = await page.evaluate(async ({ runs, warmup, batch, only }) => {
    const { Gpu } = await import("/src/gpu.ts");
    const { entryProblem, loadModel } = await import("/src/family.ts");
    const { Random } = await import("/src/rng.ts");
    const { randomPoint } = await import("/src/sphere.ts");
    const gpu = await Gpu.create();
    const index = await (await fetch("/bench-models/index.json")).json();
    const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    const timed = async (fn) => {
      for (let i = 0; i < warmup; i++) await fn();
      const times = [];
      for (let i = 0; i < runs; i++) {
        const start = performance.now();
        await fn();
        times.push(performance.now() - start);
      }
      return median(times);
    };
    const rows = [];
    for (const entry of index) {
      if (entryProblem(entry)) continue; // a model the page does not show (a 1-D psvae, an unknown family)
      for (const [mode, file] of Object.entries(entry.modes)) {
        if (only && !`${entry.name}/${mode}`.includes(only)) continue;
        const buffer = await (await fetch(`/bench-models/${file.file}`)).arrayBuffer();
        const model = await loadModel(gpu, buffer, file.file);
        const random = new Random(1);
        const latents = new Float32Array(batch * model.latentSize);
        for (let i = 0; i < batch; i++) latents.set(randomPoint(model.latentSize, random, model.radius), i * model.latentSize);
        const images = new Float32Array(batch * model.imageSize).map(() => random.uniform() * 2 - 1);
        const decodeMs = await timed(() => model.decode(latents));
        const encodeMs = model.canEncode ? await timed(() => model.encode(images)) : NaN; // NaN: a decoder-only file
        const row = { model: entry.name, mode, mb: file.bytes / 1e6, decodeMs, encodeMs };
        console.log(
          `${row.model.padEnd(24)} ${mode.padEnd(5)} ${row.mb.toFixed(2).padStart(7)} MB  decode ${decodeMs.toFixed(1).padStart(8)} ms  encode ${encodeMs.toFixed(1).padStart(8)} ms`,
        );
        rows.push(row);
        await model.dispose();
      }
    }
    return { adapter: gpu.adapter, rows };
  }, settings);
  console.log(`adapter: ${JSON.stringify(rows.adapter)}`);
} finally {
  await close();
  await server.close();
}
