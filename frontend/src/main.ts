/**
 * The demo page: pick a model (of any family the page reads) and precision, generate, loop, reconstruct,
 * interpolate and roam; a psvae with a 3-D latent also gets a globe to turn. A diffusion model (ldm family)
 * generates by DDIM (any η) or DDPM in the page, showing each step's x̂_0, with a class and classifier-free
 * guidance when it is class-conditional; it has no interpolation or roaming. A somar codebook (or prior) shows its
 * codebook atlas and lets the user paint token grids with its units, decoded live; its prior does not run here.
 *
 * Backends: WebGPU (the page's kernels, every family) or the CPU (onnxruntime-web's WebAssembly backend on the
 * model's ONNX files, every family: src/cpu_model.ts, src/cpu_families.ts). The page reaches a model's family features
 * through the interfaces both backends implement (LDMPageModel, SOMARPageModel, VQVAEPageModel). "Auto" shows the
 * first images on the CPU when the model has ONNX files, then times one decode (a diffusion model: one UNet pass) on
 * each backend and keeps the faster; without WebGPU the CPU runs everything it can. ?backend=auto|webgpu|cpu
 * overrides the remembered choice, ?model=NAME the remembered model.
 */

import {
  cachedBytes,
  clearCache,
  fetchWeights,
  forgetWeights,
  formatBytes,
  formatCount,
  loadCatalog,
  type CatalogEntry,
} from "./app/catalog";
import { Globe, type PickKind } from "./app/globe";
import { canvasGrid, centerCrop, drawImage, loadBitmap, toModelInput } from "./app/images";
import { entryProblem, loadModel } from "./family";
import { WebFormatError, type Mode } from "./format";
import { formatLatLon, type Vec3 } from "./globe";
import { Gpu, GpuUnavailableError } from "./gpu";
import type { Backend, PageModel } from "./model";
import { cpuUnsupported, onnxNeeds } from "./cpu_model";
import { cpuThreads, onnxModel, startOrt, type OnnxFile, type OnnxIndex } from "./ort";
import { UnsupportedModelError } from "./psvae";
import type { GpuWeights } from "./weights";
import { CANNOT_SAMPLE, type VQVAEPageModel } from "./vqvae_core";
import { AE_CANNOT_SAMPLE, PIXEL_CANNOT_RECONSTRUCT, type LDMPageModel } from "./ldm_core";
import type { Atlas, SOMARPageModel } from "./somar_core";
import { cellAt, paintStroke, pictureRGBA, unitAt, unitAtCell } from "./somar_grid";
import type { Sampler } from "./diffusion";
import { Random } from "./rng";
import { GreatCircleWalk, randomPoint, slerp2d } from "./sphere";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`missing #${id}`);
  return element as T;
};

const params = new URLSearchParams(location.search);
const MODELS_BASE = new URL(params.get("models") ?? "./models/", location.href).href; // ?models=URL/ overrides
const SAMPLE_IMAGES = ["ship", "horse", "automobile", "frog"].map((name) => ({
  name,
  url: new URL(`./examples/${name}.png`, location.href).href,
}));
const CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const MODE_ORDER: Mode[] = ["q8", "q4", "fp16", "fp32"]; // default precision: the first one a model has
const BACKEND_CHOICES = ["auto", "webgpu", "cpu"] as const;
type BackendChoice = (typeof BACKEND_CHOICES)[number];
const BACKEND_NAMES: Record<Backend, string> = { webgpu: "WebGPU", cpu: "CPU (WebAssembly)" };

interface State {
  gpu: Gpu | null;
  catalog: CatalogEntry[];
  entry: CatalogEntry | null;
  model: PageModel | null;
  choice: BackendChoice; // the backend picker
  timings: Partial<Record<Backend, number>>; // Auto's timed decode (batch 1, ms) of the current model on each backend
  backendNote: string; // why the model runs where it does, when that is not the choice
  firstImageMs: number | null; // since navigation start: when the page first showed generated images
  loadToken: number;
  loop: boolean;
  roam: boolean;
  corners: Float32Array[] | null;
  pendingPad: [number, number] | null;
  padBusy: boolean;
  globe: Globe | null;
  pendingGlobe: { point: Vec3; kind: PickKind } | null;
  globeBusy: boolean;
  random: Random;
  paint: PaintState;
}

/** The somar paint panel: the token grid being painted, the unit picked in the atlas, the stroke's last cell. */
interface PaintState {
  tokens: Int32Array | null;
  unit: number;
  atlas: Atlas | null;
  lastCell: number | null;
  pending: boolean;
  busy: boolean;
}

const state: State = {
  gpu: null,
  catalog: [],
  entry: null,
  model: null,
  choice: initialChoice(),
  timings: {},
  backendNote: "",
  firstImageMs: null,
  loadToken: 0,
  loop: false,
  roam: false,
  corners: null,
  pendingPad: null,
  padBusy: false,
  globe: null,
  pendingGlobe: null,
  globeBusy: false,
  random: new Random(Date.now() >>> 0),
  paint: { tokens: null, unit: 0, atlas: null, lastCell: null, pending: false, busy: false },
};

// ---------------------------------------------------------------------------------------------------------
// messages

function showMessage(kind: "warning" | "error", text: string, action?: { label: string; run: () => void }): void {
  const box = document.createElement("div");
  box.className = `message ${kind}`;
  const span = document.createElement("span");
  span.textContent = text;
  box.appendChild(span);
  const buttons = document.createElement("span");
  if (action) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = action.label;
    button.onclick = () => {
      box.remove();
      action.run();
    };
    buttons.appendChild(button);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "secondary";
  close.textContent = "×";
  close.setAttribute("aria-label", "dismiss");
  close.onclick = () => box.remove();
  buttons.appendChild(close);
  box.appendChild(buttons);
  $("messages").appendChild(box);
}

/** Show an error, unless it is a consequence of a device loss (which has its own message). */
function reportError(error: unknown, prefix = ""): void {
  const gpu = state.gpu;
  setTimeout(() => {
    if (gpu?.lost || gpu !== state.gpu) return; // the loss notification comes a moment after the failed call
    showMessage("error", `${prefix}${explain(error)}`);
  }, 50);
}

function explain(error: unknown): string {
  if (error instanceof WebFormatError) return `The weight file could not be read: ${error.message}`;
  if (error instanceof UnsupportedModelError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}

function setStatus(id: string, text: string): void {
  $(id).textContent = text;
}

function setPageState(value: string): void {
  document.body.dataset.state = value; // read by the end-to-end test
}

/** The model as a diffusion model (either backend), or null. */
function asLdm(model: PageModel | null): LDMPageModel | null {
  return model?.family === "ldm" ? (model as LDMPageModel) : null;
}

/** The model as a somar model (either backend), or null. */
function asSomar(model: PageModel | null): SOMARPageModel | null {
  return model?.family === "somar" ? (model as SOMARPageModel) : null;
}

/** The model as a tokenizer (either backend), or null. */
function asVqvae(model: PageModel | null): VQVAEPageModel | null {
  return model?.family === "vqvae" ? (model as VQVAEPageModel) : null;
}

// ---------------------------------------------------------------------------------------------------------
// GPU and models

/** Start WebGPU; without it the page goes on with the CPU path (models with ONNX files). */
async function startGpu(): Promise<boolean> {
  try {
    state.gpu = await Gpu.create();
  } catch (error) {
    const text = error instanceof GpuUnavailableError ? error.message : `WebGPU failed to start: ${explain(error)}`;
    state.gpu = null;
    setStatus("adapter", "WebGPU unavailable: models run on the CPU (WebAssembly).");
    showMessage("warning", `${text} Models with ONNX files run on the CPU (WebAssembly) instead; the others need WebGPU.`);
    document.body.dataset.webgpu = "none"; // read by the end-to-end test
    return false;
  }
  const adapter = state.gpu.adapter;
  const name = [adapter.vendor, adapter.architecture, adapter.description].filter(Boolean).join(" · ") || "unknown adapter";
  setStatus("adapter", `WebGPU adapter: ${name}`);
  if (adapter.isFallback && !document.querySelector("#messages .message.warning")) {
    showMessage(
      "warning",
      "This is a software WebGPU adapter (running on the CPU): WebGPU works, but slowly. Auto runs models with ONNX files on the CPU (WebAssembly) when that is faster; enable hardware acceleration for real speed.",
    );
  }
  state.gpu.onLost((reason) => {
    if (state.model?.backend !== "webgpu") {
      showBackend(); // the CPU path goes on; WebGPU comes back with a reload
      return;
    }
    stopLoops();
    state.model = null;
    setControls(false);
    setPageState("device-lost");
    showMessage("error", `The GPU device was lost (${reason}).`, { label: "Reload model", run: () => void recoverDevice() });
  });
  return true;
}

async function recoverDevice(): Promise<void> {
  if (await startGpu()) await loadSelected();
}

function setControls(enabled: boolean): void {
  for (const id of ["generate", "loop", "new-corners", "roam", "globe-reset"]) $<HTMLButtonElement>(id).disabled = !enabled;
}

function stopLoops(): void {
  state.loop = false;
  state.roam = false;
  $("loop").setAttribute("aria-pressed", "false");
  $("roam").setAttribute("aria-pressed", "false");
  $("roam").textContent = "Start";
}

/** One line of the model picker: the family's own fields, then size, parameters and classes. */
function describe(entry: CatalogEntry): string {
  const classes = entry.num_classes ? `, ${entry.num_classes} classes` : "";
  const family = entry.family ?? "sphere";
  const kind =
    family === "sphere"
      ? `${entry.backbone}`
      : family === "psvae"
        ? `psvae ${entry.backbone}/${entry.decoder}, z ${entry.z_dim}`
        : family === "vqvae"
          ? `vqvae tokenizer, ${entry.codebook_size} codes, f${entry.downsample_factor}`
          : family === "ldm"
            ? describeLdm(entry)
            : family === "somar"
              ? describeSomar(entry)
              : `${family} (not readable here)`;
  return `${entry.name} — ${kind}, ${entry.image_size}px, ${formatCount(entry.param_count)} params${classes}`;
}

/** An ldm entry's kind: the autoencoder, latent diffusion on its latents, or pixel diffusion. */
function describeLdm(entry: CatalogEntry): string {
  const shape = (entry.latent_shape ?? []).join("×");
  if (entry.kind === "autoencoder") return `ldm autoencoder, f${entry.downsample_factor}, latent ${shape}`;
  const sampler = (entry.sampler ?? "ddim").toUpperCase(); // the file's default; the page offers both
  return entry.kind === "pixel" ? `pixel diffusion (${sampler})` : `latent diffusion (${sampler}) on ${shape} latents`;
}

/** A somar entry: an autoencoder's map, or a codebook's (prior's) finest level: units, patches, token grid. */
function describeSomar(entry: CatalogEntry): string {
  const shape = (entry.latent_shape ?? []).join("×");
  if (entry.kind === "autoencoder") return `somar autoencoder, f${entry.downsample_factor}, map ${shape}`;
  const patch = entry.level_patches?.at(-1) ?? 0;
  const grid = (entry.token_grids?.at(-1) ?? []).join("×");
  const what = entry.kind === "prior" ? "somar prior (its codebook)" : "somar codebook";
  return `${what}, ${entry.level_sizes?.at(-1)} units of ${patch ? `${patch}×${patch}` : "whole-map"} patches, tokens ${grid}`;
}

/** The status line's account of a loaded model's latent. */
function describeLatent(model: PageModel): string {
  if (model.family === "sphere") return `latent ${model.latentShape.join("×")} (L = ${model.latentSize})`;
  const ldm = asLdm(model);
  const somar = asSomar(model);
  const vqvae = asVqvae(model);
  if (ldm) {
    const what = ldm.config.kind === "autoencoder" ? "latent (posterior mean)" : "denoises";
    return `${what} ${ldm.latentShape.join("×")}`;
  }
  if (somar) {
    const map = `latent map ${somar.latentShape.join("×")} (${somar.autoencoderFamily} autoencoder)`;
    if (!somar.layout) return map;
    const { rows, cols, patchH, patchW } = somar.layout;
    return `tokens ${rows}×${cols} (${patchH}×${patchW} patches of the ${map}) from ${somar.units} SOM units`;
  }
  if (vqvae) {
    const { codebook_size: K, codebook_dim: d, l2_norm } = vqvae.config;
    return `tokens ${model.latentShape.join("×")} from ${K} codes of ${d} values${l2_norm ? " (cosine)" : ""}`;
  }
  const encoder = model.canEncode ? "" : ", decoder only";
  return `latent: a point of the unit sphere S${superscript(model.latentSize - 1)} (z_dim ${model.latentSize})${encoder}`;
}

function superscript(value: number): string {
  return [...String(value)].map((digit) => "⁰¹²³⁴⁵⁶⁷⁸⁹"[Number(digit)]).join("");
}

/** Fill the model picker from index.json and load the remembered model once WebGPU has started (or failed to). */
async function loadCatalogIntoPicker(gpuStarted: Promise<boolean>): Promise<void> {
  try {
    state.catalog = await loadCatalog(MODELS_BASE);
  } catch (error) {
    setStatus("model-status", "No model to load.");
    showMessage("error", explain(error));
    setPageState("no-models");
    return;
  }
  if (!state.catalog.length) {
    setStatus("model-status", "index.json lists no models. Export one with `python batch_export.py`.");
    setPageState("no-models");
    return;
  }
  const select = $<HTMLSelectElement>("model-select");
  select.replaceChildren(...state.catalog.map((entry, i) => new Option(describe(entry), String(i))));
  const wanted = params.get("model") ?? localStorage.getItem("sphere.model"); // ?model=NAME opens that model
  const remembered = state.catalog.findIndex((entry) => entry.name === wanted);
  select.value = String(Math.max(0, remembered));
  select.disabled = false;
  fillModes();
  await gpuStarted;
  await loadSelected();
}

function fillModes(): void {
  const entry = state.catalog[Number($<HTMLSelectElement>("model-select").value)];
  const select = $<HTMLSelectElement>("mode-select");
  const modes = MODE_ORDER.filter((mode) => entry.modes[mode]);
  select.replaceChildren(...modes.map((mode) => new Option(`${mode} (${formatBytes(entry.modes[mode]!.bytes)})`, mode)));
  const remembered = localStorage.getItem("sphere.mode");
  select.value = modes.includes(remembered as Mode) ? remembered! : modes[0];
  select.disabled = false;
}

// ---------------------------------------------------------------------------------------------------------
// backends

function initialChoice(): BackendChoice {
  const asked = params.get("backend") ?? localStorage.getItem("sphere.backend");
  return BACKEND_CHOICES.includes(asked as BackendChoice) ? (asked as BackendChoice) : "auto";
}

/** The entry's ONNX files when the CPU path can run them (index.json written by batch_export.py with ONNX files). */
function onnxOf(entry: CatalogEntry): OnnxIndex | null {
  const onnx = (entry as CatalogEntry & { onnx?: OnnxIndex }).onnx;
  if (!onnx?.config || cpuUnsupported(onnx.config)) return null;
  return onnxNeeds(onnx.config).every((network) => onnx[network]) ? onnx : null;
}

function liveGpu(): Gpu | null {
  return state.gpu && !state.gpu.lost ? state.gpu : null;
}

type Plan = { backend: Backend; race: boolean; note: string } | { problem: string };

/**
 * Where an entry runs: the picked backend when it can; a model without ONNX files on WebGPU (saying so when the
 * CPU was picked); everything on the CPU without WebGPU. Auto starts on the CPU (its first images come fastest)
 * and races the two backends once the page is up.
 */
function planBackend(entry: CatalogEntry): Plan {
  const onnx = onnxOf(entry);
  const gpu = liveGpu();
  if (!onnx) {
    if (!gpu)
      return {
        problem: `${entry.name} has no ONNX files, so it needs WebGPU, which this browser lacks: open the page in a browser with WebGPU, or export it again with export_weights.py, which writes them.`,
      };
    const note =
      state.choice === "cpu"
        ? `${entry.name} has no ONNX files (a ${entry.family ?? "sphere"} model the CPU path does not run, or an older export): it runs on WebGPU.`
        : "";
    return { backend: "webgpu", race: false, note };
  }
  if (!gpu)
    return { backend: "cpu", race: false, note: state.choice === "webgpu" ? "WebGPU is unavailable here: it runs on the CPU." : "" };
  if (state.choice === "auto") return { backend: "cpu", race: true, note: "" };
  return { backend: state.choice, race: false, note: "" };
}

/** Weight-file bytes through the page's cache, with the progress bar and the status line (unless `quiet`). */
function download(url: string, bytes: number, label: string, quiet = false): Promise<ArrayBuffer> {
  const bar = $("progress-bar");
  return fetchWeights(url, bytes, (loaded, total, cached) => {
    if (quiet) return;
    bar.style.width = `${total ? (100 * loaded) / total : 100}%`;
    setStatus("model-status", cached ? `${label}: from the cache` : `Downloading ${label}: ${formatBytes(loaded)} / ${formatBytes(total)}`);
  });
}

/** The entry's model on WebGPU, from its weight file of precision `mode`. */
async function loadGpuModel(entry: CatalogEntry, mode: Mode, gpu: Gpu, quiet = false): Promise<PageModel> {
  const file = entry.modes[mode]!;
  const url = new URL(file.file, MODELS_BASE).href;
  const buffer = await download(url, file.bytes, `${entry.name} ${mode}`, quiet);
  try {
    return await loadModel(gpu, buffer, file.file);
  } catch (error) {
    if (error instanceof WebFormatError) await forgetWeights(url, file.bytes).catch(() => undefined); // a fixed file is fetched anew
    throw error;
  }
}

/** The entry's model on the CPU, from its ONNX files (a corrupt or unreadable download is dropped from the cache). */
async function loadCpuModel(entry: CatalogEntry, onnx: OnnxIndex): Promise<PageModel> {
  const fetchBytes = (file: OnnxFile) => download(new URL(file.file, MODELS_BASE).href, file.bytes, `${entry.name} (ONNX)`);
  try {
    return await onnxModel(onnx, fetchBytes, entry.name);
  } catch (error) {
    const files = onnxFiles(onnx);
    await Promise.all(files.map((file) => forgetWeights(new URL(file.file, MODELS_BASE).href, file.bytes).catch(() => undefined)));
    throw error;
  }
}

/** The backend line: what runs the model, with which weights, Auto's timings and any note. */
function showBackend(): void {
  const model = state.model;
  const parts: string[] = [];
  if (model) {
    const weights = model.backend === "cpu" ? `fp32 ONNX, ${cpuThreads()} thread${cpuThreads() > 1 ? "s" : ""}` : `${model.mode} weights`;
    parts.push(`Runs on ${BACKEND_NAMES[model.backend]} (${weights}).`);
  }
  const { cpu, webgpu } = state.timings;
  const what = asLdm(model)?.canSample ? "UNet pass" : "decode";
  if (cpu !== undefined && webgpu !== undefined)
    parts.push(`One ${what} (best of 5): CPU ${cpu.toFixed(1)} ms · WebGPU ${webgpu.toFixed(1)} ms (Auto keeps the faster).`);
  else if (state.choice === "auto" && model?.backend === "cpu" && liveGpu()) parts.push("Auto: timing WebGPU…");
  if (state.gpu?.lost) parts.push("The WebGPU device was lost.");
  if (state.backendNote) parts.push(state.backendNote);
  setStatus("backend-status", parts.join(" "));
  document.body.dataset.backend = model?.backend ?? ""; // read by the end-to-end test
}

/**
 * The call Auto times on each backend, for one image: a diffusion model's UNet pass (at the middle timestep), a
 * tokenizer's decode of a token grid, a somar or ldm autoencoder's decode of a latent map, a decode of a random point
 * of a sphere model's sphere.
 */
function timedCall(model: PageModel): () => Promise<unknown> {
  const ldm = asLdm(model);
  const gaussian = new Random(1).gaussians(model.latentSize);
  if (ldm?.canSample) return () => ldm.denoise(gaussian, Math.floor(ldm.config.timesteps / 2), { labels: labels(1) });
  if (model.family === "vqvae") return () => model.decode(new Float32Array(model.latentSize));
  if (model.family === "ldm" || model.family === "somar") return () => model.decode(gaussian.map(Math.tanh));
  return () => model.decode(randomPoint(model.latentSize, state.random, model.radius), labels(1));
}

/**
 * The best of 5 times (ms) of each model's timed call (one decode, or one UNet pass), after 2 warm-up calls each, the
 * two models taking turns: other work on the machine slows single calls, so the best time is the fairer comparison.
 */
async function timeDecodes(models: PageModel[]): Promise<number[]> {
  const best = models.map(() => Infinity);
  const calls = models.map(timedCall);
  for (let round = 0; round < 7; round++) {
    for (const [i, call] of calls.entries()) {
      const start = performance.now();
      await call();
      if (round >= 2) best[i] = Math.min(best[i], performance.now() - start);
    }
  }
  return best;
}

/**
 * Auto: load the entry on WebGPU beside the CPU model that runs, time one decode on each and keep the faster (the
 * other is disposed). Loops, the pad and roaming go on with whichever model is current.
 */
async function raceBackends(entry: CatalogEntry, mode: Mode, token: number): Promise<void> {
  const cpuModel = state.model;
  const gpu = liveGpu();
  if (!cpuModel || !gpu) return;
  showBackend();
  let gpuModel: PageModel | null = null;
  try {
    gpuModel = await loadGpuModel(entry, mode, gpu, true);
    if (token !== state.loadToken) return;
    const [cpuMs, gpuMs] = await timeDecodes([cpuModel, gpuModel]);
    if (token !== state.loadToken || state.model !== cpuModel) return;
    state.timings = { cpu: cpuMs, webgpu: gpuMs };
    if (gpuMs < cpuMs) {
      state.model = gpuModel;
      gpuModel = cpuModel; // disposed below
    }
  } catch (error) {
    if (token !== state.loadToken) return;
    state.backendNote = `WebGPU failed (${explain(error)}): it stays on the CPU.`;
  } finally {
    void gpuModel?.dispose();
    if (token === state.loadToken) {
      showBackend();
      document.body.dataset.race = String(Number(document.body.dataset.race ?? 0) + 1); // read by the end-to-end test
    }
  }
}

async function loadSelected(): Promise<void> {
  const entry = state.catalog[Number($<HTMLSelectElement>("model-select").value)];
  const mode = $<HTMLSelectElement>("mode-select").value as Mode;
  if (!entry) return;
  const token = ++state.loadToken;
  stopLoops();
  setControls(false);
  setPageState("loading");
  void state.model?.dispose(); // frees the previous model's buffers once its last call is done
  state.model = null;
  state.corners = null;
  state.timings = {};
  state.backendNote = "";
  clearOutputs();
  showBackend();
  const bar = $("progress-bar");
  const problem = entryProblem(entry); // known from index.json: no download
  const plan: Plan = problem ? { problem } : planBackend(entry);
  if ("problem" in plan) {
    bar.style.width = "0";
    setStatus("model-status", `Not shown: ${entry.name}.`);
    showMessage("error", plan.problem);
    setPageState("unsupported");
    return;
  }
  state.backendNote = plan.note;
  try {
    const start = performance.now();
    const gpu = liveGpu();
    const model = plan.backend === "cpu" ? await loadCpuModel(entry, onnxOf(entry)!) : await loadGpuModel(entry, mode, gpu!);
    if (token !== state.loadToken) return void model.dispose(); // another model was picked meanwhile
    state.model = model;
    state.entry = entry;
    localStorage.setItem("sphere.model", entry.name);
    localStorage.setItem("sphere.mode", mode);
    const bytes = model.backend === "cpu" ? onnxBytes(onnxOf(entry)!) : entry.modes[mode]!.bytes;
    setStatus(
      "model-status",
      `${entry.name} ${model.mode} ready: ${describeLatent(model)}, ${formatBytes(bytes)}${widenedNote(model)}, set up in ${(performance.now() - start).toFixed(0)} ms.`,
    );
    showBackend();
    configureConditional(entry);
    configurePanels(model);
    setControls(true);
    void refreshCacheStatus();
    if (model.canSample) {
      await generate();
      if (!asLdm(model)) await newCorners();
    } else await reconstructFrom(SAMPLE_IMAGES[0].url);
    const somar = asSomar(model);
    if (somar?.layout) await showAtlas(somar);
    state.globe?.reset();
    setPageState("ready");
    if (plan.race && token === state.loadToken) void raceBackends(entry, mode, token);
  } catch (error) {
    if (token !== state.loadToken) return;
    bar.style.width = "0";
    setStatus("model-status", "Loading failed.");
    reportError(error, `Could not load ${entry.name} (${plan.backend === "cpu" ? "ONNX, CPU" : mode}): `);
    setPageState(error instanceof UnsupportedModelError ? "unsupported" : "error");
    void refreshCacheStatus();
  }
}

/** Says when a software adapter widened the file's fp16/q8/q4 matrices to float32 at load (kernelChoice.weights). */
function widenedNote(model: PageModel): string {
  const expanded = "weights" in model ? (model.weights as GpuWeights).expanded : 0;
  return expanded ? ` (${expanded} matrices widened to fp32 at load: faster on this software adapter)` : "";
}

function onnxBytes(onnx: OnnxIndex): number {
  return onnxFiles(onnx).reduce((total, file) => total + file.bytes, 0);
}

/** The files of an `onnx` object (networks and the tensors file). */
function onnxFiles(onnx: OnnxIndex): OnnxFile[] {
  return [onnx.decoder, onnx.encoder, onnx.unet, onnx.tensors].filter((file): file is OnnxFile => !!file);
}

function configureConditional(entry: CatalogEntry): void {
  const conditional = entry.num_classes > 0;
  document.querySelectorAll<HTMLElement>(".conditional").forEach((element) => (element.hidden = !conditional));
  if (!conditional) return;
  const names = entry.num_classes === 10 && (entry.dataset ?? "").startsWith("cifar") ? CIFAR10_CLASSES : null;
  $<HTMLSelectElement>("class-select").replaceChildren(
    new Option("none (null class)", String(entry.num_classes)),
    ...Array.from({ length: entry.num_classes }, (_, i) => new Option(names?.[i] ?? `class ${i}`, String(i))),
  );
}

/** Outputs and timings of the previous model would read as the next one's. */
function clearOutputs(): void {
  for (const id of ["generate-status", "recon-status", "pad-status", "roam-status", "globe-status", "family-note"]) setStatus(id, "");
  state.paint = { tokens: null, unit: 0, atlas: null, lastCell: null, pending: false, busy: false };
  setStatus("paint-status", "");
  for (const id of [
    "recon-input",
    "recon-output",
    "recon-tokens",
    "roam-output",
    "globe-output",
    "paint-atlas",
    "paint-tokens",
    "paint-output",
  ]) {
    const canvas = $<HTMLCanvasElement>(id);
    canvas.getContext("2d")?.clearRect(0, 0, canvas.width, canvas.height);
  }
}

const FAMILY_NOTES: Record<string, string> = {
  sphere: "",
  vqvae: "A VQ-VAE tokenizer: Reconstruct encodes a picture to a grid of codebook indices (tokens) and decodes them.",
  ldm: "A latent-diffusion family model: an autoencoder reconstructs; a diffusion model generates by DDIM (η = 0 deterministic, η > 0 adds noise at each step) or DDPM, showing each step's estimate of the final image.",
  somar:
    "A somar model: an autoencoder whose latent map is cut into patches, each replaced by its best-matching unit of a self-organizing map (the tokens). Reconstruct goes through the tokens; below, paint token grids with units picked from the codebook atlas.",
  psvae:
    "A Power-Spherical VAE: samples decode uniform points of its unit sphere; each further step is an encode → decode cycle, without noise.",
};

/**
 * Panels that depend on the model: Reconstruct and multi-step samples need an encoder (a decoder-only file
 * has none: say so); the globe is for a psvae whose latent is a point of S^2.
 */
function configurePanels(model: PageModel): void {
  setStatus("family-note", FAMILY_NOTES[model.family] ?? "");
  $("recon-body").hidden = !model.canEncode;
  $("recon-note").hidden = model.canEncode;
  const ldm = asLdm(model);
  const somar = asSomar(model);
  $("recon-note").textContent = ldm ? `${PIXEL_CANNOT_RECONSTRUCT}.` : DECODER_ONLY_NOTE;
  const diffusion = !!ldm?.canSample;
  configureSteps(diffusion);
  configureSampler(diffusion ? ldm : null);
  const steps = $<HTMLSelectElement>("steps");
  for (const option of steps.options) option.disabled = !diffusion && !model.canEncode && option.value !== "1";
  if (!diffusion && !model.canEncode) steps.value = "1";
  $("generate-panel").hidden = !model.canSample;
  for (const id of ["interpolate-panel", "roam-panel"]) $(id).hidden = !model.canSample || diffusion;
  $("sampling-note").hidden = model.canSample;
  const reason = ldm ? AE_CANNOT_SAMPLE : somar ? somar.cannotSample : CANNOT_SAMPLE;
  setStatus("sampling-note", model.canSample ? "" : `Generate, Loop, the pad and roam are hidden: ${reason}.`);
  // one round: re-encoding a tokenizer's output is not a refinement, and a diffusion model reconstructs through its
  // autoencoder once
  const rounds = model.canSample && !diffusion;
  $("recon-steps").closest("label")!.hidden = !rounds;
  if (!rounds) $<HTMLSelectElement>("recon-steps").value = "1";
  const painted = !!somar?.layout;
  $("recon-tokens-figure").hidden = !(asVqvae(model) || painted);
  $("paint-panel").hidden = !painted;
  const globe = model.family === "psvae" && model.latentSize === 3;
  $("globe-panel").hidden = !globe;
  state.globe = globe ? (state.globe ?? new Globe($<HTMLCanvasElement>("globe"), requestGlobe)) : null;
}

const DECODER_ONLY_NOTE = $("recon-note").textContent ?? "";
const REFINE_STEPS = $<HTMLSelectElement>("steps").innerHTML; // 1..4 rounds of the sphere families
const DDIM_STEPS = [10, 25, 50];

/** The steps selector: DDIM step counts for a diffusion model, refinement rounds otherwise. */
function configureSteps(diffusion: boolean): void {
  const steps = $<HTMLSelectElement>("steps");
  if ((steps.dataset.kind === "ddim") === diffusion) return;
  steps.dataset.kind = diffusion ? "ddim" : "refine";
  if (diffusion) steps.replaceChildren(...DDIM_STEPS.map((n, i) => new Option(String(n), String(n), i === 0, i === 0)));
  else steps.innerHTML = REFINE_STEPS;
}

/** The sampler and η controls of a diffusion model, set to the file's defaults; hidden for other models. */
function configureSampler(model: LDMPageModel | null): void {
  document.querySelectorAll<HTMLElement>(".diffusion").forEach((element) => (element.hidden = !model));
  if (!model) return;
  $<HTMLSelectElement>("sampler").value = model.sampler;
  $<HTMLInputElement>("eta").value = String(model.eta);
  showEta();
}

/** η is DDIM's: its control is shown with DDIM only. */
function showEta(): void {
  const eta = $<HTMLInputElement>("eta");
  setStatus("eta-value", eta.value);
  eta.closest("label")!.hidden = !(asLdm(state.model) && sampler() === "ddim");
}

function sampler(): Sampler {
  return $<HTMLSelectElement>("sampler").value as Sampler;
}

/** How a diffusion sample was drawn, for the status line: sampler (η), class and guidance. */
function describeSampling(model: LDMPageModel, options: { labels?: number[]; guidance: number; eta: number }): string {
  const parts = [sampler() === "ddim" ? `DDIM η ${options.eta}` : "DDPM"];
  if (model.config.num_classes > 0) {
    const label = options.labels?.[0];
    parts.push(label === model.config.num_classes ? "null class" : `class ${label}`, `guidance ${options.guidance}`);
  }
  return ` (${parts.join(", ")})`;
}

function labels(count: number): number[] | undefined {
  if (!state.model || state.model.config.num_classes === 0) return undefined;
  return new Array(count).fill(Number($<HTMLSelectElement>("class-select").value));
}

function guidance(): number {
  return state.model && state.model.config.num_classes > 0 ? Number($<HTMLInputElement>("guidance").value) : 1;
}

async function refreshCacheStatus(): Promise<void> {
  const { files, bytes } = await cachedBytes();
  setStatus("cache-status", files ? `${files} file${files > 1 ? "s" : ""} cached (${formatBytes(bytes)})` : "cache empty");
}

// ---------------------------------------------------------------------------------------------------------
// generate and loop

async function generate(seed?: number): Promise<number> {
  const model = state.model;
  if (!model) return 0;
  const count = Number($<HTMLSelectElement>("count").value);
  const steps = Number($<HTMLSelectElement>("steps").value);
  const typed = $<HTMLInputElement>("seed").value;
  const used = seed ?? (typed === "" ? state.random.nextUint32() : Number(typed) >>> 0);
  const start = performance.now();
  const size = model.config.image_size;
  const canvases = canvasGrid($("grid"), count);
  const draw = (images: Float32Array): void =>
    canvases.forEach((canvas, i) => drawImage(canvas, images, i, model.config.in_channels, size));
  const onStep = (images: Float32Array, step: number, total: number): Promise<void> => {
    if (state.model !== model) throw new Error("generation stopped: another model was picked"); // ends the DDIM loop
    draw(images);
    document.body.dataset.previews = String(Number(document.body.dataset.previews ?? 0) + 1);
    setStatus("generate-status", `${sampler().toUpperCase()} step ${step}/${total}: the estimate of the final image (x̂₀)`);
    return new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint each step
  };
  const options = { steps, seed: used, labels: labels(count), guidance: guidance() };
  const diffusion = { sampler: sampler(), eta: Number($<HTMLInputElement>("eta").value), onStep };
  // on the CPU, a single generation draws each round as it comes (a loop does not: it would flicker)
  const rounds = {
    onStep: (images: Float32Array): Promise<void> => {
      if (state.model !== model) throw new Error("generation stopped: another model was picked");
      draw(images);
      firstImage();
      return new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint it
    },
  };
  let images: Float32Array;
  try {
    const ldm = asLdm(model);
    images = await (ldm
      ? ldm.sample(count, { ...options, ...diffusion })
      : model.backend === "cpu" && !state.loop
        ? model.sample(count, { ...options, ...rounds })
        : model.sample(count, options));
  } catch (error) {
    if (state.model !== model) return 0; // another model was picked meanwhile: nothing to show
    throw error;
  }
  const elapsed = performance.now() - start;
  draw(images);
  firstImage();
  const ldm = asLdm(model);
  const how = ldm ? describeSampling(ldm, { ...options, eta: diffusion.eta }) : "";
  setStatus(
    "generate-status",
    `${count} image${count > 1 ? "s" : ""}, ${steps} step${steps > 1 ? "s" : ""}${how}, seed ${used}: ${elapsed.toFixed(0)} ms`,
  );
  document.body.dataset.generated = String(Number(document.body.dataset.generated ?? 0) + 1);
  return elapsed;
}

/** Note when the page first shows generated images, or a reconstruction (ms since navigation start). */
function firstImage(): void {
  if (state.firstImageMs !== null) return;
  state.firstImageMs = performance.now();
  document.body.dataset.firstImageMs = state.firstImageMs.toFixed(0); // read by the end-to-end test
}

async function runLoop(): Promise<void> {
  let frames = 0;
  let windowStart = performance.now();
  while (state.loop && state.model) {
    try {
      await generate(state.random.nextUint32());
    } catch (error) {
      stopLoops();
      reportError(error);
      return;
    }
    frames++;
    const now = performance.now();
    if (now - windowStart >= 1000) {
      setStatus("generate-status", `${$("generate-status").textContent} · ${((1000 * frames) / (now - windowStart)).toFixed(1)} fps`);
      frames = 0;
      windowStart = now;
    }
    await new Promise(requestAnimationFrame);
  }
}

// ---------------------------------------------------------------------------------------------------------
// reconstruct

async function reconstructFrom(source: Blob | string): Promise<void> {
  const model = state.model;
  if (!model) {
    showMessage("warning", "Load a model first.");
    return;
  }
  try {
    const size = model.config.image_size;
    const rgba = centerCrop(await loadBitmap(source), size, $<HTMLCanvasElement>("recon-input"));
    const steps = Number($<HTMLSelectElement>("recon-steps").value);
    const result = await model.reconstruct(toModelInput(rgba, model.config.in_channels, size), { steps, labels: labels(1) });
    const { images, timings } = result;
    drawImage($<HTMLCanvasElement>("recon-output"), images, 0, model.config.in_channels, size);
    firstImage(); // a model that cannot sample shows a reconstruction first
    const [vqvae, somar] = [asVqvae(model), asSomar(model)];
    if (vqvae && "tokens" in result) drawTokenMap(vqvae, result.tokens as Float32Array);
    if (somar && "tokens" in result && result.tokens) showReconstructedTokens(somar, result.tokens as Int32Array, images);
    setStatus(
      "recon-status",
      `encode ${timings.encodeMs.toFixed(1)} ms · decode ${timings.decodeMs.toFixed(1)} ms${steps > 1 ? ` (${steps} rounds)` : ""}`,
    );
  } catch (error) {
    reportError(error, "Reconstruction failed: ");
  }
}

/** The token map of one image's tokens: each code in its colour (first three principal components of the codebook). */
function drawTokenMap(model: VQVAEPageModel, tokens: Float32Array): void {
  const grid = model.grid;
  drawImage($<HTMLCanvasElement>("recon-tokens"), model.tokenMap(tokens.subarray(0, grid * grid)), 0, 3, grid);
  const used = new Set(tokens.subarray(0, grid * grid)).size;
  setStatus("recon-tokens-caption", `tokens ${grid}×${grid} (${used} distinct codes of ${model.config.codebook_size})`);
  document.body.dataset.tokens = String(Number(document.body.dataset.tokens ?? 0) + 1); // read by the end-to-end test
}

// ---------------------------------------------------------------------------------------------------------
// somar: the token map of a reconstruction, the codebook atlas and painting token grids with its units

/** A reconstruction's tokens: its token map (units coloured by their SOM grid place), and the grid to paint on. */
function showReconstructedTokens(model: SOMARPageModel, tokens: Int32Array, images: Float32Array): void {
  const { rows, cols, tokens: n } = model.layout!;
  const grid = tokens.slice(0, n);
  drawPicture($<HTMLCanvasElement>("recon-tokens"), model.tokenMap(grid), 3, rows, cols);
  setStatus("recon-tokens-caption", `tokens ${rows}×${cols} (${new Set(grid).size} distinct units of ${model.units})`);
  document.body.dataset.tokens = String(Number(document.body.dataset.tokens ?? 0) + 1);
  state.paint.tokens = grid;
  drawPaintTokens(model);
  drawImage($<HTMLCanvasElement>("paint-output"), images, 0, model.config.in_channels, model.config.image_size);
  setStatus("paint-status", "the reconstruction's tokens: paint over them");
}

/** A picture (C, height, width) in [-1, 1] on a canvas of its size. */
function drawPicture(canvas: HTMLCanvasElement, picture: Float32Array, channels: number, height: number, width: number): void {
  if (canvas.width !== width || canvas.height !== height) [canvas.width, canvas.height] = [width, height];
  const rgba = pictureRGBA(picture, channels, height, width);
  canvas.getContext("2d")!.putImageData(new ImageData(rgba as Uint8ClampedArray<ArrayBuffer>, width, height), 0, 0);
}

/** Decode every unit into the atlas (once per model) and draw it with the picked unit outlined. */
async function showAtlas(model: SOMARPageModel): Promise<void> {
  const start = performance.now();
  const atlas = await model.atlas();
  if (state.model !== model) return;
  state.paint.atlas = atlas;
  state.paint.unit = Math.min(state.paint.unit, model.units - 1);
  drawAtlas(model);
  const ms = performance.now() - start;
  setStatus("paint-status", `atlas of ${model.units} units decoded in ${ms.toFixed(0)} ms`);
  document.body.dataset.atlasMs = ms.toFixed(0); // read by scripts/first-image.mjs
  document.body.dataset.atlas = String(Number(document.body.dataset.atlas ?? 0) + 1); // read by the end-to-end test
}

function drawAtlas(model: SOMARPageModel): void {
  const atlas = state.paint.atlas;
  if (!atlas) return;
  const { geometry } = atlas;
  const canvas = $<HTMLCanvasElement>("paint-atlas");
  drawPicture(canvas, atlas.picture, model.config.in_channels, geometry.height, geometry.width);
  const unit = state.paint.unit;
  const [row, col] = [model.grid[2 * unit], model.grid[2 * unit + 1]];
  const context = canvas.getContext("2d")!;
  context.strokeStyle = "#ffd400";
  context.lineWidth = 1;
  const [top, left] = [geometry.pad + row * (geometry.cellH + geometry.pad), geometry.pad + col * (geometry.cellW + geometry.pad)];
  context.strokeRect(left - 0.5, top - 0.5, geometry.cellW + 1, geometry.cellH + 1); // in the gap around the cell
  setStatus("paint-atlas-caption", `unit ${unit} (row ${row}, column ${col}) of ${model.units}`);
}

function drawPaintTokens(model: SOMARPageModel): void {
  if (!state.paint.tokens) return;
  const { rows, cols } = model.layout!;
  drawPicture($<HTMLCanvasElement>("paint-tokens"), model.tokenMap(state.paint.tokens), 3, rows, cols);
  setStatus("paint-tokens-caption", `tokens ${rows}×${cols}`);
}

/** Decode the painted grid; strokes that arrive meanwhile collapse into one decode (as the pad does). */
async function drainPaint(): Promise<void> {
  state.paint.busy = true;
  try {
    while (state.paint.pending && asSomar(state.model) && state.paint.tokens) {
      state.paint.pending = false;
      const model = asSomar(state.model)!;
      const images = await model.decodeTokens(state.paint.tokens.slice());
      if (state.model !== model) return;
      drawImage($<HTMLCanvasElement>("paint-output"), images, 0, model.config.in_channels, model.config.image_size);
      setStatus("paint-status", `decode ${model.lastTimings.decodeMs.toFixed(1)} ms`);
      document.body.dataset.painted = String(Number(document.body.dataset.painted ?? 0) + 1); // read by the end-to-end test
    }
  } catch (error) {
    reportError(error);
  } finally {
    state.paint.busy = false;
  }
}

function requestPaintDecode(): void {
  state.paint.pending = true;
  if (!state.paint.busy) void drainPaint();
}

/** Paint the picked unit from the stroke's last cell to the cell under the pointer. */
function paintAt(event: PointerEvent): void {
  const model = asSomar(state.model);
  if (!model?.layout || !state.paint.tokens) return;
  const rect = $("paint-tokens").getBoundingClientRect();
  const cell = cellAt(model.layout, (event.clientX - rect.left) / rect.width, (event.clientY - rect.top) / rect.height);
  const changed = paintStroke(state.paint.tokens, model.layout, state.paint.lastCell, cell, state.paint.unit);
  state.paint.lastCell = cell;
  if (!changed) return;
  drawPaintTokens(model);
  requestPaintDecode();
}

/** Fill the whole grid with the picked unit, or with random units. */
function fillTokens(pick: () => number): void {
  const model = asSomar(state.model);
  if (!model?.layout) return;
  state.paint.tokens = Int32Array.from({ length: model.layout.tokens }, pick);
  drawPaintTokens(model);
  requestPaintDecode();
}

function setupPaint(): void {
  const atlas = $<HTMLCanvasElement>("paint-atlas");
  atlas.onclick = (event) => {
    const model = asSomar(state.model);
    if (!model || !state.paint.atlas) return;
    const rect = atlas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * atlas.width;
    const y = ((event.clientY - rect.top) / rect.height) * atlas.height;
    const unit = unitAt(model.grid, state.paint.atlas.geometry, x, y);
    if (unit === null) return;
    state.paint.unit = unit;
    drawAtlas(model);
  };
  atlas.onkeydown = (event) => {
    const model = asSomar(state.model);
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
    if (!model || !state.paint.atlas || !step) return;
    event.preventDefault();
    const unit = state.paint.unit;
    const next = unitAtCell(model.grid, model.grid[2 * unit] + step[0], model.grid[2 * unit + 1] + step[1]);
    if (next === null) return; // the edge of the map, or a pruned cell
    state.paint.unit = next;
    drawAtlas(model);
  };
  const tokens = $<HTMLCanvasElement>("paint-tokens");
  tokens.onpointerdown = (event) => {
    tokens.setPointerCapture(event.pointerId);
    state.paint.lastCell = null;
    paintAt(event);
  };
  tokens.onpointermove = (event) => {
    if (event.buttons) paintAt(event);
  };
  tokens.onpointerup = () => (state.paint.lastCell = null);
  $("paint-fill").onclick = () => fillTokens(() => state.paint.unit);
  $("paint-random").onclick = () => {
    const units = asSomar(state.model)?.units ?? 1;
    fillTokens(() => state.random.nextUint32() % units);
  };
}

function setupReconstruct(): void {
  const samples = $("samples");
  for (const sample of SAMPLE_IMAGES) {
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = sample.name;
    img.title = sample.name;
    img.tabIndex = 0;
    img.onclick = () => void reconstructFrom(sample.url);
    img.onkeydown = (event) => {
      if (event.key === "Enter") void reconstructFrom(sample.url);
    };
    samples.appendChild(img);
  }
  $<HTMLInputElement>("file-input").onchange = (event) => {
    const file = (event.target as HTMLInputElement).files?.[0];
    if (file) void reconstructFrom(file);
  };
  const zone = $("drop-zone");
  zone.ondragover = (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.ondragleave = () => zone.classList.remove("dragging");
  zone.ondrop = (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) void reconstructFrom(file);
  };
}

// ---------------------------------------------------------------------------------------------------------
// interpolation pad

async function newCorners(): Promise<void> {
  const model = state.model;
  if (!model) return;
  state.corners = Array.from({ length: 4 }, () => randomPoint(model.latentSize, state.random, model.radius));
  const latents = new Float32Array(4 * model.latentSize);
  state.corners.forEach((corner, i) => latents.set(corner, i * model.latentSize));
  const images = await model.decode(latents, labels(4));
  for (let i = 0; i < 4; i++) drawImage($<HTMLCanvasElement>(`corner-${i}`), images, i, model.config.in_channels, model.config.image_size);
  requestPad(0.5, 0.5);
}

function requestPad(u: number, v: number): void {
  state.pendingPad = [u, v];
  const dot = $("pad-dot");
  dot.style.left = `${100 * u}%`;
  dot.style.top = `${100 * v}%`;
  if (!state.padBusy) void drainPad();
}

/** Decode the latest pad position; positions that arrive meanwhile collapse into one. */
async function drainPad(): Promise<void> {
  state.padBusy = true;
  try {
    while (state.pendingPad && state.model && state.corners) {
      const [u, v] = state.pendingPad;
      state.pendingPad = null;
      const model = state.model;
      const images = await model.decode(slerp2d(state.corners, u, v, model.radius), labels(1));
      drawImage($<HTMLCanvasElement>("pad-output"), images, 0, model.config.in_channels, model.config.image_size);
      setStatus("pad-status", `u ${u.toFixed(2)} · v ${v.toFixed(2)} · decode ${model.lastTimings.decodeMs.toFixed(1)} ms`);
    }
  } catch (error) {
    reportError(error);
  } finally {
    state.padBusy = false;
  }
}

function setupPad(): void {
  const pad = $("pad");
  const position = (event: PointerEvent): void => {
    const rect = pad.getBoundingClientRect();
    const clamp = (x: number) => Math.min(1, Math.max(0, x));
    requestPad(clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height));
  };
  pad.onpointerdown = (event) => {
    pad.setPointerCapture(event.pointerId);
    position(event);
  };
  pad.onpointermove = (event) => {
    if (event.buttons || event.pointerType === "mouse") position(event);
  };
  pad.onkeydown = (event) => {
    const dot = $("pad-dot");
    let u = parseFloat(dot.style.left || "50") / 100;
    let v = parseFloat(dot.style.top || "50") / 100;
    const step = 0.05;
    if (event.key === "ArrowLeft") u -= step;
    else if (event.key === "ArrowRight") u += step;
    else if (event.key === "ArrowUp") v -= step;
    else if (event.key === "ArrowDown") v += step;
    else return;
    event.preventDefault();
    requestPad(Math.min(1, Math.max(0, u)), Math.min(1, Math.max(0, v)));
  };
}

// ---------------------------------------------------------------------------------------------------------
// globe (psvae, z_dim = 3)

function requestGlobe(point: Vec3, kind: PickKind): void {
  state.pendingGlobe = { point, kind };
  setStatus("globe-readout", formatLatLon(point));
  if (!state.globeBusy) void drainGlobe();
}

/** Decode the latest globe point; points picked meanwhile collapse into one (as the pad does). */
async function drainGlobe(): Promise<void> {
  state.globeBusy = true;
  try {
    while (state.pendingGlobe && state.model && state.globe) {
      const { point, kind } = state.pendingGlobe;
      state.pendingGlobe = null;
      const model = state.model;
      const images = await model.decode(Float32Array.from(point), labels(1));
      drawImage($<HTMLCanvasElement>("globe-output"), images, 0, model.config.in_channels, model.config.image_size);
      const where = kind === "front" ? "front point" : "under the cursor";
      setStatus("globe-status", `${formatLatLon(point)} (${where}) · decode ${model.lastTimings.decodeMs.toFixed(1)} ms`);
      document.body.dataset.globeDecoded = String(Number(document.body.dataset.globeDecoded ?? 0) + 1);
    }
  } catch (error) {
    reportError(error);
  } finally {
    state.globeBusy = false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// roam

async function runRoam(): Promise<void> {
  const model = state.model;
  if (!model) return;
  const walk = new GreatCircleWalk(
    randomPoint(model.latentSize, state.random, model.radius),
    state.random,
    Number($<HTMLInputElement>("roam-speed").value),
    model.radius,
  );
  let frames = 0;
  let windowStart = performance.now();
  while (state.roam && state.model === model) {
    walk.speed = Number($<HTMLInputElement>("roam-speed").value);
    try {
      const images = await model.decode(walk.step(), labels(1));
      drawImage($<HTMLCanvasElement>("roam-output"), images, 0, model.config.in_channels, model.config.image_size);
    } catch (error) {
      stopLoops();
      reportError(error);
      return;
    }
    frames++;
    const now = performance.now();
    if (now - windowStart >= 1000) {
      setStatus(
        "roam-status",
        `${((1000 * frames) / (now - windowStart)).toFixed(1)} fps · decode ${model.lastTimings.decodeMs.toFixed(1)} ms`,
      );
      frames = 0;
      windowStart = now;
    }
    await new Promise(requestAnimationFrame);
  }
}

// ---------------------------------------------------------------------------------------------------------

function wireControls(): void {
  $<HTMLSelectElement>("model-select").onchange = () => {
    fillModes();
    void loadSelected();
  };
  $<HTMLSelectElement>("mode-select").onchange = () => void loadSelected();
  const backend = $<HTMLSelectElement>("backend-select");
  backend.value = state.choice;
  backend.onchange = () => {
    state.choice = backend.value as BackendChoice;
    localStorage.setItem("sphere.backend", state.choice);
    void loadSelected();
  };
  $("generate").onclick = () => void generate().catch((error) => reportError(error));
  $("loop").onclick = () => {
    const on = !state.loop;
    stopLoops();
    state.loop = on;
    $("loop").setAttribute("aria-pressed", String(on));
    if (on) void runLoop();
  };
  $("roam").onclick = () => {
    const on = !state.roam;
    stopLoops();
    state.roam = on;
    $("roam").setAttribute("aria-pressed", String(on));
    $("roam").textContent = on ? "Stop" : "Start";
    if (on) void runRoam();
  };
  $("new-corners").onclick = () => void newCorners().catch((error) => reportError(error));
  $("globe-reset").onclick = () => state.globe?.reset();
  $("clear-cache").onclick = async () => {
    await clearCache();
    await refreshCacheStatus();
  };
  const guidanceInput = $<HTMLInputElement>("guidance");
  guidanceInput.oninput = () => setStatus("guidance-value", guidanceInput.value);
  $<HTMLSelectElement>("sampler").onchange = showEta;
  $<HTMLInputElement>("eta").oninput = showEta;
  setupReconstruct();
  setupPaint();
  setupPad();
}

async function main(): Promise<void> {
  (window as unknown as { sphereDemo: State }).sphereDemo = state; // a handle for the console and the e2e test
  wireControls();
  void refreshCacheStatus();
  if (state.choice !== "webgpu" || !navigator.gpu) void startOrt().catch(() => undefined); // the CPU path's runtime starts now
  await loadCatalogIntoPicker(startGpu()); // WebGPU starts while index.json downloads
}

void main();
