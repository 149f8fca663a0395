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

import type { LDMConfig, SOMARConfig, VQVAEConfig } from "./config";
import { parseWeightFile, readParameter, WebFormatError, type WeightFile } from "./format";
import type { Gpu, Workspace } from "./gpu";
import { GraphBuilder, type GraphIO, type NetworkTraits } from "./graph";
import { aeDecoder, aeEncoderHead, buildAutoencoderGraphs, type AutoencoderShape } from "./graph_ldm";
import { decodeLatentGraph, encodeLatentGraph, type NormGroups } from "./graph_vqvae";
import { WebModel, type Graphs } from "./model";
import { normalizedRows } from "./tokenmap";
import {
  reconstructThroughTokens,
  requireCodebook,
  SOMAR_CANNOT_SAMPLE,
  SomarCodebook,
  checkSomarConfig,
  somarAutoencoder,
  type Atlas,
  type SOMARPageModel,
  type SomarReconstruction,
} from "./somar_core";
import type { PatchLayout } from "./somar_grid";

export { SOMAR_CANNOT_SAMPLE, SOMAR_KINDS, somarUnsupported } from "./somar_core";
export type { Atlas, SomarReconstruction } from "./somar_core";

const TRAITS: NetworkTraits = { numClasses: 0, condDim: 0, norm: "group" };

export class SOMARModel extends WebModel<SOMARConfig> implements SOMARPageModel {
  readonly latentShape: number[]; // the autoencoder's latent map (C, h, w)
  readonly latentSize: number;
  readonly radius = 1; // unused: no sphere
  readonly canEncode = true;
  readonly canSample = false;
  readonly cannotSample: string;
  readonly codebook: SomarCodebook | null; // the finest level; null for an autoencoder file
  readonly layout: PatchLayout | null;
  readonly units: number; // K of the finest level
  readonly codes: Float32Array; // (K, D)
  readonly grid: Float32Array; // (K, 2) SOM grid (row, col) of each unit
  readonly autoencoderFamily: "somar" | "ldm" | "vqvae";
  private ae: AutoencoderShape; // a vqvae's config when autoencoderFamily is "vqvae"
  private prefix: string; // of the autoencoder's encoder/decoder tensors

  private constructor(gpu: Gpu, file: WeightFile, source: string) {
    super(gpu, file);
    const cfg = this.config;
    const autoencoder = somarAutoencoder(cfg);
    this.cannotSample = SOMAR_CANNOT_SAMPLE[cfg.kind];
    this.autoencoderFamily = autoencoder.family;
    this.ae = autoencoder.config as unknown as AutoencoderShape;
    this.prefix = { autoencoder: "", codebook: "autoencoder.net.", prior: "codebook.autoencoder.net." }[cfg.kind];
    this.latentShape = autoencoder.latentShape;
    this.latentSize = this.latentShape[0] * this.latentShape[1] * this.latentShape[2];
    const read = (name: string) => readParameter(this.file, name);
    this.codebook = cfg.kind === "autoencoder" ? null : new SomarCodebook(cfg, this.latentShape, read, source);
    this.layout = this.codebook?.layout ?? null;
    this.units = this.codebook?.units ?? 0;
    this.codes = this.codebook?.codes ?? new Float32Array(0);
    this.grid = this.codebook?.grid ?? new Float32Array(0);
  }

  /** Parse and verify a sphere-web file holding a somar model, and build the batch-1 graphs. */
  static async load(gpu: Gpu, buffer: ArrayBuffer, source = "weights"): Promise<SOMARModel> {
    return SOMARModel.fromFile(gpu, await parseWeightFile(buffer, source), source);
  }

  /** A model from a parsed file (a bad or unsupported file fails here, not at the first call). */
  static fromFile(gpu: Gpu, file: WeightFile, source = "weights"): SOMARModel {
    const cfg = file.config;
    if (cfg.family !== "somar") throw new WebFormatError(`'${source}' holds a '${cfg.family}' model, not a somar model`);
    checkSomarConfig(cfg, source);
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

  /** Units (n, N) of latent maps (n, C, h, w): each patch's best-matching unit of the finest level. */
  tokensOf(maps: Float32Array): Int32Array {
    return requireCodebook(this.codebook).tokensOf(maps);
  }

  /** Images (n, C, S, S) in [-1, 1] of token grids (n, N) (SOMARCodebook.decode_tokens of the finest level). */
  decodeTokens(tokens: ArrayLike<number>): Promise<Float32Array> {
    return this.decode(requireCodebook(this.codebook).mapsOf(tokens));
  }

  /** Units (n, N) of images: encoded on the GPU, matched on the CPU (SOMARCodebook.tokenize's finest level). */
  async tokenize(images: Float32Array): Promise<Int32Array> {
    return this.tokensOf(await this.encode(images));
  }

  /** Images through their tokens (SOMARCodebook.reconstruct; an autoencoder file: decode(encode(x))), the tokens, times. */
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

  /** The finest level's atlas (SOMARCodebook.codebook_atlas): every unit decoded, cropped and placed on its grid cell. */
  atlas(): Promise<Atlas> {
    return requireCodebook(this.codebook).atlas((maps) => this.decode(maps));
  }

  /** (K, 3) colours in [-1, 1] of the units by their SOM grid place (a token map's colours). */
  unitColors(): Float32Array {
    return requireCodebook(this.codebook).unitColors();
  }

  /** The token map (3, rows, cols) in [-1, 1] of one token grid (N,): each unit in its colour. */
  tokenMap(tokens: ArrayLike<number>): Float32Array {
    return requireCodebook(this.codebook).tokenMap(tokens);
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
