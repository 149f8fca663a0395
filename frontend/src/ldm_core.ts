/**
 * What both backends share of a latent-diffusion model (models/ldm.py): the sampling loop of DiffusionModel.sample
 * (the plan of a run, each step's update, guidance on a doubled batch, onStep previews, per-image seed streams) over
 * two injected passes: the UNet's raw output on a batch of x_t, and the frozen autoencoder's decoder. src/ldm.ts runs
 * those passes on WebGPU, src/cpu_families.ts on ONNX sessions; the math of each step is src/diffusion.ts's.
 */

import { ldmAutoencoder, ldmLatentSide, type LDMConfig } from "./config";
import { alphasBar, ddimStep, ddimTimesteps, ddpmStep, guide, predictX0Eps, SAMPLERS, stepSigma, type Sampler } from "./diffusion";
import type { CommonSampleOptions, PageModel, Timings } from "./model";
import { Random } from "./rng";

/** Why an autoencoder file has no Generate button (KLAutoencoder.cannot_sample_reason). */
export const AE_CANNOT_SAMPLE = "a stage-1 autoencoder: its ldm_* stage-2 model samples";
export const PIXEL_CANNOT_RECONSTRUCT = "a pixel-space diffusion model has no encoder: it samples but cannot reconstruct";
export const DEFAULT_STEPS = 25;
export const LDM_KINDS = ["autoencoder", "latent", "pixel"] as const;

/**
 * Sampling options of a diffusion model (DiffusionModel.sample): `steps` sampler steps, `labels` and `guidance` w
 * (ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅); 1 = off) of a conditional UNet; `noise` is x_T. Each image draws x_T and its step noise
 * from its own stream of `seed` (an image does not depend on its batch); `stepNoise` replaces those draws: one array
 * of n * latentSize values per step with σ > 0, in order. `onStep` sees x̂_0 decoded after each step.
 */
export interface LDMSampleOptions extends CommonSampleOptions {
  sampler?: Sampler; // default: the file's config.sampler (ddim in files written before it existed)
  eta?: number; // DDIM η in [0, 1] (ignored by DDPM); default: the file's config.eta (0 in older files)
  stepNoise?: Float32Array[];
  onStep?: (images: Float32Array, step: number, steps: number) => void | Promise<void>;
}

/** One UNet pass's conditioning: a class per image (null: an unconditional UNet) and the guidance w. */
export interface Conditioning {
  labels?: number[];
  guidance?: number;
}

/** What the page uses of an ldm model on either backend (LDMModel on WebGPU, CpuLDMModel on the CPU). */
export interface LDMPageModel extends PageModel {
  readonly family: "ldm";
  readonly config: LDMConfig;
  readonly sampler: Sampler; // the file's default sampler
  readonly eta: number; // the file's default DDIM η
  sample(n: number, options?: LDMSampleOptions): Promise<Float32Array>;
  denoise(x: Float32Array, t: number, conditioning?: Conditioning): Promise<Float32Array>;
  ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array>;
}

/** The two passes a backend runs for the sampler. */
export interface DiffusionPasses {
  /** The UNet's raw output (eps / v) on x_t (rows of latentSize values) at timestep t, a class per row or null. */
  unet(x: Float32Array, t: number, labels: Uint32Array | null): Promise<Float32Array>;
  /** Images of unscaled latents z (n, c, h, w) by the frozen autoencoder's decoder (latent kind only). */
  decodeLatents(z: Float32Array, n: number): Promise<Float32Array>;
}

/** The settled settings of one sampling run. */
interface SamplingPlan {
  times: number[];
  sampler: Sampler;
  eta: number;
  labels: Uint32Array | null;
  guidance: number;
  x: Float32Array; // x_T
  nextNoise: () => Float32Array; // z of the next step with σ > 0
}

/** Why a sampler and η cannot run (models/diffusion.py SAMPLERS, LDMConfig's η range), or null. */
export function samplerProblem(sampler: string, eta: number): string | null {
  if (!(SAMPLERS as readonly string[]).includes(sampler)) return `unknown sampler '${sampler}': use one of ${SAMPLERS.join(", ")}`;
  if (!(eta >= 0 && eta <= 1)) return `DDIM η must be in [0, 1], got ${eta}`;
  return null;
}

/** Why the ldm config of file `source` cannot run (unknown kind, bad class count, sampler defaults), or null. */
export function ldmConfigProblem(cfg: LDMConfig, source: string): string | null {
  if (!(LDM_KINDS as readonly string[]).includes(cfg.kind)) return `'${source}' has unknown ldm kind '${cfg.kind}'`;
  if (!Number.isInteger(cfg.num_classes) || cfg.num_classes < 0) {
    return `'${source}' has num_classes ${cfg.num_classes}; expected an integer >= 0`;
  }
  const problem = samplerProblem(cfg.sampler ?? "ddim", cfg.eta ?? 0);
  return problem && `'${source}': ${problem}`;
}

/** What the UNet denoises (latent, pixel) or the autoencoder encodes: (C, h, w). */
export function ldmLatentShape(cfg: LDMConfig): number[] {
  const ae = ldmAutoencoder(cfg);
  return ae ? [ae.latent_channels, ldmLatentSide(ae), ldmLatentSide(ae)] : [cfg.in_channels, cfg.image_size, cfg.image_size];
}

/** The sampler of an ldm model over a backend's passes (DiffusionModel.sample, guided_denoiser). */
export class DiffusionSampler {
  readonly latentSize: number;
  readonly alphasBar: Float64Array;
  readonly sampler: Sampler;
  readonly eta: number;

  constructor(
    readonly config: LDMConfig,
    readonly latentScale: number, // latent kind: x = z * latent_scale
    private passes: DiffusionPasses,
  ) {
    this.latentSize = ldmLatentShape(config).reduce((a, b) => a * b, 1);
    this.alphasBar = alphasBar(config);
    this.sampler = config.sampler ?? "ddim";
    this.eta = config.eta ?? 0;
  }

  /** The class of each of n images (default: the null class), or null for an unconditional UNet. */
  labelsOf(n: number, labels: number[] | undefined): Uint32Array | null {
    const nullClass = this.config.num_classes;
    if (nullClass === 0) {
      if (labels?.length) throw new Error("this model is unconditional (num_classes=0); do not pass class labels");
      return null;
    }
    if (labels && labels.length !== n) throw new Error(`${labels.length} labels for ${n} images`);
    const out = new Uint32Array(n).fill(nullClass);
    labels?.forEach((label, i) => {
      if (!Number.isInteger(label) || label < 0 || label > nullClass) throw new Error(`label ${label} out of range 0..${nullClass}`);
      out[i] = label;
    });
    return out;
  }

  /**
   * The denoiser's output on x_t (n * latentSize values) at timestep t (guided_denoiser): one UNet pass, or with
   * labels and w ≠ 1 on a conditional UNet, ε̂_∅ + w (ε̂_c − ε̂_∅) from one pass of the doubled batch [cond; null].
   */
  denoise(x: Float32Array, t: number, conditioning: Conditioning = {}): Promise<Float32Array> {
    const n = x.length / this.latentSize;
    if (!Number.isInteger(n) || n < 1) throw new Error(`x_t has ${x.length} values, not a multiple of ${this.latentSize}`);
    return this.output(x, t, this.labelsOf(n, conditioning.labels), conditioning.guidance ?? 1);
  }

  /** One pass of n rows, or of 2n rows [x; x] with [labels; null] combined by the guidance. */
  private async output(x: Float32Array, t: number, labels: Uint32Array | null, guidance: number): Promise<Float32Array> {
    if (!(guidance >= 0)) throw new Error(`the guidance scale must be >= 0 (1 = off), got ${guidance}`);
    if (!labels || guidance === 1) return this.passes.unet(x, t, labels);
    const both = new Float32Array(2 * x.length);
    both.set(x);
    both.set(x, x.length);
    const pairs = new Uint32Array(2 * labels.length).fill(this.config.num_classes);
    pairs.set(labels);
    return guide(await this.passes.unet(both, t, pairs), guidance);
  }

  /** Images of denoised values x̂_0: latents divided by latent_scale and decoded, or pixels clamped to [-1, 1]. */
  toImages(x0: Float32Array, n: number): Promise<Float32Array> {
    if (this.config.kind === "pixel") return Promise.resolve(x0.map((v) => Math.min(Math.max(v, -1), 1)));
    const scale = this.latentScale;
    return this.passes.decodeLatents(scale === 1 ? x0 : x0.map((v) => v / scale), n);
  }

  /** The times, sampler, η, labels, guidance, x_T and step noise of a run of n images (defaults from the file). */
  private plan(n: number, options: LDMSampleOptions): SamplingPlan {
    const sampler = options.sampler ?? this.sampler;
    const eta = options.eta ?? this.eta;
    const problem = samplerProblem(sampler, eta);
    if (problem) throw new Error(problem);
    const times = ddimTimesteps(this.config.timesteps, options.steps ?? DEFAULT_STEPS);
    const labels = this.labelsOf(n, options.labels);
    const seed = options.seed ?? Math.floor(Math.random() * 2 ** 32);
    const randoms = Array.from({ length: n }, (_, i) => new Random(seed, i));
    const draw = (): Float32Array => {
      const out = new Float32Array(n * this.latentSize);
      randoms.forEach((random, i) => out.set(random.gaussians(this.latentSize), i * this.latentSize));
      return out;
    };
    const x = options.noise ?? draw();
    if (x.length !== n * this.latentSize) throw new Error(`noise must hold n * latentSize = ${n * this.latentSize} values`);
    const injected = options.stepNoise;
    let used = 0;
    const nextNoise = (): Float32Array => {
      if (!injected) return draw();
      if (used === injected.length) throw new Error(`stepNoise holds ${injected.length} arrays; this run needs more`);
      return injected[used++];
    };
    return { times, sampler, eta, labels, guidance: options.guidance ?? 1, x, nextNoise };
  }

  /** x_prev from x_t at plan.times[index]: predict (x̂_0, ε̂) (x̂_0 clamped on pixels, ε̂ recomputed), then step. */
  private async step(plan: SamplingPlan, x: Float32Array, index: number): Promise<{ x: Float32Array; x0: Float32Array }> {
    const [t, prev] = [plan.times[index], plan.times[index + 1]];
    const [alphaBar, alphaBarPrev] = [this.alphasBar[t], this.alphasBar[prev]];
    const output = await this.output(x, t, plan.labels, plan.guidance);
    const clip = this.config.kind === "pixel" ? 1 : null;
    const { x0, eps } = predictX0Eps(x, output, alphaBar, this.config.prediction, clip);
    const sigma = stepSigma(plan.sampler, alphaBar, alphaBarPrev, plan.eta);
    const noise = sigma > 0 ? plan.nextNoise() : null;
    if (plan.sampler === "ddpm") return { x: ddpmStep(x, x0, alphaBar, alphaBarPrev, noise), x0 };
    return { x: ddimStep(x0, eps, alphaBarPrev, sigma, noise), x0 };
  }

  /**
   * n images by DDIM or DDPM from x_T ~ N(0, I) in `steps` steps (default 25; the sampler and η default to the
   * file's); onStep sees each step's x̂_0 decoded (the last step's: the sample). Timings: the whole run as decode.
   */
  async sample(n: number, options: LDMSampleOptions = {}): Promise<{ images: Float32Array; timings: Timings }> {
    const plan = this.plan(n, options);
    const steps = plan.times.length - 1;
    let x = plan.x;
    const start = performance.now();
    let images: Float32Array = new Float32Array(0);
    for (let i = 0; i < steps; i++) {
      const next = await this.step(plan, x, i);
      x = next.x;
      if (options.onStep || i === steps - 1) images = await this.toImages(i === steps - 1 ? x : next.x0, n);
      await options.onStep?.(images, i + 1, steps);
    }
    const total = performance.now() - start;
    return { images, timings: { encodeMs: 0, decodeMs: total, totalMs: total } };
  }

  /** One DDIM step (η = 0, no labels) from x_t at times[index] to times[index + 1] of a `steps`-step run: x_prev. */
  async ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array> {
    const n = x.length / this.latentSize;
    if (!Number.isInteger(n) || n < 1) throw new Error(`x_t has ${x.length} values, not a multiple of ${this.latentSize}`);
    const plan = this.plan(n, { steps, noise: x, sampler: "ddim", eta: 0 });
    return (await this.step(plan, x, index)).x;
  }
}
