/**
 * Reader for the `sphere-web` weight format (docs/web_format.md, version 2): a safetensors-compatible file
 * (u64 header length, JSON header, 4-byte aligned data) holding a model of a family this reader knows (its
 * config's `family`: "sphere", the default, "psvae", "vqvae", "ldm" or "somar") in one of the modes fp32, fp16, q8 or q4, with a
 * SHA-256 of its data section. Mirrors engine/webformat.py: same checks, same messages' intent.
 */

import { withLegacyDefaults, type FamilyName, type ModelConfig, type SphereConfig } from "./config";

export const FORMAT_NAME = "sphere-web";
export const FORMAT_VERSION = "2"; // 2: __metadata__ carries data_sha256 (docs §2.1); version-1 files are re-exported
const DATA_HASH_KEY = "data_sha256";
const REQUIRED_METADATA = ["config", "quantization", "group_size", DATA_HASH_KEY];
const REQUIRED_CONFIG_KEYS = ["image_size", "num_classes"]; // what every reader uses
// the keys each family's reader adds (engine/families.py WebExport.required_config_keys); absent family = sphere
export const FAMILY_CONFIG_KEYS: Record<FamilyName, string[]> = {
  sphere: ["backbone", "latent_dim"],
  psvae: ["backbone", "decoder", "z_dim"],
  vqvae: ["channel_mults", "codebook_size", "codebook_dim", "l2_norm", "quantizer", "norm_groups", "width"],
  ldm: [
    "kind",
    "latent_channels",
    "ae_width",
    "ae_mults",
    "ae_groups",
    "unet_width",
    "unet_mults",
    "unet_groups",
    "unet_heads",
    "timesteps",
    "beta_schedule",
    "prediction",
  ],
  somar: ["kind", "level_patches", "level_sizes", "ae_width", "ae_mults", "ae_groups", "latent_channels"],
};
export const DEFAULT_FAMILY: FamilyName = "sphere";
export const MODES = ["fp32", "fp16", "q8", "q4"] as const;
export type Mode = (typeof MODES)[number];

const PAD_PREFIX = "__pad__.";
const ALIGN_BYTES = 4;
const MAX_HEADER_BYTES = 64 * 1024 * 1024; // a longer "header" means this is not one of our files
const MAX_GROUP_SIZE = 1024; // as the exporter: longer groups defeat grouping
export const DTYPE_BYTES = { F32: 4, F16: 2, I8: 1, U8: 1 } as const;
export type DType = keyof typeof DTYPE_BYTES;

/** A file that is not a valid sphere-web file; the message names the problem in one line. */
export class WebFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WebFormatError";
  }
}

/** One entry of the tensor table; `bytes` views the file (no copy). */
export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number; // relative to the data section
  end: number;
  bytes: Uint8Array;
}

/** A `quantization` metadata entry: parameter `shape` stored as packed `data` + fp16 `scales`. */
export interface QuantEntry {
  mode: "q8" | "q4";
  shape: number[];
  group_size: number;
  data: string;
  scales: string;
}

/** A parsed safetensors file: string metadata and the tensor table (padding excluded). */
export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
}

/** A validated sphere-web file. */
export interface WeightFile extends SafetensorsFile {
  mode: Mode;
  groupSize: number;
  config: ModelConfig; // its `family` says which (always set, "sphere" for files without the key)
  quantization: Record<string, QuantEntry>;
  bnFolded: boolean;
  paramCount: number;
  byteLength: number;
}

/**
 * A weight matrix as stored, for in-shader dequantization: (rows, cols) with cols the flattened input dim.
 * `data` and `scales` are padded to a multiple of 4 bytes so they can be uploaded as u32 arrays.
 */
export interface PackedMatrix {
  encoding: "f32" | "f16" | "q8" | "q4";
  shape: number[];
  rows: number;
  cols: number;
  groupSize: number; // q8/q4 only (0 otherwise)
  data: Uint8Array;
  scales: Uint8Array | null;
}

const product = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

function fail(source: string, message: string): never {
  throw new WebFormatError(`'${source}'${message.startsWith(":") ? "" : " "}${message}`);
}

/** Parse and validate the safetensors layout: lengths, dtypes, shapes, alignment, contiguous offsets. */
export function parseSafetensors(buffer: ArrayBuffer, source = "weights"): SafetensorsFile & { dataStart: number } {
  const view = new DataView(buffer);
  if (buffer.byteLength < 8) fail(source, `is truncated: ${buffer.byteLength} bytes, fewer than the 8-byte header length`);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > MAX_HEADER_BYTES) {
    fail(source, `is not a sphere-web file (wrong magic): header length ${headerLen} is implausible`);
  }
  if (8 + headerLen > buffer.byteLength) {
    fail(source, `is truncated: the header needs ${headerLen} bytes but only ${buffer.byteLength - 8} follow the length field`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(buffer, 8, headerLen)));
  } catch (error) {
    fail(source, `is not a sphere-web file (wrong magic): header is not JSON (${(error as Error).name})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail(source, "is not a sphere-web file (wrong magic): header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = buffer.byteLength - dataStart;
  const metadata = checkMetadataMap(header.__metadata__, source);
  const table: TensorEntry[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name !== "__metadata__") table.push(checkEntry(name, entry, source));
  }
  checkLayout(table, dataLen, source);
  const tensors = new Map<string, TensorEntry>();
  for (const entry of table) {
    if (!entry.name.startsWith(PAD_PREFIX)) {
      entry.bytes = new Uint8Array(buffer, dataStart + entry.begin, entry.end - entry.begin);
      tensors.set(entry.name, entry);
    }
  }
  return { metadata, tensors, dataStart };
}

function checkMetadataMap(value: unknown, source: string): Record<string, string> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) fail(source, "has a __metadata__ that is not an object");
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== "string") fail(source, `has metadata '${key}' that is not a string`);
  }
  return value as Record<string, string>;
}

function checkEntry(name: string, entry: unknown, source: string): TensorEntry {
  const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (e === null || typeof e !== "object" || !("dtype" in e) || !("shape" in e) || !("data_offsets" in e)) {
    fail(source, `: tensor '${name}' entry needs dtype, shape and data_offsets`);
  }
  const dtype = e.dtype as string;
  if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
    fail(
      source,
      `: tensor '${name}' has unknown dtype ${JSON.stringify(e.dtype)} (expected one of ${Object.keys(DTYPE_BYTES).join(", ")})`,
    );
  }
  const shape = e.shape as number[];
  if (!Array.isArray(shape) || !shape.every((s) => Number.isInteger(s) && s >= 0)) {
    fail(source, `: tensor '${name}' has a bad shape ${JSON.stringify(e.shape)}`);
  }
  const offsets = e.data_offsets as number[];
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(Number.isInteger) || offsets[0] < 0 || offsets[0] > offsets[1]) {
    fail(source, `: tensor '${name}' has bad data_offsets ${JSON.stringify(e.data_offsets)}`);
  }
  const [begin, end] = offsets;
  const expected = product(shape) * DTYPE_BYTES[dtype as DType];
  if (end - begin !== expected) {
    fail(
      source,
      `: tensor '${name}' shape [${shape}] ${dtype} needs ${expected} bytes but data_offsets span ${end - begin} (shape/byte-length mismatch)`,
    );
  }
  if (begin % ALIGN_BYTES !== 0 && !name.startsWith(PAD_PREFIX)) {
    fail(source, `: tensor '${name}' starts at data byte ${begin}, not a multiple of 4`);
  }
  return { name, dtype: dtype as DType, shape, begin, end, bytes: new Uint8Array(0) };
}

function checkLayout(table: TensorEntry[], dataLen: number, source: string): void {
  const ordered = [...table].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  let contiguous = true;
  for (const entry of ordered) {
    if (entry.begin !== expected) contiguous = false;
    expected = entry.end;
  }
  for (const entry of ordered) {
    if (entry.end > dataLen) {
      if (contiguous) {
        fail(source, `is truncated: the tensor table needs ${ordered[ordered.length - 1].end} data bytes but the file holds ${dataLen}`);
      }
      fail(
        source,
        `: tensor '${entry.name}' data_offsets [${entry.begin}, ${entry.end}] are out of range (the data section has ${dataLen} bytes)`,
      );
    }
  }
  expected = 0;
  let previous = "(start)";
  for (const entry of ordered) {
    if (entry.begin !== expected) {
      fail(
        source,
        `: tensor '${entry.name}' data_offsets [${entry.begin}, ${entry.end}] overlap or leave a gap after '${previous}' (expected begin ${expected})`,
      );
    }
    expected = entry.end;
    previous = entry.name;
  }
  if (expected !== dataLen) fail(source, `: ${dataLen - expected} trailing bytes after the last tensor`);
}

function parseJsonField<T>(metadata: Record<string, string>, key: string, source: string): T {
  try {
    return JSON.parse(metadata[key]) as T;
  } catch {
    fail(source, `: metadata '${key}' is not valid JSON`);
  }
}

/**
 * Parse a sphere-web file: the safetensors layout, magic, version, mode, config and quantization entries,
 * then the SHA-256 of the data section (after the structural checks, so a short file is "truncated").
 */
export async function parseWeightFile(buffer: ArrayBuffer, source = "weights"): Promise<WeightFile> {
  const { file, dataStart } = checkWeightFile(buffer, source);
  const actual = await sha256Hex(new Uint8Array(buffer, dataStart));
  if (actual !== file.metadata[DATA_HASH_KEY]) {
    throw new WebFormatError(`web weight file '${source}' is corrupt (data checksum mismatch); re-export it`);
  }
  return file;
}

/** Lowercase hex SHA-256 (Web Crypto: browsers in a secure context, Node >= 19). */
async function sha256Hex(bytes: Uint8Array): Promise<string> {
  if (!globalThis.crypto?.subtle) throw new Error("checking a weight file needs Web Crypto (an https or localhost page)");
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** The synchronous checks of parseWeightFile (everything but the checksum). */
function checkWeightFile(buffer: ArrayBuffer, source: string): { file: WeightFile; dataStart: number } {
  const base = parseSafetensors(buffer, source);
  const metadata = base.metadata;
  if (metadata.format !== FORMAT_NAME) {
    fail(
      source,
      `has wrong magic: format is ${JSON.stringify(metadata.format ?? null)}, expected '${FORMAT_NAME}' (not a sphere-web weight file)`,
    );
  }
  if (metadata.version !== FORMAT_VERSION) {
    fail(
      source,
      `has unsupported version ${JSON.stringify(metadata.version ?? null)}: this reader knows version ${FORMAT_VERSION}; re-export with export_weights.py`,
    );
  }
  if (!(MODES as readonly string[]).includes(metadata.mode)) {
    fail(source, `has unknown mode ${JSON.stringify(metadata.mode ?? null)}; expected one of ${MODES.join(", ")}`);
  }
  for (const key of REQUIRED_METADATA) {
    if (!(key in metadata)) fail(source, `metadata lacks '${key}'; re-export it with export_weights.py`);
  }
  const config = configOf(metadata, source);
  const quantization = parseJsonField<Record<string, QuantEntry>>(metadata, "quantization", source);
  for (const [name, info] of Object.entries(quantization)) checkQuantEntry(name, info, base.tensors, source);
  const file: WeightFile = {
    metadata,
    tensors: base.tensors,
    mode: metadata.mode as Mode,
    groupSize: Number(metadata.group_size),
    config,
    quantization,
    bnFolded: metadata.bn_folded === "true",
    paramCount: Number(metadata.param_count ?? 0),
    byteLength: buffer.byteLength,
  };
  return { file, dataStart: base.dataStart };
}

/**
 * The header's config with the keys every reader and its family's reader need (a file without them is bad,
 * not a crash later); a family this reader does not know is named, as engine/webformat.py does.
 */
function configOf(metadata: Record<string, string>, source: string): ModelConfig {
  const config = parseJsonField<Record<string, unknown>>(metadata, "config", source);
  const isObject = config !== null && typeof config === "object" && !Array.isArray(config);
  const family = isObject && "family" in config ? config.family : DEFAULT_FAMILY;
  if (typeof family !== "string" || !Object.hasOwn(FAMILY_CONFIG_KEYS, family)) {
    fail(source, `holds a '${String(family)}' model, a family this reader does not know`);
  }
  const required = [...REQUIRED_CONFIG_KEYS, ...FAMILY_CONFIG_KEYS[family as FamilyName]];
  const missing = required.filter((key) => !isObject || !(key in config));
  if (missing.length) fail(source, `: config lacks ${missing.map((key) => `'${key}'`).join(", ")}; re-export it with export_weights.py`);
  const typed = { ...config, family } as unknown as ModelConfig;
  return typed.family === "sphere" ? withLegacyDefaults(typed as SphereConfig) : typed;
}

function checkQuantEntry(name: string, info: QuantEntry, tensors: Map<string, TensorEntry>, source: string): void {
  const ok =
    info &&
    typeof info === "object" &&
    Array.isArray(info.shape) &&
    info.shape.length > 0 &&
    Number.isInteger(info.group_size) &&
    info.group_size >= 1 &&
    info.group_size <= MAX_GROUP_SIZE &&
    (info.mode === "q8" || info.mode === "q4");
  if (!ok) fail(source, `: quantization entry '${name}' has a bad mode/shape/group_size`);
  const data = tensors.get(info.data);
  const scales = tensors.get(info.scales);
  if (!data || !scales) fail(source, `: quantization entry '${name}' is incomplete or names a missing tensor`);
  const rows = info.shape[0];
  const cols = product(info.shape.slice(1));
  const packedCols = info.mode === "q8" ? cols : Math.ceil(cols / 2);
  const wantDtype = info.mode === "q8" ? "I8" : "U8";
  if (data.dtype !== wantDtype || data.shape.length !== 2 || data.shape[0] !== rows || data.shape[1] !== packedCols) {
    fail(source, `: '${info.data}' should be ${info.mode} data of shape [${rows}, ${packedCols}]`);
  }
  const groups = Math.ceil(cols / info.group_size);
  if (scales.dtype !== "F16" || scales.shape.length !== 2 || scales.shape[0] !== rows || scales.shape[1] !== groups) {
    fail(source, `: '${info.scales}' should be F16 of shape [${rows}, ${groups}]`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// fp16 and dequantization

let halfTable: Float32Array | null = null;

/** IEEE half (as its 16 bits) to a float, subnormals, infinities and NaN included. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

function halves(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  return halfTable;
}

/** The float32 values of a stored F32/F16/I8/U8 tensor (copies; handles unaligned views). */
export function tensorToFloat32(entry: TensorEntry): Float32Array {
  const n = product(entry.shape);
  const view = new DataView(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
  const out = new Float32Array(n);
  if (entry.dtype === "F32") for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  else if (entry.dtype === "F16") {
    const table = halves();
    for (let i = 0; i < n; i++) out[i] = table[view.getUint16(2 * i, true)];
  } else if (entry.dtype === "I8") for (let i = 0; i < n; i++) out[i] = view.getInt8(i);
  else for (let i = 0; i < n; i++) out[i] = view.getUint8(i);
  return out;
}

/** float32 (rows, cols) of q8/q4 group-quantized data: w = q * float32(scale of its group) (docs §4). */
export function dequantizeGroups(
  data: Uint8Array,
  scales: Uint8Array,
  mode: "q8" | "q4",
  rows: number,
  cols: number,
  groupSize: number,
): Float32Array {
  const table = halves();
  const groups = Math.ceil(cols / groupSize);
  const scaleView = new DataView(scales.buffer, scales.byteOffset, scales.byteLength);
  const signed = new Int8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(rows * cols);
  const rowBytes = mode === "q8" ? cols : Math.ceil(cols / 2);
  // q * scale is exact in a double, so storing it rounds once, as the shaders' q * s does
  for (let r = 0; r < rows; r++) {
    const row = r * rowBytes;
    for (let g = 0; g < groups; g++) {
      const scale = table[scaleView.getUint16(2 * (r * groups + g), true)]; // once per group
      const end = Math.min(cols, (g + 1) * groupSize);
      if (mode === "q8") for (let c = g * groupSize; c < end; c++) out[r * cols + c] = signed[row + c] * scale;
      else
        for (let c = g * groupSize; c < end; c++) {
          const byte = data[row + (c >> 1)];
          out[r * cols + c] = (((c & 1 ? byte >> 4 : byte) & 0x0f) - 8) * scale;
        }
    }
  }
  return out;
}

/** Names of the model parameters stored in the file (quantized ones under their original name). */
export function parameterNames(file: WeightFile): string[] {
  const packed = new Set(Object.values(file.quantization).flatMap((q) => [q.data, q.scales]));
  const names = [...file.tensors.keys()].filter((name) => !packed.has(name));
  return [...names, ...Object.keys(file.quantization)].sort();
}

export function hasParameter(file: WeightFile, name: string): boolean {
  return name in file.quantization || file.tensors.has(name);
}

/** float32 values and shape of a parameter, dequantizing q8/q4 and widening fp16. */
export function readParameter(file: WeightFile, name: string): { shape: number[]; data: Float32Array } {
  const quant = file.quantization[name];
  if (quant) {
    const rows = quant.shape[0];
    const cols = product(quant.shape.slice(1));
    const data = file.tensors.get(quant.data)!.bytes;
    const scales = file.tensors.get(quant.scales)!.bytes;
    return { shape: quant.shape, data: dequantizeGroups(data, scales, quant.mode, rows, cols, quant.group_size) };
  }
  const entry = file.tensors.get(name);
  if (!entry) throw new WebFormatError(`weight file lacks tensor '${name}' that its config needs`);
  return { shape: entry.shape, data: tensorToFloat32(entry) };
}

function padTo4(bytes: Uint8Array): Uint8Array {
  const length = Math.max(4, Math.ceil(bytes.byteLength / 4) * 4);
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

/** A weight as stored (packed) for the GPU, viewed as a (rows, cols = numel / rows) matrix. */
export function packedMatrix(file: WeightFile, name: string): PackedMatrix {
  const quant = file.quantization[name];
  if (quant) {
    const rows = quant.shape[0];
    const cols = product(quant.shape.slice(1));
    return {
      encoding: quant.mode,
      shape: quant.shape,
      rows,
      cols,
      groupSize: quant.group_size,
      data: padTo4(file.tensors.get(quant.data)!.bytes),
      scales: padTo4(file.tensors.get(quant.scales)!.bytes),
    };
  }
  const entry = file.tensors.get(name);
  if (!entry) throw new WebFormatError(`weight file lacks tensor '${name}' that its config needs`);
  if (entry.dtype !== "F32" && entry.dtype !== "F16") {
    throw new WebFormatError(`tensor '${name}' has dtype ${entry.dtype} but is not listed in 'quantization'`);
  }
  const rows = entry.shape[0] ?? 1;
  return {
    encoding: entry.dtype === "F32" ? "f32" : "f16",
    shape: entry.shape,
    rows,
    cols: product(entry.shape) / Math.max(rows, 1),
    groupSize: 0,
    data: padTo4(entry.bytes),
    scales: null,
  };
}
