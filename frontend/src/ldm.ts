/**
 * A latent-diffusion model (models/ldm.py) on WebGPU. kind "autoencoder" (ldm_ae_*): encode gives the posterior
 * mean, decode maps latents to images, reconstruct is decode(mean); it cannot sample. kind "latent" (ldm_*): the
 * UNet denoises scaled latents with DDIM (any η) or DDPM on the page (DiffusionModel.sample), x̂_0 / latent_scale
 * is decoded by the frozen autoencoder; reconstruct is the autoencoder's round trip. kind "pixel" (ddpm_*): the
 * same loop on pixels (x̂_0 clamped to [-1, 1], ε̂ recomputed); it cannot reconstruct. A class-conditional UNet
 * takes a class per image (default: the null class) and classifier-free guidance w. The UNet runs on the GPU, the
 * sampler's update on the CPU.
 */

import { ldmAutoencoder, type LDMConfig } from "./config";
import type { Sampler } from "./diffusion";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import { Workspace, encodeSteps, type BufferRef, type Gpu, type Step } from "./gpu";
import type { GraphIO } from "./graph";
import { buildAutoencoderGraphs, buildUnetGraph } from "./graph_ldm";
import {
  AE_CANNOT_SAMPLE,
  DiffusionSampler,
  ldmConfigProblem,
  ldmLatentShape,
  PIXEL_CANNOT_RECONSTRUCT,
  type Conditioning,
  type LDMPageModel,
  type LDMSampleOptions,
} from "./ldm_core";
import { WebModel, type Graphs, type Timings } from "./model";

export { AE_CANNOT_SAMPLE, DEFAULT_STEPS, PIXEL_CANNOT_RECONSTRUCT, samplerProblem } from "./ldm_core";
export type { Conditioning, LDMSampleOptions } from "./ldm_core";

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

export class LDMModel extends WebModel<LDMConfig> implements LDMPageModel {
  readonly latentShape: number[]; // what the UNet denoises (latent, pixel) or the AE encodes: (C, h, w)
  readonly latentSize: number;
  readonly radius = 1; // unused: no sphere
  readonly canEncode: boolean;
  readonly canSample: boolean;
  readonly autoencoder: LDMConfig | null;
  readonly latentScale: number; // latent kind: the stored buffer (F16 outside fp32 files, as the Python reader), else 1
  readonly sampler: Sampler; // the file's default sampler
  readonly eta: number; // the file's default DDIM η
  private diffusion: DiffusionSampler;
  private unets = new Map<number, UnetSession>();

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    const cfg = this.config;
    this.autoencoder = ldmAutoencoder(cfg);
    this.latentShape = ldmLatentShape(cfg);
    this.latentSize = this.latentShape[0] * this.latentShape[1] * this.latentShape[2];
    this.canEncode = this.autoencoder !== null;
    this.canSample = cfg.kind !== "autoencoder";
    const stored = cfg.kind === "latent" && file.tensors.has("latent_scale");
    this.latentScale = stored ? readParameter(file, "latent_scale").data[0] : cfg.kind === "latent" ? (cfg.latent_scale ?? 1) : 1;
    this.diffusion = new DiffusionSampler(cfg, this.latentScale, {
      unet: (x, t, labels) => this.unet(x.length / this.latentSize).run(x, t, cfg.unet_width, labels),
      decodeLatents: (z, n) => this.decodeLatents(z, n),
    });
    this.sampler = this.diffusion.sampler;
    this.eta = this.diffusion.eta;
  }

  /** Parse and verify a sphere-web file holding an ldm model, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<LDMModel> {
    return LDMModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): LDMModel {
    const cfg = file.config;
    if (cfg.family !== "ldm") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not an ldm model`);
    const problem = ldmConfigProblem(cfg, source);
    if (problem) throw new WebFormatError(problem);
    const model = new LDMModel(gpu, file).checkBuilds();
    if (model.canSample) model.checkUnetBuilds();
    return model;
  }

  /** The autoencoder's graphs (pixel kind: the decoder is a copy of the pixels, which the sampler clamps). */
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

  /** Images of unscaled latents (n, c, h, w) by the autoencoder's decoder (inside exclusive()). */
  private async decodeLatents(z: Float32Array, n: number): Promise<Float32Array> {
    const session = this.session(n, false);
    session.write(session.sphere, z);
    return session.run(session.decoder, session.image, n * this.imageSize);
  }

  /**
   * The denoiser's output on x_t (n * latentSize values) at timestep t (guided_denoiser): one UNet pass, or with
   * labels and w ≠ 1 on a conditional UNet, ε̂_∅ + w (ε̂_c − ε̂_∅) from one pass of the doubled batch [cond; null].
   */
  denoise(x: Float32Array, t: number, conditioning: Conditioning = {}): Promise<Float32Array> {
    return this.exclusive(() => this.diffusion.denoise(x, t, conditioning));
  }

  /**
   * n images by DDIM or DDPM from x_T ~ N(0, I) in `steps` steps (default 25; the sampler and η default to the
   * file's); onStep sees each step's x̂_0 decoded (the last step's: the sample).
   */
  sample(n: number, options: LDMSampleOptions = {}): Promise<Float32Array> {
    if (!this.canSample) return Promise.reject(new Error(AE_CANNOT_SAMPLE));
    return this.exclusive(async () => {
      const { images, timings } = await this.diffusion.sample(n, options);
      this.lastTimings = timings;
      return images;
    });
  }

  /** One DDIM step (η = 0, no labels) from x_t at times[index] to times[index + 1] of a `steps`-step run: x_prev. */
  ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array> {
    return this.exclusive(() => this.diffusion.ddimStep(x, steps, index));
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
