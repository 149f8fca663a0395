/**
 * Kernel builders: each returns a Dispatch (generated WGSL source, bindings, workgroup counts) for one op
 * of the model graph. Sizes are baked into the source as constants; identical sources share a pipeline.
 */

import { kernelChoice, type Binding, type Dispatch, type MaybeBinding } from "./gpu";
import commonWgsl from "./kernels/common.wgsl?raw";
import gemmWgsl from "./kernels/gemm.wgsl?raw";
import gemmTiledWgsl from "./kernels/gemm_tiled.wgsl?raw";
import gemmDirectWgsl from "./kernels/gemm_direct.wgsl?raw";
import rmsnormWgsl from "./kernels/rmsnorm.wgsl?raw";
import rmsnormRowsWgsl from "./kernels/rmsnorm_rows.wgsl?raw";
import groupnormWgsl from "./kernels/groupnorm.wgsl?raw";
import qkRopeWgsl from "./kernels/qk_rope.wgsl?raw";
import attentionWgsl from "./kernels/attention.wgsl?raw";
import elementwiseWgsl from "./kernels/elementwise.wgsl?raw";
import sphereWgsl from "./kernels/sphere.wgsl?raw";
import vqWgsl from "./kernels/vq.wgsl?raw";

/** A weight matrix (rows = out, cols = in*kh*kw) on the GPU in its stored encoding. */
export interface GpuMatrix {
  encoding: "f32" | "f16" | "q8" | "q4";
  rows: number;
  cols: number;
  groupSize: number;
  data: GPUBuffer;
  scales: GPUBuffer | null;
}

export type Activation = "none" | "silu" | "gelu" | "tanh";

interface Declared {
  name: string;
  buffer: MaybeBinding; // null: a small zero buffer (for bindings a variant does not use)
  type: "f32" | "u32" | "vec4<f32>";
  write?: boolean;
}

/** Uniform values of one dispatch: name -> [WGSL type, value]. */
type Params = Record<string, ["u32" | "i32" | "f32", number]>;

const MAX_GROUPS_X = 65535;

/** WGSL f32 literal (always with a decimal point or exponent). */
export function f32(value: number): string {
  if (!Number.isFinite(value)) throw new Error(`non-finite constant ${value}`);
  const text = Math.fround(value).toPrecision(9);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

function fill(template: string, values: Record<string, string | number>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, key: string) => {
    if (!(key in values)) throw new Error(`template value '${key}' missing`);
    return String(values[key]);
  });
}

/**
 * Assemble a kernel: storage bindings in order, then the uniform `P` holding `params` (sizes, offsets...).
 * Sizes live in P rather than in the source so that one pipeline serves every layer of a kind and every
 * batch size (compiling is slow, on software adapters most of all).
 */
function dispatch(
  label: string,
  template: string,
  values: Record<string, string | number>,
  declared: Declared[],
  workgroups: [number, number, number],
  params: Params,
): Dispatch {
  const names = Object.keys(params);
  const lines = declared.map(
    (d, i) => `@group(0) @binding(${i}) var<storage, ${d.write ? "read_write" : "read"}> ${d.name}: array<${d.type}>;`,
  );
  lines.push(`struct Params {\n${names.map((n) => `  ${n}: ${params[n][0]},`).join("\n")}\n}`);
  lines.push(`@group(0) @binding(${declared.length}) var<uniform> P: Params;`);
  const source = `${commonWgsl}\n${fill(template, { ...values, BINDINGS: lines.join("\n") })}`;
  const data = new ArrayBuffer(Math.max(16, Math.ceil((names.length * 4) / 16) * 16));
  const view = new DataView(data);
  names.forEach((n, i) => {
    const [type, value] = params[n];
    if (type === "f32") view.setFloat32(4 * i, value, true);
    else if (type === "i32") view.setInt32(4 * i, value, true);
    else view.setUint32(4 * i, value, true);
  });
  return { kind: "dispatch", label, source, bindings: declared.map((d) => d.buffer), workgroups, params: data };
}

const u32 = (value: number): ["u32", number] => ["u32", value];

/** Split a 1D workgroup count into (x, y) under the per-dimension limit. */
function grid1d(groups: number): [number, number, number] {
  if (groups <= MAX_GROUPS_X) return [Math.max(groups, 1), 1, 1];
  return [MAX_GROUPS_X, Math.ceil(groups / MAX_GROUPS_X), 1];
}

// ---------------------------------------------------------------------------------------------------------
// GEMM: linear and convolution layers

/** How the GEMM reads A(m, k). */
export type GemmInput =
  | { layout: "rows"; buffer: Binding; silu?: boolean } // A = x (M, K) row-major, optionally silu(x)
  | { layout: "cols"; buffer: Binding; tokens: number; channels: number } // A[(b, c), t] = x[b, t, c]
  | {
      layout: "conv"; // im2col of an NCHW input, optionally nearest-upsampled by `upsample` (1 or 2)
      buffer: Binding;
      channels: number;
      height: number;
      width: number;
      kernel: number;
      stride: number;
      pad: number;
      padEnd?: number; // zeros after the last row/column (default: pad); 1 with pad 0 = pad right/bottom only
      upsample: number;
    };

/** Where the GEMM writes C(m, n) (after bias and activation). */
export type GemmOutput =
  | { layout: "rows"; buffer: Binding } // y (M, N)
  | { layout: "rows_add_table"; buffer: Binding; table: Binding; period: number } // + table[m % period, n]
  | { layout: "rows_residual"; buffer: Binding; scale?: Binding } // y += [scale[n] *] v
  | { layout: "rows_residual_gated"; buffer: Binding; ada: Binding; tokens: number; stride: number; offset: number } // y += gate[b, n] v
  | { layout: "cols_residual"; buffer: Binding; scale: Binding; tokens: number; channels: number } // y[b, n, c] += scale[c] v, m = (b, c)
  | { layout: "nchw"; buffer: Binding; height: number; width: number } // m = (b, y, x): y[b, n, y, x]
  | { layout: "nchw_residual"; buffer: Binding; height: number; width: number } // y[b, n, y, x] += v
  | { layout: "unpatchify"; buffer: Binding; grid: number; patch: number; channels: number }; // token rows -> image

export interface GemmSpec {
  label: string;
  rows: number; // M
  weight: GpuMatrix;
  bias?: Binding;
  activation?: Activation;
  input: GemmInput;
  output: GemmOutput;
}

/** Whether a weight allows the GEMM's vector path: 4 consecutive k never straddle a row or a group. */
export function alignedWeight(w: GpuMatrix): boolean {
  return w.cols % 4 === 0 && (w.encoding === "f32" || w.encoding === "f16" || w.groupSize % 4 === 0);
}

/** The generated part of the GEMM: how weights are decoded from their packed buffer (one and four k). */
function weightLoader(w: GpuMatrix, aligned: boolean): { code: string; code4: string; params: Params } {
  // unpack2x16float decodes both halves of a word in one instruction (the even index is the low half)
  const half = (index: string) => `pick_half(unpack2x16float(w[${index} >> 1u]), ${index})`;
  const scale = "pick_half(unpack2x16float(ws[s >> 1u]), s)";
  // the group size is a constant of the shader (a power of two becomes a shift): one pipeline per group size
  const group = `${Math.max(w.groupSize, 1)}u`;
  const groups = { GROUPS: u32(Math.ceil(w.cols / Math.max(w.groupSize, 1))) };
  const unused = "return vec4<f32>();";
  switch (w.encoding) {
    case "f32":
      return aligned
        ? { code: "let e = n * P.K + k;\n  return w[e >> 2u][e & 3u];", code4: "return w[(n * P.K + k) >> 2u];", params: {} }
        : { code: "return w[n * P.K + k];", code4: unused, params: {} };
    case "f16": // two halves per u32, the even index in the low half
      return {
        code: `let e = n * P.K + k;\n  return ${half("e")};`,
        code4: `let i = (n * P.K + k) >> 1u;
  return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));`,
        params: {},
      };
    case "q8": // int8 two's complement, row-major (rows, cols), one fp16 scale per GROUP values along k
      return {
        code: `let e = n * P.K + k;
  let byte = (w[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu;
  let s = n * P.GROUPS + k / ${group};
  return f32(i32(byte << 24u) >> 24u) * ${scale};`,
        code4: `let word = w[(n * P.K + k) >> 2u];
  let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
  let s = n * P.GROUPS + k / ${group};
  return vec4<f32>(q) * ${scale};`,
        params: groups,
      };
    case "q4": // nibble q + 8, even k in the low nibble, each row padded to whole bytes
      return {
        code: `let addr = n * P.ROW_BYTES + (k >> 1u);
  let nibble = (w[addr >> 2u] >> ((addr & 3u) * 8u + (k & 1u) * 4u)) & 0xfu;
  let s = n * P.GROUPS + k / ${group};
  return f32(i32(nibble) - 8) * ${scale};`,
        code4: `let addr = n * P.ROW_BYTES + (k >> 1u); // even: the 4 nibbles are one 16-bit half of a word
  let bits = w[addr >> 2u] >> ((addr & 3u) * 8u);
  let q = vec4<i32>(vec4<u32>(bits, bits >> 4u, bits >> 8u, bits >> 12u) & vec4<u32>(0xfu)); // q + 8
  let s = n * P.GROUPS + k / ${group};
  let scale = ${scale};
  return fma(vec4<f32>(q), vec4<f32>(scale), vec4<f32>(-8.0 * scale)); // one rounding, as (q - 8) scale`,
        params: { ...groups, ROW_BYTES: u32(Math.ceil(w.cols / 2)) },
      };
  }
}

const ACTIVATION_CODES: Record<Activation, number> = { none: 0, silu: 1, gelu: 2, tanh: 3 };

function inputParams(input: GemmInput): Params {
  switch (input.layout) {
    case "rows":
      return { A_MODE: u32(input.silu ? 1 : 0) };
    case "cols":
      return { A_MODE: u32(2), A_TOK: u32(input.tokens), A_CH: u32(input.channels) };
    case "conv": {
      if (input.upsample !== 1 && input.upsample !== 2) throw new Error(`upsample ${input.upsample} not supported`);
      const pads = input.pad + (input.padEnd ?? input.pad);
      const outH = Math.floor((input.height * input.upsample + pads - input.kernel) / input.stride) + 1;
      const outW = Math.floor((input.width * input.upsample + pads - input.kernel) / input.stride) + 1;
      return {
        A_MODE: u32(3),
        IN_C: u32(input.channels),
        IN_H: u32(input.height),
        IN_W: u32(input.width),
        OUT_H: u32(outH),
        OUT_W: u32(outW),
        KSIZE: u32(input.kernel),
        STRIDE: u32(input.stride),
        PAD: ["i32", input.pad],
        UP_SHIFT: u32(input.upsample === 2 ? 1 : 0),
      };
    }
  }
}

function outputParams(output: GemmOutput): { params: Params; aux: Binding | null } {
  switch (output.layout) {
    case "rows":
      return { params: { OUT_MODE: u32(0) }, aux: null };
    case "rows_add_table":
      return { params: { OUT_MODE: u32(1), PERIOD: u32(output.period) }, aux: output.table };
    case "rows_residual":
      return output.scale ? { params: { OUT_MODE: u32(3) }, aux: output.scale } : { params: { OUT_MODE: u32(2) }, aux: null };
    case "rows_residual_gated":
      return {
        params: { OUT_MODE: u32(4), TOKENS: u32(output.tokens), STRIDE_ADA: u32(output.stride), OFFSET: u32(output.offset) },
        aux: output.ada,
      };
    case "cols_residual":
      return { params: { OUT_MODE: u32(5), Y_TOK: u32(output.tokens), Y_CH: u32(output.channels) }, aux: output.scale };
    case "nchw":
      return { params: { OUT_MODE: u32(6), Y_HW: u32(output.height * output.width) }, aux: null };
    case "nchw_residual":
      return { params: { OUT_MODE: u32(8), Y_HW: u32(output.height * output.width) }, aux: null };
    case "unpatchify":
      return { params: { OUT_MODE: u32(7), GRID: u32(output.grid), PATCH: u32(output.patch), OUT_C: u32(output.channels) }, aux: null };
  }
}

// Every uniform the GEMM reads, in struct order (unused ones stay 0; divisors default to 1).
const GEMM_PARAMS = [
  "M",
  "N",
  "K",
  "A_MODE",
  "OUT_MODE",
  "ACT",
  "HAS_BIAS",
  "GROUP",
  "GROUPS",
  "ROW_BYTES",
  "A_TOK",
  "A_CH",
  "IN_C",
  "IN_H",
  "IN_W",
  "OUT_H",
  "OUT_W",
  "KSIZE",
  "STRIDE",
  "PAD",
  "UP_SHIFT",
  "PERIOD",
  "TOKENS",
  "STRIDE_ADA",
  "OFFSET",
  "Y_TOK",
  "Y_CH",
  "Y_HW",
  "GRID",
  "PATCH",
  "OUT_C",
];
const GEMM_DIVISORS = new Set([
  "GROUP",
  "GROUPS",
  "A_CH",
  "OUT_H",
  "OUT_W",
  "KSIZE",
  "PERIOD",
  "TOKENS",
  "Y_CH",
  "Y_HW",
  "GRID",
  "PATCH",
  "OUT_C",
]);

/** The direct GEMM's branch-free A reads (gemm_direct.wgsl A_BASE, A4_AT): rows (vec4) or token-mixing columns. */
function fastA(input: GemmInput, aligned: boolean): { A_BASE: string; A4_AT: string } {
  if (aligned && input.layout === "rows") {
    const load = input.silu ? "let v = a[base + k4];\n  return v / (1.0 + exp(-v));" : "return a[base + k4];";
    return { A_BASE: "return m * (P.K >> 2u);", A4_AT: load };
  }
  if (aligned && input.layout === "cols") {
    return {
      A_BASE: "return (m / P.A_CH) * P.A_TOK * P.A_CH + m % P.A_CH;",
      A4_AT: "let e = base + 4u * k4 * P.A_CH;\n  return vec4<f32>(a[e], a[e + P.A_CH], a[e + 2u * P.A_CH], a[e + 3u * P.A_CH]);",
    };
  }
  return { A_BASE: "return 0u;", A4_AT: "return vec4<f32>();" };
}

/** The direct GEMM's FAST weight reads (gemm_direct.wgsl CHUNK4, W_SCALE, W4_SCALED): each group's scale decoded once. */
function fastW(w: GpuMatrix, aligned: boolean): { CHUNK4: string; W_SCALE: string; W4_SCALED: string } {
  const none = { CHUNK4: "0xffffffffu", W_SCALE: "return 1.0;" };
  if (!aligned) return { ...none, W4_SCALED: "return vec4<f32>();" };
  switch (w.encoding) {
    case "f32":
      return { ...none, W4_SCALED: "return w[n * (P.K >> 2u) + k4];" };
    case "f16":
      return {
        ...none,
        W4_SCALED: "let i = n * (P.K >> 1u) + 2u * k4;\n  return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));",
      };
    case "q8":
    case "q4":
      break;
  }
  const scale = "let s = n * P.GROUPS + g;\n  return pick_half(unpack2x16float(ws[s >> 1u]), s);";
  const chunk = `${w.groupSize / 4}u`;
  if (w.encoding === "q8")
    return {
      CHUNK4: chunk,
      W_SCALE: scale,
      W4_SCALED: `let word = w[n * (P.K >> 2u) + k4];
  let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
  return vec4<f32>(q) * s;`,
    };
  return {
    CHUNK4: chunk,
    W_SCALE: scale,
    W4_SCALED: `let addr = n * P.ROW_BYTES + 2u * k4; // the 4 nibbles are one 16-bit half of a word
  let bits = w[addr >> 2u] >> ((addr & 3u) * 8u);
  let q = vec4<i32>(vec4<u32>(bits, bits >> 4u, bits >> 8u, bits >> 12u) & vec4<u32>(0xfu)); // q + 8
  return fma(vec4<f32>(q), vec4<f32>(s), vec4<f32>(-8.0 * s)); // one rounding, as (q - 8) s`,
  };
}

/** C = act(A W^T + bias) with W dequantized in the shader; one 32x32 tile per workgroup (kernelChoice.gemm's main). */
export function gemm(spec: GemmSpec): Dispatch {
  const w = spec.weight;
  const aligned = alignedWeight(w);
  const loadW = weightLoader(w, aligned);
  const output = outputParams(spec.output);
  const given: Params = {
    M: u32(spec.rows),
    N: u32(w.rows),
    K: u32(w.cols),
    ACT: u32(ACTIVATION_CODES[spec.activation ?? "none"]),
    HAS_BIAS: u32(spec.bias ? 1 : 0),
    ...inputParams(spec.input),
    ...loadW.params,
    ...output.params,
  };
  const params: Params = {};
  for (const name of GEMM_PARAMS) params[name] = given[name] ?? (name === "PAD" ? ["i32", 0] : u32(GEMM_DIVISORS.has(name) ? 1 : 0));
  const vectorA = aligned && spec.input.layout === "rows"; // A as vec4 (rows read four k at a time)
  const declared: Declared[] = [
    { name: "a", buffer: spec.input.buffer, type: vectorA ? "vec4<f32>" : "f32" },
    { name: "w", buffer: w.data, type: w.encoding !== "f32" ? "u32" : aligned ? "vec4<f32>" : "f32" },
    { name: "bias", buffer: spec.bias ?? null, type: "f32" },
    { name: "y", buffer: spec.output.buffer, type: "f32", write: true },
    { name: "aux", buffer: output.aux, type: "f32" },
  ];
  if (w.scales) declared.splice(2, 0, { name: "ws", buffer: w.scales, type: "u32" }); // only q8/q4 read scales
  const values = {
    ALIGNED: String(aligned),
    LOAD_W: loadW.code,
    LOAD_W4: loadW.code4,
    FAST: String(aligned && (spec.input.layout === "rows" || spec.input.layout === "cols")),
    ...fastA(spec.input, aligned),
    ...fastW(w, aligned),
    A_AT: vectorA ? "return a[i >> 2u][i & 3u];" : "return a[i];",
    LOAD_A4: vectorA
      ? "let v = a[(m * P.K + k) >> 2u];\n  if (P.A_MODE == 1u) {\n    return v / (1.0 + exp(-v));\n  }\n  return v;"
      : "return vec4<f32>();",
  };
  const template = `${gemmWgsl}\n${kernelChoice.gemm === "direct" ? gemmDirectWgsl : gemmTiledWgsl}`;
  return dispatch(spec.label, template, values, declared, [Math.ceil(w.rows / 32), Math.ceil(spec.rows / 32), 1], params);
}

/** Whether a convolution should run as im2col + row GEMM: the direct GEMM's branch-free path needs rows. */
export function convViaIm2col(weight: GpuMatrix): boolean {
  return kernelChoice.gemm === "direct" && alignedWeight(weight);
}

/**
 * The im2col matrix of a conv input as rows: y[m, k] = A(m, k) of the GEMM's conv layout (zero padding,
 * nearest up-sampling), m = (sample, output pixel), k = (channel, ky, kx); `rows` = batch * output pixels.
 */
export function im2col(label: string, input: Extract<GemmInput, { layout: "conv" }>, y: Binding, rows: number): Dispatch {
  const p = inputParams(input);
  const cols = input.channels * input.kernel * input.kernel;
  const declared: Declared[] = [
    { name: "x", buffer: input.buffer, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const body = `let m = i / P.KCOLS;
  let k = i % P.KCOLS;
  let ox = m % P.OUT_W;
  let oy = (m / P.OUT_W) % P.OUT_H;
  let area = P.KSIZE * P.KSIZE;
  let ci = k / area;
  let r = k - ci * area;
  let ky = r / P.KSIZE;
  let iy = i32(oy * P.STRIDE) - P.PAD + i32(ky);
  let ix = i32(ox * P.STRIDE) - P.PAD + i32(r - ky * P.KSIZE);
  var v = 0.0;
  if (iy >= 0 && ix >= 0 && iy < i32(P.IN_H << P.UP_SHIFT) && ix < i32(P.IN_W << P.UP_SHIFT)) {
    let base = (m / (P.OUT_W * P.OUT_H)) * P.IN_C * P.IN_H * P.IN_W;
    v = x[base + (ci * P.IN_H + (u32(iy) >> P.UP_SHIFT)) * P.IN_W + (u32(ix) >> P.UP_SHIFT)];
  }
  y[i] = v;`;
  const params: Params = { COUNT: u32(rows * cols), KCOLS: u32(cols) };
  for (const name of ["IN_C", "IN_H", "IN_W", "OUT_H", "OUT_W", "KSIZE", "STRIDE", "PAD", "UP_SHIFT"]) params[name] = p[name];
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((rows * cols) / 64)), params);
}

// ---------------------------------------------------------------------------------------------------------
// Norms

/** adaLN modulation source: y * (1 + ada[b, scale]) + ada[b, shift] with b = row / tokens. */
export interface Modulation {
  ada: Binding;
  tokens: number;
  stride: number;
  shift: number; // offsets (in values) of the shift and scale chunks inside a row of `ada`
  scale: number;
}

/** A (period, dim) table added to the rows of an output: + table[row % period, :] (position embeddings). */
export interface RowTable {
  table: Binding;
  period: number;
}

/**
 * RMSNorm over the last dim (eps 1e-6), with an affine weight or an adaLN modulation, then an optional table; a
 * workgroup per row, or a thread per row where kernelChoice.gemm is "direct" (software adapters: no barrier).
 */
export function rmsNorm(
  label: string,
  x: Binding,
  y: Binding,
  rows: number,
  dim: number,
  weight: Binding | null,
  modulation?: Modulation,
  addTable?: RowTable,
): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const params: Params = { ROWS: u32(rows), D: u32(dim), EPS: ["f32", 1e-6] };
  let finish = "return v;";
  if (weight) {
    declared.push({ name: "weight", buffer: weight, type: "f32" });
    finish = "return v * weight[i];";
  }
  if (modulation) {
    declared.push({ name: "ada", buffer: modulation.ada, type: "f32" });
    Object.assign(params, {
      TOKENS: u32(modulation.tokens),
      ADA_STRIDE: u32(modulation.stride),
      SHIFT: u32(modulation.shift),
      SCALE: u32(modulation.scale),
    });
    finish = `let base = (row / P.TOKENS) * P.ADA_STRIDE;\n  let w = ${weight ? "v * weight[i]" : "v"};\n  return w * (1.0 + ada[base + P.SCALE + i]) + ada[base + P.SHIFT + i];`;
  }
  if (addTable) {
    if (modulation) throw new Error("rmsNorm: a modulated norm takes no table");
    declared.push({ name: "table", buffer: addTable.table, type: "f32" });
    params.PERIOD = u32(addTable.period);
    finish = `return ${weight ? "v * weight[i]" : "v"} + table[(row % P.PERIOD) * P.D + i];`;
  }
  if (kernelChoice.gemm === "direct")
    return dispatch(label, rmsnormRowsWgsl, { FINISH: finish }, declared, grid1d(Math.ceil(rows / 64)), params);
  const groups: [number, number, number] = rows <= MAX_GROUPS_X ? [rows, 1, 1] : [MAX_GROUPS_X, Math.ceil(rows / MAX_GROUPS_X), 1];
  return dispatch(label, rmsnormWgsl, { FINISH: finish }, declared, groups, params);
}

/** What the channel norm of a conv net does: GroupNorm statistics, a folded-BatchNorm affine, or nothing. */
export type ChannelNorm =
  | { kind: "group"; groups: number; weight: Binding; bias: Binding; eps: number }
  | { kind: "affine"; weight: Binding; bias: Binding }
  | { kind: "identity" };

export interface ChannelNormTail {
  modulation?: { ada: Binding; channels: number }; // adaLN-Zero: gate * (v * (1 + scale) + shift), chunks (shift, scale, gate)
  film?: { buffer: Binding; channels: number }; // UNet time FiLM: v * (1 + scale) + shift, chunks (scale, shift) of (B, 2C)
  residual?: Binding; // + residual[i]
  silu?: boolean;
}

/** Channel norm of NCHW maps followed by an optional modulation, residual add and SiLU (ConvResBlock tail). */
export function channelNorm(
  label: string,
  x: Binding,
  y: Binding,
  batch: number,
  channels: number,
  hw: number,
  norm: ChannelNorm,
  tail: ChannelNormTail,
): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const groups = norm.kind === "group" ? norm.groups : channels;
  const params: Params = { C: u32(channels), HW: u32(hw), GROUPS: u32(groups), EPS: ["f32", norm.kind === "group" ? norm.eps : 0] };
  if (norm.kind !== "identity") {
    declared.push({ name: "gamma", buffer: norm.weight, type: "f32" }, { name: "beta", buffer: norm.bias, type: "f32" });
  }
  const lines = [`var r = ${norm.kind === "identity" ? "v" : "v * gamma[c] + beta[c]"};`];
  if (tail.modulation) {
    declared.push({ name: "ada", buffer: tail.modulation.ada, type: "f32" });
    params.ADA_C = u32(tail.modulation.channels);
    lines.push("let base = b * 3u * P.ADA_C;", "r = ada[base + 2u * P.ADA_C + c] * (r * (1.0 + ada[base + P.ADA_C + c]) + ada[base + c]);");
  }
  if (tail.film) {
    declared.push({ name: "film", buffer: tail.film.buffer, type: "f32" });
    params.FILM_C = u32(tail.film.channels);
    lines.push("let fb = b * 2u * P.FILM_C;", "r = r * (1.0 + film[fb + c]) + film[fb + P.FILM_C + c];");
  }
  if (tail.residual) {
    declared.push({ name: "res", buffer: tail.residual, type: "f32" });
    lines.push("r = r + res[i];");
  }
  lines.push(tail.silu ? "return silu(r);" : "return r;");
  const values = { STATS: norm.kind === "group" ? "true" : "false", FINISH: lines.join("\n  ") };
  return dispatch(label, groupnormWgsl, values, declared, [groups, batch, 1], params);
}

// ---------------------------------------------------------------------------------------------------------
// Attention

function rotateCode(target: string, offset: string, weight: string | null): string {
  const x1 = weight ? `qkv[src + ${offset} + i] * inv * ${weight}[i]` : `qkv[src + ${offset} + i]`;
  const x2 = weight ? `qkv[src + ${offset} + i + HALF] * inv * ${weight}[i + HALF]` : `qkv[src + ${offset} + i + HALF]`;
  const norm = weight
    ? `var sq = 0.0;
    for (var i = 0u; i < D; i++) {
      let x = qkv[src + ${offset} + i];
      sq += x * x;
    }
    let inv = inverseSqrt(sq / f32(D) + EPS);
    `
    : "";
  return `{
    ${norm}for (var i = 0u; i < HALF; i++) {
      let x1 = ${x1};
      let x2 = ${x2};
      ${target}[dst + i] = x1 * rope_cos[table + i] - x2 * rope_sin[table + i];
      ${target}[dst + i + HALF] = x1 * rope_sin[table + i] + x2 * rope_cos[table + i];
    }
  }`;
}

/** Split qkv (B, T, 3, H, d) into q, k, v (B, H, T, d), with QK RMSNorm and 2D RoPE on q and k. */
export function qkRope(
  label: string,
  qkv: Binding,
  q: Binding,
  k: Binding,
  v: Binding,
  ropeCos: Binding,
  ropeSin: Binding,
  batch: number,
  tokens: number,
  heads: number,
  headDim: number,
  qNorm: Binding | null,
  kNorm: Binding | null,
): Dispatch {
  const declared: Declared[] = [
    { name: "qkv", buffer: qkv, type: "f32" },
    { name: "q", buffer: q, type: "f32", write: true },
    { name: "k", buffer: k, type: "f32", write: true },
    { name: "v", buffer: v, type: "f32", write: true },
    { name: "rope_cos", buffer: ropeCos, type: "f32" },
    { name: "rope_sin", buffer: ropeSin, type: "f32" },
  ];
  if (qNorm && kNorm) declared.push({ name: "q_norm", buffer: qNorm, type: "f32" }, { name: "k_norm", buffer: kNorm, type: "f32" });
  const values = {
    ROTATE_Q: rotateCode("q", "0u", qNorm ? "q_norm" : null),
    ROTATE_K: rotateCode("k", "H * D", kNorm ? "k_norm" : null),
  };
  const params: Params = { B: u32(batch), T: u32(tokens), H: u32(heads), D: u32(headDim) };
  return dispatch(label, qkRopeWgsl, values, declared, grid1d(Math.ceil((batch * tokens * heads) / 64)), params);
}

/** softmax(q k^T / sqrt(d)) v, output as (B, T, H*d) token rows. */
export function attention(
  label: string,
  q: Binding,
  k: Binding,
  v: Binding,
  out: Binding,
  batch: number,
  tokens: number,
  heads: number,
  headDim: number,
  tokenRows = false, // q, k, v as (B, T, H*D) token rows instead of (B, H, T, D)
): Dispatch {
  if (headDim % 4 !== 0) throw new Error(`attention: head dim ${headDim} is not a multiple of 4 (the kernel reads vec4 channels)`);
  const keysPerTile = Math.max(1, Math.min(64, Math.floor(2048 / headDim)));
  const declared: Declared[] = [
    { name: "q", buffer: q, type: "f32" },
    { name: "k", buffer: k, type: "f32" },
    { name: "v", buffer: v, type: "f32" },
    { name: "out", buffer: out, type: "f32", write: true },
  ];
  const index = tokenRows ? "((b * P.T + t) * P.H + h) * D + d" : "((b * P.H + h) * P.T + t) * D + d";
  const d4 = Array.from({ length: headDim / 4 }, (_, d) => d);
  const lines = (line: (d: number) => string) => d4.map(line).join("\n  ");
  const values = {
    D4: headDim / 4,
    KT: keysPerTile,
    TILE: (keysPerTile * headDim) / 4,
    QKV_INDEX: index,
    Q_LOAD: lines((d) => `let q${d} = query4(b, h, i, ${d}u) * P.SCALE;\n  var o${d} = vec4<f32>();`),
    DOT: lines((d) => `dot4 = fma(q${d}, tile_k[base + ${d}u], dot4);`),
    UPDATE: lines((d) => `o${d} = fma(vec4<f32>(p), tile_v[base + ${d}u], o${d} * correction);`),
    STORE: lines(
      (d) =>
        `let r${d} = o${d} * inv;\n    out[dst + ${4 * d}u] = r${d}.x;\n    out[dst + ${4 * d + 1}u] = r${d}.y;\n    out[dst + ${4 * d + 2}u] = r${d}.z;\n    out[dst + ${4 * d + 3}u] = r${d}.w;`,
    ),
  };
  const params: Params = { T: u32(tokens), H: u32(heads), SCALE: ["f32", 1 / Math.sqrt(headDim)] };
  return dispatch(label, attentionWgsl, values, declared, [Math.ceil(tokens / 64), batch * heads, 1], params);
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise, projection, embedding

/** SwiGLU gating: y[m, j] = silu(x[m, j]) * x[m, hidden + j] for x (rows, 2*hidden). */
export function swiglu(label: string, x: Binding, y: Binding, rows: number, hidden: number): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const body =
    "let m = i / P.HIDDEN;\n  let j = i % P.HIDDEN;\n  y[i] = silu(x[m * 2u * P.HIDDEN + j]) * x[m * 2u * P.HIDDEN + P.HIDDEN + j];";
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((rows * hidden) / 64)), {
    COUNT: u32(rows * hidden),
    HIDDEN: u32(hidden),
  });
}

/** Add a per-(sample, channel) value to NCHW maps in place: x[b, c, :] += v[b, c] (a class offset of a feature map). */
export function addChannelValues(label: string, x: Binding, values: Binding, batch: number, channels: number, hw: number): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32", write: true },
    { name: "v", buffer: values, type: "f32" },
  ];
  const body = "x[i] = x[i] + v[i / P.HW];"; // NCHW: i / HW = b * C + c, the row-major index of v (B, C)
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((batch * channels * hw) / 64)), {
    COUNT: u32(batch * channels * hw),
    HW: u32(hw),
  });
}

/** Gather label embeddings: y[b, :] = table[labels[b], :]. */
export function embedLabels(label: string, labels: Binding, table: Binding, y: Binding, batch: number, dim: number): Dispatch {
  const declared: Declared[] = [
    { name: "labels", buffer: labels, type: "u32" },
    { name: "table", buffer: table, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const body = "y[i] = table[labels[i / P.DIM] * P.DIM + i % P.DIM];";
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((batch * dim) / 64)), {
    COUNT: u32(batch * dim),
    DIM: u32(dim),
  });
}

/** y[b, :] = silu(x[b, :] + table[labels[b], :]) for x (B, dim): a class embedding added to a conditioning vector, then swish. */
export function addLabelSilu(label: string, x: Binding, labels: Binding, table: Binding, y: Binding, batch: number, dim: number): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32" },
    { name: "labels", buffer: labels, type: "u32" },
    { name: "table", buffer: table, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const body = "y[i] = silu(x[i] + table[labels[i / P.DIM] * P.DIM + i % P.DIM]);";
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((batch * dim) / 64)), {
    COUNT: u32(batch * dim),
    DIM: u32(dim),
  });
}

/**
 * Classifier-free guidance on a doubled batch [cond; uncond] in place: both halves become
 * u + w (c - u) (so the next network sees duplicated inputs), w read from `scale[0]`; `clamp` for pixels.
 */
export function guidanceInPlace(label: string, x: Binding, scale: Binding, half: number, clamp = false): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32", write: true },
    { name: "scale", buffer: scale, type: "f32" },
  ];
  const mixed = clamp ? "clamp(u + scale[0] * (x[i] - u), -1.0, 1.0)" : "u + scale[0] * (x[i] - u)";
  const body = `let u = x[i + P.COUNT];\n  let g = ${mixed};\n  x[i] = g;\n  x[i + P.COUNT] = g;`;
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil(half / 64)), { COUNT: u32(half) });
}

/**
 * dst = f(src), or with noise dst = f(f(src) + sigma * noise); f scales each sample to norm `radius`: sqrt(L)
 * for the Sphere Encoder, 1 for the unit sphere of a psvae (F.normalize: z / max(||z||, 1e-12)).
 */
export function sphereProject(
  label: string,
  src: Binding,
  dst: Binding,
  batch: number,
  latentSize: number,
  noise?: { buffer: Binding; sigma: number },
  radius = Math.sqrt(latentSize),
): Dispatch {
  const declared: Declared[] = [
    { name: "src", buffer: src, type: "f32" },
    { name: "dst", buffer: dst, type: "f32", write: true },
  ];
  if (noise) declared.push({ name: "noise", buffer: noise.buffer, type: "f32" });
  const values = {
    NOISE: noise ? "true" : "false",
    NOISY: noise ? "return src[base + e] * scale + P.SIGMA * noise[base + e];" : "return 0.0;",
  };
  const params: Params = { L: u32(latentSize), RADIUS: ["f32", radius], SIGMA: ["f32", noise ? noise.sigma : 0] };
  return dispatch(label, sphereWgsl, values, declared, [batch, 1, 1], params);
}

// ---------------------------------------------------------------------------------------------------------
// Vector quantization (models/quantize.py VectorQuantizer, eval mode)

/**
 * Nearest code of each latent vector z[b, :, p] of NCHW maps (B, dim, hw): the index (as f32) of the code of
 * `codebook` (K, dim) with the largest dot product when `cosine` (z normalised; the codebook was normalised on
 * load), else the smallest squared distance. Ties go to the lowest index, as torch's argmin/argmax.
 */
export function nearestCode(
  label: string,
  z: Binding,
  codebook: Binding,
  indices: Binding,
  batch: number,
  dim: number,
  hw: number,
  codes: number,
  cosine: boolean,
): Dispatch {
  const declared: Declared[] = [
    { name: "z", buffer: z, type: "f32" },
    { name: "codebook", buffer: codebook, type: "f32" },
    { name: "indices", buffer: indices, type: "f32", write: true },
  ];
  const params: Params = { COUNT: u32(batch * hw), DIM: u32(dim), HW: u32(hw), K: u32(codes) };
  return dispatch(label, vqWgsl, { COSINE: String(cosine), MAX_DIM: dim }, declared, grid1d(Math.ceil((batch * hw) / 64)), params);
}

/** Code vectors of indices (B, hw) (f32 values) as NCHW maps (B, dim, hw): y[b, c, p] = codebook[idx[b, p], c]. */
export function gatherCodes(
  label: string,
  indices: Binding,
  codebook: Binding,
  y: Binding,
  batch: number,
  dim: number,
  hw: number,
  codes: number,
): Dispatch {
  const declared: Declared[] = [
    { name: "idx", buffer: indices, type: "f32" },
    { name: "table", buffer: codebook, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const body = `let p = i % P.HW;
  let c = (i / P.HW) % P.DIM;
  let b = i / (P.HW * P.DIM);
  let k = min(u32(max(idx[b * P.HW + p], 0.0)), P.K - 1u);
  y[i] = table[k * P.DIM + c];`;
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil((batch * dim * hw) / 64)), {
    COUNT: u32(batch * dim * hw),
    DIM: u32(dim),
    HW: u32(hw),
    K: u32(codes),
  });
}

/** y = x * scale + shift, then clamped to [-1, 1] when `clamp` (input/output ranges of a tokenizer). */
export function scaleShift(label: string, x: Binding, y: Binding, count: number, scale: number, shift: number, clamp: boolean): Dispatch {
  const declared: Declared[] = [
    { name: "x", buffer: x, type: "f32" },
    { name: "y", buffer: y, type: "f32", write: true },
  ];
  const value = "x[i] * P.SCALE + P.SHIFT";
  const body = clamp ? `y[i] = clamp(${value}, -1.0, 1.0);` : `y[i] = ${value};`;
  return dispatch(label, elementwiseWgsl, { BODY: body }, declared, grid1d(Math.ceil(count / 64)), {
    COUNT: u32(count),
    SCALE: ["f32", scale],
    SHIFT: ["f32", shift],
  });
}
