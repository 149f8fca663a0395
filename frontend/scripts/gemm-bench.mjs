// Time one GEMM per weight encoding (f32, f16, q8, q4) at given shapes in headless Chromium, encodings interleaved
// per round: each call is REPEATS dispatches of the same GEMM in one command buffer (submit to done).
// Shapes are MxNxK (rows of A, output features, input features), A read as rows, GELU and a bias fused.
// Usage: node scripts/gemm-bench.mjs [--shapes 64x1536x512,64x512x1368] [--rounds 7] [--repeats 8]
//        [--encodings f32,q8] [--gemm tiled|direct] [--group 32]
import { createServer } from "vite";
import { launchChromium } from "./chromium.mjs";
import { cpuMs, gpuProcess } from "./gpu-process.mjs";

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const settings = {
  shapes: option("--shapes", "64x1536x512,64x2736x512,64x512x1368,512x512x256")
    .split(",")
    .map((s) => s.split("x").map(Number)),
  rounds: Number(option("--rounds", 7)),
  repeats: Number(option("--repeats", 8)),
  group: Number(option("--group", 32)),
  encodings: option("--encodings", "f32,f16,q8,q4").split(","),
};
const gemm = option("--gemm", null);

function installMicro() {
  window.micro = {
    async run({ shapes, rounds, repeats, group, encodings }) {
      const { Gpu, encodeSteps } = await import("/src/gpu.ts");
      const ops = await import("/src/ops.ts");
      const gpu = await Gpu.create();
      const device = gpu.device;
      const buffer = (data) => {
        const b = device.createBuffer({
          size: Math.max(16, Math.ceil(data.byteLength / 16) * 16),
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
        });
        device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
        return b;
      };
      const random = (n) => new Float32Array(n).map(() => Math.random() * 0.2 - 0.1);
      const halves = (n) => new Uint16Array(n).map(() => 0x2000 + Math.floor(Math.random() * 0x1000)); // ~0.01
      const bytes = (n) => new Uint8Array(n).map(() => Math.floor(Math.random() * 256));
      const matrix = (encoding, rows, cols) => {
        const groups = Math.ceil(cols / group);
        const scales = encoding === "q8" || encoding === "q4" ? buffer(halves(rows * groups)) : null;
        const data = {
          f32: () => buffer(random(rows * cols)),
          f16: () => buffer(halves(rows * cols)),
          q8: () => buffer(bytes(rows * cols)),
          q4: () => buffer(bytes(rows * Math.ceil(cols / 2))),
        }[encoding]();
        return { encoding, rows, cols, groupSize: encoding.startsWith("q") ? group : 0, data, scales };
      };
      const results = {};
      for (const [M, N, K] of shapes) {
        const x = buffer(random(M * K));
        const y = device.createBuffer({ size: M * N * 4, usage: GPUBufferUsage.STORAGE });
        const bias = buffer(random(N));
        const steps = {};
        for (const enc of encodings) {
          const step = ops.gemm({
            label: enc,
            rows: M,
            weight: matrix(enc, N, K),
            bias,
            activation: "gelu",
            input: { layout: "rows", buffer: x },
            output: { layout: "rows", buffer: y },
          });
          step.pipeline = gpu.pipeline(step.source, enc);
          const uniform = device.createBuffer({ size: step.params.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
          device.queue.writeBuffer(uniform, 0, step.params);
          const zeros = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
          const entries = step.bindings.map((b, i) => ({ binding: i, resource: { buffer: b ?? zeros } }));
          entries.push({ binding: entries.length, resource: { buffer: uniform } });
          step.bindGroup = device.createBindGroup({ layout: step.pipeline.getBindGroupLayout(0), entries });
          steps[enc] = Array(repeats).fill(step);
        }
        const time = async (list) => {
          const start = performance.now();
          const encoder = device.createCommandEncoder();
          encodeSteps(encoder, list);
          device.queue.submit([encoder.finish()]);
          await device.queue.onSubmittedWorkDone();
          return performance.now() - start;
        };
        window.micro.steps[`${M}x${N}x${K}`] = steps;
        window.micro.time = (shape, enc) => time(window.micro.steps[shape][enc]);
      }
      return gpu.adapter;
    },
    steps: {},
  };
}

const quantile = (sorted, q) => {
  const p = (sorted.length - 1) * q;
  const lo = Math.floor(p);
  return sorted[lo] + (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]) * (p - lo);
};

const server = await createServer({
  configFile: false,
  root: new URL("..", import.meta.url).pathname,
  logLevel: "warn",
  server: { host: "127.0.0.1", port: 0, hmr: false },
});
await server.listen();
const { browser, close } = await launchChromium();
try {
  const page = await browser.newPage();
  page.on("console", (m) => m.type() === "error" && console.error(`page: ${m.text()}`));
  await page.goto(`${server.resolvedUrls.local[0]}tests/browser/index.html${gemm ? `?gemm=${gemm}` : ""}`);
  await page.evaluate(installMicro);
  const adapter = await page.evaluate((s) => window.micro.run(s), settings);
  const pid = gpuProcess();
  if (pid === null) throw new Error("no GPU process of this Chromium found (Linux /proc needed for CPU times)");
  const results = {};
  for (const [M, N, K] of settings.shapes) {
    const shape = `${M}x${N}x${K}`;
    const times = (results[shape] = Object.fromEntries(settings.encodings.map((e) => [e, []])));
    const cpu = (results[shape + " cpu"] = Object.fromEntries(settings.encodings.map((e) => [e, []])));
    for (let r = 0; r < settings.rounds + 1; r++)
      for (const enc of settings.encodings) {
        const c0 = cpuMs(pid);
        const t = await page.evaluate((a) => window.micro.time(...a), [shape, enc]);
        const c1 = cpuMs(pid);
        if (r > 0) {
          times[enc].push(t / settings.repeats);
          cpu[enc].push((c1 - c0) / settings.repeats);
        }
      }
  }
  console.log(
    `adapter ${adapter.architecture}${gemm ? ` gemm ${gemm}` : ""}; ${settings.rounds} rounds x ${settings.repeats} dispatches; ms per GEMM median [p25-p75]`,
  );
  for (const [shape, times] of Object.entries(results)) {
    const line = Object.entries(times).map(([enc, t]) => {
      const s = [...t].sort((a, b) => a - b);
      return `${enc} ${quantile(s, 0.5).toFixed(2)} [${quantile(s, 0.25).toFixed(2)}-${quantile(s, 0.75).toFixed(2)}]`;
    });
    console.log(`${shape.padEnd(14)} ${line.join("  ")}`);
  }
} finally {
  await close();
  await server.close();
}
