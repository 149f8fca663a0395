/**
 * A VQ-VAE tokenizer (models/vqvae.py `VQVAE`) on WebGPU: `encode` maps images to tokens (codebook indices
 * (n, h, w), as float values), `decode` maps tokens to images in [-1, 1] (VQVAE.decode_indices), `reconstruct`
 * runs both and also returns the tokens. It cannot sample (no prior over its tokens): `sample` says why.
 * `tokenColors` colours each code by the first three principal components of the codebook (VQVAE.token_map).
 */

import { vqvaeGrid, type VQVAEConfig } from "./config";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import type { Gpu, Workspace } from "./gpu";
import type { GraphIO } from "./graph";
import { buildVqvaeGraphs } from "./graph_vqvae";
import { WebModel, type Graphs, type Timings } from "./model";
import { UnsupportedModelError } from "./psvae";
import { codebookColors, normalizedRows } from "./tokenmap";

export const CODEBOOK = "quantizer.embedding.weight";

/** Why a tokenizer has no Generate button (models/vqvae.py VQVAE.cannot_sample_reason, shortened). */
export const CANNOT_SAMPLE = "a VQ-VAE is a tokenizer with no prior over its tokens: it reconstructs through its tokens but cannot sample";

/** Why the page does not show a vqvae with this quantizer, or null when it does. */
export function vqvaeUnsupported(quantizer: string | undefined): string | null {
  if (quantizer !== undefined && quantizer !== "vq") {
    return `vqvae models with quantizer '${quantizer}' are not shown in this page (it reads a stored codebook: quantizer 'vq')`;
  }
  return null;
}

export interface TokenReconstruction {
  images: Float32Array; // (n, C, S, S) in [-1, 1]
  tokens: Float32Array; // (n, h, w) codebook indices
  timings: Timings;
}

export class VQVAEModel extends WebModel<VQVAEConfig> {
  readonly latentShape: number[]; // the token grid (h, w)
  readonly latentSize: number; // tokens per image
  readonly radius = 1; // unused: a tokenizer has no sphere
  readonly canEncode = true;
  readonly canSample = false;
  readonly grid: number;
  readonly codebook: Float32Array; // (K, d) as used for lookup (unit rows when l2_norm)
  private codebookGpu: GPUBuffer;
  private colors: Float32Array | null = null;

  private constructor(gpu: Gpu, file: WeightFile) {
    super(gpu, file);
    this.grid = vqvaeGrid(this.config);
    this.latentShape = [this.grid, this.grid];
    this.latentSize = this.grid * this.grid;
    const stored = readParameter(file, CODEBOOK);
    const { codebook_size: K, codebook_dim: d } = this.config;
    if (stored.shape.length !== 2 || stored.shape[0] !== K || stored.shape[1] !== d) {
      throw new WebFormatError(`'${CODEBOOK}' has shape [${stored.shape}] but the config implies [${K}, ${d}]`);
    }
    this.codebook = this.config.l2_norm ? normalizedRows(stored.data, d) : stored.data;
    this.codebookGpu = this.weights.owner.upload(this.codebook, CODEBOOK);
  }

  /** Parse and verify a sphere-web file holding a vqvae, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<VQVAEModel> {
    return VQVAEModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad or unsupported file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): VQVAEModel {
    const cfg = file.config;
    if (cfg.family !== "vqvae") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a vqvae`);
    const unsupported = vqvaeUnsupported(cfg.quantizer);
    if (unsupported) throw new UnsupportedModelError(`'${source}': ${unsupported}`);
    const levels = cfg.channel_mults?.length ?? 0;
    if (levels < 1 || cfg.image_size % 2 ** (levels - 1) !== 0) {
      throw new WebFormatError(`'${source}': image_size ${cfg.image_size} is not a multiple of 2^${levels - 1} (channel_mults)`);
    }
    if (cfg.num_classes !== 0) throw new WebFormatError(`'${source}' has num_classes ${cfg.num_classes}; a vqvae is unconditional`);
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
    this.colors ??= codebookColors(this.codebook, this.config.codebook_size, this.config.codebook_dim);
    return this.colors;
  }

  /** The token map of tokens (n, h, w): images (n, 3, h, w) in [-1, 1], each code in its colour (VQVAE.token_map). */
  tokenMap(tokens: Float32Array): Float32Array {
    const colors = this.tokenColors();
    const hw = this.latentSize;
    const n = tokens.length / hw;
    const out = new Float32Array(n * 3 * hw);
    for (let b = 0; b < n; b++) {
      for (let p = 0; p < hw; p++) {
        const k = tokens[b * hw + p];
        for (let c = 0; c < 3; c++) out[(b * 3 + c) * hw + p] = colors[k * 3 + c];
      }
    }
    return out;
  }
}
