/**
 * The op graphs of the Sphere Encoder's two backbones (models/sphere.py): ViTEncoder/ViTDecoder with the latent
 * MLP-mixer, ConvEncoder/ConvDecoder, built as dispatch lists for a fixed batch size; and the blocks other
 * families reuse (RoPE transformer trunk, residual conv levels, the conv output head). Activations live in
 * workspace buffers named by role, shared between encoder and decoder (they never run at the same time).
 */

import { latentChannels, latentGrid, ropeTables, sincosPosEmbed2d, type SphereConfig } from "./config";
import type { Binding, BufferRef, Step, Workspace } from "./gpu";
import * as ops from "./ops";
import type { GpuWeights } from "./weights";
import { WebFormatError } from "./format";

/** Buffers a graph reads or writes at its boundary. */
export interface GraphIO {
  input: Binding;
  output: Binding;
  labels: Binding | null; // (B,) u32 class indices for conditional models
}

/** What the shared blocks need to know of a network beyond its weights. */
export interface NetworkTraits {
  numClasses: number; // 0 = unconditional
  condDim: number; // width of the label embedding that adaLN layers read
  norm: "group" | "batch"; // conv nets: GroupNorm, or BatchNorm folded at export
}

/** Builds the steps of one network for a batch size; `cfg` is its family's config. */
export class GraphBuilder<C = SphereConfig> {
  steps: Step[] = [];

  constructor(
    public cfg: C,
    public weights: GpuWeights,
    public ws: Workspace,
    public batch: number,
    public traits: NetworkTraits,
  ) {}

  buf(role: string, words: number): BufferRef {
    return this.ws.ref(role, words);
  }

  push(...steps: Step[]): void {
    this.steps.push(...steps);
  }

  /** Linear layer on `rows` rows of `inFeatures` values (checked against the stored weight). */
  linear(
    layer: string,
    rows: number,
    inFeatures: number,
    input: ops.GemmInput,
    output: ops.GemmOutput,
    activation: ops.Activation = "none",
  ): void {
    const weight = this.weights.matrix(`${layer}.weight`);
    if (weight.cols !== inFeatures) {
      throw new WebFormatError(`'${layer}.weight' has ${weight.cols} inputs but the config implies ${inFeatures}`);
    }
    this.push(ops.gemm({ label: layer, rows, weight, bias: this.weights.bias(layer), activation, input, output }));
  }

  /** Conv2d on an NCHW map (channels, size, size) with square kernel; `upsample` 2 = nearest x2 first. */
  conv(
    layer: string,
    x: Binding,
    channels: number,
    size: number,
    output: ops.GemmOutput,
    opts: { stride?: number; pad?: number; padEnd?: number; upsample?: number; activation?: ops.Activation } = {},
  ): number {
    const weight = this.weights.matrix(`${layer}.weight`);
    if (weight.inChannels !== channels || weight.cols !== channels * weight.kernel * weight.kernel) {
      throw new WebFormatError(`'${layer}.weight' takes ${weight.inChannels} channels but the config implies ${channels}`);
    }
    const stride = opts.stride ?? 1;
    const upsample = opts.upsample ?? 1;
    const pad = opts.pad ?? Math.floor(weight.kernel / 2);
    const padEnd = opts.padEnd ?? pad; // zeros after the last row/column (LlamaGen's downsample pads right/bottom only)
    const outSize = Math.floor((size * upsample + pad + padEnd - weight.kernel) / stride) + 1;
    const input: ops.GemmInput = {
      layout: "conv",
      buffer: x,
      channels,
      height: size,
      width: size,
      kernel: weight.kernel,
      stride,
      pad,
      padEnd,
      upsample,
    };
    const rows = this.batch * outSize * outSize;
    const gemm = { label: layer, rows, weight, bias: this.weights.bias(layer), activation: opts.activation, output };
    if (ops.convViaIm2col(weight)) {
      const columns = this.buf("im2col", rows * weight.cols);
      this.push(ops.im2col(`${layer}.im2col`, input, columns, rows), ops.gemm({ ...gemm, input: { layout: "rows", buffer: columns } }));
    } else this.push(ops.gemm({ ...gemm, input }));
    return outSize;
  }

  /** cond = label_embed(labels) (B, dim), or null for unconditional models. */
  labelEmbedding(prefix: string, labels: Binding | null, dim: number): BufferRef | null {
    if (this.traits.numClasses === 0) return null;
    if (!labels) throw new Error("conditional model built without a labels buffer");
    const cond = this.buf("cond", this.batch * dim);
    this.push(
      ops.embedLabels(`${prefix}.label_embed`, labels, this.weights.vector(`${prefix}.label_embed.table.weight`), cond, this.batch, dim),
    );
    return cond;
  }

  /** ada = AdaLNZero(cond): Linear(silu(cond)) of shape (B, chunks * dim). */
  adaLN(layer: string, cond: Binding, chunks: number, dim: number): BufferRef {
    const ada = this.buf("ada", this.batch * chunks * dim);
    this.linear(
      `${layer}.proj`,
      this.batch,
      this.traits.condDim,
      { layout: "rows", buffer: cond, silu: true },
      { layout: "rows", buffer: ada },
    );
    return ada;
  }
}

// ---------------------------------------------------------------------------------------------------------
// ViT

/** Tables and constant matrices shared by every batch size of a model. */
export interface GraphCache {
  tables?: TokenTables;
  meanPool?: ops.GpuMatrix; // (1, T) of 1/T: the mean over tokens as a GEMM
}

export interface TokenTables {
  pos: GPUBuffer;
  ropeCos: GPUBuffer;
  ropeSin: GPUBuffer;
}

/** Sizes of a RoPE transformer trunk (models/layers.py TransformerBlock on a grid x grid token map). */
export interface Trunk {
  grid: number;
  width: number;
  heads: number;
  qkNorm: boolean;
  ropeTheta: number;
}

function sphereTrunk(cfg: SphereConfig): Trunk {
  return { grid: latentGrid(cfg), width: cfg.width, heads: cfg.heads, qkNorm: cfg.qk_norm, ropeTheta: cfg.rope_theta };
}

/** Sin-cos positions and RoPE tables of a trunk (rebuilt from the config, docs/web_format.md §6). */
export function tokenTables<C>(g: GraphBuilder<C>, trunk: Trunk): TokenTables {
  const rope = ropeTables(trunk.grid, trunk.width / trunk.heads, trunk.ropeTheta);
  return {
    pos: g.weights.owner.upload(sincosPosEmbed2d(trunk.grid, trunk.width), "pos"),
    ropeCos: g.weights.owner.upload(rope.cos, "rope_cos"),
    ropeSin: g.weights.owner.upload(rope.sin, "rope_sin"),
  };
}

/** TransformerBlock (pre-RMSNorm, RoPE attention, SwiGLU; adaLN-Zero when cond is given) on x (B*T, D). */
export function transformerBlock<C>(
  g: GraphBuilder<C>,
  prefix: string,
  x: BufferRef,
  tables: TokenTables,
  cond: BufferRef | null,
  trunk: Trunk,
): void {
  const { batch, weights } = g;
  const tokens = trunk.grid ** 2;
  const rows = batch * tokens;
  const dim = trunk.width;
  const headDim = dim / trunk.heads;
  const h = g.buf("h", rows * dim);
  const ada = cond ? g.adaLN(`${prefix}.ada`, cond, 6, dim) : null;
  const modulation = (shift: number, scale: number): ops.Modulation | undefined =>
    ada ? { ada, tokens, stride: 6 * dim, shift: shift * dim, scale: scale * dim } : undefined;
  const residual = (gate: number): ops.GemmOutput =>
    ada
      ? { layout: "rows_residual_gated", buffer: x, ada, tokens, stride: 6 * dim, offset: gate * dim }
      : { layout: "rows_residual", buffer: x };
  const affine = (name: string) => (ada ? null : weights.vector(`${prefix}.${name}.weight`));

  g.push(ops.rmsNorm(`${prefix}.norm1`, x, h, rows, dim, affine("norm1"), modulation(0, 1)));
  const qkv = g.buf("qkv", rows * 3 * dim);
  g.linear(`${prefix}.attn.qkv`, rows, dim, { layout: "rows", buffer: h }, { layout: "rows", buffer: qkv });
  const q = g.buf("q", rows * dim);
  const k = g.buf("k", rows * dim);
  const v = g.buf("v", rows * dim);
  const qNorm = trunk.qkNorm ? weights.vector(`${prefix}.attn.q_norm.weight`) : null;
  const kNorm = trunk.qkNorm ? weights.vector(`${prefix}.attn.k_norm.weight`) : null;
  g.push(
    ops.qkRope(`${prefix}.attn.rope`, qkv, q, k, v, tables.ropeCos, tables.ropeSin, batch, tokens, trunk.heads, headDim, qNorm, kNorm),
  );
  const attended = g.buf("attended", rows * dim);
  g.push(ops.attention(`${prefix}.attn`, q, k, v, attended, batch, tokens, trunk.heads, headDim));
  g.linear(`${prefix}.attn.proj`, rows, dim, { layout: "rows", buffer: attended }, residual(2));

  g.push(ops.rmsNorm(`${prefix}.norm2`, x, h, rows, dim, affine("norm2"), modulation(3, 4)));
  const hidden = weights.matrix(`${prefix}.mlp.gate_up.weight`).rows / 2;
  const gateUp = g.buf("gate_up", rows * 2 * hidden);
  g.linear(`${prefix}.mlp.gate_up`, rows, dim, { layout: "rows", buffer: h }, { layout: "rows", buffer: gateUp });
  const gated = g.buf("gated", rows * hidden);
  g.push(ops.swiglu(`${prefix}.mlp.swiglu`, gateUp, gated, rows, hidden));
  g.linear(`${prefix}.mlp.down`, rows, hidden, { layout: "rows", buffer: gated }, residual(5));
}

/** LatentMixer on x (B, T, channels) in place, final RMSNorm (plus `addTable` when given) into `out`. */
function latentMixer(g: GraphBuilder, prefix: string, x: Binding, out: Binding, channels: number, addTable?: ops.RowTable): void {
  const { batch, cfg, weights } = g;
  const tokens = latentGrid(cfg) ** 2;
  const expanded = cfg.mixer_expansion;
  const h = g.buf("mixer_h", batch * tokens * channels);
  for (let i = 0; i < cfg.mixer_depth; i++) {
    const block = `${prefix}.blocks.${i}`;
    // token mixing: MLP along T for every (sample, channel)
    g.push(ops.rmsNorm(`${block}.token_norm`, x, h, batch * tokens, channels, weights.vector(`${block}.token_norm.weight`)));
    const tokenHidden = g.buf("mixer_hidden", batch * channels * tokens * expanded);
    g.linear(
      `${block}.token_mlp.0`,
      batch * channels,
      tokens,
      { layout: "cols", buffer: h, tokens, channels },
      { layout: "rows", buffer: tokenHidden },
      "gelu",
    );
    g.linear(
      `${block}.token_mlp.2`,
      batch * channels,
      tokens * expanded,
      { layout: "rows", buffer: tokenHidden },
      { layout: "cols_residual", buffer: x, scale: weights.vector(`${block}.token_scale`), tokens, channels },
    );
    // channel mixing: MLP along C for every token
    g.push(ops.rmsNorm(`${block}.channel_norm`, x, h, batch * tokens, channels, weights.vector(`${block}.channel_norm.weight`)));
    const channelHidden = g.buf("mixer_hidden", batch * tokens * channels * expanded);
    g.linear(
      `${block}.channel_mlp.0`,
      batch * tokens,
      channels,
      { layout: "rows", buffer: h },
      { layout: "rows", buffer: channelHidden },
      "gelu",
    );
    g.linear(
      `${block}.channel_mlp.2`,
      batch * tokens,
      channels * expanded,
      { layout: "rows", buffer: channelHidden },
      { layout: "rows_residual", buffer: x, scale: weights.vector(`${block}.channel_scale`) },
    );
  }
  g.push(ops.rmsNorm(`${prefix}.norm`, x, out, batch * tokens, channels, weights.vector(`${prefix}.norm.weight`), undefined, addTable));
}

/** ViTEncoder: patch embedding + pos -> blocks -> RMSNorm -> head -> latent mixer; image (B,3,S,S) -> z (B,T,C). */
function vitEncoder(g: GraphBuilder, io: GraphIO, tables: TokenTables): void {
  const cfg = g.cfg;
  const tokens = latentGrid(cfg) ** 2;
  const rows = g.batch * tokens;
  const x = g.buf("x", rows * cfg.width);
  g.conv(
    "encoder.patch_embed",
    io.input,
    cfg.in_channels,
    cfg.image_size,
    { layout: "rows_add_table", buffer: x, table: tables.pos, period: tokens },
    { stride: cfg.patch_size, pad: 0 },
  );
  const cond = g.labelEmbedding("encoder", io.labels, cfg.width);
  for (let i = 0; i < cfg.depth; i++) transformerBlock(g, `encoder.blocks.${i}`, x, tables, cond, sphereTrunk(cfg));
  const h = g.buf("h", rows * cfg.width);
  g.push(ops.rmsNorm("encoder.norm", x, h, rows, cfg.width, g.weights.vector("encoder.norm.weight")));
  const mixed = g.buf("mixer_x", rows * latentChannels(cfg));
  g.linear("encoder.head", rows, cfg.width, { layout: "rows", buffer: h }, { layout: "rows", buffer: mixed });
  latentMixer(g, "encoder.mixer", mixed, io.output, latentChannels(cfg));
}

/**
 * ViTDecoder: embed -> latent mixer on width W + pos (decoder_mixer "width"), or latent mixer on the latent
 * channels -> embed + pos ("latent", older files) -> blocks -> RMSNorm -> head (unpatchify, conv head) -> tanh.
 */
function vitDecoder(g: GraphBuilder, io: GraphIO, tables: TokenTables): void {
  const cfg = g.cfg;
  const tokens = latentGrid(cfg) ** 2;
  const rows = g.batch * tokens;
  const channels = latentChannels(cfg);
  const x = g.buf("x", rows * cfg.width);
  const positions: ops.RowTable = { table: tables.pos, period: tokens };
  if (cfg.decoder_mixer === "width") {
    const mixed = g.buf("mixer_x", rows * cfg.width);
    g.linear("decoder.embed", rows, channels, { layout: "rows", buffer: io.input }, { layout: "rows", buffer: mixed });
    latentMixer(g, "decoder.mixer", mixed, x, cfg.width, positions);
  } else {
    const mixed = g.buf("mixer_x", rows * channels);
    g.push({ kind: "copy", src: io.input, dst: mixed, bytes: rows * channels * 4 }); // the mixer works in place
    const mixerOut = g.buf("mixer_out", rows * channels);
    latentMixer(g, "decoder.mixer", mixed, mixerOut, channels);
    g.linear("decoder.embed", rows, channels, { layout: "rows", buffer: mixerOut }, { layout: "rows_add_table", buffer: x, ...positions });
  }
  const cond = g.labelEmbedding("decoder", io.labels, cfg.width);
  for (let i = 0; i < cfg.depth; i++) transformerBlock(g, `decoder.blocks.${i}`, x, tables, cond, sphereTrunk(cfg));
  const h = g.buf("h", rows * cfg.width);
  g.push(ops.rmsNorm("decoder.norm", x, h, rows, cfg.width, g.weights.vector("decoder.norm.weight")));
  const grid = latentGrid(cfg);
  const size = cfg.image_size;
  if (cfg.pixel_head === "conv") {
    const headChannels = cfg.pixel_head_channels;
    const pixels = g.buf("pixels", g.batch * headChannels * size * size);
    g.linear(
      "decoder.head",
      rows,
      cfg.width,
      { layout: "rows", buffer: h },
      { layout: "unpatchify", buffer: pixels, grid, patch: cfg.patch_size, channels: headChannels },
    );
    const pixels2 = g.buf("pixels2", g.batch * headChannels * size * size);
    g.conv(
      "decoder.head_conv",
      pixels,
      headChannels,
      size,
      { layout: "nchw", buffer: pixels2, height: size, width: size },
      { activation: "silu" },
    );
    g.conv(
      "decoder.head_out",
      pixels2,
      headChannels,
      size,
      { layout: "nchw", buffer: io.output, height: size, width: size },
      { activation: "tanh" },
    );
  } else {
    g.linear(
      "decoder.head",
      rows,
      cfg.width,
      { layout: "rows", buffer: h },
      { layout: "unpatchify", buffer: io.output, grid, patch: cfg.patch_size, channels: cfg.in_channels },
      "tanh",
    );
  }
}

// ---------------------------------------------------------------------------------------------------------
// ConvNet

export function channelNormOf<C>(g: GraphBuilder<C>, layer: string, channels: number): ops.ChannelNorm {
  if (g.traits.norm === "group") {
    return {
      kind: "group",
      groups: gcd(32, channels),
      weight: g.weights.vector(`${layer}.weight`),
      bias: g.weights.vector(`${layer}.bias`),
      eps: 1e-6,
    };
  }
  // BatchNorm folded at export: norms right after a conv were folded into it (absent), others are affine.
  if (!g.weights.has(`${layer}.weight`)) return { kind: "identity" };
  return { kind: "affine", weight: g.weights.vector(`${layer}.weight`), bias: g.weights.vector(`${layer}.bias`) };
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** ConvResBlock: silu(skip(x) + [gate *] modulate(norm2(conv2(silu(norm1(conv1(x))))))). */
function convResBlock<C>(
  g: GraphBuilder<C>,
  prefix: string,
  x: Binding,
  out: Binding,
  inChannels: number,
  size: number,
  cond: BufferRef | null,
): number {
  const outChannels = g.weights.matrix(`${prefix}.conv1.weight`).rows;
  const words = g.batch * outChannels * size * size;
  const nchw = (buffer: Binding): ops.GemmOutput => ({ layout: "nchw", buffer, height: size, width: size });
  const t1 = g.buf("conv_t1", words);
  const t2 = g.buf("conv_t2", words);
  g.conv(`${prefix}.conv1`, x, inChannels, size, nchw(t1));
  g.push(
    ops.channelNorm(`${prefix}.norm1`, t1, t2, g.batch, outChannels, size * size, channelNormOf(g, `${prefix}.norm1`, outChannels), {
      silu: true,
    }),
  );
  g.conv(`${prefix}.conv2`, t2, outChannels, size, nchw(t1));
  let residual: Binding = x;
  if (g.weights.has(`${prefix}.skip.weight`)) {
    residual = g.buf("conv_skip", words);
    g.conv(`${prefix}.skip`, x, inChannels, size, nchw(residual));
  }
  const ada = cond ? g.adaLN(`${prefix}.ada`, cond, 3, outChannels) : null;
  g.push(
    ops.channelNorm(`${prefix}.norm2`, t1, out, g.batch, outChannels, size * size, channelNormOf(g, `${prefix}.norm2`, outChannels), {
      modulation: ada ? { ada, channels: outChannels } : undefined,
      residual,
      silu: true,
    }),
  );
  return outChannels;
}

/** Words of the largest map of a conv net of `width * channel_mults` channels at up to `imageSize` pixels a side. */
export function convMaxWords(batch: number, width: number, channelMults: number[], imageSize: number): number {
  return batch * width * Math.max(...channelMults) * imageSize ** 2;
}

/**
 * Runs the block list `${prefix}.blocks.*` of a conv encoder/decoder (res blocks, strided convs in the encoder,
 * up-sampling convs in the decoder), ping-ponging two buffers of `maxWords`.
 */
export function convBlocks<C>(
  g: GraphBuilder<C>,
  prefix: string,
  x: BufferRef,
  channels: number,
  size: number,
  cond: BufferRef | null,
  maxWords: number,
): { x: BufferRef; channels: number; size: number } {
  let current = x;
  for (let i = 0; ; i++) {
    const block = `${prefix}.blocks.${i}`;
    const next = g.buf(current.role === "conv_a" ? "conv_b" : "conv_a", maxWords);
    if (g.weights.has(`${block}.conv1.weight`)) {
      channels = convResBlock(g, block, current, next, channels, size, cond);
    } else if (g.weights.has(`${block}.conv.weight`)) {
      const up = prefix === "decoder";
      size = g.conv(
        `${block}.conv`,
        current,
        channels,
        size,
        { layout: "nchw", buffer: next, height: up ? 2 * size : size / 2, width: up ? 2 * size : size / 2 },
        up ? { upsample: 2 } : { stride: 2, pad: 1 },
      );
    } else break;
    current = next;
  }
  return { x: current, channels, size };
}

/** ConvEncoder: stem -> res blocks / strided convs -> head conv; image (B,3,S,S) -> z (B,C,h,w). */
function convEncoder(g: GraphBuilder, io: GraphIO): void {
  const cfg = g.cfg;
  const maxWords = convMaxWords(g.batch, cfg.width, cfg.channel_mults, cfg.image_size);
  const x = g.buf("conv_a", maxWords);
  const size = cfg.image_size;
  g.conv("encoder.stem", io.input, cfg.in_channels, size, { layout: "nchw", buffer: x, height: size, width: size });
  const cond = g.labelEmbedding("encoder", io.labels, 4 * cfg.width);
  const out = convBlocks(g, "encoder", x, cfg.width * cfg.channel_mults[0], size, cond, maxWords);
  g.conv("encoder.head", out.x, out.channels, out.size, { layout: "nchw", buffer: io.output, height: out.size, width: out.size });
}

/** ConvDecoder: stem -> res blocks / up-sample convs -> norm, SiLU -> out conv -> tanh. */
function convDecoder(g: GraphBuilder, io: GraphIO): void {
  const cfg = g.cfg;
  const maxWords = convMaxWords(g.batch, cfg.width, cfg.channel_mults, cfg.image_size);
  const x = g.buf("conv_a", maxWords);
  const size = latentGrid(cfg);
  g.conv("decoder.stem", io.input, latentChannels(cfg), size, { layout: "nchw", buffer: x, height: size, width: size });
  const cond = g.labelEmbedding("decoder", io.labels, 4 * cfg.width);
  const out = convBlocks(g, "decoder", x, cfg.width * cfg.channel_mults[cfg.channel_mults.length - 1], size, cond, maxWords);
  convOutputHead(g, out, io.output, maxWords);
}

/** The conv decoders' tail: out_norm -> SiLU -> out conv (3x3) -> tanh, into `output` (B, C, S, S). */
export function convOutputHead<C>(
  g: GraphBuilder<C>,
  out: { x: BufferRef; channels: number; size: number },
  output: Binding,
  maxWords: number,
): void {
  const normed = g.buf(out.x.role === "conv_a" ? "conv_b" : "conv_a", maxWords);
  g.push(
    ops.channelNorm(
      "decoder.out_norm",
      out.x,
      normed,
      g.batch,
      out.channels,
      out.size ** 2,
      channelNormOf(g, "decoder.out_norm", out.channels),
      { silu: true },
    ),
  );
  g.conv(
    "decoder.out",
    normed,
    out.channels,
    out.size,
    { layout: "nchw", buffer: output, height: out.size, width: out.size },
    { activation: "tanh" },
  );
}

// ---------------------------------------------------------------------------------------------------------

/** Encoder and decoder steps of a model for one batch size (tables shared through `cache`). */
export function buildGraphs(
  cfg: SphereConfig,
  weights: GpuWeights,
  ws: Workspace,
  batch: number,
  encoderIO: GraphIO,
  decoderIO: GraphIO,
  cache: GraphCache,
): { encoder: Step[]; decoder: Step[] } {
  const traits: NetworkTraits = {
    numClasses: cfg.num_classes,
    condDim: cfg.backbone === "vit" ? cfg.width : 4 * cfg.width,
    norm: cfg.norm,
  };
  const encoder = new GraphBuilder(cfg, weights, ws, batch, traits);
  const decoder = new GraphBuilder(cfg, weights, ws, batch, traits);
  if (cfg.backbone === "vit") {
    cache.tables ??= tokenTables(encoder, sphereTrunk(cfg));
    vitEncoder(encoder, encoderIO, cache.tables);
    vitDecoder(decoder, decoderIO, cache.tables);
  } else {
    convEncoder(encoder, encoderIO);
    convDecoder(decoder, decoderIO);
  }
  return { encoder: encoder.steps, decoder: decoder.steps };
}
