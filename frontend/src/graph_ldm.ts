/**
 * The op graphs of the latent-diffusion family (models/ldm.py): the KL autoencoder's encoder (images -> the
 * posterior mean) and decoder (latents -> images clamped to [-1, 1]), the shape of the vqvae's (graph_vqvae.ts
 * blocks, GroupNorm groups `ae_groups`), and the UNet (one denoiser pass: time-embedding MLP on sinusoidal
 * features plus the class embedding of a conditional UNet, ResBlocks with the time embedding as scale and shift after norm2, attention at the listed levels,
 * skip concatenation, strided-conv downsampling and nearest x2 + conv upsampling). `prefix` is "" in an
 * autoencoder file and "autoencoder." in a stage-2 file.
 */

import { ldmLatentSide, type LDMConfig } from "./config";
import type { Binding, BufferRef, Step, Workspace } from "./gpu";
import { GraphBuilder, type GraphIO, type NetworkTraits } from "./graph";
import { attnBlock, middle, levelBlocks, nchw, other, outputHead, resBlock, type FeatureMap, type NormGroups } from "./graph_vqvae";
import * as ops from "./ops";
import type { GpuWeights } from "./weights";

type Builder = GraphBuilder<NormGroups>;
const TRAITS: NetworkTraits = { numClasses: 0, condDim: 0, norm: "group" };

/** What the autoencoder graphs read of a config: an ldm autoencoder's, or a somar one's (the same fields). */
export type AutoencoderShape = Pick<LDMConfig, "image_size" | "in_channels" | "ae_width" | "ae_mults" | "latent_channels" | "ae_groups">;

/** Words of the largest AE feature map at this batch size (upsampling keeps a level's channels at twice its side). */
function aeMaxWords(ae: AutoencoderShape, batch: number): number {
  const channels = Math.max(ae.in_channels, ae.ae_width * Math.max(...ae.ae_mults), 2 * ae.latent_channels);
  return batch * channels * ae.image_size ** 2;
}

/**
 * The encoder from images (B, C, S, S) to conv_out's maps (B, out, h, w) in `output`, `activation` fused (a somar
 * encoder's tanh); returns h. An ldm encoder's maps are the posterior mean then the log-variance.
 */
export function aeEncoderHead(
  g: Builder,
  ae: AutoencoderShape,
  prefix: string,
  input: Binding,
  output: Binding,
  activation: ops.Activation = "none",
): number {
  const maxWords = aeMaxWords(ae, g.batch);
  const p = `${prefix}encoder`;
  let map: FeatureMap = { x: g.buf("vq_a", maxWords), channels: ae.ae_width, size: ae.image_size };
  g.conv(`${p}.conv_in`, input, ae.in_channels, ae.image_size, nchw(map.x, map.size));
  for (let i = 0; i < ae.ae_mults.length; i++) {
    map = levelBlocks(g, `${p}.levels.${i}`, map, maxWords);
    const down = `${p}.levels.${i}.downsample.conv`;
    if (!g.weights.has(`${down}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(down, map.x, map.channels, map.size, nchw(next, map.size / 2), { stride: 2, pad: 0, padEnd: 1 });
    map = { x: next, channels: map.channels, size };
  }
  map = middle(g, p, map, maxWords);
  outputHead(g, p, map, nchw(output, map.size), maxWords, activation);
  return map.size;
}

/** Encoder to the posterior mean: images (B, C, S, S) -> mean (B, latent_channels, h, w) (KLAutoencoder.encode). */
function aeEncoder(g: Builder, ae: LDMConfig, prefix: string, io: GraphIO): void {
  const moments = g.buf("vq_t2", aeMaxWords(ae, g.batch)); // (B, 2 * latent_channels, h, w): mean then logvar
  const side = aeEncoderHead(g, ae, prefix, io.input, moments);
  const meanBytes = ae.latent_channels * side ** 2 * 4;
  for (let b = 0; b < g.batch; b++) {
    g.push({ kind: "copy", src: moments, dst: io.output, bytes: meanBytes, srcOffset: 2 * b * meanBytes, dstOffset: b * meanBytes });
  }
}

/** Decoder: latents (B, latent_channels, h, w) -> images (B, C, S, S) clamped to [-1, 1] (KLAutoencoder.decode). */
export function aeDecoder(g: Builder, ae: AutoencoderShape, prefix: string, io: GraphIO): void {
  const maxWords = aeMaxWords(ae, g.batch);
  const p = `${prefix}decoder`;
  const side = ldmLatentSide(ae);
  const top = ae.ae_width * ae.ae_mults[ae.ae_mults.length - 1];
  let map: FeatureMap = { x: g.buf("vq_a", maxWords), channels: top, size: side };
  g.conv(`${p}.conv_in`, io.input, ae.latent_channels, side, nchw(map.x, side));
  map = middle(g, p, map, maxWords);
  for (let i = 0; i < ae.ae_mults.length; i++) {
    map = levelBlocks(g, `${p}.levels.${i}`, map, maxWords);
    const up = `${p}.levels.${i}.upsample.conv`;
    if (!g.weights.has(`${up}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(up, map.x, map.channels, map.size, nchw(next, 2 * map.size), { upsample: 2 });
    map = { x: next, channels: map.channels, size };
  }
  const count = g.batch * ae.in_channels * ae.image_size ** 2;
  const raw = g.buf("vq_raw", count);
  outputHead(g, p, map, nchw(raw, map.size), maxWords);
  g.push(ops.scaleShift(`${p}.clamp`, raw, io.output, count, 1, 0, true));
}

/** Encoder (images -> posterior mean; empty when `withEncoder` is false) and decoder steps of an autoencoder. */
export function buildAutoencoderGraphs(
  ae: LDMConfig,
  prefix: string,
  withEncoder: boolean,
  weights: GpuWeights,
  ws: Workspace,
  batch: number,
  encoderIO: GraphIO,
  decoderIO: GraphIO,
): { encoder: Step[]; decoder: Step[] } {
  const cfg: NormGroups = { norm_groups: ae.ae_groups };
  const encoder = new GraphBuilder(cfg, weights, ws, batch, TRAITS);
  const decoder = new GraphBuilder(cfg, weights, ws, batch, TRAITS);
  if (withEncoder) aeEncoder(encoder, ae, prefix, encoderIO);
  aeDecoder(decoder, ae, prefix, decoderIO);
  return { encoder: encoder.steps, decoder: decoder.steps };
}

// ---------------------------------------------------------------------------------------------------------
// UNet

/**
 * Buffers of one UNet pass: x_t (B, C, s, s), the sinusoidal time features (B, width) and, for a class-conditional
 * UNet, the class of each row (B,) u32 (num_classes = the null class) in; the prediction out.
 */
export interface UnetIO {
  x: Binding;
  time: Binding;
  labels: Binding | null;
  output: Binding;
}

/** Words of the largest UNet map: a skip concatenation holds two maps of the widest channels at full size. */
function unetMaxWords(cfg: LDMConfig, batch: number, side: number): number {
  return batch * 2 * cfg.unet_width * Math.max(...cfg.unet_mults) * side * side;
}

/**
 * silu(temb) (B, 4 * width), what every ResBlock's emb layer reads (UNet.embed): temb = time_embed.2(silu(
 * time_embed.0(features))), plus the class's row of label_embed on a conditional UNet (its last row: the null class).
 */
function timeEmbedding(g: Builder, cfg: LDMConfig, io: UnetIO): BufferRef {
  const hidden = g.weights.matrix("unet.time_embed.0.weight").rows;
  const h = g.buf("unet_temb_h", g.batch * hidden);
  g.linear("unet.time_embed.0", g.batch, cfg.unet_width, { layout: "rows", buffer: io.time }, { layout: "rows", buffer: h }, "silu");
  const temb = g.buf("unet_temb", g.batch * hidden);
  if (cfg.num_classes === 0) {
    g.linear("unet.time_embed.2", g.batch, hidden, { layout: "rows", buffer: h }, { layout: "rows", buffer: temb }, "silu");
    return temb;
  }
  if (!io.labels) throw new Error("a class-conditional UNet built without a labels buffer");
  const raw = g.buf("unet_temb_raw", g.batch * hidden);
  g.linear("unet.time_embed.2", g.batch, hidden, { layout: "rows", buffer: h }, { layout: "rows", buffer: raw });
  const table = g.weights.vector("unet.label_embed.weight"); // (num_classes + 1, 4 * width)
  g.push(ops.addLabelSilu("unet.label_embed", raw, io.labels, table, temb, g.batch, hidden));
  return temb;
}

/** A UNet ResBlock: its scale and shift emb(silu(temb)) into a per-block buffer, then the block with FiLM. */
function unetResBlock(g: Builder, prefix: string, map: FeatureMap, temb: BufferRef, maxWords: number): FeatureMap {
  const emb = g.weights.matrix(`${prefix}.emb.weight`);
  const film = g.buf(`film:${prefix}`, g.batch * emb.rows);
  g.linear(`${prefix}.emb`, g.batch, emb.cols, { layout: "rows", buffer: temb }, { layout: "rows", buffer: film });
  return resBlock(g, prefix, map, maxWords, film);
}

/** Copy a map into its own skip buffer (B, C, s, s) for the up path's concatenation. */
function saveSkip(g: Builder, map: FeatureMap, index: number): FeatureMap {
  const words = g.batch * map.channels * map.size ** 2;
  const skip = g.buf(`unet_skip${index}`, words);
  g.push({ kind: "copy", src: map.x, dst: skip, bytes: words * 4 });
  return { x: skip, channels: map.channels, size: map.size };
}

/** cat([x, skip], dim=1) per image into the other ping-pong buffer. */
function concat(g: Builder, map: FeatureMap, skip: FeatureMap, maxWords: number): FeatureMap {
  const out = other(g, map.x, maxWords);
  const hw = map.size ** 2;
  const channels = map.channels + skip.channels;
  for (let b = 0; b < g.batch; b++) {
    const dst = b * channels * hw * 4;
    g.push({ kind: "copy", src: map.x, dst: out, bytes: map.channels * hw * 4, srcOffset: b * map.channels * hw * 4, dstOffset: dst });
    const bytes = skip.channels * hw * 4;
    g.push({ kind: "copy", src: skip.x, dst: out, bytes, srcOffset: b * bytes, dstOffset: dst + map.channels * hw * 4 });
  }
  return { x: out, channels, size: map.size };
}

/** The down path: conv_in, each level's blocks (a skip after each), downsampling (a skip after it). */
function unetDown(g: Builder, cfg: LDMConfig, io: UnetIO, temb: BufferRef, side: number, maxWords: number): [FeatureMap, FeatureMap[]] {
  let map: FeatureMap = { x: g.buf("vq_a", maxWords), channels: cfg.unet_width, size: side };
  const inChannels = g.weights.matrix("unet.conv_in.weight").inChannels;
  g.conv("unet.conv_in", io.x, inChannels, side, nchw(map.x, side));
  const skips = [saveSkip(g, map, 0)];
  for (let i = 0; i < cfg.unet_mults.length; i++) {
    for (let j = 0; g.weights.has(`unet.down.${i}.blocks.${j}.conv1.weight`); j++) {
      map = unetResBlock(g, `unet.down.${i}.blocks.${j}`, map, temb, maxWords);
      if (g.weights.has(`unet.down.${i}.attns.${j}.q.weight`)) attnBlock(g, `unet.down.${i}.attns.${j}`, map, maxWords, cfg.unet_heads);
      skips.push(saveSkip(g, map, skips.length));
    }
    const down = `unet.down.${i}.downsample.conv`;
    if (!g.weights.has(`${down}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(down, map.x, map.channels, map.size, nchw(next, map.size / 2), { stride: 2, pad: 0, padEnd: 1 });
    map = { x: next, channels: map.channels, size };
    skips.push(saveSkip(g, map, skips.length));
  }
  return [map, skips];
}

/** The up path, lowest level first: each level's blocks on cat([x, skip]), attention, nearest x2 + conv upsampling. */
function unetUp(g: Builder, cfg: LDMConfig, map: FeatureMap, skips: FeatureMap[], temb: BufferRef, maxWords: number): FeatureMap {
  for (let i = cfg.unet_mults.length - 1; i >= 0; i--) {
    for (let j = 0; g.weights.has(`unet.up.${i}.blocks.${j}.conv1.weight`); j++) {
      map = concat(g, map, skips.pop()!, maxWords);
      map = unetResBlock(g, `unet.up.${i}.blocks.${j}`, map, temb, maxWords);
      if (g.weights.has(`unet.up.${i}.attns.${j}.q.weight`)) attnBlock(g, `unet.up.${i}.attns.${j}`, map, maxWords, cfg.unet_heads);
    }
    const up = `unet.up.${i}.upsample.conv`;
    if (!g.weights.has(`${up}.weight`)) continue;
    const next = other(g, map.x, maxWords);
    const size = g.conv(up, map.x, map.channels, map.size, nchw(next, 2 * map.size), { upsample: 2 });
    map = { x: next, channels: map.channels, size };
  }
  return map;
}

/** One UNet pass (UNet.forward): x_t, time features and (conditional UNets) labels -> the eps or v prediction. */
export function buildUnetGraph(cfg: LDMConfig, weights: GpuWeights, ws: Workspace, batch: number, side: number, io: UnetIO): Step[] {
  const g = new GraphBuilder<NormGroups>({ norm_groups: cfg.unet_groups }, weights, ws, batch, TRAITS);
  const maxWords = unetMaxWords(cfg, batch, side);
  const temb = timeEmbedding(g, cfg, io);
  let [map, skips] = unetDown(g, cfg, io, temb, side, maxWords);
  map = unetResBlock(g, "unet.mid.block_1", map, temb, maxWords);
  if (g.weights.has("unet.mid.attn_1.q.weight")) attnBlock(g, "unet.mid.attn_1", map, maxWords, cfg.unet_heads);
  map = unetResBlock(g, "unet.mid.block_2", map, temb, maxWords);
  map = unetUp(g, cfg, map, skips, temb, maxWords);
  if (skips.length) throw new Error(`the UNet's up path left ${skips.length} skips unused; the file does not match its config`);
  outputHead(g, "unet", map, nchw(io.output, map.size), maxWords);
  return g.steps;
}
