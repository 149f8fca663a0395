/**
 * Architecture configs of the model families the page reads (a file's `family`, absent = "sphere"): the
 * Sphere Encoder (models/sphere.py `SphereConfig`) and the Power-Spherical VAE (models/psvae.py
 * `PSVAEConfig`), and what derives from them.
 */

export interface SphereConfig {
  family: "sphere"; // set by the reader for files written before families existed
  backbone: "vit" | "convnet";
  image_size: number;
  in_channels: number;
  latent_dim: number; // L: the sphere has radius sqrt(L)
  num_classes: number; // 0 = unconditional
  noise_angle: number; // theta_max in degrees; sigma_max = tan(theta_max)
  width: number;
  depth: number;
  heads: number;
  mlp_ratio: number;
  patch_size: number;
  qk_norm: boolean;
  rope_theta: number;
  mixer_depth: number;
  mixer_expansion: number;
  decoder_mixer: "width" | "latent"; // vit decoder: mixer on width W after the embedding, or (older files) on the latent before it
  pixel_head: "conv" | "linear";
  pixel_head_channels: number;
  channel_mults: number[];
  norm: "group" | "batch";
}

/**
 * The config of a file's header with the values that reproduce older exports (models/sphere.py
 * LEGACY_DEFAULTS): a file written before `decoder_mixer` existed mixes the latent channels before the
 * decoder's embedding. The convnet has no mixer and always says "width", as SphereConfig does.
 */
export function withLegacyDefaults(config: SphereConfig): SphereConfig {
  const decoderMixer = config.backbone === "convnet" ? "width" : (config.decoder_mixer ?? "latent");
  return { ...config, decoder_mixer: decoderMixer };
}

/** The Power-Spherical VAE config (models/psvae.py `PSVAEConfig`): its latent is a point of the unit sphere S^(d-1). */
export interface PSVAEConfig {
  family: "psvae";
  backbone: "conv" | "vit" | "conv1d"; // the encoder; conv1d = 1-D signals (not shown by the page)
  decoder: "conv" | "upsample"; // residual levels, or x2 + conv per level from a seed map
  image_size: number;
  in_channels: number;
  signal_length: number; // conv1d only
  num_classes: number; // 0 = unconditional
  z_dim: number; // d
  width: number;
  depth: number;
  channel_mults: number[];
  norm: "group" | "batch";
  seed_size: number; // upsample decoder: side of its first map; 0 = the conv encoder's map side
  vit_width: number;
  vit_depth: number;
  heads: number;
  patch_size: number;
  rope_theta: number;
}

/**
 * The VQ-VAE tokenizer config (models/vqvae.py `VQVAEConfig`, LlamaGen's VQ): images -> a grid of codebook
 * indices (tokens) -> images. It cannot sample (no prior over its tokens).
 */
export interface VQVAEConfig {
  family: "vqvae";
  image_size: number;
  in_channels: number;
  num_classes: number; // always 0
  width: number;
  channel_mults: number[];
  num_res_blocks: number;
  attn_at_lowest: boolean;
  z_channels: number;
  codebook_size: number; // K
  codebook_dim: number; // d
  l2_norm: boolean; // nearest code by cosine (codes and latents on the unit sphere)
  quantizer: "vq" | "fsq"; // the page reads "vq" (a stored codebook)
  norm_groups: number;
  input_range: "minus_one_one" | "zero_one"; // zero_one: the encoder sees (x + 1) / 2, the output y maps to 2y - 1
}

/** Side of the token grid: image side / 2^(levels - 1) (VQVAE.downsample_factor). */
export function vqvaeGrid(cfg: VQVAEConfig): number {
  return cfg.image_size / 2 ** (cfg.channel_mults.length - 1);
}

/**
 * The latent-diffusion family's config (models/ldm.py `LDMConfig`): `kind` "autoencoder" (the stage-1 KL
 * autoencoder), "latent" (a UNet on the frozen autoencoder's latents, scaled by `latent_scale`; `autoencoder` is
 * that autoencoder's config) or "pixel" (the same UNet on pixels).
 */
export interface LDMConfig {
  family: "ldm";
  kind: "autoencoder" | "latent" | "pixel";
  image_size: number;
  in_channels: number;
  num_classes: number; // UNet kinds: 0 = unconditional, else label_embed has a null class at index num_classes
  ae_width: number;
  ae_mults: number[];
  ae_res_blocks: number;
  latent_channels: number;
  ae_groups: number;
  unet_width: number;
  unet_mults: number[];
  unet_res_blocks: number;
  unet_attn_levels: number[];
  unet_groups: number;
  unet_heads: number;
  timesteps: number;
  beta_schedule: "linear" | "cosine";
  beta_start: number;
  beta_end: number;
  prediction: "eps" | "v";
  sampler?: "ddim" | "ddpm"; // the default sampler; absent in files written before it existed: ddim
  eta?: number; // the default DDIM η in [0, 1]; absent in older files: 0 (deterministic)
  autoencoder: LDMConfig | null;
  latent_scale: number | null;
}

/**
 * The config of the autoencoder a file holds: its own (autoencoder), the frozen stage 1's saved config or the ae_*
 * fields (latent, LDMConfig.autoencoder_config), none (pixel).
 */
export function ldmAutoencoder(cfg: LDMConfig): LDMConfig | null {
  if (cfg.kind === "autoencoder") return cfg;
  if (cfg.kind !== "latent") return null;
  return cfg.autoencoder ?? { ...cfg, kind: "autoencoder", autoencoder: null, latent_scale: null };
}

/** Side of the AE's latent map: image side / 2^(levels - 1). */
export function ldmLatentSide(ae: Pick<LDMConfig, "image_size" | "ae_mults">): number {
  return ae.image_size / 2 ** (ae.ae_mults.length - 1);
}

/**
 * The somar family's config (models/somar.py `SOMARConfig`): `kind` "autoencoder" (stage 1, a conv autoencoder whose
 * latent map is bounded by tanh), "codebook" (stage 2: a frozen autoencoder, `autoencoder_family` somar, vqvae or ldm
 * with its config in `autoencoder` (null: this config's ae_* fields), and one self-organizing map per level over
 * P x P patches of its map, coarse to fine; patch 0 = the whole map) or "prior" (stage 3: a transformer over the
 * tokens of the codebook in `codebook` (null: this config's own fields), which the page does not run).
 */
export interface SOMARConfig {
  family: "somar";
  kind: "autoencoder" | "codebook" | "prior";
  image_size: number;
  in_channels: number;
  num_classes: number;
  ae_width: number;
  ae_mults: number[];
  ae_res_blocks: number;
  latent_channels: number;
  ae_groups: number;
  level_patches: number[];
  level_sizes: number[];
  som_topology: "1d" | "2d";
  autoencoder?: Record<string, unknown> | null;
  autoencoder_family?: "somar" | "vqvae" | "ldm" | null;
  codebook?: Record<string, unknown> | null;
}

export type ModelConfig = SphereConfig | PSVAEConfig | VQVAEConfig | LDMConfig | SOMARConfig;
export type FamilyName = ModelConfig["family"];

/** Side of the conv encoder's last map (PSVAEConfig.conv_map_size): the decoder's first map, flattened into the heads. */
export function psvaeMapSize(cfg: PSVAEConfig): number {
  return cfg.image_size / 2 ** (cfg.channel_mults.length - 1);
}

/** Side of the upsample decoder's seed map (PSVAEConfig.decoder_seed_size). */
export function psvaeSeedSize(cfg: PSVAEConfig): number {
  return cfg.seed_size || psvaeMapSize(cfg);
}

/** Side of the latent grid: tokens per row (vit) or latent feature-map size (convnet). */
export function latentGrid(cfg: SphereConfig): number {
  if (cfg.backbone === "vit") return cfg.image_size / cfg.patch_size;
  return cfg.image_size / 2 ** (cfg.channel_mults.length - 1);
}

export function latentChannels(cfg: SphereConfig): number {
  return cfg.latent_dim / latentGrid(cfg) ** 2;
}

/** Latent shape without batch: (N, C) tokens for vit, (C, h, w) for convnet. */
export function latentShape(cfg: SphereConfig): number[] {
  const grid = latentGrid(cfg);
  const channels = latentChannels(cfg);
  return cfg.backbone === "vit" ? [grid * grid, channels] : [channels, grid, grid];
}

/** sigma_max = tan(theta_max) for an angle in degrees (DESIGN §3). */
export function sigmaForAngle(degrees: number): number {
  return Math.tan((degrees * Math.PI) / 180);
}

/** Fixed 2D sin-cos position embedding (grid*grid, dim), float64 math then float32 (docs/web_format.md §6). */
export function sincosPosEmbed2d(grid: number, dim: number): Float32Array {
  const quarter = dim / 4;
  const out = new Float32Array(grid * grid * dim);
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const base = (row * grid + col) * dim;
      for (let k = 0; k < quarter; k++) {
        const omega = 1 / 10000 ** (k / quarter);
        out[base + k] = Math.sin(row * omega);
        out[base + quarter + k] = Math.cos(row * omega);
        out[base + 2 * quarter + k] = Math.sin(col * omega);
        out[base + 3 * quarter + k] = Math.cos(col * omega);
      }
    }
  }
  return out;
}

/** Axial 2D RoPE tables cos/sin (grid*grid, headDim/2): row angles then column angles (§6). */
export function ropeTables(grid: number, headDim: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const quarter = headDim / 4;
  const half = headDim / 2;
  const cos = new Float32Array(grid * grid * half);
  const sin = new Float32Array(grid * grid * half);
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const base = (row * grid + col) * half;
      for (let k = 0; k < quarter; k++) {
        const invFreq = 1 / theta ** (k / quarter);
        const angleRow = Math.fround(row * invFreq); // torch casts the float64 angles to float32 first
        const angleCol = Math.fround(col * invFreq);
        cos[base + k] = Math.cos(angleRow);
        sin[base + k] = Math.sin(angleRow);
        cos[base + quarter + k] = Math.cos(angleCol);
        sin[base + quarter + k] = Math.sin(angleCol);
      }
    }
  }
  return { cos, sin };
}
