/**
 * Parity of the page's CPU path (onnxruntime-web wasm, src/ort.ts + src/cpu_model.ts + src/cpu_families.ts) against
 * the PyTorch references of scripts/make_fixtures.py: every index.json entry with ONNX files is loaded as the page
 * loads it. Sphere and psvae models: encode, decode, samples (3 steps, 1 step, guided) and reconstruction; a
 * decoder-only file refuses to encode. vqvae, ldm and somar models: the checks the WebGPU harness runs (fixtures.ts:
 * tokens, decode of tokens, token map; UNet passes, a DDIM step, whole DDIM/DDPM runs with PyTorch's noise, previews;
 * latent maps, tokens, the atlas). Broken ONNX files fail with their reason. With `bench`, decode latency (batch 1) of the page's model beside a bare
 * onnxruntime-web session on the same file, interleaved. scripts/cpu-parity.mjs drives this page.
 */

import type { CpuModel } from "../../src/cpu_model";
import type { LDMPageModel } from "../../src/ldm_core";
import type { PageModel } from "../../src/model";
import type { SOMARPageModel } from "../../src/somar_core";
import type { VQVAEPageModel } from "../../src/vqvae_core";
import { cpuThreads, loadOrt, onnxModel, type OnnxFile, type OnnxIndex } from "../../src/ort";
import {
  TOLERANCE,
  fetchTensors,
  get,
  ldmChecks,
  maxAbsDiff,
  refusal,
  somarChecks,
  vqvaeChecks,
  type Repeat,
  type Result,
  type Tensors,
} from "./fixtures";

interface Manifest {
  guidance: number;
  recon_angle: number;
  ldm_steps: number;
  models: Record<string, { decoder_only?: boolean }>;
}

interface Entry {
  name: string;
  onnx?: OnnxIndex;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

class Harness {
  results: Result[] = [];

  async check(name: string, tolerance: number, fn: () => Promise<[Float32Array, Float32Array]>): Promise<void> {
    const start = performance.now();
    try {
      const [actual, expected] = await fn();
      const maxError = maxAbsDiff(actual, expected);
      const detail = actual.length !== expected.length ? `length ${actual.length} != ${expected.length}` : undefined;
      this.results.push({ name, ok: maxError <= tolerance, maxError, tolerance, ms: performance.now() - start, detail });
    } catch (error) {
      this.record(name, false, String((error as Error)?.stack ?? error));
    }
  }

  record(name: string, ok: boolean, detail: string): void {
    this.results.push({ name, ok, maxError: 0, tolerance: 0, ms: 0, detail });
  }
}

async function fullChecks(h: Harness, tag: string, model: CpuModel, ref: Tensors, labels: number[] | undefined, manifest: Manifest) {
  const sphere = model.family === "sphere";
  await h.check(`cpu/${tag}/encode`, TOLERANCE.model, async () => [await model.encode(get(ref, "images"), labels), get(ref, "encode")]);
  await h.check(`cpu/${tag}/decode`, TOLERANCE.model, async () => [await model.decode(get(ref, "latents"), labels), get(ref, "decode")]);
  const sampleArgs = { steps: 3, noise: get(ref, "noise"), renoise: sphere ? get(ref, "renoise") : undefined, labels };
  await h.check(`cpu/${tag}/sample_3_steps`, TOLERANCE.chained, async () => [await model.sample(2, sampleArgs), get(ref, "sample")]);
  if (ref.has("sample_1_step")) {
    await h.check(`cpu/${tag}/sample_1_step`, TOLERANCE.model, async () => [
      await model.sample(2, { ...sampleArgs, steps: 1 }),
      get(ref, "sample_1_step"),
    ]);
  }
  if (ref.has("sample_guided")) {
    await h.check(`cpu/${tag}/sample_guided`, TOLERANCE.chained, async () => [
      await model.sample(2, { ...sampleArgs, steps: 2, guidance: manifest.guidance }),
      get(ref, "sample_guided"),
    ]);
  }
  const reconArgs = sphere
    ? { steps: 2, noiseAngle: manifest.recon_angle, renoise: get(ref, "recon_renoise"), labels }
    : { steps: 2, labels };
  await h.check(`cpu/${tag}/reconstruct_2_steps`, TOLERANCE.chained, async () => [
    (await model.reconstruct(get(ref, "images"), reconArgs)).images,
    get(ref, "reconstruct"),
  ]);
}

async function decoderOnlyChecks(h: Harness, tag: string, model: CpuModel, ref: Tensors, labels: number[] | undefined) {
  h.record(`cpu/${tag}/no_encoder`, !model.canEncode, `canEncode ${model.canEncode}`);
  await h.check(`cpu/${tag}/decode`, TOLERANCE.model, async () => [await model.decode(get(ref, "latents"), labels), get(ref, "decode")]);
  await h.check(`cpu/${tag}/sample_1_step`, TOLERANCE.model, async () => [
    await model.sample(2, { steps: 1, noise: get(ref, "noise"), labels }),
    get(ref, "sample_1_step"),
  ]);
  const message = await refusal(() => model.reconstruct(get(ref, "images"), { labels }));
  h.record(`cpu/${tag}/reconstruct_refused`, /holds no encoder/.test(message), message);
}

/** A truncated file and one whose bytes do not match index.json's sha256: each fails saying why. */
async function brokenFileChecks(h: Harness, entry: Entry, fetchBytes: (file: OnnxFile) => Promise<ArrayBuffer>) {
  const onnx = entry.onnx!;
  const unchecked = (file: OnnxFile): OnnxFile => ({ ...file, sha256: "" }); // no checksum: the runtime sees the bytes
  const truncated = (file: OnnxFile) => fetchBytes(file).then((bytes) => bytes.slice(0, bytes.byteLength >> 1));
  const cases: [string, OnnxIndex, (file: OnnxFile) => Promise<ArrayBuffer>, RegExp][] = [
    [
      "truncated",
      { ...onnx, decoder: unchecked(onnx.decoder!), encoder: onnx.encoder && unchecked(onnx.encoder) },
      truncated,
      /ONNX file '[^']+' could not be loaded .*re-export it/,
    ],
    ["corrupt", onnx, truncated, /ONNX file '[^']+' is corrupt \(sha256 mismatch\); re-export it/],
  ];
  for (const [what, index, fetcher, pattern] of cases) {
    const message = await refusal(() => onnxModel(index, fetcher, entry.name));
    h.record(`cpu/${entry.name}/${what}_file_refused`, pattern.test(message), message);
  }
  // the encoder's session is created at its first use: a truncated encoder file fails there
  if (!onnx.encoder) return;
  const encoderTruncated = (file: OnnxFile) => (file.file === onnx.encoder!.file ? truncated(file) : fetchBytes(file));
  const model = await onnxModel({ ...onnx, encoder: unchecked(onnx.encoder) }, encoderTruncated, entry.name);
  const message = await refusal(() => model.encode(new Float32Array(model.imageSize)));
  h.record(`cpu/${entry.name}/truncated_encoder_refused`, /ONNX file '[^']+' could not be loaded .*re-export it/.test(message), message);
  await model.dispose();
}

/** Decode latency (batch 1, ms) of the page's model and of a bare session on the same decoder file, interleaved. */
async function benchDecode(h: Harness, entry: Entry, model: CpuModel, decoderBytes: ArrayBuffer, rounds: number): Promise<void> {
  const ort = await loadOrt();
  const session = await ort.InferenceSession.create(new Uint8Array(decoderBytes), {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  const v = new Float32Array(model.latentSize).map((_, i) => Math.sin(i));
  const conditional = model.config.num_classes > 0;
  const feeds = () => {
    const out: Record<string, InstanceType<typeof ort.Tensor>> = { v: new ort.Tensor("float32", v, [1, ...model.latentShape]) };
    if (conditional) out.labels = new ort.Tensor("int64", BigInt64Array.from([BigInt(model.config.num_classes)]), [1]);
    return out;
  };
  const page: number[] = [];
  const bare: number[] = [];
  for (let i = 0; i < 3; i++) {
    await model.decode(v); // warm-up of both
    await session.run(feeds());
  }
  for (let i = 0; i < rounds; i++) {
    let start = performance.now();
    await model.decode(v);
    page.push(performance.now() - start);
    start = performance.now();
    const out = await session.run(feeds());
    void (out.x.data as Float32Array)[0]; // the page reads its output too
    bare.push(performance.now() - start);
  }
  await session.release();
  const [p, b] = [median(page), median(bare)];
  const perRound = median(page.map((t, i) => bare[i] / t)); // the two calls of a round see about the same load
  h.record(
    `cpu/${entry.name}/bench_decode_b1`,
    true,
    `page ${p.toFixed(2)} ms (min ${Math.min(...page).toFixed(2)}), onnxruntime-web ${b.toFixed(2)} ms (min ${Math.min(...bare).toFixed(2)}): page speed ${(b / p).toFixed(2)}x of onnxruntime-web (median of per-round ratios ${perRound.toFixed(2)}x), ${rounds} rounds, ${cpuThreads()} thread(s)`,
  );
}

/** The shared checks of a vqvae, ldm or somar model (fixtures.ts), then the repeated call: the same output. */
async function familyChecks(h: Harness, tag: string, model: PageModel, ref: Tensors, manifest: Manifest): Promise<void> {
  let repeat: Repeat;
  if (model.family === "vqvae") repeat = await vqvaeChecks(h, tag, model as VQVAEPageModel, ref);
  else if (model.family === "ldm") repeat = await ldmChecks(h, tag, model as LDMPageModel, ref, manifest);
  else repeat = await somarChecks(h, tag, model as SOMARPageModel, ref);
  await h.check(`${tag}/repeat_identical`, 0, async () => [await repeat.call(), repeat.first]);
}

async function runCpuParityTests(
  options: { base?: string; only?: string | null; bench?: number } = {},
): Promise<{ threads: number; results: Result[] }> {
  const base = options.base ?? "/test-fixtures";
  const h = new Harness();
  // without manifest.json (a folder of exported models, not the fixtures): no references, timings only
  const manifestResponse = await fetch(`${base}/manifest.json`);
  const manifest = manifestResponse.ok ? ((await manifestResponse.json()) as Manifest) : null;
  if (!manifest && !options.bench)
    h.record("cpu/fixtures", false, `no ${base}/manifest.json: pass bench rounds to time a folder without references`);
  const index = (await (await fetch(`${base}/index.json`)).json()) as Entry[];
  const fetchBytes = async (file: OnnxFile): Promise<ArrayBuffer> => {
    const response = await fetch(`${base}/${file.file}`);
    if (!response.ok) throw new Error(`${file.file}: HTTP ${response.status}`);
    return response.arrayBuffer();
  };
  const entries = index.filter((entry) => entry.onnx && (!options.only || entry.name.includes(options.only)));
  if (!entries.length) h.record("cpu/fixtures", false, `no index.json entry with ONNX files in ${base} (run scripts/make_fixtures.py)`);
  for (const entry of entries) {
    const name = entry.name;
    const ref = manifest && (await fetchTensors(`${base}/${name}/reference_fp32.safetensors`));
    let model: PageModel;
    const start = performance.now();
    try {
      model = await onnxModel(entry.onnx!, fetchBytes, name);
    } catch (error) {
      h.record(`cpu/${name}/load`, false, String((error as Error)?.stack ?? error));
      continue;
    }
    h.record(`cpu/${name}/load`, true, `${(performance.now() - start).toFixed(0)} ms`);
    const labels = ref?.has("labels") ? Array.from(get(ref, "labels")) : undefined;
    const sphere = model.family === "sphere" || model.family === "psvae";
    if (manifest && ref && !sphere) await familyChecks(h, `cpu/${name}`, model, ref, manifest);
    else if (manifest && ref && manifest.models[name]?.decoder_only) await decoderOnlyChecks(h, name, model as CpuModel, ref, labels);
    else if (manifest && ref) await fullChecks(h, name, model as CpuModel, ref, labels, manifest);
    if (options.bench && sphere) await benchDecode(h, entry, model as CpuModel, await fetchBytes(entry.onnx!.decoder!), options.bench);
    await model.dispose();
  }
  if (entries.length && manifest) await brokenFileChecks(h, entries[0], fetchBytes);
  return { threads: cpuThreads(), results: h.results };
}

(window as unknown as { runCpuParityTests: typeof runCpuParityTests }).runCpuParityTests = runCpuParityTests;
