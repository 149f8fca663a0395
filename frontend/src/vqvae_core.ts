/**
 * What both backends share of a VQ-VAE tokenizer (models/vqvae.py): which quantizers the page reads, the config
 * checks, and the stored codebook with its token-map colours (VQVAE.token_map: each code coloured by its coordinates
 * on the codebook's first three principal components). src/vqvae.ts runs the networks on WebGPU,
 * src/cpu_families.ts on ONNX sessions.
 */

import { vqvaeGrid, type VQVAEConfig } from "./config";
import { WebFormatError } from "./format";
import type { PageModel, Timings } from "./model";
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

/** Refuse a vqvae config of file `source` the page does not run (another quantizer, a grid that does not divide). */
export function checkVqvaeConfig(cfg: VQVAEConfig, source: string): void {
  const unsupported = vqvaeUnsupported(cfg.quantizer);
  if (unsupported) throw new UnsupportedModelError(`'${source}': ${unsupported}`);
  const levels = cfg.channel_mults?.length ?? 0;
  if (levels < 1 || cfg.image_size % 2 ** (levels - 1) !== 0) {
    throw new WebFormatError(`'${source}': image_size ${cfg.image_size} is not a multiple of 2^${levels - 1} (channel_mults)`);
  }
  if (cfg.num_classes !== 0) throw new WebFormatError(`'${source}' has num_classes ${cfg.num_classes}; a vqvae is unconditional`);
}

export interface TokenReconstruction {
  images: Float32Array; // (n, C, S, S) in [-1, 1]
  tokens: Float32Array; // (n, h, w) codebook indices
  timings: Timings;
}

/** What the page uses of a tokenizer on either backend (VQVAEModel on WebGPU, CpuVQVAEModel on the CPU). */
export interface VQVAEPageModel extends PageModel {
  readonly family: "vqvae";
  readonly config: VQVAEConfig;
  readonly grid: number; // side of the token grid
  reconstruct(images: Float32Array): Promise<TokenReconstruction>;
  tokenMap(tokens: Float32Array): Float32Array;
}

/** The codebook of a tokenizer as used for lookup (unit rows when l2_norm) and its token-map colours. */
export class VQVAECodebook {
  readonly codebook: Float32Array; // (K, d)
  readonly grid: number;
  private colors: Float32Array | null = null;

  /** The stored `quantizer.embedding.weight`, checked against the config. */
  constructor(
    private config: VQVAEConfig,
    stored: { shape: number[]; data: Float32Array },
  ) {
    const { codebook_size: K, codebook_dim: d } = config;
    if (stored.shape.length !== 2 || stored.shape[0] !== K || stored.shape[1] !== d) {
      throw new WebFormatError(`'${CODEBOOK}' has shape [${stored.shape}] but the config implies [${K}, ${d}]`);
    }
    this.codebook = config.l2_norm ? normalizedRows(stored.data, d) : stored.data;
    this.grid = vqvaeGrid(config);
  }

  /** (K, 3) colours in [-1, 1] of the codes: the codebook's first three principal components (computed once). */
  tokenColors(): Float32Array {
    this.colors ??= codebookColors(this.codebook, this.config.codebook_size, this.config.codebook_dim);
    return this.colors;
  }

  /** The token map of tokens (n, h, w): images (n, 3, h, w) in [-1, 1], each code in its colour (VQVAE.token_map). */
  tokenMap(tokens: Float32Array): Float32Array {
    const colors = this.tokenColors();
    const hw = this.grid * this.grid;
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
