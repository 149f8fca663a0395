/**
 * The CPU path of the tokenizer, diffusion and somar families: their networks are ONNX sessions (src/ort.ts), and
 * everything between passes is the code the WebGPU classes run (vqvae_core.ts, ldm_core.ts, somar_core.ts), so both
 * backends draw the same random numbers and give the same results up to float error.
 * - CpuVQVAEModel: encoder images -> tokens (nearest codes, int64), decoder tokens -> images; the token map.
 * - CpuLDMModel: the UNet's raw output (x, t, labels) drives the shared sampler (DDIM any η, DDPM, guidance on a
 *   doubled batch, onStep previews); the autoencoder's encoder (posterior mean) and decoder (clamped).
 * - CpuSOMARModel: the autoencoder's encoder (latent maps as FrozenMap.encode) and decoder; tokens, token grids,
 *   reconstruction through the tokens and the atlas by the shared codebook.
 */

import type { LDMConfig, SOMARConfig, VQVAEConfig } from "./config";
import { batchOf, CpuBase, type Graph } from "./cpu_model";
import type { Sampler } from "./diffusion";
import {
  AE_CANNOT_SAMPLE,
  DiffusionSampler,
  ldmLatentShape,
  PIXEL_CANNOT_RECONSTRUCT,
  type Conditioning,
  type LDMPageModel,
  type LDMSampleOptions,
} from "./ldm_core";
import type { Timings } from "./model";
import {
  reconstructThroughTokens,
  requireCodebook,
  SOMAR_CANNOT_SAMPLE,
  somarAutoencoder,
  type Atlas,
  type SomarCodebook,
  type SOMARPageModel,
  type SomarReconstruction,
} from "./somar_core";
import type { PatchLayout } from "./somar_grid";
import { CANNOT_SAMPLE, type TokenReconstruction, type VQVAECodebook, type VQVAEPageModel } from "./vqvae_core";

/** A tokenizer on the CPU: images -> tokens (n, h, w) -> images (VQVAE.encode / decode_indices). */
export class CpuVQVAEModel extends CpuBase<VQVAEConfig> implements VQVAEPageModel {
  readonly latentShape: number[]; // the token grid (h, w)
  readonly latentSize: number;
  readonly radius = 1; // unused: a tokenizer has no sphere
  readonly canEncode = true;
  readonly canSample = false;
  readonly grid: number;

  constructor(
    config: VQVAEConfig,
    readonly codebook: VQVAECodebook,
    private encoder: Graph,
    private decoder: Graph,
  ) {
    super(config, [encoder, decoder]);
    this.grid = codebook.grid;
    this.latentShape = [this.grid, this.grid];
    this.latentSize = this.grid * this.grid;
  }

  /** Tokens (n, h, w) of images (n, C, S, S) in [-1, 1]: each position's nearest code (VQVAE.encode). */
  encode(images: Float32Array): Promise<Float32Array> {
    return this.timed("encode", () => this.encoder.run([images], batchOf(images, this.imageSize, "images")));
  }

  /** Images in [-1, 1] of tokens (n, h, w) (VQVAE.decode_indices). */
  decode(tokens: Float32Array): Promise<Float32Array> {
    return this.timed("decode", () => this.decoder.run([tokens], batchOf(tokens, this.latentSize, "tokens")));
  }

  sample(): Promise<Float32Array> {
    return Promise.reject(new Error(CANNOT_SAMPLE));
  }

  /** Images through their tokens (VQVAE.reconstruct with steps 1), the tokens, and encode/decode times. */
  reconstruct(images: Float32Array): Promise<TokenReconstruction> {
    return this.exclusive(async () => {
      const batch = batchOf(images, this.imageSize, "images");
      const start = performance.now();
      const tokens = await this.encoder.run([images], batch);
      const encodeMs = performance.now() - start;
      const out = await this.decoder.run([tokens], batch);
      this.lastTimings = { encodeMs, decodeMs: performance.now() - start - encodeMs, totalMs: performance.now() - start };
      return { images: out, tokens, timings: this.lastTimings };
    });
  }

  /** The token map of tokens (n, h, w): images (n, 3, h, w) in [-1, 1], each code in its colour (VQVAE.token_map). */
  tokenMap(tokens: Float32Array): Float32Array {
    return this.codebook.tokenMap(tokens);
  }
}

/** The networks of an ldm file on the CPU: a UNet (latent, pixel), the autoencoder's encoder and decoder (autoencoder, latent). */
export interface LDMGraphs {
  unet: Graph | null; // x (B, c, h, w), t int64 (B,), labels int64 (B,) on a conditional UNet -> raw prediction
  encoder: Graph | null; // x -> posterior mean
  decoder: Graph | null; // unscaled z -> x clamped to [-1, 1]
}

/** A latent-diffusion model on the CPU (LDMModel's semantics, the UNet and autoencoder as ONNX sessions). */
export class CpuLDMModel extends CpuBase<LDMConfig> implements LDMPageModel {
  readonly latentShape: number[];
  readonly latentSize: number;
  readonly radius = 1; // unused: no sphere
  readonly canEncode: boolean;
  readonly canSample: boolean;
  readonly sampler: Sampler;
  readonly eta: number;
  private diffusion: DiffusionSampler;

  constructor(
    config: LDMConfig,
    readonly latentScale: number, // latent kind: the stored latent_scale, else 1
    private graphs: LDMGraphs,
  ) {
    super(config, [graphs.unet, graphs.encoder, graphs.decoder]);
    this.latentShape = ldmLatentShape(config);
    this.latentSize = this.latentShape.reduce((a, b) => a * b, 1);
    this.canEncode = config.kind !== "pixel";
    this.canSample = config.kind !== "autoencoder";
    this.diffusion = new DiffusionSampler(config, latentScale, {
      unet: (x, t, labels) => this.unetPass(x, t, labels),
      decodeLatents: (z, n) => this.network("decoder").run([z], n),
    });
    this.sampler = this.diffusion.sampler;
    this.eta = this.diffusion.eta;
  }

  private network(name: keyof LDMGraphs): Graph {
    const graph = this.graphs[name];
    if (!graph) throw new Error(`this ${this.config.kind} model has no ${name}`);
    return graph;
  }

  /** One UNet pass of x.length / latentSize rows at timestep t (the same t for every row). */
  private unetPass(x: Float32Array, t: number, labels: Uint32Array | null): Promise<Float32Array> {
    const rows = x.length / this.latentSize;
    const times = new Int32Array(rows).fill(t);
    return this.network("unet").run(labels ? [x, times, labels] : [x, times], rows);
  }

  /** The autoencoder's posterior mean (n, c, h, w) of images; pixel models refuse. */
  encode(images: Float32Array): Promise<Float32Array> {
    if (!this.canEncode) return Promise.reject(new Error(PIXEL_CANNOT_RECONSTRUCT));
    return this.timed("encode", () => this.network("encoder").run([images], batchOf(images, this.imageSize, "images")));
  }

  /** Images of unscaled latents (the autoencoder's decoder, clamped); a pixel model's "decoder" is the identity. */
  decode(latents: Float32Array): Promise<Float32Array> {
    const batch = batchOf(latents, this.latentSize, "latents");
    if (this.config.kind === "pixel") return Promise.resolve(latents.slice());
    return this.timed("decode", () => this.network("decoder").run([latents], batch));
  }

  /** The guided denoiser's output on x_t at timestep t (one UNet pass, of the doubled batch when guided). */
  denoise(x: Float32Array, t: number, conditioning: Conditioning = {}): Promise<Float32Array> {
    return this.exclusive(() => this.diffusion.denoise(x, t, conditioning));
  }

  /** n images by DDIM or DDPM (DiffusionModel.sample), onStep seeing each step's x̂_0 decoded. */
  sample(n: number, options: LDMSampleOptions = {}): Promise<Float32Array> {
    if (!this.canSample) return Promise.reject(new Error(AE_CANNOT_SAMPLE));
    return this.exclusive(async () => {
      const { images, timings } = await this.diffusion.sample(n, options);
      this.lastTimings = timings;
      return images;
    });
  }

  /** One DDIM step (η = 0, no labels) from x_t at times[index] of a `steps`-step run: x_prev. */
  ddimStep(x: Float32Array, steps: number, index: number): Promise<Float32Array> {
    return this.exclusive(() => this.diffusion.ddimStep(x, steps, index));
  }

  /** decode(mean(x)) clamped (KLAutoencoder.reconstruct) with encode/decode times; pixel models refuse. */
  reconstruct(images: Float32Array): Promise<{ images: Float32Array; timings: Timings }> {
    if (!this.canEncode) return Promise.reject(new Error(PIXEL_CANNOT_RECONSTRUCT));
    return this.exclusive(async () => {
      const batch = batchOf(images, this.imageSize, "images");
      const start = performance.now();
      const mean = await this.network("encoder").run([images], batch);
      const encodeMs = performance.now() - start;
      const out = await this.network("decoder").run([mean], batch);
      this.lastTimings = { encodeMs, decodeMs: performance.now() - start - encodeMs, totalMs: performance.now() - start };
      return { images: out, timings: this.lastTimings };
    });
  }
}

/** A somar model on the CPU: the frozen autoencoder as ONNX sessions, the codebook's finest level as on WebGPU. */
export class CpuSOMARModel extends CpuBase<SOMARConfig> implements SOMARPageModel {
  readonly latentShape: number[];
  readonly latentSize: number;
  readonly radius = 1;
  readonly canEncode = true;
  readonly canSample = false;
  readonly cannotSample: string;
  readonly layout: PatchLayout | null;
  readonly units: number;
  readonly codes: Float32Array;
  readonly grid: Float32Array;
  readonly autoencoderFamily: "somar" | "ldm" | "vqvae";

  constructor(
    config: SOMARConfig,
    readonly codebook: SomarCodebook | null, // the finest level; null for an autoencoder file
    private encoder: Graph, // images -> latent maps (FrozenMap.encode)
    private decoder: Graph, // latent maps -> images clamped to [-1, 1]
  ) {
    super(config, [encoder, decoder]);
    const autoencoder = somarAutoencoder(config);
    this.autoencoderFamily = autoencoder.family;
    this.latentShape = autoencoder.latentShape;
    this.latentSize = this.latentShape.reduce((a, b) => a * b, 1);
    this.cannotSample = SOMAR_CANNOT_SAMPLE[config.kind];
    this.layout = codebook?.layout ?? null;
    this.units = codebook?.units ?? 0;
    this.codes = codebook?.codes ?? new Float32Array(0);
    this.grid = codebook?.grid ?? new Float32Array(0);
  }

  /** The latent maps (n, C, h, w) of images (FrozenMap.encode). */
  encode(images: Float32Array): Promise<Float32Array> {
    return this.timed("encode", () => this.encoder.run([images], batchOf(images, this.imageSize, "images")));
  }

  /** Images (n, C, S, S) in [-1, 1] of latent maps. */
  decode(maps: Float32Array): Promise<Float32Array> {
    return this.timed("decode", () => this.decoder.run([maps], batchOf(maps, this.latentSize, "latent maps")));
  }

  sample(): Promise<Float32Array> {
    return Promise.reject(new Error(this.cannotSample));
  }

  /** Units (n, N) of latent maps: each patch's best-matching unit of the finest level. */
  tokensOf(maps: Float32Array): Int32Array {
    return requireCodebook(this.codebook).tokensOf(maps);
  }

  /** Images of token grids (n, N) (SOMARCodebook.decode_tokens of the finest level). */
  decodeTokens(tokens: ArrayLike<number>): Promise<Float32Array> {
    return this.decode(requireCodebook(this.codebook).mapsOf(tokens));
  }

  /** Units (n, N) of images (SOMARCodebook.tokenize's finest level). */
  async tokenize(images: Float32Array): Promise<Int32Array> {
    return this.tokensOf(await this.encode(images));
  }

  /** Images through their tokens (an autoencoder file: decode(encode(x))), the tokens, times. */
  async reconstruct(images: Float32Array): Promise<SomarReconstruction> {
    const out = await reconstructThroughTokens(
      images,
      this.codebook,
      (x) => this.encode(x),
      (maps) => this.decode(maps),
    );
    this.lastTimings = out.timings;
    return out;
  }

  /** The finest level's atlas (SOMARCodebook.codebook_atlas). */
  atlas(): Promise<Atlas> {
    return requireCodebook(this.codebook).atlas((maps) => this.decode(maps));
  }

  /** The token map (3, rows, cols) in [-1, 1] of one token grid: each unit in its colour. */
  tokenMap(tokens: ArrayLike<number>): Float32Array {
    return requireCodebook(this.codebook).tokenMap(tokens);
  }
}
