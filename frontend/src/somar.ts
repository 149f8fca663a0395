/**
 * A somar model (models/somar.py) on WebGPU. The autoencoder runs on the GPU (graph_ldm.ts's conv blocks: a somar
 * autoencoder's encoder ends in tanh, an ldm autoencoder gives its posterior mean; graph_vqvae.ts's for a vqvae: its
 * pre-quantisation latent, on the unit sphere when it looks codes up by cosine); the codebook's finest level runs
 * on the CPU (somar_grid.ts): a token is a SOM unit, its code one P x P patch of the latent map. kind "codebook" and
 * "prior" files decode token grids (SOMARCodebook.decode_tokens), reconstruct through the best-matching units
 * (reconstruct) and draw the codebook atlas (codebook_atlas); a prior's transformer does not run in the page (the
 * web format's prior is optional): the page paints tokens instead of sampling them. kind "autoencoder" files
 * reconstruct (decode(encode(x)), clamped). Priors over a vqvae's tokens are refused in one line.
 */

import { vqvaeGrid, type LDMConfig, type SOMARConfig, type VQVAEConfig } from "./config";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import type { Gpu, Workspace } from "./gpu";
import { GraphBuilder, type GraphIO, type NetworkTraits } from "./graph";
import { aeDecoder, aeEncoderHead, buildAutoencoderGraphs, type AutoencoderShape } from "./graph_ldm";
import { decodeLatentGraph, encodeLatentGraph, type NormGroups } from "./graph_vqvae";
import { WebModel, type Graphs, type Timings } from "./model";
import { UnsupportedModelError } from "./psvae";
import { normalizedRows } from "./tokenmap";
import {
  atlasGeometry,
  atlasMaps,
  atlasPicture,
  gridColors,
  middleToken,
  nearestUnits,
  patchify,
  patchLayout,
  tokenMaps,
  tokenRegion,
  type AtlasGeometry,
  type PatchLayout,
} from "./somar_grid";

export const SOMAR_KINDS = ["autoencoder", "codebook", "prior"] as const;
const TRAITS: NetworkTraits = { numClasses: 0, condDim: 0, norm: "group" };
const ATLAS_BATCH = 16; // units decoded per pass when drawing the atlas (one session size, bounded memory)

/** Why a file of each kind has no Generate button (models/somar.py cannot_sample_reason; the prior's: not in the page). */
export const SOMAR_CANNOT_SAMPLE: Record<SOMARConfig["kind"], string> = {
  autoencoder: "a stage-1 autoencoder: its somar_prior_* model samples",
  codebook: "a stage-2 codebook: its somar_prior_* model samples; here you paint token grids with its units instead",
  prior: "the prior does not run in this page (optional in the web format): paint token grids with its codebook's units instead",
};

/** Why the page does not show a somar model whose codebook is of this family (null when it does): a prior over a vqvae's tokens. */
export function somarUnsupported(codebookFamily: string | null | undefined): string | null {
  if (codebookFamily === "vqvae") {
    return "a somar prior over a vqvae's tokens is not shown in this page (the prior does not run here; load the vqvae's own file to reconstruct through its tokens)";
  }
  return null;
}

export interface SomarReconstruction {
  images: Float32Array; // (n, C, S, S) in [-1, 1]
  tokens: Int32Array | null; // (n, N) units of the finest level; null for an autoencoder file
  timings: Timings;
}

export interface Atlas {
  picture: Float32Array; // (C, height, width) in [-1, 1]
  geometry: AtlasGeometry;
}

/** The codebook stage of a file's config: its own (codebook), the saved one or its own fields (prior); null for kind autoencoder. */
function codebookConfig(cfg: SOMARConfig): SOMARConfig | null {
  if (cfg.kind === "autoencoder") return null;
  if (cfg.kind === "codebook") return cfg;
  return (cfg.codebook as SOMARConfig | null) ?? { ...cfg, kind: "codebook", codebook: null };
}

export class SOMARModel extends WebModel<SOMARConfig> {
  readonly latentShape: number[]; // the autoencoder's latent map (C, h, w)
  readonly latentSize: number;
  readonly radius = 1; // unused: no sphere
  readonly canEncode = true;
  readonly canSample = false;
  readonly cannotSample: string;
  readonly layout: PatchLayout | null; // the finest level's patches; null for an autoencoder file
  readonly units: number; // K of the finest level
  readonly codes: Float32Array; // (K, D), as stored (F16 outside fp32 files, exactly as the Python reader)
  readonly grid: Float32Array; // (K, 2) SOM grid (row, col) of each unit
  readonly autoencoderFamily: "somar" | "ldm" | "vqvae";
  private ae: AutoencoderShape; // a vqvae's config when autoencoderFamily is "vqvae"
  private prefix: string; // of the autoencoder's encoder/decoder tensors
  private colors: Float32Array | null = null;

  private constructor(gpu: Gpu, file: WeightFile, source: string) {
    super(gpu, file);
    const cfg = this.config;
    const codebook = codebookConfig(cfg);
    this.cannotSample = SOMAR_CANNOT_SAMPLE[cfg.kind];
    this.autoencoderFamily = codebook?.autoencoder_family ?? "somar";
    this.ae = (codebook?.autoencoder as unknown as AutoencoderShape | null) ?? codebook ?? cfg;
    this.prefix = { autoencoder: "", codebook: "autoencoder.net.", prior: "codebook.autoencoder.net." }[cfg.kind];
    if (this.autoencoderFamily === "vqvae") {
      const vq = this.ae as unknown as VQVAEConfig;
      this.latentShape = [vq.codebook_dim, vqvaeGrid(vq), vqvaeGrid(vq)]; // SOMARConfig.map_shape
    } else {
      const side = this.ae.image_size / 2 ** (this.ae.ae_mults.length - 1);
      this.latentShape = [this.ae.latent_channels, side, side];
    }
    this.latentSize = this.latentShape[0] * this.latentShape[1] * this.latentShape[2];
    [this.layout, this.units, this.codes, this.grid] = [null, 0, new Float32Array(0), new Float32Array(0)];
    if (codebook) [this.layout, this.units, this.codes, this.grid] = this.readLevel(codebook, source);
  }

  /** The finest level's layout, unit count, codes and grid, checked against the config. */
  private readLevel(codebook: SOMARConfig, source: string): [PatchLayout, number, Float32Array, Float32Array] {
    const level = codebook.level_patches.length - 1;
    const layout = patchLayout(this.latentShape, codebook.level_patches[level]);
    const somPrefix = this.config.kind === "prior" ? "codebook.levels." : "levels.";
    const codes = readParameter(this.file, `${somPrefix}${level}.codes`);
    const units = codebook.level_sizes[level];
    if (codes.shape.length !== 2 || codes.shape[0] !== units || codes.shape[1] !== layout.dim) {
      throw new WebFormatError(
        `'${source}': '${somPrefix}${level}.codes' has shape [${codes.shape}] but the config implies [${units}, ${layout.dim}]`,
      );
    }
    const grid = readParameter(this.file, `${somPrefix}${level}.grid`);
    if (grid.shape.length !== 2 || grid.shape[0] !== units || grid.shape[1] !== 2) {
      throw new WebFormatError(`'${source}': '${somPrefix}${level}.grid' has shape [${grid.shape}], expected [${units}, 2]`);
    }
    return [layout, units, codes.data, grid.data];
  }

  /** Parse and verify a sphere-web file holding a somar model, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<SOMARModel> {
    return SOMARModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad or unsupported file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): SOMARModel {
    const cfg = file.config;
    if (cfg.family !== "somar") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a somar model`);
    if (!(SOMAR_KINDS as readonly string[]).includes(cfg.kind))
      throw new WebFormatError(`'${source}' has unknown somar kind '${cfg.kind}'`);
    const codebook = codebookConfig(cfg);
    const unsupported = somarUnsupported((codebook as { family?: string } | null)?.family);
    if (unsupported) throw new UnsupportedModelError(`'${source}': ${unsupported}`);
    return new SOMARModel(gpu, file, source).checkBuilds();
  }

  /** The autoencoder's encoder (images -> latent map) and decoder (latent map -> images clamped to [-1, 1]). */
  buildGraphs(ws: Workspace, batch: number, encoderIO: GraphIO, decoderIO: GraphIO): Graphs {
    if (this.autoencoderFamily === "ldm") {
      return buildAutoencoderGraphs(this.ae as LDMConfig, this.prefix, true, this.weights, ws, batch, encoderIO, decoderIO);
    }
    if (this.autoencoderFamily === "vqvae") {
      const vq = this.ae as unknown as VQVAEConfig;
      const encoder = new GraphBuilder(vq, this.weights, ws, batch, TRAITS);
      const decoder = new GraphBuilder(vq, this.weights, ws, batch, TRAITS);
      encodeLatentGraph(encoder, encoderIO.input, encoderIO.output, this.prefix);
      decodeLatentGraph(decoder, decoderIO.input, decoderIO.output, this.prefix);
      return { encoder: encoder.steps, decoder: decoder.steps };
    }
    const groups: NormGroups = { norm_groups: this.ae.ae_groups };
    const encoder = new GraphBuilder(groups, this.weights, ws, batch, TRAITS);
    const decoder = new GraphBuilder(groups, this.weights, ws, batch, TRAITS);
    aeEncoderHead(encoder, this.ae, this.prefix, encoderIO.input, encoderIO.output, "tanh"); // SOMARAutoencoder.encode
    aeDecoder(decoder, this.ae, this.prefix, decoderIO);
    return { encoder: encoder.steps, decoder: decoder.steps };
  }

  /** The latent maps (n, C, h, w) of images (FrozenMap.encode): a cosine vqvae's are put on the unit sphere per position. */
  async encode(images: Float32Array): Promise<Float32Array> {
    const maps = await super.encode(images);
    const vq = this.ae as unknown as VQVAEConfig;
    if (this.autoencoderFamily !== "vqvae" || vq.quantizer !== "vq" || !vq.l2_norm) return maps;
    return unitChannels(maps, this.latentShape[0], this.latentShape[1] * this.latentShape[2]);
  }

  sample(): Promise<Float32Array> {
    return Promise.reject(new Error(this.cannotSample));
  }

  private requireCodebook(): PatchLayout {
    if (!this.layout) throw new Error("a somar autoencoder file has no codebook: it reconstructs, it has no tokens");
    return this.layout;
  }

  /** Units (n, N) of latent maps (n, C, h, w): each patch's best-matching unit of the finest level. */
  tokensOf(maps: Float32Array): Int32Array {
    const layout = this.requireCodebook();
    return nearestUnits(patchify(maps, layout), this.codes, layout.dim);
  }

  /** Images (n, C, S, S) in [-1, 1] of token grids (n, N) (SOMARCodebook.decode_tokens of the finest level). */
  decodeTokens(tokens: ArrayLike<number>): Promise<Float32Array> {
    return this.decode(tokenMaps(tokens, this.codes, this.requireCodebook()));
  }

  /** Units (n, N) of images: encoded on the GPU, matched on the CPU (SOMARCodebook.tokenize's finest level). */
  async tokenize(images: Float32Array): Promise<Int32Array> {
    return this.tokensOf(await this.encode(images));
  }

  /** Images through their tokens (SOMARCodebook.reconstruct; an autoencoder file: decode(encode(x))), the tokens, times. */
  async reconstruct(images: Float32Array): Promise<SomarReconstruction> {
    const start = performance.now();
    const maps = await this.encode(images);
    const tokens = this.layout ? this.tokensOf(maps) : null;
    const encodeMs = performance.now() - start;
    const out = await this.decode(tokens ? tokenMaps(tokens, this.codes, this.layout!) : maps);
    this.lastTimings = { encodeMs, decodeMs: performance.now() - start - encodeMs, totalMs: performance.now() - start };
    return { images: out, tokens, timings: this.lastTimings };
  }

  /** The finest level's atlas (SOMARCodebook.codebook_atlas): every unit decoded, cropped and placed on its grid cell. */
  async atlas(): Promise<Atlas> {
    const layout = this.requireCodebook();
    const maps = atlasMaps(this.codes, layout);
    const count = this.config.in_channels * this.config.image_size ** 2;
    const images = new Float32Array(this.units * count);
    const batch = Math.min(ATLAS_BATCH, this.units);
    for (let first = 0; first < this.units; first += batch) {
      const chunk = new Float32Array(batch * this.latentSize); // the last one padded with zero maps: one session size
      chunk.set(maps.subarray(first * this.latentSize, Math.min(this.units, first + batch) * this.latentSize));
      const decoded = await this.decode(chunk);
      images.set(decoded.subarray(0, Math.min(batch, this.units - first) * count), first * count);
    }
    const region = tokenRegion(layout, this.config.image_size, middleToken(layout));
    const geometry = atlasGeometry(this.grid, region.height, region.width);
    return { picture: atlasPicture(images, this.config.in_channels, this.config.image_size, region, this.grid, geometry), geometry };
  }

  /** (K, 3) colours in [-1, 1] of the units by their SOM grid place (a token map's colours). */
  unitColors(): Float32Array {
    this.colors ??= gridColors(this.grid);
    return this.colors;
  }

  /** The token map (3, rows, cols) in [-1, 1] of one token grid (N,): each unit in its colour. */
  tokenMap(tokens: ArrayLike<number>): Float32Array {
    const colors = this.unitColors();
    const n = this.requireCodebook().tokens;
    const out = new Float32Array(3 * n);
    for (let t = 0; t < n; t++) for (let c = 0; c < 3; c++) out[c * n + t] = colors[tokens[t] * 3 + c];
    return out;
  }
}

/** Maps (n, C, hw) with each position's C values scaled to unit length (F.normalize over dim 1). */
export function unitChannels(maps: Float32Array, channels: number, hw: number): Float32Array {
  const out = new Float32Array(maps.length);
  const rows = new Float32Array(channels);
  for (let b = 0; b * channels * hw < maps.length; b++) {
    for (let p = 0; p < hw; p++) {
      for (let c = 0; c < channels; c++) rows[c] = maps[(b * channels + c) * hw + p];
      const unit = normalizedRows(rows, channels);
      for (let c = 0; c < channels; c++) out[(b * channels + c) * hw + p] = unit[c];
    }
  }
  return out;
}
