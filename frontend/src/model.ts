/**
 * Models running on WebGPU: `WebModel` holds what every family shares (weights on the GPU, buffers and
 * dispatch lists built once per batch size and reused by every later call, serialized calls, encode/decode);
 * `SphereModel` adds sampling and reconstruction with the semantics of `SphereEncoder` in models/sphere.py.
 * Nothing is allocated per call but the command buffers. src/family.ts picks the class of a file's family.
 */

import { latentShape, sigmaForAngle, type FamilyName, type ModelConfig, type SphereConfig } from "./config";
import { parseWeightFile, WebFormatError, type Mode, type WeightFile } from "./format";
import { encodeSteps, type BufferRef, type Gpu, type Step, Workspace } from "./gpu";
import { buildGraphs, type GraphCache, type GraphIO } from "./graph";
import * as ops from "./ops";
import { Random } from "./rng";
import { GpuWeights } from "./weights";

const MAX_SESSIONS = 6; // batch sizes whose buffers stay allocated (least recently used ones are freed)

/** What every family's `sample` takes. */
export interface CommonSampleOptions {
  steps?: number; // 1 = one decoder pass; each further step re-encodes the output (the family says how)
  seed?: number; // for the browser's own generator (seeds do not match torch's)
  noise?: Float32Array; // the Gaussian e (n * L) the first point is projected from, instead of drawing it
  labels?: number[]; // class per image for conditional models (default: the null class)
  guidance?: number; // classifier-free guidance w (1 = off), split as sqrt(w) after E and after D (cfg_mode "combo")
}

export interface SampleOptions extends CommonSampleOptions {
  renoise?: Float32Array; // e' (n * L), drawn once and reused by every refinement
  noiseAngle?: number; // refinement noise in degrees (default: the model's theta_max)
}

/** What every family's `reconstruct` takes. */
export interface CommonReconstructOptions {
  steps?: number;
  labels?: number[];
}

export interface ReconstructOptions extends CommonReconstructOptions {
  noiseAngle?: number; // 0 = pure encode/decode cycles
  seed?: number;
  renoise?: Float32Array;
}

export interface Timings {
  encodeMs: number;
  decodeMs: number;
  totalMs: number;
}

/** Where a model runs: the page's WebGPU kernels, or onnxruntime-web's WebAssembly backend (src/cpu_model.ts). */
export type Backend = "webgpu" | "cpu";

/**
 * What the page uses of a model, whichever backend runs it: `WebModel` (WebGPU, every family), `CpuModel` (WebAssembly,
 * sphere and psvae models) and the CPU classes of src/cpu_families.ts implement it; each family's own surface extends it
 * (VQVAEPageModel, LDMPageModel, SOMARPageModel in the *_core.ts files).
 */
export interface PageModel {
  readonly backend: Backend;
  readonly config: ModelConfig;
  readonly mode: Mode; // the precision of the weights that run (the CPU path runs the fp32 ONNX files)
  readonly family: FamilyName;
  readonly imageSize: number; // values per image: C * S * S
  readonly latentShape: number[];
  readonly latentSize: number;
  readonly radius: number;
  readonly canEncode: boolean;
  readonly canSample: boolean;
  lastTimings: Timings;
  sample(n: number, options?: CommonSampleOptions): Promise<Float32Array>;
  reconstruct(images: Float32Array, options?: CommonReconstructOptions): Promise<{ images: Float32Array; timings: Timings }>;
  encode(images: Float32Array, labels?: number[]): Promise<Float32Array>;
  decode(latents: Float32Array, labels?: number[]): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** Buffers and steps of one batch size (and guidance on/off: guided sessions run a doubled batch). */
class Session {
  readonly ws: Workspace;
  readonly image: BufferRef;
  readonly latent: BufferRef; // the encoder's output
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
    private model: WebModel,
    readonly batch: number, // rows actually run (2n when guided)
    readonly guided: boolean,
  ) {
    this.ws = new Workspace(gpu);
    const L = model.latentSize;
    this.image = this.ws.ref("io_image", batch * model.imageSize);
    this.latent = this.ws.ref("io_latent", batch * L);
    this.sphere = this.ws.ref("io_sphere", batch * L);
    this.noise = this.ws.ref("io_noise", batch * L);
    this.renoise = this.ws.ref("io_renoise", batch * L);
    this.labels = model.config.num_classes > 0 ? this.ws.ref("io_labels", batch) : null;
    const graphs = model.buildGraphs(
      this.ws,
      batch,
      { input: this.image, output: this.latent, labels: this.labels },
      { input: this.sphere, output: this.image, labels: this.labels },
    );
    this.encoder = graphs.encoder;
    this.decoder = graphs.decoder;
    this.guidanceScale = null;
    if (guided) {
      this.guidanceScale = this.ws.buffer(16, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "guidance");
      if (this.encoder.length) this.encoder.push(ops.guidanceInPlace("guidance.latent", this.latent, this.guidanceScale, (batch / 2) * L));
      this.decoder.push(ops.guidanceInPlace("guidance.pixel", this.image, this.guidanceScale, (batch / 2) * model.imageSize, true));
    }
    this.ws.finalize([...this.encoder, ...this.decoder]);
    this.staging = this.ws.buffer(batch * Math.max(model.imageSize, L) * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, "staging");
  }

  /**
   * Onto the model's sphere: v = f(noise) (sigma null), v = f(latent) ("latent"), or v = f(f(latent) + sigma
   * * renoise) (a number).
   */
  projection(sigma: number | null | "latent"): Step {
    const key = String(sigma);
    let step = this.projections.get(key);
    if (!step) {
      const L = this.model.latentSize;
      const radius = this.model.radius;
      if (sigma === null) step = ops.sphereProject("project", this.noise, this.sphere, this.batch, L, undefined, radius);
      else if (sigma === "latent") step = ops.sphereProject("project_latent", this.latent, this.sphere, this.batch, L, undefined, radius);
      else step = ops.sphereProject("renoise", this.latent, this.sphere, this.batch, L, { buffer: this.renoise, sigma }, radius);
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

/** What a family's model class provides to WebModel. */
export interface Graphs {
  encoder: Step[]; // empty when the file holds no encoder
  decoder: Step[];
}

/**
 * A model of any family on the GPU: latents of `latentSize` values on a sphere of `radius`, images of
 * `imageSize` values in [-1, 1]. Subclasses build the graphs and define sampling and reconstruction.
 */
export abstract class WebModel<C extends ModelConfig = ModelConfig> implements PageModel {
  readonly backend: Backend = "webgpu";
  readonly config: C;
  readonly mode: Mode;
  readonly imageSize: number; // values per image: C * S * S
  readonly weights: GpuWeights;
  readonly tableCache: GraphCache = {};
  abstract readonly latentShape: number[];
  abstract readonly latentSize: number; // L: values per latent
  abstract readonly radius: number; // of the sphere the decoder's inputs lie on
  abstract readonly canEncode: boolean; // false when the file holds only a decoder
  readonly canSample: boolean = true; // false for a tokenizer (no prior over its tokens)
  lastTimings: Timings = { encodeMs: 0, decodeMs: 0, totalMs: 0 };
  private sessions = new Map<string, Session>();
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  protected constructor(
    protected gpu: Gpu,
    readonly file: WeightFile,
  ) {
    this.config = file.config as C;
    this.mode = file.mode;
    this.imageSize = file.config.in_channels * file.config.image_size ** 2;
    this.weights = new GpuWeights(gpu, file);
  }

  /** Encoder and decoder steps for one batch size. */
  abstract buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs;

  abstract sample(n: number, options?: CommonSampleOptions): Promise<Float32Array>;

  abstract reconstruct(images: Float32Array, options?: CommonReconstructOptions): Promise<{ images: Float32Array; timings: Timings }>;

  get family(): C["family"] {
    return this.config.family;
  }

  get gpuBytes(): number {
    let total = this.weights.owner.byteSize;
    for (const session of this.sessions.values()) total += session.ws.byteSize;
    return total;
  }

  /** Build the batch-1 graphs so that a file that does not fit its config fails at load, not at the first call. */
  protected checkBuilds(): this {
    try {
      this.session(1, false);
    } catch (error) {
      void this.dispose();
      throw error;
    }
    return this;
  }

  protected session(batch: number, guided: boolean): Session {
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
  protected exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new Error("this model was disposed"));
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  protected batchOf(values: Float32Array, perItem: number, what: string): number {
    const batch = values.length / perItem;
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`${what} has ${values.length} values, not a multiple of ${perItem}`);
    return batch;
  }

  protected checkSteps(steps: number): void {
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be an integer >= 1, got ${steps}`);
    if (steps > 1 && !this.canEncode) throw new Error("this file holds no encoder: only 1-step samples");
  }

  protected requireEncoder(): void {
    if (!this.canEncode) throw new Error("this file holds no encoder: it can decode, not encode");
  }

  protected writeLabels(session: Session, batch: number, labels: number[] | undefined): void {
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

  /** The encoder's output for images (n, C, S, S) in [-1, 1]: n latents of `latentSize` values (the family says which). */
  encode(images: Float32Array, labels?: number[]): Promise<Float32Array> {
    return this.exclusive(async () => {
      this.requireEncoder();
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

  /** x = D(v) in [-1, 1]; latents are expected on the model's sphere (radius `radius`). */
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

  /**
   * Samples: the first point is the projection of a Gaussian onto the sphere, decoded; each further step runs
   * `refine` (encoder, projection, decoder) on the same command buffer.
   */
  protected runSample(
    n: number,
    options: CommonSampleOptions,
    refine: (session: Session) => Step[],
    prepare?: (session: Session, random: Random) => void,
  ): Promise<Float32Array> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      this.checkSteps(steps);
      const guidance = options.guidance ?? 1;
      const scale = comboScale(guidance); // after E and again after D
      const guided = guidance !== 1 && this.config.num_classes > 0;
      const session = this.session(n, guided);
      const L = this.latentSize;
      const random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
      const noise = options.noise ?? random.gaussians(n * L);
      if (noise.length !== n * L) throw new Error(`noise must hold n * L = ${n * L} values`);
      session.write(session.noise, guided ? doubled(noise) : noise);
      prepare?.(session, random);
      this.writeLabels(session, n, options.labels);
      if (session.guidanceScale) this.gpu.device.queue.writeBuffer(session.guidanceScale, 0, new Float32Array([scale]));
      const all: Step[] = [session.projection(null), ...session.decoder];
      for (let i = 1; i < steps; i++) all.push(...refine(session));
      const start = performance.now();
      const out = await session.run(all, session.image, n * this.imageSize);
      const total = performance.now() - start;
      this.lastTimings = { encodeMs: 0, decodeMs: total, totalMs: total };
      return out;
    });
  }

  /**
   * Reconstructions: encode, v = f(latent), decode; each further step runs `refine`. Times the first encode
   * and the decode rounds separately.
   */
  protected runReconstruct(
    images: Float32Array,
    options: CommonReconstructOptions,
    refine: (session: Session) => Step[],
    prepare?: (session: Session, batch: number) => void,
  ): Promise<{ images: Float32Array; timings: Timings }> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      this.checkSteps(steps);
      this.requireEncoder();
      const batch = this.batchOf(images, this.imageSize, "images");
      const session = this.session(batch, false);
      session.write(session.image, images);
      this.writeLabels(session, batch, options.labels);
      prepare?.(session, batch);
      const start = performance.now();
      await session.runOnly(session.encoder);
      const encodeMs = performance.now() - start;
      const all: Step[] = [session.projection("latent"), ...session.decoder];
      for (let i = 1; i < steps; i++) all.push(...refine(session));
      const decodeStart = performance.now();
      const out = await session.run(all, session.image, batch * this.imageSize);
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

/** A Sphere Encoder: latents z (n, *latentShape) on the sphere of radius sqrt(L); refinement re-noises. */
export class SphereModel extends WebModel<SphereConfig> {
  readonly latentShape: number[];
  readonly latentSize: number;
  readonly radius: number;
  readonly canEncode = true;

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    this.latentShape = latentShape(this.config);
    this.latentSize = this.config.latent_dim;
    this.radius = Math.sqrt(this.latentSize);
  }

  /** Parse and verify a sphere-web file holding a Sphere Encoder, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<SphereModel> {
    return SphereModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): SphereModel {
    const cfg = file.config;
    if (cfg.family !== "sphere") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a Sphere Encoder`);
    if (cfg.backbone !== "vit" && cfg.backbone !== "convnet")
      throw new WebFormatError(`'${source}' has unknown backbone '${cfg.backbone}'`);
    if (cfg.decoder_mixer !== "width" && cfg.decoder_mixer !== "latent")
      throw new WebFormatError(`'${source}' has unknown decoder_mixer '${cfg.decoder_mixer}' (expected 'width' or 'latent')`);
    if (cfg.norm === "batch" && !file.bnFolded) throw new WebFormatError(`'${source}' has BatchNorm that was not folded at export`);
    return new SphereModel(gpu, file).checkBuilds();
  }

  get sigmaMax(): number {
    return sigmaForAngle(this.config.noise_angle);
  }

  buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs {
    return buildGraphs(this.config, this.weights, ws, batch, encoderIO, decoderIO, this.tableCache);
  }

  /** n images from random points of the sphere with `steps` rounds (DESIGN §3 sampling), on the GPU. */
  sample(n: number, options: SampleOptions = {}): Promise<Float32Array> {
    const sigma = sigmaForAngle(options.noiseAngle ?? this.config.noise_angle);
    const steps = options.steps ?? 1;
    const prepare = (session: Session, random: Random): void => {
      const L = this.latentSize;
      const renoise = options.renoise ?? (steps > 1 ? random.gaussians(n * L) : null);
      if (renoise && renoise.length !== n * L) throw new Error(`noise must hold n * L = ${n * L} values`);
      if (renoise) session.write(session.renoise, session.guided ? doubled(renoise) : renoise);
    };
    return this.runSample(n, options, (session) => [...session.encoder, session.projection(sigma), ...session.decoder], prepare);
  }

  /**
   * Encode without noise and decode; each further step re-encodes the output and re-projects it with noise
   * of `noiseAngle` degrees (0 = pure cycles). Times the first encode and the first decode separately.
   */
  reconstruct(images: Float32Array, options: ReconstructOptions = {}): Promise<{ images: Float32Array; timings: Timings }> {
    const steps = options.steps ?? 1;
    const sigma = sigmaForAngle(options.noiseAngle ?? 0);
    const prepare = (session: Session, batch: number): void => {
      if (steps <= 1) return;
      const L = this.latentSize;
      const renoise = sigma > 0 ? (options.renoise ?? new Random(options.seed ?? 0).gaussians(batch * L)) : new Float32Array(batch * L);
      session.write(session.renoise, renoise);
    };
    // the first round is v = f(z): a zero-noise re-noise step is exactly f(f(z)), so the plain projection
    return this.runReconstruct(images, options, (session) => [...session.encoder, session.projection(sigma), ...session.decoder], prepare);
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
