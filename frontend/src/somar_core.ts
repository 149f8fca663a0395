/**
 * What both backends share of a somar model (models/somar.py): the kinds and their reasons, the frozen autoencoder's
 * latent map, and the codebook's finest level over injected encode/decode of latent maps (SomarCodebook): tokens are
 * each patch's best-matching unit, token grids decode through their codes' maps, reconstruction goes through the
 * tokens, and the atlas decodes every unit at the map's middle token (somar_grid.ts holds the plain math).
 * src/somar.ts runs the autoencoder on WebGPU, src/cpu_families.ts on ONNX sessions.
 */

import { vqvaeGrid, type SOMARConfig, type VQVAEConfig } from "./config";
import { WebFormatError } from "./format";
import type { PageModel, Timings } from "./model";
import { UnsupportedModelError } from "./psvae";
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
const ATLAS_BATCH = 16; // units decoded per pass when drawing the atlas (one batch size, bounded memory)

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

/** What the page uses of a somar model on either backend (SOMARModel on WebGPU, CpuSOMARModel on the CPU). */
export interface SOMARPageModel extends PageModel {
  readonly family: "somar";
  readonly config: SOMARConfig;
  readonly cannotSample: string;
  readonly layout: PatchLayout | null; // the finest level's patches; null for an autoencoder file
  readonly units: number;
  readonly grid: Float32Array; // (K, 2) SOM grid (row, col) of each unit
  readonly autoencoderFamily: "somar" | "ldm" | "vqvae";
  tokenize(images: Float32Array): Promise<Int32Array>;
  decodeTokens(tokens: ArrayLike<number>): Promise<Float32Array>;
  reconstruct(images: Float32Array): Promise<SomarReconstruction>;
  atlas(): Promise<Atlas>;
  tokenMap(tokens: ArrayLike<number>): Float32Array;
}

/** The codebook stage of a file's config: its own (codebook), the saved one or its own fields (prior); null for kind autoencoder. */
export function codebookConfig(cfg: SOMARConfig): SOMARConfig | null {
  if (cfg.kind === "autoencoder") return null;
  if (cfg.kind === "codebook") return cfg;
  return (cfg.codebook as SOMARConfig | null) ?? { ...cfg, kind: "codebook", codebook: null };
}

/** Refuse a somar config of file `source` the page does not run: an unknown kind, a prior over a vqvae's tokens. */
export function checkSomarConfig(cfg: SOMARConfig, source: string): void {
  if (!(SOMAR_KINDS as readonly string[]).includes(cfg.kind)) throw new WebFormatError(`'${source}' has unknown somar kind '${cfg.kind}'`);
  const unsupported = somarUnsupported((codebookConfig(cfg) as { family?: string } | null)?.family);
  if (unsupported) throw new UnsupportedModelError(`'${source}': ${unsupported}`);
}

/** The frozen autoencoder of a somar file: its family, its config (a vqvae's, an ldm's or the somar fields) and latent map. */
export interface SomarAutoencoder {
  family: "somar" | "ldm" | "vqvae";
  config: SOMARConfig; // the somar/ldm autoencoder's ae_* fields, or a vqvae's config (read it as VQVAEConfig)
  latentShape: number[]; // (C, h, w): SOMARConfig.map_shape
}

export function somarAutoencoder(cfg: SOMARConfig): SomarAutoencoder {
  const codebook = codebookConfig(cfg);
  const family = codebook?.autoencoder_family ?? "somar";
  const config = (codebook?.autoencoder as unknown as SOMARConfig | null) ?? codebook ?? cfg;
  if (family === "vqvae") {
    const vq = config as unknown as VQVAEConfig;
    return { family, config, latentShape: [vq.codebook_dim, vqvaeGrid(vq), vqvaeGrid(vq)] };
  }
  const side = config.image_size / 2 ** (config.ae_mults.length - 1);
  return { family, config, latentShape: [config.latent_channels, side, side] };
}

/** A stored tensor: float32 values and shape. */
export type TensorReader = (name: string) => { shape: number[]; data: Float32Array };

/** The finest level of a somar codebook: its units' codes and SOM grid, over a backend's decode of latent maps. */
export class SomarCodebook {
  readonly layout: PatchLayout;
  readonly units: number; // K of the finest level
  readonly codes: Float32Array; // (K, D), as stored (F16 outside fp32 files, exactly as the Python reader)
  readonly grid: Float32Array; // (K, 2) SOM grid (row, col) of each unit
  private colors: Float32Array | null = null;

  /** The level's tensors (`levels.<k>.codes` / `.grid`, under "codebook." in a prior) read and checked against the config. */
  constructor(
    private config: SOMARConfig,
    latentShape: number[],
    read: TensorReader,
    source: string,
  ) {
    const codebook = codebookConfig(config)!;
    const level = codebook.level_patches.length - 1;
    this.layout = patchLayout(latentShape, codebook.level_patches[level]);
    const prefix = `${config.kind === "prior" ? "codebook.levels." : "levels."}${level}`;
    const codes = read(`${prefix}.codes`);
    this.units = codebook.level_sizes[level];
    if (codes.shape.length !== 2 || codes.shape[0] !== this.units || codes.shape[1] !== this.layout.dim) {
      throw new WebFormatError(
        `'${source}': '${prefix}.codes' has shape [${codes.shape}] but the config implies [${this.units}, ${this.layout.dim}]`,
      );
    }
    const grid = read(`${prefix}.grid`);
    if (grid.shape.length !== 2 || grid.shape[0] !== this.units || grid.shape[1] !== 2) {
      throw new WebFormatError(`'${source}': '${prefix}.grid' has shape [${grid.shape}], expected [${this.units}, 2]`);
    }
    [this.codes, this.grid] = [codes.data, grid.data];
  }

  /** Units (n, N) of latent maps (n, C, h, w): each patch's best-matching unit of the finest level. */
  tokensOf(maps: Float32Array): Int32Array {
    return nearestUnits(patchify(maps, this.layout), this.codes, this.layout.dim);
  }

  /** The latent maps (n, C, h, w) of token grids (n, N) (SOMARCodebook.decode_tokens's input to the decoder). */
  mapsOf(tokens: ArrayLike<number>): Float32Array {
    return tokenMaps(tokens, this.codes, this.layout);
  }

  /** The atlas (SOMARCodebook.codebook_atlas): every unit decoded by `decode`, cropped and placed on its grid cell. */
  async atlas(decode: (maps: Float32Array) => Promise<Float32Array>): Promise<Atlas> {
    const layout = this.layout;
    const maps = atlasMaps(this.codes, layout);
    const mapSize = layout.channels * layout.height * layout.width;
    const count = this.config.in_channels * this.config.image_size ** 2;
    const images = new Float32Array(this.units * count);
    const batch = Math.min(ATLAS_BATCH, this.units);
    for (let first = 0; first < this.units; first += batch) {
      const chunk = new Float32Array(batch * mapSize); // the last one padded with zero maps: one batch size
      chunk.set(maps.subarray(first * mapSize, Math.min(this.units, first + batch) * mapSize));
      const decoded = await decode(chunk);
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
    const n = this.layout.tokens;
    const out = new Float32Array(3 * n);
    for (let t = 0; t < n; t++) for (let c = 0; c < 3; c++) out[c * n + t] = colors[tokens[t] * 3 + c];
    return out;
  }
}

/**
 * Images through their tokens (SOMARCodebook.reconstruct; without a codebook: decode(encode(x))), the tokens and the
 * encode (with matching) and decode times, over a backend's encode and decode of latent maps.
 */
export async function reconstructThroughTokens(
  images: Float32Array,
  codebook: SomarCodebook | null,
  encode: (images: Float32Array) => Promise<Float32Array>,
  decode: (maps: Float32Array) => Promise<Float32Array>,
): Promise<SomarReconstruction> {
  const start = performance.now();
  const maps = await encode(images);
  const tokens = codebook ? codebook.tokensOf(maps) : null;
  const encodeMs = performance.now() - start;
  const out = await decode(tokens ? codebook!.mapsOf(tokens) : maps);
  const timings = { encodeMs, decodeMs: performance.now() - start - encodeMs, totalMs: performance.now() - start };
  return { images: out, tokens, timings };
}

/** What a token call on an autoencoder file says. */
export const NO_CODEBOOK = "a somar autoencoder file has no codebook: it reconstructs, it has no tokens";

/** The codebook, or an error for an autoencoder file. */
export function requireCodebook(codebook: SomarCodebook | null): SomarCodebook {
  if (!codebook) throw new Error(NO_CODEBOOK);
  return codebook;
}
