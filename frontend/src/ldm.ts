/**
 * A latent-diffusion model (models/ldm.py) on WebGPU. kind "autoencoder" (ldm_ae_*): encode gives the posterior
 * mean, decode maps latents to images, reconstruct is decode(mean); it cannot sample. kind "latent" (ldm_*): the
 * UNet denoises scaled latents with DDIM (any η) or DDPM on the page (DiffusionModel.sample), x̂_0 / latent_scale
 * is decoded by the frozen autoencoder; reconstruct is the autoencoder's round trip. kind "pixel" (ddpm_*): the
 * same loop on pixels (x̂_0 clamped to [-1, 1], ε̂ recomputed); it cannot reconstruct. A class-conditional UNet
 * takes a class per image (default: the null class) and classifier-free guidance w. The UNet runs on the GPU, the
 * sampler's update on the CPU.
 */

import { ldmAutoencoder, ldmLatentSide, type LDMConfig } from "./config";
import { alphasBar, ddimStep, ddimTimesteps, ddpmStep, guide, predictX0Eps, SAMPLERS, stepSigma, type Sampler } from "./diffusion";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import { Workspace, encodeSteps, type BufferRef, type Gpu, type Step } from "./gpu";
import type { GraphIO } from "./graph";
import { buildAutoencoderGraphs, buildUnetGraph } from "./graph_ldm";
import { WebModel, type CommonSampleOptions, type Graphs, type Timings } from "./model";
import { Random } from "./rng";

/** Why an autoencoder file has no Generate button (KLAutoencoder.cannot_sample_reason). */
export const AE_CANNOT_SAMPLE = "a stage-1 autoencoder: its ldm_* stage-2 model samples";
export const PIXEL_CANNOT_RECONSTRUCT = "a pixel-space diffusion model has no encoder: it samples but cannot reconstruct";
export const DEFAULT_STEPS = 25;

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

/**
 * The sinusoidal time features (width) of timestep t (models/ldm.py timestep_embedding): [cos(t ω_k), sin(t ω_k)]
 * with ω_k = 10000^(−k / (width / 2)), computed in float32 steps as torch does.
 */
export function timeFeatures(t: number, width: number): Float32Array {
  const half = width / 2;
  const out = new Float32Array(width);
  const logPeriod = Math.fround(-Math.log(10000));
  for (let k = 0; k < half; k++) {
    const omega = Math.fround(Math.exp(Math.fround(Math.fround(logPeriod * k) / half)));
    const angle = Math.fround(t * omega);
    out[k] = Math.cos(angle);
    out[half + k] = Math.sin(angle);
  }
  return out;
}

/** Buffers and the steps of one UNet pass for a batch size. */
class UnetSession {
  readonly ws: Workspace;
  readonly x: BufferRef;
  readonly time: BufferRef;
  readonly labels: BufferRef | null;
  readonly output: BufferRef;
  readonly steps: Step[];
  private staging: GPUBuffer;

  constructor(
    private gpu: Gpu,
    model: LDMModel,
    readonly batch: number,
  ) {
    this.ws = new Workspace(gpu);
    const words = batch * model.latentSize;
    this.x = this.ws.ref("unet_x", words);
    this.time = this.ws.ref("unet_time", batch * model.config.unet_width);
    this.labels = model.config.num_classes > 0 ? this.ws.ref("unet_labels", batch) : null;
    this.output = this.ws.ref("unet_out", words);
    this.steps = buildUnetGraph(model.config, model.weights, this.ws, batch, model.latentShape[1], this);
    this.ws.finalize(this.steps);
    this.staging = this.ws.buffer(words * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, "unet_staging");
  }

  /** The UNet's output for x_t (batch values) at timestep t, with a class per row on a conditional UNet. */
  async run(x: Float32Array, t: number, width: number, labels: Uint32Array | null): Promise<Float32Array> {
    const features = timeFeatures(t, width);
    const times = new Float32Array(this.batch * width);
    for (let b = 0; b < this.batch; b++) times.set(features, b * width);
    this.gpu.device.queue.writeBuffer(this.x.gpu, 0, x as Float32Array<ArrayBuffer>);
    this.gpu.device.queue.writeBuffer(this.time.gpu, 0, times);
    if (this.labels) this.gpu.device.queue.writeBuffer(this.labels.gpu, 0, labels! as Uint32Array<ArrayBuffer>);
    const encoder = this.gpu.device.createCommandEncoder();
    encodeSteps(encoder, this.steps);
    encoder.copyBufferToBuffer(this.output.gpu, 0, this.staging, 0, x.length * 4);
    this.gpu.device.queue.submit([encoder.finish()]);
    await this.staging.mapAsync(GPUMapMode.READ, 0, x.length * 4);
    const out = new Float32Array(this.staging.getMappedRange(0, x.length * 4).slice(0));
    this.staging.unmap();
    return out;
  }

  destroy(): void {
    this.ws.destroy();
  }
}

export class LDMModel extends WebModel<LDMConfig> {
  readonly latentShape: number[]; // what the UNet denoises (latent, pixel) or the AE encodes: (C, h, w)
  readonly latentSize: number;
  readonly radius = 1; // unused: no sphere
  readonly canEncode: boolean;
  readonly canSample: boolean;
  readonly autoencoder: LDMConfig | null;
  readonly alphasBar: Float64Array | null;
  readonly latentScale: number; // latent kind: the stored buffer (F16 outside fp32 files, as the Python reader), else 1
  readonly sampler: Sampler; // the file's default sampler
  readonly eta: number; // the file's default DDIM η
  private unets = new Map<number, UnetSession>();

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    const cfg = this.config;
    this.autoencoder = ldmAutoencoder(cfg);
    const ae = this.autoencoder;
    this.latentShape = ae ? [ae.latent_channels, ldmLatentSide(ae), ldmLatentSide(ae)] : [cfg.in_channels, cfg.image_size, cfg.image_size];
    this.latentSize = this.latentShape[0] * this.latentShape[1] * this.latentShape[2];
    this.canEncode = ae !== null;
    this.canSample = cfg.kind !== "autoencoder";
    this.alphasBar = this.canSample ? alphasBar(cfg) : null;
    const stored = cfg.kind === "latent" && file.tensors.has("latent_scale");
    this.latentScale = stored ? readParameter(file, "latent_scale").data[0] : cfg.kind === "latent" ? (cfg.latent_scale ?? 1) : 1;
    this.sampler = cfg.sampler ?? "ddim";
    this.eta = cfg.eta ?? 0;
  }

  /** Parse and verify a sphere-web file holding an ldm model, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<LDMModel> {
    return LDMModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): LDMModel {
    const cfg = file.config;
    if (cfg.family !== "ldm") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not an ldm model`);
    if (!["autoencoder", "latent", "pixel"].includes(cfg.kind)) throw new WebFormatError(`'${source}' has unknown ldm kind '${cfg.kind}'`);
    if (!Number.isInteger(cfg.num_classes) || cfg.num_classes < 0) {
      throw new WebFormatError(`'${source}' has num_classes ${cfg.num_classes}; expected an integer >= 0`);
    }
    const problem = samplerProblem(cfg.sampler ?? "ddim", cfg.eta ?? 0);
    if (problem) throw new WebFormatError(`'${source}': ${problem}`);
    const model = new LDMModel(gpu, file).checkBuilds();
    if (model.canSample) model.checkUnetBuilds();
    return model;
  }

  /** The autoencoder's graphs (pixel kind: the decoder is a clamp of the pixels). */
  buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs {
    const ae = this.autoencoder;
    if (ae) {
      const prefix = this.config.kind === "latent" ? "autoencoder." : "";
      return buildAutoencoderGraphs(ae, prefix, true, this.weights, ws, batch, encoderIO, decoderIO);
    }
    const count = batch * this.imageSize;
    return { encoder: [], decoder: [{ kind: "copy", src: decoderIO.input, dst: decoderIO.output, bytes: count * 4 }] };
  }

  private checkUnetBuilds(): void {
    try {
      this.unet(1);
    } catch (error) {
      void this.dispose();
      throw error;
    }
  }

  private unet(batch: number): UnetSession {
    let session = this.unets.get(batch);
    if (!session) this.unets.set(batch, (session = new UnetSession(this.gpu, this, batch)));
    return session;
  }

  /**
   * The denoiser's output on x_t (n * latentSize values) at timestep t (guided_denoiser): one UNet pass, or with
   * labels and w ≠ 1 on a conditional UNet, ε̂_∅ + w (ε̂_c − ε̂_∅) from one pass of the doubled batch [cond; null].
   */
  denoise(x: Float32Array, t: number, conditioning: Conditioning = {}): Promise<Float32Array> {
    return this.exclusive(() => {
      const n = this.batchOf(x, this.latentSize, "x_t");
      return this.output(x, t, this.labelsOf(n, conditioning.labels), conditioning.guidance ?? 1);
    });
  }

  /** The class of each of n images (default: the null class), or null for an unconditional UNet. */
  private labelsOf(n: number, labels: number[] | undefined): Uint32Array | null {
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

  /** One pass of n rows, or of 2n rows [x; x] with [labels; null] combined by the guidance (inside exclusive()). */
  private async output(x: Float32Array, t: number, labels: Uint32Array | null, guidance: number): Promise<Float32Array> {
    if (!(guidance >= 0)) throw new Error(`the guidance scale must be >= 0 (1 = off), got ${guidance}`);
    const width = this.config.unet_width;
    if (!labels || guidance === 1) return this.unet(x.length / this.latentSize).run(x, t, width, labels);
    const both = new Float32Array(2 * x.length);
    both.set(x);
    both.set(x, x.length);
    const pairs = new Uint32Array(2 * labels.length).fill(this.config.num_classes);
    pairs.set(labels);
    return guide(await this.unet(2 * labels.length).run(both, t, width, pairs), guidance);
  }

  /** Images of denoised values x̂_0: latents divided by latent_scale and decoded, or pixels clamped. */
  private async toImages(x0: Float32Array, n: number): Promise<Float32Array> {
    const session = this.session(n, false);
    const scale = this.latentScale;
    session.write(session.sphere, scale === 1 ? x0 : x0.map((v) => v / scale));
    const out = await session.run(session.decoder, session.image, n * this.imageSize);
    return this.config.kind === "pixel" ? out.map((v) => Math.min(Math.max(v, -1), 1)) : out;
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
    const [alphaBar, alphaBarPrev] = [this.alphasBar![t], this.alphasBar![prev]];
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
   * file's); onStep sees each step's x̂_0 decoded (the last step's: the sample).
   */
  sample(n: number, options: LDMSampleOptions = {}): Promise<Float32Array> {
    if (!this.canSample) return Promise.reject(new Error(AE_CANNOT_SAMPLE));
    return this.exclusive(async () => {
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
      this.lastTimings = { encodeMs: 0, decodeMs: total, totalMs: total };
      return images;
    });
  }

  /** One DDIM step (η = 0, no labels) from x_t at times[index] to times[index + 1] of a `steps`-step run: x_prev. */
  ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array> {
    return this.exclusive(async () => {
      const plan = this.plan(this.batchOf(x, this.latentSize, "x_t"), { steps, noise: x, sampler: "ddim", eta: 0 });
      return (await this.step(plan, x, index)).x;
    });
  }

  /** decode(mean(x)) clamped (KLAutoencoder.reconstruct) with encode/decode times; pixel models refuse. */
  reconstruct(images: Float32Array): Promise<{ images: Float32Array; timings: Timings }> {
    if (!this.canEncode) return Promise.reject(new Error(PIXEL_CANNOT_RECONSTRUCT));
    return this.exclusive(async () => {
      const batch = this.batchOf(images, this.imageSize, "images");
      const session = this.session(batch, false);
      session.write(session.image, images);
      const start = performance.now();
      await session.runOnly(session.encoder);
      const encodeMs = performance.now() - start;
      const copy = { kind: "copy" as const, src: session.latent, dst: session.sphere, bytes: batch * this.latentSize * 4 };
      const out = await session.run([copy, ...session.decoder], session.image, batch * this.imageSize);
      this.lastTimings = { encodeMs, decodeMs: performance.now() - start - encodeMs, totalMs: performance.now() - start };
      return { images: out, timings: this.lastTimings };
    });
  }

  dispose(): Promise<void> {
    return super.dispose().then(() => {
      for (const session of this.unets.values()) session.destroy();
      this.unets.clear();
    });
  }
}

/** Why a sampler and η cannot run (models/diffusion.py SAMPLERS, LDMConfig's η range), or null. */
export function samplerProblem(sampler: string, eta: number): string | null {
  if (!(SAMPLERS as readonly string[]).includes(sampler)) return `unknown sampler '${sampler}': use one of ${SAMPLERS.join(", ")}`;
  if (!(eta >= 0 && eta <= 1)) return `DDIM η must be in [0, 1], got ${eta}`;
  return null;
}
