/**
 * The op graphs of the VQ-VAE tokenizer (models/vqvae.py, LlamaGen's VQ): the encoder (pre-norm residual
 * blocks with GroupNorm + swish, single-head attention at the lowest resolution, right/bottom-padded strided
 * downsampling convs) to a continuous latent, quant_conv, the nearest codebook entry of each position (the
 * tokens); and the decoder from tokens: code lookup, post_quant_conv, residual blocks, nearest x2 + conv
 * upsampling, norm_out + swish, conv_out, clamped to [-1, 1]. Every linear and conv layer is the shared GEMM.
 */

import { vqvaeGrid, type VQVAEConfig } from "./config";
import type { Binding, BufferRef, Step, Workspace } from "./gpu";
import { GraphBuilder, type GraphIO, type NetworkTraits } from "./graph";
import * as ops from "./ops";
import type { GpuWeights } from "./weights";

export type Builder = GraphBuilder<VQVAEConfig>;

/** What the shared blocks read of a config: the GroupNorm group count (graph_ldm.ts passes its own). */
export interface NormGroups {
  norm_groups: number;
}
type BlockBuilder = GraphBuilder<NormGroups>;

/** A feature map (B, channels, size, size) in a workspace buffer. */
export interface FeatureMap {
  x: BufferRef;
  channels: number;
  size: number;
}

const GROUPNORM_EPS = 1e-6;

/** GroupNorm(norm_groups, eps 1e-6) of `layer`, optionally followed by swish, from x into y. */
export function groupNorm(
  g: BlockBuilder,
  layer: string,
  x: Binding,
  y: Binding,
  channels: number,
  size: number,
  silu: boolean,
  film?: Binding,
): void {
  const norm: ops.ChannelNorm = {
    kind: "group",
    groups: g.cfg.norm_groups,
    weight: g.weights.vector(`${layer}.weight`),
    bias: g.weights.vector(`${layer}.bias`),
    eps: GROUPNORM_EPS,
  };
  const tail: ops.ChannelNormTail = { silu, film: film && { buffer: film, channels } };
  g.push(ops.channelNorm(layer, x, y, g.batch, channels, size * size, norm, tail));
}

export const nchw = (buffer: Binding, size: number): ops.GemmOutput => ({ layout: "nchw", buffer, height: size, width: size });
export const nchwAdd = (buffer: Binding, size: number): ops.GemmOutput => ({ layout: "nchw_residual", buffer, height: size, width: size });

/** The other buffer of the ping-pong pair. */
export function other(g: BlockBuilder, x: BufferRef, maxWords: number): BufferRef {
  return g.buf(x.role === "vq_a" ? "vq_b" : "vq_a", maxWords);
}

/**
 * ResBlock: h = conv1(swish(norm1(x))); h = conv2(swish(norm2(h))); out = shortcut(x) + h (in place without a
 * shortcut). With `film` (a UNet's (B, 2 * out) scale and shift of the time embedding) norm2(h) becomes
 * norm2(h) * (1 + scale) + shift.
 */
export function resBlock(g: BlockBuilder, prefix: string, map: FeatureMap, maxWords: number, film?: Binding): FeatureMap {
  const { x, channels, size } = map;
  const outChannels = g.weights.matrix(`${prefix}.conv1.weight`).rows;
  const t1 = g.buf("vq_t1", maxWords);
  const t2 = g.buf("vq_t2", maxWords);
  groupNorm(g, `${prefix}.norm1`, x, t1, channels, size, true);
  g.conv(`${prefix}.conv1`, t1, channels, size, nchw(t2, size));
  groupNorm(g, `${prefix}.norm2`, t2, t1, outChannels, size, true, film);
  let out = x;
  if (g.weights.has(`${prefix}.shortcut.weight`)) {
    out = other(g, x, maxWords);
    g.conv(`${prefix}.shortcut`, x, channels, size, nchw(out, size));
  } else if (outChannels !== channels) {
    throw new Error(`'${prefix}' changes ${channels} to ${outChannels} channels but the file has no shortcut`);
  }
  g.conv(`${prefix}.conv2`, t1, outChannels, size, nchwAdd(out, size));
  return { x: out, channels: outChannels, size };
}

/** AttnBlock: x + proj(softmax(q k^T / sqrt(C)) v) over the size^2 positions, q, k, v 1x1 convs of norm(x). */
export function attnBlock(g: BlockBuilder, prefix: string, map: FeatureMap, maxWords: number, heads = 1): void {
  const { x, channels, size } = map;
  const rows = g.batch * size * size;
  const h = g.buf("vq_t1", maxWords);
  groupNorm(g, `${prefix}.norm`, x, h, channels, size, false);
  const tokenRows = (name: string): BufferRef => {
    const buffer = g.buf(`vq_${name}`, rows * channels);
    g.conv(`${prefix}.${name}`, h, channels, size, { layout: "rows", buffer }); // (B, hw, C): one head of C
    return buffer;
  };
  const [q, k, v] = [tokenRows("q"), tokenRows("k"), tokenRows("v")];
  const attended = g.buf("vq_attended", rows * channels);
  g.push(ops.attention(`${prefix}.attn`, q, k, v, attended, g.batch, size * size, heads, channels / heads, true));
  g.linear(`${prefix}.proj`, rows, channels, { layout: "rows", buffer: attended }, nchwAdd(x, size));
}

/** The blocks of one level: ResBlocks `blocks.{j}`, each followed by `attns.{j}` when the file has it. */
export function levelBlocks(g: BlockBuilder, prefix: string, map: FeatureMap, maxWords: number): FeatureMap {
  for (let j = 0; g.weights.has(`${prefix}.blocks.${j}.conv1.weight`); j++) {
    map = resBlock(g, `${prefix}.blocks.${j}`, map, maxWords);
    if (g.weights.has(`${prefix}.attns.${j}.q.weight`)) attnBlock(g, `${prefix}.attns.${j}`, map, maxWords);
  }
  return map;
}

/** mid.block_1, mid.attn_1 (when present), mid.block_2. */
export function middle(g: BlockBuilder, prefix: string, map: FeatureMap, maxWords: number): FeatureMap {
  map = resBlock(g, `${prefix}.mid.block_1`, map, maxWords);
  if (g.weights.has(`${prefix}.mid.attn_1.q.weight`)) attnBlock(g, `${prefix}.mid.attn_1`, map, maxWords);
  return resBlock(g, `${prefix}.mid.block_2`, map, maxWords);
}

/** norm_out, swish, conv_out (3x3, then `activation`: a somar encoder's tanh) into `output`. */
export function outputHead(
  g: BlockBuilder,
  prefix: string,
  map: FeatureMap,
  output: ops.GemmOutput,
  maxWords: number,
  activation: ops.Activation = "none",
): void {
  const normed = other(g, map.x, maxWords);
  groupNorm(g, `${prefix}.norm_out`, map.x, normed, map.channels, map.size, true);
  g.conv(`${prefix}.conv_out`, normed, map.channels, map.size, output, { activation });
}

/** Words of the largest feature map at this batch size: the decoder's upsampling conv keeps a level's (wider)
 * channels at twice its side, so bound every map by the widest channels at the image size. */
function maxMapWords(g: Builder): number {
  const cfg = g.cfg;
  const channels = Math.max(cfg.in_channels, cfg.width * Math.max(...cfg.channel_mults));
  return g.batch * Math.max(channels * cfg.image_size ** 2, Math.max(cfg.z_channels, cfg.codebook_dim) * vqvaeGrid(cfg) ** 2);
}

/**
 * Encoder and quant_conv (VQVAE.encode_latent): images (B, C, S, S) in [-1, 1] -> the continuous latent (B, d, h, w)
 * in `latent`. `prefix`: where the vqvae sits in the file ("" in its own file, "autoencoder.net." in a somar codebook).
 */
export function encodeLatentGraph(g: Builder, input: Binding, latent: Binding, prefix = ""): number {
  const cfg = g.cfg;
  const maxWords = maxMapWords(g);
  if (cfg.input_range === "zero_one") {
    const scaled = g.buf("vq_input", g.batch * cfg.in_channels * cfg.image_size ** 2);
    g.push(ops.scaleShift(`${prefix}encoder.input_range`, input, scaled, g.batch * cfg.in_channels * cfg.image_size ** 2, 0.5, 0.5, false));
    input = scaled;
  }
  let map: FeatureMap = { x: g.buf("vq_a", maxWords), channels: cfg.width, size: cfg.image_size };
  g.conv(`${prefix}encoder.conv_in`, input, cfg.in_channels, cfg.image_size, nchw(map.x, map.size));
  for (let i = 0; i < cfg.channel_mults.length; i++) {
    map = levelBlocks(g, `${prefix}encoder.levels.${i}`, map, maxWords);
    const down = `${prefix}encoder.levels.${i}.downsample.conv`;
    if (!g.weights.has(`${down}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(down, map.x, map.channels, map.size, nchw(next, map.size / 2), { stride: 2, pad: 0, padEnd: 1 });
    map = { x: next, channels: map.channels, size };
  }
  map = middle(g, `${prefix}encoder`, map, maxWords);
  const z = g.buf("vq_t2", maxWords); // outputHead normalises into the other ping-pong buffer
  outputHead(g, `${prefix}encoder`, map, nchw(z, map.size), maxWords);
  g.conv(`${prefix}quant_conv`, z, cfg.z_channels, map.size, nchw(latent, map.size));
  return map.size;
}

/** Encoder, quant_conv, nearest code: images (B, C, S, S) in [-1, 1] -> token indices (B, h, w) as f32. */
function encoderGraph(g: Builder, io: GraphIO, codebook: GPUBuffer): void {
  const cfg = g.cfg;
  const grid = vqvaeGrid(cfg);
  const latent = g.buf("vq_latent", g.batch * cfg.codebook_dim * grid ** 2);
  encodeLatentGraph(g, io.input, latent);
  const hw = grid ** 2;
  g.push(ops.nearestCode("quantizer", latent, codebook, io.output, g.batch, cfg.codebook_dim, hw, cfg.codebook_size, cfg.l2_norm));
}

/**
 * post_quant_conv and the decoder (VQVAE.decode): a latent (B, d, h, w) -> images (B, C, S, S) clamped to [-1, 1].
 * `prefix` as encodeLatentGraph's.
 */
export function decodeLatentGraph(g: Builder, codes: Binding, output: Binding, prefix = ""): void {
  const cfg = g.cfg;
  const maxWords = maxMapWords(g);
  const grid = vqvaeGrid(cfg);
  const z = g.buf("vq_t2", maxWords);
  g.conv(`${prefix}post_quant_conv`, codes, cfg.codebook_dim, grid, nchw(z, grid));
  const top = cfg.width * cfg.channel_mults[cfg.channel_mults.length - 1];
  let map: FeatureMap = { x: g.buf("vq_a", maxWords), channels: top, size: grid };
  g.conv(`${prefix}decoder.conv_in`, z, cfg.z_channels, grid, nchw(map.x, grid));
  map = middle(g, `${prefix}decoder`, map, maxWords);
  for (let i = 0; i < cfg.channel_mults.length; i++) {
    map = levelBlocks(g, `${prefix}decoder.levels.${i}`, map, maxWords);
    const up = `${prefix}decoder.levels.${i}.upsample.conv`;
    if (!g.weights.has(`${up}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(up, map.x, map.channels, map.size, nchw(next, 2 * map.size), { upsample: 2 });
    map = { x: next, channels: map.channels, size };
  }
  const raw = g.buf("vq_raw", g.batch * cfg.in_channels * cfg.image_size ** 2);
  outputHead(g, `${prefix}decoder`, map, nchw(raw, map.size), maxWords);
  const [scale, shift] = cfg.input_range === "zero_one" ? [2, -1] : [1, 0];
  g.push(ops.scaleShift(`${prefix}decoder.clamp`, raw, output, g.batch * cfg.in_channels * cfg.image_size ** 2, scale, shift, true));
}

/** Code lookup, post_quant_conv, decoder: token indices (B, h, w) -> images (B, C, S, S) clamped to [-1, 1]. */
function decoderGraph(g: Builder, io: GraphIO, codebook: GPUBuffer): void {
  const cfg = g.cfg;
  const grid = vqvaeGrid(cfg);
  const codes = g.buf("vq_codes", g.batch * cfg.codebook_dim * grid * grid);
  g.push(ops.gatherCodes("quantizer.codes", io.input, codebook, codes, g.batch, cfg.codebook_dim, grid * grid, cfg.codebook_size));
  decodeLatentGraph(g, codes, io.output);
}

/** Encoder (images -> tokens) and decoder (tokens -> images) steps of a vqvae for one batch size. */
export function buildVqvaeGraphs(
  cfg: VQVAEConfig,
  weights: GpuWeights,
  ws: Workspace,
  batch: number,
  encoderIO: GraphIO,
  decoderIO: GraphIO,
  codebook: GPUBuffer,
): { encoder: Step[]; decoder: Step[] } {
  const traits: NetworkTraits = { numClasses: 0, condDim: 0, norm: "group" };
  const encoder = new GraphBuilder(cfg, weights, ws, batch, traits);
  const decoder = new GraphBuilder(cfg, weights, ws, batch, traits);
  encoderGraph(encoder, encoderIO, codebook);
  decoderGraph(decoder, decoderIO, codebook);
  return { encoder: encoder.steps, decoder: decoder.steps };
}
