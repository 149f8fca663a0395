/**
 * A latent-diffusion model (models/ldm.py) on WebGPU. kind "autoencoder" (ldm_ae_*): encode gives the posterior
 * mean, decode maps latents to images, reconstruct is decode(mean); it cannot sample. kind "latent" (ldm_*): the
 * UNet denoises scaled latents with DDIM (η = 0) on the page, x̂_0 / latent_scale is decoded by the frozen
 * autoencoder; reconstruct is the autoencoder's round trip. kind "pixel" (ddpm_*): the same loop on pixels
 * (x̂_0 clamped to [-1, 1]); it cannot reconstruct. The UNet runs on the GPU, the DDIM update on the CPU.
 */

import { ldmAutoencoder, ldmLatentSide, type LDMConfig } from "./config";
import { alphasBar, ddimStep, ddimTimesteps, predictX0Eps } from "./diffusion";
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

/** Sampling options of a diffusion model: `steps` DDIM steps, `onStep` sees x̂_0 decoded after each step. */
export interface LDMSampleOptions extends CommonSampleOptions {
  onStep?: (images: Float32Array, step: number, steps: number) => void | Promise<void>;
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
    this.output = this.ws.ref("unet_out", words);
    this.steps = buildUnetGraph(model.config, model.weights, this.ws, batch, model.latentShape[1], this);
    this.ws.finalize(this.steps);
    this.staging = this.ws.buffer(words * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, "unet_staging");
  }

  /** The UNet's output for x_t (batch values) at timestep t. */
  async run(x: Float32Array, t: number, width: number): Promise<Float32Array> {
    const features = timeFeatures(t, width);
    const times = new Float32Array(this.batch * width);
    for (let b = 0; b < this.batch; b++) times.set(features, b * width);
    this.gpu.device.queue.writeBuffer(this.x.gpu, 0, x as Float32Array<ArrayBuffer>);
    this.gpu.device.queue.writeBuffer(this.time.gpu, 0, times);
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
    if (cfg.num_classes !== 0 && cfg.kind !== "autoencoder") {
      throw new WebFormatError(
        `'${source}' is class-conditional (num_classes ${cfg.num_classes}); the page samples unconditional ldm models`,
      );
    }
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

  /** One UNet pass (UNet.forward) on x_t (n * latentSize values) at timestep t: the ε or v prediction. */
  denoise(x: Float32Array, t: number): Promise<Float32Array> {
    return this.exclusive(() => this.unet(this.batchOf(x, this.latentSize, "x_t")).run(x, t, this.config.unet_width));
  }

  /** Images of denoised values x̂_0: latents divided by latent_scale and decoded, or pixels clamped. */
  private async toImages(x0: Float32Array, n: number): Promise<Float32Array> {
    const session = this.session(n, false);
    const scale = this.latentScale;
    session.write(session.sphere, scale === 1 ? x0 : x0.map((v) => v / scale));
    const out = await session.run(session.decoder, session.image, n * this.imageSize);
    return this.config.kind === "pixel" ? out.map((v) => Math.min(Math.max(v, -1), 1)) : out;
  }

  /** n images by DDIM (η = 0) from x_T ~ N(0, I) in `steps` steps (default 25); onStep sees each x̂_0 decoded. */
  sample(n: number, options: LDMSampleOptions = {}): Promise<Float32Array> {
    if (!this.canSample) return Promise.reject(new Error(AE_CANNOT_SAMPLE));
    return this.exclusive(async () => {
      if (options.labels?.length) throw new Error("this model is unconditional (num_classes=0); do not pass class labels");
      const steps = options.steps ?? DEFAULT_STEPS;
      const times = ddimTimesteps(this.config.timesteps, steps);
      const random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
      let x: Float32Array = options.noise ?? random.gaussians(n * this.latentSize);
      if (x.length !== n * this.latentSize) throw new Error(`noise must hold n * latentSize = ${n * this.latentSize} values`);
      const start = performance.now();
      const clip = this.config.kind === "pixel" ? 1 : null;
      let images: Float32Array = new Float32Array(0);
      for (let i = 0; i < steps; i++) {
        const output = await this.unet(n).run(x, times[i], this.config.unet_width);
        const { x0, eps } = predictX0Eps(x, output, this.alphasBar![times[i]], this.config.prediction, clip);
        x = ddimStep(x0, eps, this.alphasBar![times[i + 1]]);
        if (options.onStep || i === steps - 1) images = await this.toImages(i === steps - 1 ? x : x0, n);
        await options.onStep?.(images, i + 1, steps);
      }
      const total = performance.now() - start;
      this.lastTimings = { encodeMs: 0, decodeMs: total, totalMs: total };
      return images;
    });
  }

  /** One DDIM step (η = 0) from x_t at times[index] to times[index + 1] of a `steps`-step run: x_prev. */
  ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array> {
    const times = ddimTimesteps(this.config.timesteps, steps);
    return this.denoise(x, times[index]).then((output) => {
      const clip = this.config.kind === "pixel" ? 1 : null;
      const { x0, eps } = predictX0Eps(x, output, this.alphasBar![times[index]], this.config.prediction, clip);
      return ddimStep(x0, eps, this.alphasBar![times[index + 1]]);
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
