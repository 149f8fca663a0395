/**
 * onnxruntime-web's WebAssembly backend for the CPU path: loaded on first use from the page's own build (vite
 * copies the .wasm file; never a CDN), one thread per core when the page is cross-origin isolated (threads need
 * SharedArrayBuffer), else one. `ortNetwork` wraps an ONNX session as a src/cpu_model.ts `Network`;
 * `onnxModel` builds a `CpuModel` from an index.json entry's `onnx` object (engine/onnx_export.py): the decoder's
 * session at once, the encoder's at its first use.
 */

import wasmUrl from "onnxruntime-web/ort-wasm-simd-threaded.wasm?url";
import type { InferenceSession, Tensor } from "onnxruntime-web/wasm";
import { cpuLatentShape, cpuUnsupported, CpuModel, type CpuConfig, type Network } from "./cpu_model";

type Ort = typeof import("onnxruntime-web/wasm");

/** One ONNX file of an index.json entry (file relative to index.json). */
export interface OnnxFile {
  file: string;
  bytes: number;
  sha256: string;
}

/** index.json's `onnx` object of a model exported with its ONNX files (engine/webformat.py index_entry). */
export interface OnnxIndex {
  decoder: OnnxFile;
  encoder?: OnnxFile;
  config: CpuConfig;
}

let ortPromise: Promise<Ort> | null = null;

// "basic" (constant folding, redundant nodes): the exporter already simplified the graph, and "all" took 3-10x longer
// to create a session for the same run time (measured on the tiny and small models here)
const SESSION_OPTIONS = { executionProviders: ["wasm"], graphOptimizationLevel: "basic" } as const;

/** Threads the WebAssembly backend uses here. */
export function cpuThreads(): number {
  return globalThis.crossOriginIsolated ? Math.max(1, navigator.hardwareConcurrency || 1) : 1;
}

/** The runtime, loaded and configured once (the page may start this early: it fetches and compiles the .wasm). */
export function loadOrt(): Promise<Ort> {
  ortPromise ??= (async () => {
    const ort = await import("onnxruntime-web/wasm");
    ort.env.wasm.wasmPaths = { wasm: new URL(wasmUrl, location.href).href };
    ort.env.wasm.numThreads = cpuThreads();
    ort.env.logLevel = "error";
    return ort;
  })();
  ortPromise.catch(() => (ortPromise = null)); // a failed load may be retried
  return ortPromise;
}

/** A one-node ONNX model (y = Identity(x), float32 (1,), opset 20): its session starts the runtime. */
const IDENTITY_MODEL = new Uint8Array([
  8, 9, 18, 0, 58, 60, 10, 16, 10, 1, 120, 18, 1, 121, 34, 8, 73, 100, 101, 110, 116, 105, 116, 121, 18, 6, 119, 97, 114, 109, 117, 112, 90,
  15, 10, 1, 120, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 98, 15, 10, 1, 121, 18, 10, 10, 8, 8, 1, 18, 4, 10, 2, 8, 1, 66, 4, 10, 0, 16,
  20,
]);

let warmUp: Promise<void> | null = null;

/**
 * Fetch, compile and start the WebAssembly runtime now (it does so at its first session otherwise): the page calls
 * this at load, so that the runtime starts while index.json and the model files download.
 */
export function startOrt(): Promise<void> {
  warmUp ??= (async () => {
    const ort = await loadOrt();
    const session = await ort.InferenceSession.create(IDENTITY_MODEL, SESSION_OPTIONS);
    await session.release();
  })();
  warmUp.catch(() => (warmUp = null));
  return warmUp;
}

/** Hex SHA-256 of bytes (Web Crypto). */
export async function sha256Hex(bytes: ArrayBuffer): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * An ONNX session as a Network: input `inputName` (batch, ...inShape), `labels` int64 (batch,) when the model is
 * conditional, output (batch, ...). A file whose inputs are not these fails here, naming what it has.
 */
export async function ortNetwork(
  bytes: ArrayBuffer,
  source: string,
  inputName: string,
  inShape: number[],
  conditional: boolean,
): Promise<Network> {
  const ort = await loadOrt();
  let session: InferenceSession;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(bytes), SESSION_OPTIONS);
  } catch (error) {
    throw new Error(`the ONNX file '${source}' could not be loaded (${(error as Error)?.message ?? error}); re-export it`);
  }
  const expected = conditional ? [inputName, "labels"] : [inputName];
  const names = [...session.inputNames].sort();
  if (names.join(",") !== [...expected].sort().join(",")) {
    await session.release();
    throw new Error(`the ONNX file '${source}' has inputs ${names.join(", ")}, expected ${expected.join(", ")}; re-export it`);
  }
  const output = session.outputNames[0];
  return {
    async run(input: Float32Array, batch: number, labels: Int32Array | null): Promise<Float32Array> {
      const feeds: Record<string, Tensor> = { [inputName]: new ort.Tensor("float32", input, [batch, ...inShape]) };
      if (conditional) {
        if (!labels) throw new Error("a conditional model needs labels");
        feeds.labels = new ort.Tensor(
          "int64",
          BigInt64Array.from(labels, (label) => BigInt(label)),
          [batch],
        );
      }
      const results = await session.run(feeds);
      const tensor = results[output];
      const data = tensor.data as Float32Array;
      for (const value of Object.values(results)) value.dispose();
      return data;
    },
    dispose: () => session.release(),
  };
}

/**
 * A CpuModel from an index entry's `onnx` object, its files read through `fetchBytes` (the page's cached
 * download) and checked against their sha256.
 */
export async function onnxModel(onnx: OnnxIndex, fetchBytes: (file: OnnxFile) => Promise<ArrayBuffer>, name: string): Promise<CpuModel> {
  const config = onnx.config;
  const unsupported = cpuUnsupported(config);
  if (unsupported) throw new Error(`'${name}': ${unsupported}`);
  const conditional = config.num_classes > 0;
  void startOrt().catch(() => undefined); // while the files download (a failure shows at the first session)
  const [decoderBytes, encoderBytes] = await Promise.all([
    checkedBytes(onnx.decoder, fetchBytes),
    onnx.encoder ? checkedBytes(onnx.encoder, fetchBytes) : null,
  ]);
  const image = [config.in_channels, config.image_size, config.image_size];
  const decoder = await ortNetwork(decoderBytes, onnx.decoder.file, "v", cpuLatentShape(config), conditional);
  const encoderFile = onnx.encoder?.file ?? "";
  const encoder = encoderBytes && lazyNetwork(() => ortNetwork(encoderBytes, encoderFile, "x", image, conditional));
  return new CpuModel(config, decoder, encoder);
}

/**
 * A network whose session is created at its first call: the encoder's, so that the first images (one decoder pass)
 * do not wait for it. A file that does not load fails that call, and every later one, saying why.
 */
function lazyNetwork(create: () => Promise<Network>): Network {
  let network: Promise<Network> | null = null;
  return {
    async run(input, batch, labels) {
      network ??= create();
      return (await network).run(input, batch, labels);
    },
    async dispose() {
      await (await network?.catch(() => null))?.dispose();
    },
  };
}

async function checkedBytes(file: OnnxFile, fetchBytes: (file: OnnxFile) => Promise<ArrayBuffer>): Promise<ArrayBuffer> {
  const bytes = await fetchBytes(file);
  if (file.sha256 && (await sha256Hex(bytes)) !== file.sha256)
    throw new Error(`the ONNX file '${file.file}' is corrupt (sha256 mismatch); re-export it`);
  return bytes;
}
