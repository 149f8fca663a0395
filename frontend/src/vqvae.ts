/**
 * A VQ-VAE tokenizer (models/vqvae.py `VQVAE`) on WebGPU: `encode` maps images to tokens (codebook indices
 * (n, h, w), as float values), `decode` maps tokens to images in [-1, 1] (VQVAE.decode_indices), `reconstruct`
 * runs both and also returns the tokens. It cannot sample (no prior over its tokens): `sample` says why.
 * `tokenColors` colours each code by the first three principal components of the codebook (VQVAE.token_map).
 */

import type { VQVAEConfig } from "./config";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import type { Gpu, Workspace } from "./gpu";
import type { GraphIO } from "./graph";
import { buildVqvaeGraphs } from "./graph_vqvae";
import { WebModel, type Graphs } from "./model";
import { CANNOT_SAMPLE, CODEBOOK, checkVqvaeConfig, VQVAECodebook, type TokenReconstruction, type VQVAEPageModel } from "./vqvae_core";

export { CANNOT_SAMPLE, CODEBOOK, vqvaeUnsupported } from "./vqvae_core";
export type { TokenReconstruction } from "./vqvae_core";

export class VQVAEModel extends WebModel<VQVAEConfig> implements VQVAEPageModel {
  readonly latentShape: number[]; // the token grid (h, w)
  readonly latentSize: number; // tokens per image
  readonly radius = 1; // unused: a tokenizer has no sphere
  readonly canEncode = true;
  readonly canSample = false;
  readonly grid: number;
  readonly codebook: VQVAECodebook; // (K, d) as used for lookup (unit rows when l2_norm), and its colours
  private codebookGpu: GPUBuffer;

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    this.codebook = new VQVAECodebook(this.config, readParameter(file, CODEBOOK));
    this.grid = this.codebook.grid;
    this.latentShape = [this.grid, this.grid];
    this.latentSize = this.grid * this.grid;
    this.codebookGpu = this.weights.owner.upload(this.codebook.codebook, CODEBOOK);
  }

  /** Parse and verify a sphere-web file holding a vqvae, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<VQVAEModel> {
    return VQVAEModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad or unsupported file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): VQVAEModel {
    const cfg = file.config;
    if (cfg.family !== "vqvae") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a vqvae`);
    checkVqvaeConfig(cfg, source);
    return new VQVAEModel(gpu, file).checkBuilds();
  }

  buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs {
    return buildVqvaeGraphs(this.config, this.weights, ws, batch, encoderIO, decoderIO, this.codebookGpu);
  }

  /** Tokens (n, h, w) of images (n, C, S, S) in [-1, 1]: the index of each position's nearest code (VQVAE.encode). */
  encode(images: Float32Array): Promise<Float32Array> {
    return super.encode(images);
  }

  /** Images in [-1, 1] of tokens (n, h, w) (VQVAE.decode_indices). */
  decode(tokens: Float32Array): Promise<Float32Array> {
    return super.decode(tokens);
  }

  sample(): Promise<Float32Array> {
    return Promise.reject(new Error(CANNOT_SAMPLE));
  }

  /** Images through their tokens (VQVAE.reconstruct with steps 1), the tokens, and encode/decode times. */
  reconstruct(images: Float32Array): Promise<TokenReconstruction> {
    return this.exclusive(async () => {
      const batch = this.batchOf(images, this.imageSize, "images");
      const session = this.session(batch, false);
      session.write(session.image, images);
      const start = performance.now();
      await session.runOnly(session.encoder);
      const encodeMs = performance.now() - start;
      const copy = { kind: "copy" as const, src: session.latent, dst: session.sphere, bytes: batch * this.latentSize * 4 };
      const decodeStart = performance.now();
      const out = await session.run([copy, ...session.decoder], session.image, batch * this.imageSize);
      const decodeMs = performance.now() - decodeStart;
      const tokens = await session.run([], session.latent, batch * this.latentSize);
      this.lastTimings = { encodeMs, decodeMs, totalMs: performance.now() - start };
      return { images: out, tokens, timings: this.lastTimings };
    });
  }

  /** (K, 3) colours in [-1, 1] of the codes: the codebook's first three principal components (computed once). */
  tokenColors(): Float32Array {
    return this.codebook.tokenColors();
  }

  /** The token map of tokens (n, h, w): images (n, 3, h, w) in [-1, 1], each code in its colour (VQVAE.token_map). */
  tokenMap(tokens: Float32Array): Float32Array {
    return this.codebook.tokenMap(tokens);
  }
}
