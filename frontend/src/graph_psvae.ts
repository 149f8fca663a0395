/**
 * The op graphs of the Power-Spherical VAE's 2-D networks (models/psvae.py): the conv encoder (ConvEncoder2d)
 * or the ViT encoder to mu on the unit sphere, and the conv decoder (ConvDecoder2d) or the upsampling decoder
 * (UpsamplingDecoder2d) from a point of the sphere to an image. They reuse the Sphere Encoder's blocks: the
 * residual conv levels, the RoPE transformer trunk and the GEMM for every linear layer.
 */

import { psvaeMapSize, psvaeSeedSize, type PSVAEConfig } from "./config";
import type { Step, Workspace } from "./gpu";
import {
  channelNormOf,
  convBlocks,
  convMaxWords,
  convOutputHead,
  GraphBuilder,
  tokenTables,
  transformerBlock,
  type GraphCache,
  type GraphIO,
  type NetworkTraits,
  type Trunk,
} from "./graph";
import * as ops from "./ops";
import type { GpuWeights } from "./weights";

type Builder = GraphBuilder<PSVAEConfig>;

/** Whether a file holds the encoder (the exporter writes the whole model; a decoder-only file can only decode). */
export function hasEncoder(weights: GpuWeights): boolean {
  return weights.has("encoder.head.loc.weight");
}

// ---------------------------------------------------------------------------------------------------------
// Encoders: image (B, C, S, S) -> mu = normalize(loc(features)) (B, d)

/** SphereHead's mu: loc Linear on (B, features) rows, then onto the unit sphere (F.normalize). */
function sphereHead(g: Builder, features: ops.GemmInput, featureCount: number, output: GraphIO["output"]): void {
  const d = g.cfg.z_dim;
  const loc = g.buf("loc", g.batch * d);
  g.linear("encoder.head.loc", g.batch, featureCount, features, { layout: "rows", buffer: loc });
  g.push(ops.sphereProject("encoder.normalize", loc, output, g.batch, d, undefined, 1));
}

/** ConvEncoder2d: stem -> residual levels with strided convs -> (C, s, s) flattened -> head. */
function convEncoder(g: Builder, io: GraphIO): void {
  const cfg = g.cfg;
  const maxWords = convMaxWords(g.batch, cfg.width, cfg.channel_mults, cfg.image_size);
  const x = g.buf("conv_a", maxWords);
  const size = cfg.image_size;
  g.conv("encoder.stem", io.input, cfg.in_channels, size, { layout: "nchw", buffer: x, height: size, width: size });
  const cond = g.labelEmbedding("encoder", io.labels, 4 * cfg.width);
  const out = convBlocks(g, "encoder", x, cfg.width * cfg.channel_mults[0], size, cond, maxWords);
  // NCHW (B, C, s, s) is already the row-major (B, C*s*s) of h.flatten(1)
  sphereHead(g, { layout: "rows", buffer: out.x }, out.channels * out.size ** 2, io.output);
}

/** The (1, T) matrix of 1/T: a GEMM over token columns with it is the mean over tokens. */
function meanPoolMatrix(g: Builder, tokens: number): ops.GpuMatrix {
  const values = new Float32Array(tokens).fill(1 / tokens);
  return { encoding: "f32", rows: 1, cols: tokens, groupSize: 0, data: g.weights.owner.upload(values, "mean_pool"), scales: null };
}

/** ViTEncoder: patch embedding + positions -> RoPE transformer -> RMSNorm -> mean token -> head. */
function vitEncoder(g: Builder, io: GraphIO, cache: GraphCache): void {
  const cfg = g.cfg;
  const trunk: Trunk = {
    grid: cfg.image_size / cfg.patch_size,
    width: cfg.vit_width,
    heads: cfg.heads,
    qkNorm: true, // models/psvae.py builds its blocks with qk_norm=True
    ropeTheta: cfg.rope_theta,
  };
  const tables = (cache.tables ??= tokenTables(g, trunk));
  const tokens = trunk.grid ** 2;
  const rows = g.batch * tokens;
  const x = g.buf("x", rows * trunk.width);
  g.conv(
    "encoder.patch_embed",
    io.input,
    cfg.in_channels,
    cfg.image_size,
    { layout: "rows_add_table", buffer: x, table: tables.pos, period: tokens },
    { stride: cfg.patch_size, pad: 0 },
  );
  const cond = g.labelEmbedding("encoder", io.labels, trunk.width);
  for (let i = 0; i < cfg.vit_depth; i++) transformerBlock(g, `encoder.blocks.${i}`, x, tables, cond, trunk);
  const h = g.buf("h", rows * trunk.width);
  g.push(ops.rmsNorm("encoder.norm", x, h, rows, trunk.width, g.weights.vector("encoder.norm.weight")));
  const pooled = g.buf("pooled", g.batch * trunk.width);
  g.push(
    ops.gemm({
      label: "encoder.mean_tokens",
      rows: g.batch * trunk.width,
      weight: (cache.meanPool ??= meanPoolMatrix(g, tokens)),
      input: { layout: "cols", buffer: h, tokens, channels: trunk.width },
      output: { layout: "rows", buffer: pooled }, // row (b, c) of one value: (B, width) row-major
    }),
  );
  sphereHead(g, { layout: "rows", buffer: pooled }, trunk.width, io.output);
}

// ---------------------------------------------------------------------------------------------------------
// Decoders: v on the unit sphere (B, d) -> image (B, C, S, S) in [-1, 1]

/** ConvDecoder2d: Linear(z -> C s s) -> residual levels with x2 up-sampling convs -> norm, SiLU -> conv -> tanh. */
function convDecoder(g: Builder, io: GraphIO): void {
  const cfg = g.cfg;
  const maxWords = convMaxWords(g.batch, cfg.width, cfg.channel_mults, cfg.image_size);
  const x = g.buf("conv_a", maxWords);
  const channels = cfg.width * cfg.channel_mults[cfg.channel_mults.length - 1];
  // Linear rows (B, C*s*s) are the NCHW map (B, C, s, s) of .view(-1, *map_shape)
  g.linear("decoder.embed", g.batch, cfg.z_dim, { layout: "rows", buffer: io.input }, { layout: "rows", buffer: x });
  const cond = g.labelEmbedding("decoder", io.labels, 4 * cfg.width);
  const out = convBlocks(g, "decoder", x, channels, psvaeMapSize(cfg), cond, maxWords);
  convOutputHead(g, out, io.output, maxWords);
}

/** Channels of each map of the upsampling decoder: the seed map's, then halved per level but not below width. */
function upsampleLevels(cfg: PSVAEConfig): number[] {
  const levels = [cfg.width * cfg.channel_mults[cfg.channel_mults.length - 1]];
  for (let size = psvaeSeedSize(cfg); size < cfg.image_size; size *= 2) {
    levels.push(Math.max(Math.floor(levels[levels.length - 1] / 2), cfg.width));
  }
  return levels;
}

/**
 * UpsamplingDecoder2d: Linear(z -> C seed^2) [+ class offset per channel] -> in_norm, SiLU -> per level
 * [nearest x2, conv3 (no bias), norm, SiLU] (Sequential indices 4k..4k+3) -> 1x1 conv -> tanh.
 */
function upsampleDecoder(g: Builder, io: GraphIO): void {
  const cfg = g.cfg;
  const levels = upsampleLevels(cfg);
  let size = psvaeSeedSize(cfg);
  const maxWords = g.batch * Math.max(...levels.map((channels, k) => channels * (size * 2 ** k) ** 2));
  const seed = g.buf("conv_a", maxWords);
  g.linear("decoder.embed", g.batch, cfg.z_dim, { layout: "rows", buffer: io.input }, { layout: "rows", buffer: seed });
  const cond = g.labelEmbedding("decoder", io.labels, levels[0]);
  if (cond) g.push(ops.addChannelValues("decoder.class_offset", seed, cond, g.batch, levels[0], size * size));
  let x = g.buf("conv_b", maxWords);
  const norm = channelNormOf(g, "decoder.in_norm", levels[0]);
  g.push(ops.channelNorm("decoder.in_norm", seed, x, g.batch, levels[0], size * size, norm, { silu: true }));
  for (let k = 1; k < levels.length; k++) {
    const conv = `decoder.levels.${4 * (k - 1) + 1}`;
    const normName = `decoder.levels.${4 * (k - 1) + 2}`;
    const raw = g.buf(x.role === "conv_a" ? "conv_b" : "conv_a", maxWords);
    size = g.conv(conv, x, levels[k - 1], size, { layout: "nchw", buffer: raw, height: 2 * size, width: 2 * size }, { upsample: 2 });
    const normed = g.buf(raw.role === "conv_a" ? "conv_b" : "conv_a", maxWords);
    g.push(ops.channelNorm(normName, raw, normed, g.batch, levels[k], size * size, channelNormOf(g, normName, levels[k]), { silu: true }));
    x = normed;
  }
  const outSize = { layout: "nchw" as const, buffer: io.output, height: size, width: size };
  g.conv("decoder.out", x, levels[levels.length - 1], size, outSize, { activation: "tanh" });
}

// ---------------------------------------------------------------------------------------------------------

/** Encoder (none when the file holds no encoder) and decoder steps of a psvae for one batch size. */
export function buildPsvaeGraphs(
  cfg: PSVAEConfig,
  weights: GpuWeights,
  ws: Workspace,
  batch: number,
  encoderIO: GraphIO,
  decoderIO: GraphIO,
  cache: GraphCache,
): { encoder: Step[]; decoder: Step[] } {
  const traits = (condDim: number): NetworkTraits => ({ numClasses: cfg.num_classes, condDim, norm: cfg.norm });
  const encoder = new GraphBuilder(cfg, weights, ws, batch, traits(cfg.backbone === "vit" ? cfg.vit_width : 4 * cfg.width));
  const decoder = new GraphBuilder(cfg, weights, ws, batch, traits(4 * cfg.width)); // adaLN of the conv decoder's blocks
  if (hasEncoder(weights)) {
    if (cfg.backbone === "vit") vitEncoder(encoder, encoderIO, cache);
    else convEncoder(encoder, encoderIO);
  }
  if (cfg.decoder === "upsample") upsampleDecoder(decoder, decoderIO);
  else convDecoder(decoder, decoderIO);
  return { encoder: encoder.steps, decoder: decoder.steps };
}
