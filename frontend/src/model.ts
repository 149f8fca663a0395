/**
 * A Sphere Encoder running on WebGPU: load a sphere-web file, then encode, decode, sample and reconstruct
 * with the semantics of `SphereEncoder` in models/sphere.py. Buffers and dispatch lists are built once per
 * batch size and reused by every later call; nothing is allocated per call but the command buffers.
 */

import { latentShape, sigmaForAngle, type SphereConfig } from "./config";
import { parseWeightFile, WebFormatError, type Mode, type WeightFile } from "./format";
import { encodeSteps, type BufferRef, type Gpu, type Step, Workspace } from "./gpu";
import { buildGraphs, type GraphCache } from "./graph";
import * as ops from "./ops";
import { Random } from "./rng";
import { GpuWeights } from "./weights";

const MAX_SESSIONS = 6; // batch sizes whose buffers stay allocated (least recently used ones are freed)

export interface SampleOptions {
  steps?: number; // 1 = one decoder pass; each further step is encode -> re-noise -> decode
  seed?: number; // for the browser's own generator (seeds do not match torch's)
  noise?: Float32Array; // e (n * L) instead of drawing it: the initial point is f(e)
  renoise?: Float32Array; // e' (n * L), drawn once and reused by every refinement
  labels?: number[]; // class per image for conditional models (default: the null class)
  guidance?: number; // classifier-free guidance w (1 = off), split as sqrt(w) after E and after D (cfg_mode "combo")
  noiseAngle?: number; // refinement noise in degrees (default: the model's theta_max)
}

export interface ReconstructOptions {
  steps?: number;
  noiseAngle?: number; // 0 = pure encode/decode cycles
  seed?: number;
  renoise?: Float32Array;
  labels?: number[];
}

export interface Timings {
  encodeMs: number;
  decodeMs: number;
  totalMs: number;
}

/** Buffers and steps of one batch size (and guidance on/off: guided sessions run a doubled batch). */
class Session {
  readonly ws: Workspace;
  readonly image: BufferRef;
  readonly latent: BufferRef; // z = E(x)
  readonly sphere: BufferRef; // v on the sphere, the decoder input
  readonly noise: BufferRef;
  readonly renoise: BufferRef;
  readonly labels: BufferRef | null;
  readonly guidanceScale: GPUBuffer | null;
  readonly encoder: Step[];
  readonly decoder: Step[];
  private projections = new Map<string, Step>();
  private staging: GPUBuffer;

  constructor(
    private gpu: Gpu,
    private model: SphereModel,
    readonly batch: number, // rows actually run (2n when guided)
    readonly guided: boolean,
  ) {
    const cfg = model.config;
    this.ws = new Workspace(gpu);
    const L = model.latentSize;
    this.image = this.ws.ref("io_image", batch * model.imageSize);
    this.latent = this.ws.ref("io_latent", batch * L);
    this.sphere = this.ws.ref("io_sphere", batch * L);
    this.noise = this.ws.ref("io_noise", batch * L);
    this.renoise = this.ws.ref("io_renoise", batch * L);
    this.labels = cfg.num_classes > 0 ? this.ws.ref("io_labels", batch) : null;
    const graphs = buildGraphs(
      cfg,
      model.weights,
      this.ws,
      batch,
      { input: this.image, output: this.latent, labels: this.labels },
      { input: this.sphere, output: this.image, labels: this.labels },
      model.tableCache,
    );
    this.encoder = graphs.encoder;
    this.decoder = graphs.decoder;
    this.guidanceScale = null;
    if (guided) {
      this.guidanceScale = this.ws.buffer(16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "guidance");
      this.encoder.push(ops.guidanceInPlace("guidance.latent", this.latent, this.guidanceScale, (batch / 2) * L));
      this.decoder.push(ops.guidanceInPlace("guidance.pixel", this.image, this.guidanceScale, (batch / 2) * model.imageSize, true));
    }
    this.ws.finalize([...this.encoder, ...this.decoder]);
    this.staging = this.ws.buffer(batch * Math.max(model.imageSize, L) * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, "staging");
  }

  /** v = f(noise) (sigma null) or v = f(f(z) + sigma * renoise). */
  projection(sigma: number | null): Step {
    const key = sigma === null ? "plain" : String(sigma);
    let step = this.projections.get(key);
    if (!step) {
      const L = this.model.latentSize;
      step =
        sigma === null
          ? ops.sphereProject("project", this.noise, this.sphere, this.batch, L)
          : ops.sphereProject("renoise", this.latent, this.sphere, this.batch, L, { buffer: this.renoise, sigma });
      this.ws.finalize([step]);
      this.projections.set(key, step);
    }
    return step;
  }

  write(ref: BufferRef, data: Float32Array | Uint32Array): void {
    this.gpu.device.queue.writeBuffer(ref.gpu, 0, data as Float32Array<ArrayBuffer>);
  }

  /** Run steps, then copy `words` of `src` back to the CPU. */
  async run(steps: Step[], src: BufferRef, words: number): Promise<Float32Array> {
    const encoder = this.gpu.device.createCommandEncoder();
    encodeSteps(encoder, steps);
    encoder.copyBufferToBuffer(src.gpu, 0, this.staging, 0, words * 4);
    this.gpu.device.queue.submit([encoder.finish()]);
    await this.staging.mapAsync(GPUMapMode.READ, 0, words * 4);
    const out = new Float32Array(this.staging.getMappedRange(0, words * 4).slice(0));
    this.staging.unmap();
    return out;
  }

  /** Run steps and wait for the GPU (for timings of an intermediate stage). */
  async runOnly(steps: Step[]): Promise<void> {
    const encoder = this.gpu.device.createCommandEncoder();
    encodeSteps(encoder, steps);
    this.gpu.device.queue.submit([encoder.finish()]);
    await this.gpu.device.queue.onSubmittedWorkDone();
  }

  destroy(): void {
    this.ws.destroy();
  }
}

export class SphereModel {
  readonly config: SphereConfig;
  readonly mode: Mode;
  readonly latentShape: number[];
  readonly latentSize: number; // L
  readonly imageSize: number; // values per image: 3 * S * S
  readonly weights: GpuWeights;
  readonly tableCache: GraphCache = {};
  lastTimings: Timings = { encodeMs: 0, decodeMs: 0, totalMs: 0 };
  private sessions = new Map<string, Session>();
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  private constructor(
    private gpu: Gpu,
    readonly file: WeightFile,
  ) {
    this.config = file.config;
    this.mode = file.mode;
    this.latentShape = latentShape(file.config);
    this.latentSize = file.config.latent_dim;
    this.imageSize = file.config.in_channels * file.config.image_size ** 2;
    this.weights = new GpuWeights(gpu, file);
  }

  /** Parse and verify a sphere-web file and build the batch-1 graphs (so a bad file fails here, not at the first call). */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<SphereModel> {
    const file = await parseWeightFile(buffer, source);
    const cfg = file.config;
    if (cfg.backbone !== "vit" && cfg.backbone !== "convnet")
      throw new WebFormatError(`'${source}' has unknown backbone '${cfg.backbone}'`);
    if (cfg.decoder_mixer !== "width" && cfg.decoder_mixer !== "latent")
      throw new WebFormatError(`'${source}' has unknown decoder_mixer '${cfg.decoder_mixer}' (expected 'width' or 'latent')`);
    if (cfg.norm === "batch" && !file.bnFolded) throw new WebFormatError(`'${source}' has BatchNorm that was not folded at export`);
    const model = new SphereModel(gpu, file);
    try {
      model.session(1, false);
    } catch (error) {
      void model.dispose();
      throw error;
    }
    return model;
  }

  get sigmaMax(): number {
    return sigmaForAngle(this.config.noise_angle);
  }

  get gpuBytes(): number {
    let total = this.weights.owner.byteSize;
    for (const session of this.sessions.values()) total += session.ws.byteSize;
    return total;
  }

  private session(batch: number, guided: boolean): Session {
    if (this.disposed) throw new Error("this model was disposed");
    if (this.gpu.lost) throw new Error("the GPU device was lost; reload the model");
    const rows = guided ? 2 * batch : batch;
    const key = `${rows}:${guided}`;
    let session = this.sessions.get(key);
    if (session)
      this.sessions.delete(key); // re-inserted last: the map is in least-recently-used order
    else session = new Session(this.gpu, this, rows, guided);
    this.sessions.set(key, session);
    if (this.sessions.size > MAX_SESSIONS) {
      // only called inside exclusive(): no call is using the evicted session's buffers
      const [oldKey, oldest] = this.sessions.entries().next().value!;
      oldest.destroy();
      this.sessions.delete(oldKey);
    }
    return session;
  }

  /** Serialize calls: they share staging buffers. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new Error("this model was disposed"));
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private batchOf(values: Float32Array, perItem: number, what: string): number {
    const batch = values.length / perItem;
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`${what} has ${values.length} values, not a multiple of ${perItem}`);
    return batch;
  }

  private writeLabels(session: Session, batch: number, labels: number[] | undefined): void {
    if (!session.labels) {
      if (labels && labels.length) throw new Error("this model is unconditional (num_classes=0); do not pass class labels");
      return;
    }
    const nullClass = this.config.num_classes;
    const values = new Uint32Array(session.batch).fill(nullClass);
    for (let i = 0; i < batch; i++) {
      const label = labels?.[i] ?? nullClass;
      if (!Number.isInteger(label) || label < 0 || label > nullClass) throw new Error(`label ${label} out of range 0..${nullClass}`);
      values[i] = label;
    }
    session.write(session.labels, values); // guided sessions keep the null class in the second half
  }

  /** z = E(x) before projection; images (n, 3, S, S) in [-1, 1] -> latents (n, *latentShape). */
  encode(images: Float32Array, labels?: number[]): Promise<Float32Array> {
    return this.exclusive(async () => {
      const batch = this.batchOf(images, this.imageSize, "images");
      const session = this.session(batch, false);
      session.write(session.image, images);
      this.writeLabels(session, batch, labels);
      const start = performance.now();
      const out = await session.run(session.encoder, session.latent, batch * this.latentSize);
      this.lastTimings = { encodeMs: performance.now() - start, decodeMs: 0, totalMs: performance.now() - start };
      return out;
    });
  }

  /** x = D(v) in [-1, 1]; latents are expected on the sphere (see `project`). */
  decode(latents: Float32Array, labels?: number[]): Promise<Float32Array> {
    return this.exclusive(async () => {
      const batch = this.batchOf(latents, this.latentSize, "latents");
      const session = this.session(batch, false);
      session.write(session.sphere, latents);
      this.writeLabels(session, batch, labels);
      const start = performance.now();
      const out = await session.run(session.decoder, session.image, batch * this.imageSize);
      this.lastTimings = { encodeMs: 0, decodeMs: performance.now() - start, totalMs: performance.now() - start };
      return out;
    });
  }

  /** n images from random points of the sphere with `steps` rounds (DESIGN §3 sampling), on the GPU. */
  sample(n: number, options: SampleOptions = {}): Promise<Float32Array> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be an integer >= 1, got ${steps}`);
      const guidance = options.guidance ?? 1;
      const scale = comboScale(guidance); // after E and again after D
      const guided = guidance !== 1 && this.config.num_classes > 0;
      const session = this.session(n, guided);
      const L = this.latentSize;
      const random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
      const noise = options.noise ?? random.gaussians(n * L);
      const renoise = options.renoise ?? (steps > 1 ? random.gaussians(n * L) : null);
      if (noise.length !== n * L || (renoise && renoise.length !== n * L)) throw new Error(`noise must hold n * L = ${n * L} values`);
      session.write(session.noise, guided ? doubled(noise) : noise);
      if (renoise) session.write(session.renoise, guided ? doubled(renoise) : renoise);
      this.writeLabels(session, n, options.labels);
      if (session.guidanceScale) this.gpu.device.queue.writeBuffer(session.guidanceScale, 0, new Float32Array([scale]));
      const sigma = sigmaForAngle(options.noiseAngle ?? this.config.noise_angle);
      const all: Step[] = [session.projection(null), ...session.decoder];
      for (let i = 1; i < steps; i++) all.push(...session.encoder, session.projection(sigma), ...session.decoder);
      const start = performance.now();
      const out = await session.run(all, session.image, n * this.imageSize);
      const total = performance.now() - start;
      this.lastTimings = { encodeMs: 0, decodeMs: total, totalMs: total };
      return out;
    });
  }

  /**
   * Encode without noise and decode; each further step re-encodes the output and re-projects it with noise
   * of `noiseAngle` degrees (0 = pure cycles). Times the first encode and the first decode separately.
   */
  reconstruct(images: Float32Array, options: ReconstructOptions = {}): Promise<{ images: Float32Array; timings: Timings }> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be an integer >= 1, got ${steps}`);
      const batch = this.batchOf(images, this.imageSize, "images");
      const session = this.session(batch, false);
      const L = this.latentSize;
      session.write(session.image, images);
      this.writeLabels(session, batch, options.labels);
      const sigma = sigmaForAngle(options.noiseAngle ?? 0);
      if (steps > 1) {
        const renoise = sigma > 0 ? (options.renoise ?? new Random(options.seed ?? 0).gaussians(batch * L)) : new Float32Array(batch * L);
        session.write(session.renoise, renoise);
      }
      const start = performance.now();
      await session.runOnly(session.encoder);
      const encodeMs = performance.now() - start;
      // first round: v = f(z) (a zero-noise re-noise step is exactly f(f(z)), so use the plain projection)
      const first: Step[] = [
        { kind: "copy", src: session.latent, dst: session.noise, bytes: batch * L * 4 },
        session.projection(null),
        ...session.decoder,
      ];
      const rest: Step[] = [];
      for (let i = 1; i < steps; i++) rest.push(...session.encoder, session.projection(sigma), ...session.decoder);
      const decodeStart = performance.now();
      const out = await session.run([...first, ...rest], session.image, batch * this.imageSize);
      const decodeMs = performance.now() - decodeStart;
      this.lastTimings = { encodeMs, decodeMs, totalMs: performance.now() - start };
      return { images: out, timings: this.lastTimings };
    });
  }

  /** Release every GPU buffer of this model once calls in flight are done (the device stays). */
  dispose(): Promise<void> {
    this.disposed = true; // new calls are refused from now on
    return this.queue.then(() => {
      for (const session of this.sessions.values()) session.destroy();
      this.sessions.clear();
      this.weights.destroy();
    });
  }
}

/**
 * The scale of each guidance place for a total guidance w: the official "combo" mode (models/sphere.py
 * guidance_scales) mixes sqrt(w) after the encoder and sqrt(w) after the decoder, so the total is w.
 */
export function comboScale(guidance: number): number {
  if (!(guidance >= 0)) throw new Error(`the guidance scale must be >= 0 (1 = off), got ${guidance}`);
  return Math.sqrt(guidance);
}

function doubled(values: Float32Array): Float32Array {
  const out = new Float32Array(values.length * 2);
  out.set(values);
  out.set(values, values.length);
  return out;
}

/** Convert decoder output (n, 3, S, S) in [-1, 1] to RGBA bytes of image i. */
export function toRGBA(images: Float32Array, index: number, channels: number, size: number): Uint8ClampedArray {
  const pixels = size * size;
  const out = new Uint8ClampedArray(pixels * 4);
  const base = index * channels * pixels;
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) {
      const value = images[base + Math.min(c, channels - 1) * pixels + p];
      out[4 * p + c] = Math.round((value + 1) * 127.5);
    }
    out[4 * p + 3] = 255;
  }
  return out;
}

/** RGBA bytes (size*size*4) to a model input (3, S, S) in [-1, 1]. */
export function fromRGBA(rgba: Uint8ClampedArray | Uint8Array, channels: number, size: number): Float32Array {
  const pixels = size * size;
  const out = new Float32Array(channels * pixels);
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < channels; c++) out[c * pixels + p] = rgba[4 * p + c] / 127.5 - 1;
  }
  return out;
}
