// Time to first image of the built page, as a new visitor sees it: each load in a fresh browser context (empty
// cache), the page served on 127.0.0.1 with the fixtures as its models/ folder. For each model and setup, the time
// from navigation start to the first generated images on screen (9 images, 2 steps: the page's defaults; a diffusion
// model: 9 images of 10 DDIM steps with previews; a model that cannot sample: its first reconstruction), and the
// backend that drew them. With --race, an auto load also waits for Auto's race and prints its timed call (one decode,
// or one UNet pass) on each backend; a somar codebook also prints the time its atlas took. Setups: auto (WebGPU on SwiftShader present, Auto picks), nogpu (navigator.gpu missing),
// webgpu (the WebGPU path forced, as the page was before the CPU path). Beside the wall time, the CPU time all the
// browser's processes spent until then (Linux /proc): on a machine that other jobs load, wall time grows with the load
// while CPU time stays about what an idle machine needs.
// Usage: node scripts/first-image.mjs [--models vit_tiny16,convnet_tiny16] [--setups auto,nogpu] [--rounds 3] [--race]
//        [--fixtures DIR]   (setups: auto, nogpu, webgpu, cpu)
import fs from "node:fs";
import path from "node:path";
import { build } from "vite";
import { launchChromium } from "./chromium.mjs";
import { serveStatic } from "./serve-static.mjs";

const root = path.resolve(new URL("..", import.meta.url).pathname);
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const models = option("--models", "vit_tiny16,convnet_tiny16").split(",");
const setups = option("--setups", "auto,nogpu").split(",");
const rounds = Number(option("--rounds", 3));
const race = args.includes("--race");
const fixtures = path.resolve(option("--fixtures", path.join(root, "test-fixtures")));
const outDir = path.join(root, "test-results", "first-image-dist");

await build({ root, logLevel: "warn", build: { outDir, emptyOutDir: true, copyPublicDir: false } });
const server = await serveStatic([
  ["/models/", fixtures],
  ["/examples/", path.join(root, "public", "examples")],
  ["/", outDir],
]);
const { browser, close } = await launchChromium();
const median = (values) => [...values].sort((a, b) => a - b)[values.length >> 1];
const TICKS = 100; // clock ticks per second of /proc/<pid>/stat (USER_HZ)

/** CPU seconds (user + system) of the processes under rootPid (this script: the browser it launched), or NaN off Linux. */
function browserCpuSeconds(rootPid) {
  if (!rootPid || !fs.existsSync("/proc")) return NaN;
  const stats = new Map();
  for (const pid of fs.readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      const fields = fs
        .readFileSync(`/proc/${pid}/stat`, "utf-8")
        .replace(/^.*\) /, "")
        .split(" ");
      stats.set(Number(pid), { parent: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) });
    } catch {
      // the process ended meanwhile
    }
  }
  const inTree = (pid) => {
    for (let p = pid; p > 1; p = stats.get(p)?.parent ?? 0) if (p === rootPid) return true;
    return false;
  };
  let ticks = 0;
  for (const [pid, stat] of stats) if (inTree(pid)) ticks += stat.ticks;
  return ticks / TICKS;
}
try {
  for (const model of models) {
    for (const setup of setups) {
      const times = [];
      const cpu = [];
      let backend = "";
      const extra = [];
      for (let round = 0; round < rounds; round++) {
        const context = await browser.newContext();
        const page = await context.newPage();
        if (setup === "nogpu") await page.addInitScript(() => Object.defineProperty(navigator, "gpu", { value: undefined }));
        const query = `?model=${model}&backend=${["webgpu", "cpu"].includes(setup) ? setup : "auto"}`;
        const cpuBefore = browserCpuSeconds(process.pid);
        await page.goto(`${server.url}${query}`);
        await page.waitForFunction(
          () => document.body.dataset.firstImageMs || ["error", "unsupported"].includes(document.body.dataset.state),
          null,
          {
            timeout: 300_000,
          },
        );
        cpu.push(1000 * (browserCpuSeconds(process.pid) - cpuBefore));
        await page.waitForFunction(() => document.body.dataset.state !== "loading", null, { timeout: 300_000 });
        if (await page.evaluate(() => window.sphereDemo.model?.family === "somar" && window.sphereDemo.model.layout))
          await page.waitForFunction(() => document.body.dataset.atlasMs, null, { timeout: 600_000 });
        if (race && setup === "auto") await page.waitForFunction(() => document.body.dataset.race, null, { timeout: 600_000 });
        const result = await page.evaluate(() => ({
          ms: Number(document.body.dataset.firstImageMs),
          backend: document.body.dataset.backend,
          atlasMs: document.body.dataset.atlasMs,
          race: (document.querySelector("#backend-status").textContent.match(/One .* \(Auto keeps the faster\)/) ?? [""])[0],
        }));
        extra.push([result.atlasMs ? `atlas ${result.atlasMs} ms on ${result.backend}` : "", result.race].filter(Boolean).join("; "));
        times.push(result.ms);
        backend = result.backend;
        await context.close();
      }
      console.log(
        `${model.padEnd(16)} ${setup.padEnd(7)} first image ${median(times).toFixed(0).padStart(6)} ms (median of ${rounds}: ${times.map((t) => t.toFixed(0)).join(", ")}), browser CPU time ${median(cpu).toFixed(0)} ms, on ${backend}${extra.some(Boolean) ? ` | ${extra.join(" | ")}` : ""}`,
      );
    }
  }
} finally {
  await close();
  await server.close();
}
