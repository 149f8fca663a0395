/** What both browser parity harnesses (runner.ts: WebGPU, cpu_runner.ts: the CPU path) share: results, tolerances,
 * the PyTorch reference tensors of scripts/make_fixtures.py and how outputs are compared with them. */

import { parseSafetensors, tensorToFloat32 } from "../../src/format";

export interface Result {
  name: string;
  ok: boolean;
  maxError: number;
  tolerance: number;
  ms: number;
  detail?: string;
}

export type Tensors = Map<string, Float32Array>;

// Tolerances (max absolute error). The references are PyTorch float32 on the DEQUANTIZED weights of each
// file, so quantization error is not in them: what is left is float32 summation order and our erf/exp.
// Measured on SwiftShader: kernels <= 1.2e-6, one pass <= 8e-6, chained <= 4.3e-5; the bounds leave ~10x.
export const TOLERANCE = {
  kernel: 1e-5, // single ops on O(1) values
  model: 1e-4, // one encoder or decoder pass (outputs in [-1, 1], latents O(1))
  chained: 5e-4, // sample (3 steps, guided 2) / reconstruct (2 steps): errors grow through re-encoding
};

export async function fetchTensors(url: string): Promise<Tensors> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`fixture ${url}: HTTP ${response.status} (run scripts/make_fixtures.py)`);
  const file = parseSafetensors(await response.arrayBuffer(), url);
  return new Map([...file.tensors].map(([name, entry]) => [name, tensorToFloat32(entry)]));
}

export function get(tensors: Tensors, name: string): Float32Array {
  const value = tensors.get(name);
  if (!value) throw new Error(`fixture lacks tensor '${name}'`);
  return value;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

/** The message of a call that must fail, or "no error". */
export function refusal(call: () => Promise<unknown>): Promise<string> {
  return call().then(
    () => "no error",
    (error) => String((error as Error)?.message ?? error),
  );
}
