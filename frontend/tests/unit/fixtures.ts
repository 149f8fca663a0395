/** Access to the fixtures written by scripts/make_fixtures.py (run `npm run fixtures` first). */
import fs from "node:fs";
import path from "node:path";
import { parseSafetensors, tensorToFloat32 } from "../../src/format";

export const FIXTURES = path.resolve(__dirname, "../../test-fixtures");

export interface Manifest {
  models: Record<
    string,
    { config: Record<string, unknown>; modes: Record<string, { bytes: number; quantized: number; tensor_names: string[] }> }
  >;
}

export function manifest(): Manifest {
  const file = path.join(FIXTURES, "manifest.json");
  if (!fs.existsSync(file)) throw new Error(`no fixtures in ${FIXTURES}: run 'npm run fixtures' (python scripts/make_fixtures.py)`);
  return JSON.parse(fs.readFileSync(file, "utf-8")) as Manifest;
}

/** The bytes of a fixture file as an ArrayBuffer of its own. */
export function readBuffer(relative: string): ArrayBuffer {
  const bytes = fs.readFileSync(path.join(FIXTURES, relative));
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

export function readTensors(relative: string): Map<string, Float32Array> {
  const file = parseSafetensors(readBuffer(relative), relative);
  return new Map([...file.tensors].map(([name, entry]) => [name, tensorToFloat32(entry)]));
}

/** Rebuild a safetensors file after editing its JSON header (data section kept as is). */
export function withHeader(buffer: ArrayBuffer, edit: (header: Record<string, any>) => void): ArrayBuffer {
  const view = new DataView(buffer);
  const headerLen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLen)));
  edit(header);
  let text = JSON.stringify(header);
  text += " ".repeat((8 - ((8 + text.length) % 8)) % 8);
  const json = new TextEncoder().encode(text);
  const data = new Uint8Array(buffer, 8 + headerLen);
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out.buffer;
}

/** A sampling run of models/diffusion.py recorded by make_fixtures.py (diffusion.json, tensors in diffusion.safetensors). */
export interface RecordedRun {
  sampler: "ddim" | "ddpm";
  eta: number;
  prediction: "eps" | "v";
  beta_schedule: "linear" | "cosine";
  clip: number | null;
  steps: number;
  timesteps: number;
  beta_start: number;
  beta_end: number;
}

/** The recorded sampling runs by name. */
export function recordedRuns(): Record<string, RecordedRun> {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, "diffusion.json"), "utf-8")) as Record<string, RecordedRun>;
}
