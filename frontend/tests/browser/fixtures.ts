/** What both browser parity harnesses (runner.ts: WebGPU, cpu_runner.ts: the CPU path) share: results, tolerances,
 * the PyTorch reference tensors of scripts/make_fixtures.py, how outputs are compared with them, and the checks of
 * the vqvae, ldm and somar families, which run on either backend. */

import { parseSafetensors, tensorToFloat32 } from "../../src/format";
import type { LDMPageModel, LDMSampleOptions } from "../../src/ldm_core";
import type { SOMARPageModel } from "../../src/somar_core";
import type { VQVAEPageModel } from "../../src/vqvae_core";

export interface Result {
  name: string;
  ok: boolean;
  maxError: number;
  tolerance: number;
  ms: number;
  detail?: string;
}

export type Tensors = Map<string, Float32Array>;

// Tolerances (max absolute error). The references are PyTorch float32 on the DEQUANTIZED weights of each
// file, so quantization error is not in them: what is left is float32 summation order and our erf/exp.
// Measured on SwiftShader: kernels <= 1.2e-6, one pass <= 8e-6, chained <= 4.3e-5; the bounds leave ~10x.
export const TOLERANCE = {
  kernel: 1e-5, // single ops on O(1) values
  model: 1e-4, // one encoder or decoder pass (outputs in [-1, 1], latents O(1))
  chained: 5e-4, // sample (3 steps, guided 2) / reconstruct (2 steps): errors grow through re-encoding
};

export async function fetchTensors(url: string): Promise<Tensors> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`fixture ${url}: HTTP ${response.status} (run scripts/make_fixtures.py)`);
  const file = parseSafetensors(await response.arrayBuffer(), url);
  return new Map([...file.tensors].map(([name, entry]) => [name, tensorToFloat32(entry)]));
}

export function get(tensors: Tensors, name: string): Float32Array {
  const value = tensors.get(name);
  if (!value) throw new Error(`fixture lacks tensor '${name}'`);
  return value;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

/** The message of a call that must fail, or "no error". */
export function refusal(call: () => Promise<unknown>): Promise<string> {
  return call().then(
    () => "no error",
    (error) => String((error as Error)?.message ?? error),
  );
}

// ---- family checks both harnesses run (the WebGPU models and the CPU path implement the same interfaces) --------

/** What a harness records. */
export interface Checker {
  check(name: string, tolerance: number, fn: () => Promise<[Float32Array, Float32Array]>): Promise<void>;
  record(name: string, ok: boolean, detail: string): void;
}

/** The manifest's settings of the diffusion references. */
export interface DiffusionSettings {
  guidance: number;
  ldm_steps: number;
}

/** A call a harness may repeat (WebGPU: bit-identical, no new buffers), with its first output. */
export interface Repeat {
  call: () => Promise<Float32Array>;
  first: Float32Array;
}

/**
 * Token indices equal PyTorch's except where its two nearest codes are closer than this (squared distance):
 * there float rounding may pick either one. Measured: no such position in the fixtures.
 */
const TIE_MARGIN = 1e-4;

/** Positions whose token differs from the reference's, and whether each is a near-tie. */
function tokenMismatches(actual: Float32Array, expected: Float32Array, margins: Float32Array): { count: number; ties: number } {
  let count = 0;
  let ties = 0;
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] === expected[i]) continue;
    count++;
    if (margins[i] < TIE_MARGIN) ties++;
  }
  return { count, ties };
}

/** Tokens equal to the reference's but at near-ties; returns how many differ. */
function tokenCheck(h: Checker, tag: string, encoded: Float32Array, ref: Tensors): number {
  const tokens = get(ref, "tokens");
  const { count, ties } = tokenMismatches(encoded, tokens, get(ref, "margins"));
  h.record(`${tag}/tokens`, count === ties && encoded.length === tokens.length, `${count} of ${tokens.length} differ (${ties} near-ties)`);
  return count;
}

/** A tokenizer: tokens, decode of tokens, reconstruction through the tokens, token map; sampling refused. */
export async function vqvaeChecks(h: Checker, tag: string, model: VQVAEPageModel, ref: Tensors): Promise<Repeat> {
  const differ = tokenCheck(h, tag, await model.encode(get(ref, "images")), ref);
  const call = () => model.decode(get(ref, "random_tokens"));
  let first: Float32Array = new Float32Array();
  await h.check(`${tag}/decode_tokens`, TOLERANCE.model, async () => [(first = await call()), get(ref, "decode")]);
  await h.check(`${tag}/reconstruct`, differ ? Infinity : TOLERANCE.model, async () => {
    const out = await model.reconstruct(get(ref, "images"));
    return [out.images, get(ref, "reconstruct")];
  });
  await h.check(`${tag}/token_map`, TOLERANCE.model, async () => [model.tokenMap(get(ref, "tokens")), get(ref, "token_map")]);
  const message = await refusal(() => model.sample(1));
  h.record(`${tag}/sample_refused`, !model.canSample && /no prior over its tokens/.test(message), message);
  return { call, first };
}

/**
 * A somar codebook (or a prior's): the latent maps, tokens (best-matching units of the maps), the decode of a given
 * token grid, the reconstruction through the tokens and the atlas; sampling refused.
 */
export async function somarChecks(h: Checker, tag: string, model: SOMARPageModel, ref: Tensors): Promise<Repeat> {
  await h.check(`${tag}/latent`, TOLERANCE.model, async () => [await model.encode(get(ref, "images")), get(ref, "latent")]);
  const differ = tokenCheck(h, tag, Float32Array.from(await model.tokenize(get(ref, "images"))), ref);
  const call = () => model.decodeTokens(get(ref, "random_tokens"));
  let first: Float32Array = new Float32Array();
  await h.check(`${tag}/decode_tokens`, TOLERANCE.model, async () => [(first = await call()), get(ref, "decode")]);
  await h.check(`${tag}/reconstruct`, differ ? Infinity : TOLERANCE.model, async () => [
    (await model.reconstruct(get(ref, "images"))).images,
    get(ref, "reconstruct"),
  ]);
  await h.check(`${tag}/atlas`, TOLERANCE.model, async () => [(await model.atlas()).picture, get(ref, "atlas")]);
  const message = await refusal(() => model.sample(1));
  h.record(`${tag}/sample_refused`, !model.canSample && /somar_prior_\* model samples|does not run in this page/.test(message), message);
  return { call, first };
}

/** An ldm autoencoder: the posterior mean, decode of latents, reconstruction; sampling refused. */
async function ldmAutoencoderChecks(h: Checker, tag: string, model: LDMPageModel, ref: Tensors): Promise<Repeat> {
  await h.check(`${tag}/encode_mean`, TOLERANCE.model, async () => [await model.encode(get(ref, "images")), get(ref, "encode")]);
  const call = () => model.decode(get(ref, "latents"));
  let first: Float32Array = new Float32Array();
  await h.check(`${tag}/decode`, TOLERANCE.model, async () => [(first = await call()), get(ref, "decode")]);
  await h.check(`${tag}/reconstruct`, TOLERANCE.model, async () => [
    (await model.reconstruct(get(ref, "images"))).images,
    get(ref, "reconstruct"),
  ]);
  const message = await refusal(() => model.sample(1));
  h.record(`${tag}/sample_refused`, !model.canSample && /stage-1 autoencoder/.test(message), message);
  return { call, first };
}

/** A 3-step run of model.sample given the x_T and step noise PyTorch's generator drew for reference `name`. */
async function replayedSample(model: LDMPageModel, ref: Tensors, name: string, options: LDMSampleOptions, steps: number) {
  const noise = get(ref, `${name}_noise`);
  const perStep = noise.length / (steps - 1);
  const stepNoise = Array.from({ length: steps - 1 }, (_, i) => noise.slice(i * perStep, (i + 1) * perStep));
  return model.sample(2, { ...options, steps, noise: get(ref, `${name}_x_T`), stepNoise });
}

/**
 * A diffusion model: one UNet pass (with a class and the null class on a conditional UNet), one DDIM step, a 3-step
 * DDIM run (η = 0) with its x̂_0 images; the stochastic runs PyTorch made (DDPM, DDIM η > 0) given its x_T and step
 * noise; a conditional UNet's guided pass; the autoencoder's round trip, or a pixel model's refusal.
 */
async function ldmDiffusionChecks(h: Checker, tag: string, model: LDMPageModel, ref: Tensors, settings: DiffusionSettings) {
  const x = get(ref, "x");
  const t = get(ref, "t")[0];
  const labels = ref.has("labels") ? Array.from(get(ref, "labels")) : undefined;
  const call = () => model.denoise(x, t, { labels });
  let first: Float32Array = new Float32Array();
  await h.check(`${tag}/unet`, TOLERANCE.model, async () => [(first = await call()), get(ref, "unet")]);
  if (labels) {
    await h.check(`${tag}/unet_guided`, TOLERANCE.model, async () => [
      await model.denoise(x, t, { labels, guidance: settings.guidance }),
      get(ref, "unet_guided"),
    ]);
  }
  await h.check(`${tag}/ddim_step`, TOLERANCE.model, async () => [await model.ddimStep(x, 10, 0), get(ref, "ddim_step")]);
  const steps: Float32Array[] = [];
  const collect = (images: Float32Array): void => void steps.push(images);
  await h.check(`${tag}/ddim_3_steps_previews`, TOLERANCE.chained, async () => {
    const final = await model.sample(2, { steps: 3, noise: x, sampler: "ddim", eta: 0, onStep: collect });
    const all = new Float32Array(steps.reduce((n, s) => n + s.length, 0));
    steps.forEach((s, i) => all.set(s, i * s.length));
    if (maxAbsDiff(final, steps[steps.length - 1]) !== 0) throw new Error("the sample is not the last preview");
    return [all, get(ref, "sample_steps")];
  });
  const stochastic: [string, LDMSampleOptions][] = [
    ["sample_ddpm", labels ? { labels, guidance: settings.guidance } : { sampler: "ddpm" }], // conditional: the file's default
    ["sample_ddim_eta", { labels, sampler: "ddim" }], // η: the file's default
  ];
  for (const [name, options] of stochastic.filter(([name]) => ref.has(name))) {
    await h.check(`${tag}/${name}`, TOLERANCE.chained, async () => [
      await replayedSample(model, ref, name, options, settings.ldm_steps),
      get(ref, name),
    ]);
  }
  if (model.canEncode) {
    await h.check(`${tag}/reconstruct`, TOLERANCE.model, async () => [
      (await model.reconstruct(get(ref, "images"))).images,
      get(ref, "reconstruct"),
    ]);
  } else {
    const message = await refusal(() => model.reconstruct(new Float32Array(model.imageSize)));
    h.record(`${tag}/reconstruct_refused`, /cannot reconstruct/.test(message), message);
  }
  return { call, first };
}

/** An ldm model of any kind. */
export function ldmChecks(h: Checker, tag: string, model: LDMPageModel, ref: Tensors, settings: DiffusionSettings): Promise<Repeat> {
  return model.config.kind === "autoencoder" ? ldmAutoencoderChecks(h, tag, model, ref) : ldmDiffusionChecks(h, tag, model, ref, settings);
}
