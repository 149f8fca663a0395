/**
 * Parity tests run in the browser: single kernels and whole models against PyTorch references written by
 * scripts/make_fixtures.py into test-fixtures/. scripts/browser-test.mjs drives this page in headless
 * Chromium and fails when any case exceeds its tolerance.
 */

import { Gpu, Workspace, encodeSteps, kernelChoice, type Step } from "../../src/gpu";
import * as ops from "../../src/ops";
import { loadModel } from "../../src/family";
import type { WebModel } from "../../src/model";
import { LDMModel, timeFeatures } from "../../src/ldm";
import { SOMARModel } from "../../src/somar";
import { VQVAEModel } from "../../src/vqvae";
import {
  TOLERANCE,
  fetchTensors,
  get,
  ldmChecks,
  maxAbsDiff,
  somarChecks,
  vqvaeChecks,
  type Repeat,
  type Result,
  type Tensors,
} from "./fixtures";

const bitsToBytes = (bits: Float32Array, bytesPer: 1 | 2): Uint8Array => {
  const out = new Uint8Array(bits.length * bytesPer);
  for (let i = 0; i < bits.length; i++) {
    out[bytesPer * i] = bits[i] & 0xff;
    if (bytesPer === 2) out[2 * i + 1] = (bits[i] >> 8) & 0xff;
  }
  return out;
};

class Harness {
  results: Result[] = [];
  private buffers: GPUBuffer[] = [];

  constructor(public gpu: Gpu) {}

  upload(data: Float32Array | Uint8Array): GPUBuffer {
    const bytes = new Uint8Array(Math.max(16, Math.ceil(data.byteLength / 16) * 16));
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const buffer = this.gpu.device.createBuffer({
      size: bytes.byteLength,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    });
    this.gpu.device.queue.writeBuffer(buffer, 0, bytes);
    this.buffers.push(buffer);
    return buffer;
  }

  empty(words: number): GPUBuffer {
    return this.upload(new Float32Array(words));
  }

  matrix(
    tensors: Tensors,
    prefix: string,
    encoding: ops.GpuMatrix["encoding"],
    rows: number,
    cols: number,
    groupSize: number,
  ): ops.GpuMatrix {
    const raw = get(tensors, `${prefix}.${encoding}`);
    const data = encoding === "f32" ? this.upload(raw) : this.upload(bitsToBytes(raw, encoding === "f16" ? 2 : 1));
    const scales =
      encoding === "q8" || encoding === "q4" ? this.upload(bitsToBytes(get(tensors, `${prefix}.${encoding}.scales`), 2)) : null;
    return { encoding, rows, cols, groupSize, data, scales };
  }

  /** Run dispatches and read `words` floats of `out`. */
  async run(steps: Step[], out: GPUBuffer, words: number): Promise<Float32Array> {
    const ws = new Workspace(this.gpu);
    ws.finalize(steps);
    const staging = this.gpu.device.createBuffer({ size: words * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const encoder = this.gpu.device.createCommandEncoder();
    encodeSteps(encoder, steps);
    encoder.copyBufferToBuffer(out, 0, staging, 0, words * 4);
    this.gpu.device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const result = new Float32Array(staging.getMappedRange().slice(0));
    staging.destroy();
    ws.destroy();
    return result;
  }

  async check(name: string, tolerance: number, fn: () => Promise<[Float32Array, Float32Array]>): Promise<void> {
    const start = performance.now();
    try {
      const [actual, expected] = await fn();
      const maxError = maxAbsDiff(actual, expected);
      const detail = actual.length !== expected.length ? `length ${actual.length} != ${expected.length}` : undefined;
      this.results.push({ name, ok: maxError <= tolerance, maxError, tolerance, ms: performance.now() - start, detail });
    } catch (error) {
      this.results.push({
        name,
        ok: false,
        maxError: Infinity,
        tolerance,
        ms: performance.now() - start,
        detail: String((error as Error)?.stack ?? error),
      });
    }
  }

  record(name: string, ok: boolean, detail: string): void {
    this.results.push({ name, ok, maxError: 0, tolerance: 0, ms: 0, detail });
  }

  destroy(): void {
    for (const buffer of this.buffers) buffer.destroy();
    this.buffers = [];
  }
}

const ENCODINGS = ["f32", "f16", "q8", "q4"] as const;

type Case = Record<string, number | string>;

/** The GEMM in every weight encoding: linear layers (scalar and vector paths), convolutions, activations. */
async function gemmTests(h: Harness, t: Tensors, cases: Case[]): Promise<void> {
  for (const c of cases.filter((c) => c.op === "linear")) {
    const [rows, inF, outF, group] = [c.rows, c.in, c.out, c.group_size] as number[];
    for (const enc of ENCODINGS) {
      await h.check(`kernel/${c.tag}_${inF}/${enc}`, TOLERANCE.kernel, async () => {
        const y = h.empty(rows * outF);
        const step = ops.gemm({
          label: "linear",
          rows,
          weight: h.matrix(t, `${c.tag}.w`, enc, outF, inF, group),
          bias: h.upload(get(t, `${c.tag}.b`)),
          input: { layout: "rows", buffer: h.upload(get(t, `${c.tag}.x`)) },
          output: { layout: "rows", buffer: y },
        });
        return [await h.run([step], y, rows * outF), get(t, `${c.tag}.y.${enc}`)];
      });
    }
  }

  const x = get(t, "conv.x");
  for (const c of cases.filter((c) => c.op === "conv")) {
    const [cout, k, stride, pad, up, cin, size, batch] = [c.out, c.kernel, c.stride, c.pad, c.upsample, c.in, c.size, c.batch] as number[];
    const outSize = Math.floor((size * up + 2 * pad - k) / stride) + 1;
    for (const enc of ENCODINGS) {
      await h.check(`kernel/conv_${c.tag}/${enc}`, TOLERANCE.kernel, async () => {
        const words = batch * cout * outSize * outSize;
        const y = h.empty(words);
        const step = ops.gemm({
          label: "conv",
          rows: batch * outSize * outSize,
          weight: h.matrix(t, `conv.${c.tag}.w`, enc, cout, cin * k * k, c.group_size as number),
          bias: h.upload(get(t, `conv.${c.tag}.b`)),
          input: { layout: "conv", buffer: h.upload(x), channels: cin, height: size, width: size, kernel: k, stride, pad, upsample: up },
          output: { layout: "nchw", buffer: y, height: outSize, width: outSize },
        });
        return [await h.run([step], y, words), get(t, `conv.${c.tag}.y.${enc}`)];
      });
    }
  }

  const identity = new Float32Array(40 * 40).map((_, i) => (i % 41 === 0 ? 1 : 0));
  const actX = get(t, "act.x");
  for (const act of ["gelu", "silu", "tanh"] as const) {
    await h.check(`kernel/activation_${act}`, TOLERANCE.kernel, async () => {
      const y = h.empty(actX.length);
      const scale = act === "tanh" ? 4 : 1; // exercise saturation
      const weight: ops.GpuMatrix = {
        encoding: "f32",
        rows: 40,
        cols: 40,
        groupSize: 0,
        data: h.upload(identity.map((v) => v * scale)),
        scales: null,
      };
      const step = ops.gemm({
        label: act,
        rows: 4,
        weight,
        activation: act,
        input: { layout: "rows", buffer: h.upload(actX) },
        output: { layout: "rows", buffer: y },
      });
      return [await h.run([step], y, actX.length), get(t, `act.${act}`)];
    });
  }
}

/** Norms, attention and the sphere projection. */
async function otherKernelTests(h: Harness, t: Tensors, cases: Case[]): Promise<void> {
  await h.check("kernel/rmsnorm", TOLERANCE.kernel, async () => {
    const y = h.empty(240);
    const step = ops.rmsNorm("rms", h.upload(get(t, "rms.x")), y, 6, 40, h.upload(get(t, "rms.w")));
    return [await h.run([step], y, 240), get(t, "rms.y")];
  });

  await h.check("kernel/groupnorm_silu", TOLERANCE.kernel, async () => {
    const words = 2 * 16 * 25;
    const y = h.empty(words);
    const step = ops.channelNorm(
      "gn",
      h.upload(get(t, "gn.x")),
      y,
      2,
      16,
      25,
      { kind: "group", groups: 8, weight: h.upload(get(t, "gn.w")), bias: h.upload(get(t, "gn.b")), eps: 1e-6 },
      { silu: true },
    );
    return [await h.run([step], y, words), get(t, "gn.y")];
  });

  const a = cases.find((c) => c.op === "attention")!;
  const [batch, grid, heads, headDim] = [a.batch, a.grid, a.heads, a.head_dim] as number[];
  await h.check("kernel/attention_qknorm_rope", TOLERANCE.kernel, async () => {
    const { ropeTables } = await import("../../src/config");
    const tokens = grid * grid;
    const words = batch * tokens * heads * headDim;
    const [q, k, v, y] = [h.empty(words), h.empty(words), h.empty(words), h.empty(words)];
    const rope = ropeTables(grid, headDim, 100);
    const steps = [
      ops.qkRope(
        "rope",
        h.upload(get(t, "attn.qkv")),
        q,
        k,
        v,
        h.upload(rope.cos),
        h.upload(rope.sin),
        batch,
        tokens,
        heads,
        headDim,
        h.upload(get(t, "attn.q_norm")),
        h.upload(get(t, "attn.k_norm")),
      ),
      ops.attention("attn", q, k, v, y, batch, tokens, heads, headDim),
    ];
    return [await h.run(steps, y, words), get(t, "attn.y")];
  });

  const sigma = cases.find((c) => c.op === "sphere")!.sigma as number;
  await h.check("kernel/sphere_project", TOLERANCE.kernel, async () => {
    const y = h.empty(150);
    return [await h.run([ops.sphereProject("f", h.upload(get(t, "sphere.z")), y, 3, 50)], y, 150), get(t, "sphere.f")];
  });
  await h.check("kernel/sphere_renoise", TOLERANCE.kernel, async () => {
    const y = h.empty(150);
    const step = ops.sphereProject("renoise", h.upload(get(t, "sphere.z")), y, 3, 50, { buffer: h.upload(get(t, "sphere.e")), sigma });
    return [await h.run([step], y, 150), get(t, "sphere.renoised")];
  });
  await h.check("kernel/sphere_project_unit", TOLERANCE.kernel, async () => {
    const y = h.empty(150);
    return [await h.run([ops.sphereProject("unit", h.upload(get(t, "sphere.z")), y, 3, 50, undefined, 1)], y, 150), get(t, "sphere.unit")];
  });
}

interface Manifest {
  guidance: number;
  recon_angle: number;
  ldm_steps: number;
  ldm_eta: number;
  models: Record<
    string,
    { config: { family?: string; backbone?: string; num_classes: number }; decoder_only?: boolean; modes: Record<string, unknown> }
  >;
}

/** A 1-D signal psvae: the page refuses it at load with the reason (no reference outputs exist). */
async function unsupportedModelTest(h: Harness, base: string, name: string, mode: string): Promise<void> {
  const buffer = await (await fetch(`${base}/${name}/model_${mode}.safetensors`)).arrayBuffer();
  try {
    await (await loadModel(h.gpu, buffer, `${name}/model_${mode}`)).dispose();
    h.record(`model/${name}/${mode}/refused`, false, "a 1-D signal model loaded");
  } catch (error) {
    const message = String((error as Error)?.message ?? error);
    h.record(`model/${name}/${mode}/refused`, /1-D signal models .* are not shown in this page/.test(message), message);
  }
}

async function modelTests(h: Harness, base: string, manifest: Manifest, only: string | null): Promise<void> {
  for (const [name, info] of Object.entries(manifest.models)) {
    for (const mode of Object.keys(info.modes)) {
      const tag = `${name}/${mode}`;
      if (only && !tag.includes(only)) continue;
      if (info.config.backbone === "conv1d") {
        await unsupportedModelTest(h, base, name, mode);
        continue;
      }
      const ref = await fetchTensors(`${base}/${name}/reference_${mode}.safetensors`);
      const buffer = await (await fetch(`${base}/${name}/model_${mode}.safetensors`)).arrayBuffer();
      let model: WebModel;
      try {
        model = await loadModel(h.gpu, buffer, `${name}/model_${mode}`);
      } catch (error) {
        h.record(`model/${tag}/load`, false, String((error as Error)?.stack ?? error));
        continue;
      }
      if (model instanceof LDMModel) await timeFeatureCheck(h, tag, model, ref);
      const labels = ref.has("labels") ? Array.from(get(ref, "labels")) : undefined;
      const family = familyChecks(h, `model/${tag}`, model, ref, manifest);
      if (family) await reuseChecks(h, tag, model, await family);
      else if (info.decoder_only) await decoderOnlyChecks(h, tag, model, ref, labels);
      else await modelChecks(h, tag, model, ref, labels, manifest);
      weightsCheck(h, tag, model);
      await model.dispose();
    }
  }
}

/** The matrices ran as kernelChoice.weights says: widened to float32 at load ("expanded", fp16/q8/q4 files), or as stored. */
function weightsCheck(h: Harness, tag: string, model: WebModel): void {
  const expanded = model.weights.expanded;
  const want = kernelChoice.weights === "expanded" && model.mode !== "fp32";
  h.record(`model/${tag}/weights_${kernelChoice.weights}`, want ? expanded > 0 : expanded === 0, `${expanded} matrices expanded`);
}

/** encode, decode, sample (3 steps, guided, 1 step for psvae), reconstruct; a repeated call reuses everything. */
async function modelChecks(h: Harness, tag: string, model: WebModel, ref: Tensors, labels: number[] | undefined, manifest: Manifest) {
  const sphere = model.family === "sphere"; // psvae: no re-noising, nothing but the prior's Gaussian to pass
  await h.check(`model/${tag}/encode`, TOLERANCE.model, async () => [await model.encode(get(ref, "images"), labels), get(ref, "encode")]);
  await h.check(`model/${tag}/decode`, TOLERANCE.model, async () => [await model.decode(get(ref, "latents"), labels), get(ref, "decode")]);
  const sampleArgs = { steps: 3, noise: get(ref, "noise"), renoise: sphere ? get(ref, "renoise") : undefined, labels };
  let first: Float32Array = new Float32Array();
  await h.check(`model/${tag}/sample_3_steps`, TOLERANCE.chained, async () => [
    (first = await model.sample(2, sampleArgs)),
    get(ref, "sample"),
  ]);
  if (ref.has("sample_1_step")) {
    await h.check(`model/${tag}/sample_1_step`, TOLERANCE.model, async () => [
      await model.sample(2, { ...sampleArgs, steps: 1 }),
      get(ref, "sample_1_step"),
    ]);
  }
  if (ref.has("sample_guided")) {
    const guidedArgs = { ...sampleArgs, steps: 2, guidance: manifest.guidance };
    await h.check(`model/${tag}/sample_guided`, TOLERANCE.chained, async () => [
      await model.sample(2, guidedArgs),
      get(ref, "sample_guided"),
    ]);
  }
  const reconArgs = sphere
    ? { steps: 2, noiseAngle: manifest.recon_angle, renoise: get(ref, "recon_renoise"), labels }
    : { steps: 2, labels };
  await h.check(`model/${tag}/reconstruct_2_steps`, TOLERANCE.chained, async () => {
    const out = await model.reconstruct(get(ref, "images"), reconArgs);
    return [out.images, get(ref, "reconstruct")];
  });
  await reuseChecks(h, tag, model, { call: () => model.sample(2, sampleArgs), first });
}

/** A diffusion model's time features (the WebGPU UNet's input; the CPU path computes them in its ONNX graph). */
async function timeFeatureCheck(h: Harness, tag: string, model: LDMModel, ref: Tensors) {
  if (model.config.kind === "autoencoder") return;
  const width = model.config.unet_width;
  await h.check(`model/${tag}/time_features`, TOLERANCE.model, async () => [
    timeFeatures(get(ref, "t")[0], width),
    get(ref, "time_features").slice(0, width),
  ]);
}

/** A file with the decoder alone: decode and 1-step samples match; encoding calls fail saying why. */
async function decoderOnlyChecks(h: Harness, tag: string, model: WebModel, ref: Tensors, labels: number[] | undefined) {
  h.record(`model/${tag}/no_encoder`, !model.canEncode, `canEncode ${model.canEncode}`);
  await h.check(`model/${tag}/decode`, TOLERANCE.model, async () => [await model.decode(get(ref, "latents"), labels), get(ref, "decode")]);
  const sampleArgs = { steps: 1, noise: get(ref, "noise"), labels };
  let first: Float32Array = new Float32Array();
  await h.check(`model/${tag}/sample_1_step`, TOLERANCE.model, async () => [
    (first = await model.sample(2, sampleArgs)),
    get(ref, "sample_1_step"),
  ]);
  const refusals: [string, () => Promise<unknown>][] = [
    ["encode", () => model.encode(get(ref, "images"), labels)],
    ["sample_3_steps", () => model.sample(2, { ...sampleArgs, steps: 3 })],
    ["reconstruct", () => model.reconstruct(get(ref, "images"), { labels })],
  ];
  for (const [what, call] of refusals) {
    const message = await call().then(
      () => "no error",
      (error) => String((error as Error)?.message ?? error),
    );
    h.record(`model/${tag}/${what}_refused`, /holds no encoder/.test(message), message);
  }
  await reuseChecks(h, tag, model, { call: () => model.sample(2, sampleArgs), first });
}

/** The checks of a vqvae, ldm or somar model (shared with the CPU path's harness), or null for another family. */
function familyChecks(h: Harness, tag: string, model: WebModel, ref: Tensors, manifest: Manifest): Promise<Repeat> | null {
  if (model instanceof VQVAEModel) return vqvaeChecks(h, tag, model, ref);
  if (model instanceof LDMModel) return ldmChecks(h, tag, model, ref, manifest);
  if (model instanceof SOMARModel) return somarChecks(h, tag, model, ref);
  return null;
}

/** The same call again: bit-identical, with no new buffers and no new pipelines. */
async function reuseChecks(h: Harness, tag: string, model: WebModel, { call, first }: Repeat) {
  const bytesBefore = model.gpuBytes;
  const pipelinesBefore = h.gpu.pipelineCount;
  await h.check(`model/${tag}/repeat_identical`, 0, async () => [await call(), first]);
  const reused = model.gpuBytes === bytesBefore && h.gpu.pipelineCount === pipelinesBefore;
  h.record(
    `model/${tag}/buffers_reused`,
    reused,
    `gpu bytes ${bytesBefore} -> ${model.gpuBytes}, pipelines ${pipelinesBefore} -> ${h.gpu.pipelineCount}`,
  );
}

async function runParityTests(
  options: { base?: string; only?: string | null; kernels?: boolean } = {},
): Promise<{ adapter: unknown; results: Result[] }> {
  const base = options.base ?? "/test-fixtures";
  const gpu = await Gpu.create();
  const h = new Harness(gpu);
  let errors = "";
  gpu.device.addEventListener("uncapturederror", (event) => {
    errors += `${(event as GPUUncapturedErrorEvent).error.message}\n`;
  });
  const manifest = (await (await fetch(`${base}/manifest.json`)).json()) as Manifest;
  if (options.kernels !== false && !options.only) {
    const tensors = await fetchTensors(`${base}/kernels.safetensors`);
    const cases = (await (await fetch(`${base}/kernels.json`)).json()) as Case[];
    await gemmTests(h, tensors, cases);
    await otherKernelTests(h, tensors, cases);
  }
  await modelTests(h, base, manifest, options.only ?? null);
  if (errors) h.record("webgpu/validation", false, errors);
  h.destroy();
  gpu.destroy();
  return { adapter: { ...gpu.adapter, ...kernelChoice }, results: h.results };
}

(window as unknown as { runParityTests: typeof runParityTests }).runParityTests = runParityTests;
