// Latency of the page's WebGPU kernels against onnxruntime-web (WebGPU and WebAssembly) on the same model's ONNX
// files and against PyTorch on the CPU (1 thread and torch's default), batch --batch, in headless Chromium.
// Per model, every runner is called once per round, rounds interleaved (page fp32, fp16, q8, q4 on WebGPU, the
// page's CPU path (onnxruntime-web wasm through src/ort.ts, when index.json lists ONNX files), ORT WebGPU, ORT
// wasm, torch 1 thread, torch default, then the next round), so a load spike from other processes hits
// every runner alike; each call is timed from input upload to the result back on the CPU (PyTorch: the call).
// Prints median [p25–p75] and min per runner and the ratio of medians page/ORT-WebGPU (page cpu: page/ORT-wasm);
// --json FILE writes it all.
// Models: --models DIR (a folder with index.json, as batch_export.py writes), default public/models/ when it
// has an index.json, else test-results/bench-models/ (npm run bench:models), else the tiny test fixtures.
// ONNX files: model_decoder.onnx / model_encoder.onnx beside a model's web files (ORT rows are skipped without).
// Usage: node scripts/bench.mjs [--models DIR] [--rounds 10] [--warmup 2] [--batch 1] [--only vit_tiny]
//        [--encode] [--wasm-threads 1] [--no-torch] [--no-ort] [--modes fp32,q4] [--json out.json]
//        [--gemm tiled|direct] [--weights packed|expanded] (the page's ?gemm= / ?weights=: default, the adapter's choice)
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createServer } from "vite";
import { launchChromium } from "./chromium.mjs";
import { cpuMs, gpuProcess } from "./gpu-process.mjs";

const root = path.resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const candidates = [
  option("--models", null),
  path.join(root, "public", "models"),
  path.join(root, "test-results", "bench-models"),
  path.join(root, "test-fixtures"),
];
const modelsDir = path.resolve(candidates.find((dir) => dir && fs.existsSync(path.join(dir, "index.json"))) ?? "");
if (!fs.existsSync(path.join(modelsDir, "index.json")))
  throw new Error("no index.json found: export models (python batch_export.py) or run npm run bench:models");
const settings = {
  rounds: Number(option("--rounds", 10)),
  warmup: Number(option("--warmup", 2)),
  batch: Number(option("--batch", 1)),
  only: option("--only", ""),
  modes: option("--modes", "fp32,fp16,q8,q4").split(","),
  parts: args.includes("--encode") ? ["decode", "encode"] : ["decode"],
  wasmThreads: Number(option("--wasm-threads", 1)),
  ort: !args.includes("--no-ort"),
  torch: !args.includes("--no-torch"),
};
const kernelQuery = (() => {
  const query = new URLSearchParams();
  for (const [name, values] of [
    ["gemm", ["tiled", "direct"]],
    ["weights", ["packed", "expanded"]],
  ]) {
    const value = option(`--${name}`, null);
    if (value === null) continue;
    if (!values.includes(value)) throw new Error(`--${name} ${value}: expected ${values.join(" or ")}`);
    query.set(name, value);
  }
  return query.size ? `?${query}` : "";
})();
const ortDist = path.join(root, "node_modules", "onnxruntime-web", "dist");
if (settings.ort && !fs.existsSync(ortDist)) throw new Error(`${ortDist} is missing: run npm ci in frontend/`);

// ---------------------------------------------------------------------------------------------------------
// PyTorch: a persistent python process (make_bench_models.py --serve), one timed call per request

function startTorch() {
  const python = process.env.PYTHON || "python";
  const env = { ...process.env };
  delete env.OMP_NUM_THREADS; // "torch's default" means torch's own choice, not an inherited limit
  const child = spawn(python, [path.join(root, "scripts", "make_bench_models.py"), "--serve"], { env, stdio: ["pipe", "pipe", "inherit"] });
  const lines = readline.createInterface({ input: child.stdout });
  const waiting = [];
  lines.on("line", (line) => waiting.shift()?.(line));
  const next = () => new Promise((resolve) => waiting.push(resolve));
  const ready = next().then((line) => {
    if (!line.startsWith("ready ")) throw new Error(`PyTorch server said '${line}'`);
    return Number(line.split(" ")[1]);
  });
  child.on("exit", (code) => {
    for (const resolve of waiting.splice(0)) resolve(`error PyTorch server exited with code ${code}`);
  });
  return {
    defaultThreads: ready,
    async time(folder, part, batch, threads) {
      const answer = next();
      child.stdin.write(`${folder} ${part} ${batch} ${threads}\n`);
      const line = await answer;
      if (line.startsWith("error")) throw new Error(`PyTorch: ${line}`);
      return Number(line);
    },
    close: () => child.kill(),
  };
}

// ---------------------------------------------------------------------------------------------------------
// The browser side: runners for one model, each `run()` one timed call (installed on window.bench)

function installBench({ batch, wasmThreads }) {
  const state = { runners: new Map() };
  const timed = async (fn) => {
    const start = performance.now();
    await fn();
    return performance.now() - start;
  };
  /** A runner timing a page model's decode (of points of its sphere) or encode (of random images). */
  const addModelRunner = async (name, part, model) => {
    if (part === "encode" && !model.canEncode) {
      await model.dispose();
      return false;
    }
    const { Random } = await import("/src/rng.ts");
    const { randomPoint } = await import("/src/sphere.ts");
    const random = new Random(1);
    const latents = new Float32Array(batch * model.latentSize);
    for (let i = 0; i < batch; i++) latents.set(randomPoint(model.latentSize, random, model.radius), i * model.latentSize);
    const images = new Float32Array(batch * model.imageSize).map(() => random.uniform() * 2 - 1);
    const run = part === "decode" ? () => model.decode(latents) : () => model.encode(images);
    state.runners.set(name, { run: () => timed(run), dispose: () => model.dispose() });
    return true;
  };
  window.bench = {
    async init() {
      const { Gpu, kernelChoice } = await import("/src/gpu.ts");
      state.gpu = await Gpu.create();
      return { ...state.gpu.adapter, ...kernelChoice };
    },
    async initOrt() {
      // two builds, as an application would pick them: the WebGPU bundle (its wasm is the JSEP build), and the
      // plain wasm build for the CPU rows (the one the page's CPU path uses)
      state.ort = { webgpu: await import("/ort/ort.webgpu.min.mjs"), wasm: await import("/ort/ort.wasm.min.mjs") };
      for (const ort of Object.values(state.ort)) {
        ort.env.wasm.wasmPaths = "/ort/";
        ort.env.wasm.numThreads = wasmThreads;
        ort.env.logLevel = "error"; // not the warning that shape ops stay on the CPU
      }
      return state.ort.wasm.env.versions?.web ?? "";
    },
    /** Load the page model of one mode (on WebGPU); false when it cannot run `part`. */
    async loadPage(name, part, file) {
      const { loadModel } = await import("/src/family.ts");
      const buffer = await (await fetch(`/bench-models/${file}`)).arrayBuffer();
      return addModelRunner(name, part, await loadModel(state.gpu, buffer, file));
    },
    /** The page's CPU path (src/ort.ts + src/cpu_model.ts, as the page builds it) on an index entry's ONNX files. */
    async loadPageCpu(name, part, onnx, entryName) {
      const { onnxModel } = await import("/src/ort.ts");
      const fetchBytes = async (file) => (await fetch(`/bench-models/${file.file}`)).arrayBuffer();
      return addModelRunner(name, part, await onnxModel(onnx, fetchBytes, entryName));
    },
    /** An onnxruntime-web session on `provider` ("webgpu" | "wasm") for one ONNX file. */
    async loadOrt(name, file, provider, numClasses) {
      const ort = state.ort[provider];
      const bytes = new Uint8Array(await (await fetch(`/bench-models/${file}`)).arrayBuffer());
      const session = await ort.InferenceSession.create(bytes, { executionProviders: [provider], graphOptimizationLevel: "all" });
      const feeds = {};
      for (const input of session.inputNames) {
        const meta = session.inputMetadata?.find?.((m) => m.name === input);
        if (input === "labels") {
          feeds.labels = new ort.Tensor("int64", new BigInt64Array(batch).fill(BigInt(numClasses)), [batch]);
          continue;
        }
        const shape = (meta?.shape ?? []).map((d, i) => (i === 0 ? batch : d));
        if (!shape.length || shape.some((d) => typeof d !== "number")) throw new Error(`${file}: input '${input}' has no static shape`);
        const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => Math.random() * 2 - 1);
        feeds[input] = new ort.Tensor("float32", data, shape);
      }
      state.runners.set(name, { run: () => timed(() => session.run(feeds)), dispose: () => session.release() });
    },
    run: (name) => state.runners.get(name).run(),
    /** Per-step times of one model's graph (each step submitted alone, best of `repeats`), summed by op. */
    async profile(file, part, repeats) {
      const { loadModel } = await import("/src/family.ts");
      const { encodeSteps } = await import("/src/gpu.ts");
      const model = await loadModel(state.gpu, await (await fetch(`/bench-models/${file}`)).arrayBuffer(), file);
      const session = model.session(batch, false);
      const steps = part === "decode" ? session.decoder : session.encoder;
      const device = state.gpu.device;
      const submit = async (list) => {
        const start = performance.now();
        const encoder = device.createCommandEncoder();
        encodeSteps(encoder, list);
        device.queue.submit([encoder.finish()]);
        await device.queue.onSubmittedWorkDone();
        return performance.now() - start;
      };
      let whole = Infinity;
      for (let r = 0; r < repeats; r++) whole = Math.min(whole, await submit(steps));
      const best = steps.map(() => Infinity);
      for (let r = 0; r < repeats; r++) for (let i = 0; i < steps.length; i++) best[i] = Math.min(best[i], await submit([steps[i]]));
      const empty = Math.min(...(await Promise.all([0, 1, 2].map(() => submit([])))));
      const ops = {};
      steps.forEach((step, i) => {
        const op = step.kind === "copy" ? "copy" : step.label.replace(/^(en|de)coder\./, "").replace(/blocks\.\d+\./g, "");
        ops[op] ??= { ms: 0, count: 0 };
        ops[op].ms += best[i];
        ops[op].count += 1;
      });
      await model.dispose();
      return { whole, empty, steps: steps.length, ops };
    },
    async disposeAll() {
      for (const runner of state.runners.values()) await runner.dispose();
      state.runners.clear();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Statistics and the table

function quantile(sorted, q) {
  const position = (sorted.length - 1) * q;
  const low = Math.floor(position);
  return sorted[low] + (sorted[Math.min(low + 1, sorted.length - 1)] - sorted[low]) * (position - low);
}

function summary(times) {
  const sorted = [...times].sort((a, b) => a - b);
  return {
    median: quantile(sorted, 0.5),
    p25: quantile(sorted, 0.25),
    p75: quantile(sorted, 0.75),
    min: sorted[0],
    max: sorted.at(-1),
    times,
  };
}

const ms = (value) => (value >= 100 ? value.toFixed(0) : value.toFixed(1));

function printRow(runner, stats, reference, cpu) {
  const ratio = reference ? `${(stats.median / reference.median).toFixed(2)}x` : "";
  const gpuCpu = cpu ? `  GPU-process CPU ${ms(cpu.median).padStart(7)} ms [${ms(cpu.p25)}–${ms(cpu.p75)}]` : "";
  console.log(
    `  ${runner.padEnd(18)} ${ms(stats.median).padStart(8)} ms  [${ms(stats.p25)}–${ms(stats.p75)}]`.padEnd(52) +
      ` min ${ms(stats.min).padStart(7)}  ${ratio.padStart(7)}${gpuCpu}`,
  );
}

// ---------------------------------------------------------------------------------------------------------

/** --profile: where each model's time goes (steps submitted one by one; their sum exceeds the whole graph's). */
async function profile(page, index) {
  for (const entry of index) {
    if (settings.only && !entry.name.includes(settings.only)) continue;
    for (const [mode, file] of Object.entries(entry.modes)) {
      if (!settings.modes.includes(mode)) continue;
      for (const part of settings.parts) {
        const result = await page.evaluate((a) => window.bench.profile(...a), [file.file, part, Math.max(settings.rounds, 1)]);
        const total = Object.values(result.ops).reduce((sum, op) => sum + op.ms, 0);
        console.log(
          `${entry.name} ${mode} ${part}: whole graph ${ms(result.whole)} ms, ${result.steps} steps one by one ${ms(total)} ms (empty submit ${ms(result.empty)} ms)`,
        );
        const sorted = Object.entries(result.ops).sort((a, b) => b[1].ms - a[1].ms);
        for (const [op, { ms: time, count }] of sorted)
          console.log(
            `  ${op.padEnd(28)} ${ms(time).padStart(8)} ms  ${String(count).padStart(4)}x  ${((100 * time) / total).toFixed(0).padStart(3)}%`,
          );
      }
    }
  }
}

const serveFolder = (folder) => (request, response, next) => {
  const file = path.join(folder, decodeURIComponent(request.url.split("?")[0]));
  if (!file.startsWith(folder) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) return next();
  const types = { ".json": "application/json", ".mjs": "text/javascript", ".wasm": "application/wasm" };
  response.setHeader("content-type", types[path.extname(file)] ?? "application/octet-stream");
  fs.createReadStream(file).pipe(response);
};
const server = await createServer({
  configFile: false,
  root,
  logLevel: "warn",
  plugins: [
    {
      name: "bench-files",
      configureServer(vite) {
        vite.middlewares.use("/bench-models", serveFolder(modelsDir));
        vite.middlewares.use("/ort", serveFolder(ortDist));
      },
    },
  ],
  // cross-origin isolation lets onnxruntime-web's wasm use threads when --wasm-threads > 1
  server: {
    hmr: false,
    host: "127.0.0.1",
    port: 0,
    headers: { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" },
  },
});
await server.listen();
const { browser, close } = await launchChromium();
const torch = settings.torch && !args.includes("--profile") ? startTorch() : null;
const results = { settings, models: [] };
let gpuPid = null; // the GPU process of our Chromium (its CPU time per call is printed beside the wall time)
try {
  const page = await browser.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") console.error(`page: ${message.text()}`);
  });
  await page.goto(`${server.resolvedUrls.local[0]}tests/browser/index.html${kernelQuery}`);
  await page.evaluate(installBench, settings);
  results.adapter = await page.evaluate(() => window.bench.init());
  results.ortVersion = settings.ort ? await page.evaluate(() => window.bench.initOrt()) : null;
  results.torchThreads = torch ? await torch.defaultThreads : null;
  console.log(
    `models: ${path.relative(process.cwd(), modelsDir) || "."}; batch ${settings.batch}; ${settings.rounds} interleaved rounds after ${settings.warmup} warm-up`,
  );
  console.log(
    `adapter: ${JSON.stringify(results.adapter)}; onnxruntime-web ${results.ortVersion ?? "off"} (wasm ${settings.wasmThreads} thread(s)); PyTorch default ${results.torchThreads ?? "off"} threads`,
  );
  const index = JSON.parse(fs.readFileSync(path.join(modelsDir, "index.json"), "utf8"));
  gpuPid = gpuProcess();
  if (args.includes("--profile")) await profile(page, index);
  else await benchmark(page, index);
  if (option("--json", null)) fs.writeFileSync(option("--json", null), JSON.stringify(results, null, 2) + "\n");
} finally {
  torch?.close();
  await close();
  await server.close();
}

/** The interleaved rounds of every model and part; prints the table and fills `results`. */
async function benchmark(page, index) {
  for (const entry of index) {
    if (settings.only && !entry.name.includes(settings.only)) continue;
    const files = Object.entries(entry.modes).filter(([mode]) => settings.modes.includes(mode));
    if (!files.length) continue;
    const folder = path.dirname(Object.values(entry.modes)[0].file);
    for (const part of settings.parts) {
      const runners = [];
      for (const [mode, file] of files) {
        if (await page.evaluate((a) => window.bench.loadPage(...a), [`page ${mode}`, part, file.file])) runners.push(`page ${mode}`);
      }
      if (!runners.length) continue; // a decoder-only file asked to encode
      if (
        settings.ort &&
        entry.onnx &&
        (await page.evaluate((a) => window.bench.loadPageCpu(...a), ["page cpu", part, entry.onnx, entry.name]))
      )
        runners.push("page cpu");
      const network = part === "decode" ? "decoder" : "encoder";
      const onnx = entry.onnx?.[network]?.file ?? path.posix.join(folder, `model_${network}.onnx`); // index.json's, else beside the web files
      if (settings.ort && fs.existsSync(path.join(modelsDir, onnx))) {
        for (const provider of ["webgpu", "wasm"]) {
          await page.evaluate((a) => window.bench.loadOrt(...a), [`ort ${provider}`, onnx, provider, entry.num_classes ?? 0]);
          runners.push(`ort ${provider}`);
        }
      }
      const torchThreads = torch ? [...new Set([1, results.torchThreads])] : [];
      const timeOne = async (runner) => {
        if (!runner.startsWith("torch")) return page.evaluate((name) => window.bench.run(name), runner);
        return torch.time(path.join(modelsDir, folder), part, settings.batch, Number(runner.split(" ")[1]));
      };
      runners.push(...torchThreads.map((n) => `torch ${n} thread${n > 1 ? "s" : ""}`));
      const times = Object.fromEntries(runners.map((r) => [r, []]));
      const cpuTimes = Object.fromEntries(runners.map((r) => [r, []])); // page WebGPU runners only
      for (let round = 0; round < settings.warmup + settings.rounds; round++) {
        for (const runner of runners) {
          const gpuCpu = gpuPid && /^page (fp|q)/.test(runner) ? cpuMs(gpuPid) : null;
          const elapsed = await timeOne(runner);
          if (round < settings.warmup) continue;
          times[runner].push(elapsed);
          if (gpuCpu !== null) cpuTimes[runner].push(cpuMs(gpuPid) - gpuCpu);
        }
      }
      await page.evaluate(() => window.bench.disposeAll());
      const stats = Object.fromEntries(runners.map((r) => [r, summary(times[r])]));
      const cpuStats = Object.fromEntries(runners.filter((r) => cpuTimes[r].length).map((r) => [r, summary(cpuTimes[r])]));
      const reference = stats["ort webgpu"];
      console.log(
        `${entry.name} ${part} (${entry.param_count ? `${(entry.param_count / 1e6).toFixed(2)}M params, ` : ""}ratio = median / ORT WebGPU's; page cpu: / ORT wasm's)`,
      );
      for (const runner of runners)
        printRow(runner, stats[runner], runner === "page cpu" ? stats["ort wasm"] : reference, cpuStats[runner]);
      results.models.push({ model: entry.name, part, stats, gpuProcessCpu: cpuStats });
    }
  }
}
