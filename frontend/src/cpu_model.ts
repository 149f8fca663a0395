/**
 * The page's CPU path: a Sphere Encoder or psvae whose encoder and decoder run as networks on the CPU (ONNX
 * sessions of onnxruntime-web's WebAssembly backend, src/ort.ts), with the glue of the WebGPU path (src/model.ts,
 * src/psvae.ts) in TypeScript: projection onto the sphere, re-noising with e′ drawn once per image, combo
 * classifier-free guidance on a doubled batch (conditional half, then the null class), labels. The same seed draws
 * the same Gaussians in the same order as the WebGPU path, so both backends give the same images up to float error.
 * Also what every CPU-path model shares (CpuBase, the Graph of a session), which models it runs (cpuUnsupported) and
 * from which ONNX files (onnxNeeds); the other families' classes are in src/cpu_families.ts.
 */

import { latentShape, sigmaForAngle, type ModelConfig, type PSVAEConfig, type SOMARConfig, type SphereConfig } from "./config";
import type { Mode } from "./format";
import { comboScale, type Backend, type PageModel, type ReconstructOptions, type SampleOptions, type Timings } from "./model";
import { Random } from "./rng";
import { codebookConfig, somarUnsupported } from "./somar_core";
import { vqvaeUnsupported } from "./vqvae_core";

/** A network on the CPU: (batch, ...) float32 in, (batch, ...) float32 out; labels (batch,) for conditional models. */
export interface Network {
  run(input: Float32Array, batch: number, labels: Int32Array | null): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** The values of one graph input: float32, or integers (tokens, timesteps, labels) for an int64 input. */
export type GraphInput = Float32Array | Int32Array | Uint32Array;

/** A network with several inputs (in the order its file lists them) and one output, as float32 values. */
export interface Graph {
  run(inputs: GraphInput[], batch: number): Promise<Float32Array>;
  dispose(): Promise<void>;
}

export type CpuConfig = SphereConfig | PSVAEConfig;

export interface CpuSampleOptions extends SampleOptions {
  onStep?: (images: Float32Array, step: number, total: number) => Promise<void> | void; // each round's images but the last
}

/** The files of index.json's `onnx` object a model's CPU path needs (engine/onnx_export.py writes them). */
export type OnnxNetworkName = "decoder" | "encoder" | "unet" | "tensors";

/** Why the CPU path cannot run a model of this config, or null when it can. */
export function cpuUnsupported(config: { family?: string; backbone?: string; quantizer?: string; kind?: string }): string | null {
  const family = config.family ?? "sphere";
  if (family === "vqvae") return vqvaeUnsupported(config.quantizer);
  if (family === "somar") {
    const codebook = codebookConfig(config as SOMARConfig) as { family?: string } | null;
    return somarUnsupported(codebook?.family);
  }
  if (family === "ldm") return null;
  if (family !== "sphere" && family !== "psvae") return `the CPU path does not run '${family}' models`;
  if (config.backbone === "conv1d") return "1-D signal models (psvae conv1d) are not shown in this page";
  return null;
}

/**
 * The ONNX files the CPU path needs for a model of this config: the decoder (sphere, psvae: the encoder is optional, a
 * decoder-only file samples in one step); a tokenizer's and a somar codebook's encoder, decoder and stored tensors
 * (codebook, SOM levels); an ldm autoencoder's two networks; a latent UNet, its autoencoder's networks (latent_scale,
 * when stored, in the tensors file); a pixel UNet alone.
 */
export function onnxNeeds(config: ModelConfig): OnnxNetworkName[] {
  switch (config.family) {
    case "vqvae":
      return ["encoder", "decoder", "tensors"];
    case "somar":
      return config.kind === "autoencoder" ? ["encoder", "decoder"] : ["encoder", "decoder", "tensors"];
    case "ldm": {
      const needs: Record<string, OnnxNetworkName[]> = { autoencoder: ["encoder", "decoder"], latent: ["unet", "encoder", "decoder"] };
      return needs[config.kind] ?? ["unet"]; // pixel (an unknown kind is named when the model loads)
    }
    default:
      return ["decoder"];
  }
}

/** The latent of one image: (N, C) tokens or (C, h, w) for a Sphere Encoder, (d,) for a psvae. */
export function cpuLatentShape(config: CpuConfig): number[] {
  return config.family === "psvae" ? [config.z_dim] : latentShape(config);
}

/** What every CPU-path model shares: serialized calls (a session runs one call at a time), timings, disposal. */
export abstract class CpuBase<C extends ModelConfig> {
  readonly backend: Backend = "cpu";
  readonly mode: Mode = "fp32"; // the ONNX files hold the float32 (EMA) weights
  readonly imageSize: number;
  lastTimings: Timings = { encodeMs: 0, decodeMs: 0, totalMs: 0 };
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;

  protected constructor(
    readonly config: C,
    private networks: ({ dispose(): Promise<void> } | null)[],
  ) {
    this.imageSize = config.in_channels * config.image_size ** 2;
  }

  get family(): C["family"] {
    return this.config.family;
  }

  /** Release the sessions once calls in flight are done; later calls are refused. */
  dispose(): Promise<void> {
    this.disposed = true;
    return this.queue.then(async () => {
      for (const network of this.networks) await network?.dispose();
    });
  }

  /** Serialize calls (a session runs one call at a time). */
  protected exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new Error("this model was disposed"));
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Run `fn` serialized and record its time as the call's encode or decode time. */
  protected timed(kind: "encode" | "decode", fn: () => Promise<Float32Array>): Promise<Float32Array> {
    return this.exclusive(async () => {
      const start = performance.now();
      const out = await fn();
      const ms = performance.now() - start;
      this.lastTimings = { encodeMs: kind === "encode" ? ms : 0, decodeMs: kind === "decode" ? ms : 0, totalMs: ms };
      return out;
    });
  }
}

export class CpuModel extends CpuBase<CpuConfig> implements PageModel {
  readonly latentShape: number[];
  readonly latentSize: number;
  readonly radius: number;
  readonly canEncode: boolean;
  readonly canSample = true;

  constructor(
    config: CpuConfig,
    private decoder: Network,
    private encoder: Network | null,
  ) {
    super(config, [decoder, encoder]);
    const unsupported = cpuUnsupported(config);
    if (unsupported) throw new Error(unsupported);
    this.latentShape = cpuLatentShape(config);
    this.latentSize = this.latentShape.reduce((a, b) => a * b, 1);
    this.radius = config.family === "psvae" ? 1 : Math.sqrt(this.latentSize); // the unit sphere S^(d-1), or sqrt(L)
    this.canEncode = encoder !== null;
  }

  /** The latent of images (n, C, S, S) in [-1, 1]: z before projection (sphere), mu (psvae). */
  encode(images: Float32Array, labels?: number[]): Promise<Float32Array> {
    return this.timed("encode", () => {
      const batch = batchOf(images, this.imageSize, "images");
      return this.requireEncoder().run(images, batch, this.labelRows(batch, batch, labels));
    });
  }

  /** x = D(v) in [-1, 1]; latents are expected on the model's sphere (radius `radius`). */
  decode(latents: Float32Array, labels?: number[]): Promise<Float32Array> {
    return this.timed("decode", () => {
      const batch = batchOf(latents, this.latentSize, "latents");
      return this.decoder.run(latents, batch, this.labelRows(batch, batch, labels));
    });
  }

  /**
   * n images: x = D(f(e)), then steps-1 rounds of z = E(x) and x = D(f(f(z) + sigma e′)) (sphere; e′ drawn once
   * per image after e) or x = D(f(E(x))) (psvae). With guidance w on a conditional model every pass runs the
   * doubled batch (labels, then the null class) and mixes the halves with sqrt(w) after E and after D. `onStep` sees
   * the images of each round before the last (the page draws them: the first image shows after one decode).
   */
  sample(n: number, options: CpuSampleOptions = {}): Promise<Float32Array> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      this.checkSteps(steps);
      const guidance = options.guidance ?? 1;
      const scale = comboScale(guidance);
      const guided = guidance !== 1 && this.config.num_classes > 0;
      const L = this.latentSize;
      const random = new Random(options.seed ?? Math.floor(Math.random() * 2 ** 32));
      const noise = options.noise ?? random.gaussians(n * L);
      if (noise.length !== n * L) throw new Error(`noise must hold n * L = ${n * L} values`);
      const sphere = this.config.family === "sphere";
      const renoise = sphere ? (options.renoise ?? (steps > 1 ? random.gaussians(n * L) : null)) : null;
      if (renoise && renoise.length !== n * L) throw new Error(`noise must hold n * L = ${n * L} values`);
      const sigma = sphere ? sigmaForAngle(options.noiseAngle ?? (this.config as SphereConfig).noise_angle) : 0;
      const rows = guided ? 2 * n : n;
      const labels = this.labelRows(n, rows, options.labels);
      const twice = (values: Float32Array): Float32Array => (guided ? doubled(values) : values);
      const start = performance.now();
      let images = await this.decodeGuided(project(twice(noise), rows, L, this.radius), rows, labels, guided ? scale : null);
      const e = renoise && twice(renoise);
      for (let i = 1; i < steps; i++) {
        await options.onStep?.(images.slice(0, n * this.imageSize), i, steps);
        const z = await this.encodeGuided(images, rows, labels, guided ? scale : null);
        const v = e ? project(z, rows, L, this.radius, { noise: e, sigma }) : project(z, rows, L, this.radius);
        images = await this.decodeGuided(v, rows, labels, guided ? scale : null);
      }
      const total = performance.now() - start;
      this.lastTimings = { encodeMs: 0, decodeMs: total, totalMs: total };
      return images.slice(0, n * this.imageSize);
    });
  }

  /**
   * Encode without noise and decode; each further step re-encodes the output and re-projects it (sphere: with
   * noise of `noiseAngle` degrees, 0 = pure cycles; psvae: onto the unit sphere). Times the first encode apart.
   */
  reconstruct(images: Float32Array, options: ReconstructOptions = {}): Promise<{ images: Float32Array; timings: Timings }> {
    return this.exclusive(async () => {
      const steps = options.steps ?? 1;
      this.checkSteps(steps);
      const encoder = this.requireEncoder();
      const batch = batchOf(images, this.imageSize, "images");
      const L = this.latentSize;
      const labels = this.labelRows(batch, batch, options.labels);
      const sphere = this.config.family === "sphere";
      const sigma = sphere ? sigmaForAngle(options.noiseAngle ?? 0) : 0;
      let renoise: Float32Array | null = null;
      if (sphere && steps > 1) {
        renoise = sigma > 0 ? (options.renoise ?? new Random(options.seed ?? 0).gaussians(batch * L)) : new Float32Array(batch * L);
        if (renoise.length !== batch * L) throw new Error(`noise must hold n * L = ${batch * L} values`);
      }
      const start = performance.now();
      const z = await encoder.run(images, batch, labels);
      const encodeMs = performance.now() - start;
      const decodeStart = performance.now();
      let out = await this.decoder.run(project(z, batch, L, this.radius), batch, labels);
      for (let i = 1; i < steps; i++) {
        const again = await encoder.run(out, batch, labels);
        const v = renoise ? project(again, batch, L, this.radius, { noise: renoise, sigma }) : project(again, batch, L, this.radius);
        out = await this.decoder.run(v, batch, labels);
      }
      const decodeMs = performance.now() - decodeStart;
      this.lastTimings = { encodeMs, decodeMs, totalMs: performance.now() - start };
      return { images: out, timings: this.lastTimings };
    });
  }

  private async decodeGuided(v: Float32Array, rows: number, labels: Int32Array | null, scale: number | null): Promise<Float32Array> {
    const x = await this.decoder.run(v, rows, labels);
    if (scale !== null) mixHalves(x, scale, true);
    return x;
  }

  private async encodeGuided(x: Float32Array, rows: number, labels: Int32Array | null, scale: number | null): Promise<Float32Array> {
    const z = await this.requireEncoder().run(x, rows, labels);
    if (scale !== null) mixHalves(z, scale, false);
    return z;
  }

  /**
   * The label of each of `rows` rows: `labels[i]` (default: the null class) for the first `batch`, the null class
   * after them (the unconditional half of a guided batch); null for an unconditional model.
   */
  private labelRows(batch: number, rows: number, labels: number[] | undefined): Int32Array | null {
    const nullClass = this.config.num_classes;
    if (nullClass === 0) {
      if (labels && labels.length) throw new Error("this model is unconditional (num_classes=0); do not pass class labels");
      return null;
    }
    const out = new Int32Array(rows).fill(nullClass);
    for (let i = 0; i < batch; i++) {
      const label = labels?.[i] ?? nullClass;
      if (!Number.isInteger(label) || label < 0 || label > nullClass) throw new Error(`label ${label} out of range 0..${nullClass}`);
      out[i] = label;
    }
    return out;
  }

  private checkSteps(steps: number): void {
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be an integer >= 1, got ${steps}`);
    if (steps > 1 && !this.canEncode) throw new Error("this file holds no encoder: only 1-step samples");
  }

  private requireEncoder(): Network {
    if (!this.encoder) throw new Error("this file holds no encoder: it can decode, not encode");
    return this.encoder;
  }
}

export function batchOf(values: Float32Array, perItem: number, what: string): number {
  const batch = values.length / perItem;
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`${what} has ${values.length} values, not a multiple of ${perItem}`);
  return batch;
}

function doubled(values: Float32Array): Float32Array {
  const out = new Float32Array(values.length * 2);
  out.set(values);
  out.set(values, values.length);
  return out;
}

/**
 * Each of `rows` rows of L values onto the sphere of `radius`: f(z) = z * radius / max(||z||, 1e-12), or with noise
 * f(f(z) + sigma * noise) (the re-noising of a refinement round), as src/kernels/sphere.wgsl.
 */
export function project(
  z: Float32Array,
  rows: number,
  L: number,
  radius: number,
  renoise?: { noise: Float32Array; sigma: number },
): Float32Array {
  const out = new Float32Array(rows * L);
  for (let r = 0; r < rows; r++) {
    const base = r * L;
    const scale = radius / Math.max(Math.sqrt(sumOfSquares(z, base, L)), 1e-12);
    for (let e = 0; e < L; e++) out[base + e] = z[base + e] * scale;
    if (!renoise) continue;
    for (let e = 0; e < L; e++) out[base + e] += renoise.sigma * renoise.noise[base + e];
    const scale2 = radius / Math.max(Math.sqrt(sumOfSquares(out, base, L)), 1e-12);
    for (let e = 0; e < L; e++) out[base + e] *= scale2;
  }
  return out;
}

function sumOfSquares(values: Float32Array, base: number, count: number): number {
  let sum = 0;
  for (let e = 0; e < count; e++) sum += values[base + e] * values[base + e];
  return sum;
}

/**
 * Classifier-free guidance on a doubled batch (first half conditional, second half the null class): both halves
 * become u + scale * (c - u), clamped to [-1, 1] for pixels (as ops.guidanceInPlace).
 */
export function mixHalves(values: Float32Array, scale: number, clamp: boolean): void {
  const half = values.length / 2;
  for (let i = 0; i < half; i++) {
    const u = values[i + half];
    let g = u + scale * (values[i] - u);
    if (clamp) g = Math.min(1, Math.max(-1, g));
    values[i] = g;
    values[i + half] = g;
  }
}
