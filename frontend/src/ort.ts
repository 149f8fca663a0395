/**
 * onnxruntime-web's WebAssembly backend for the CPU path: loaded on first use from the page's own build (vite
 * copies the .wasm file; never a CDN), one thread per core when the page is cross-origin isolated (threads need
 * SharedArrayBuffer), else one. `ortGraph` wraps an ONNX session as a src/cpu_model.ts `Graph` (float32 and int64
 * inputs: tokens, timesteps, labels; an int64 output comes back as float values); a sphere or psvae model's graphs
 * run as `Network`s (x and labels). `onnxModel` builds the CPU model of an index.json entry's `onnx` object
 * (engine/onnx_export.py) for each family: the sessions its first call needs at once, the others (an encoder the
 * first images do not use) at their first use; model_tensors.bin (codebooks, SOM levels, latent_scale) is read as a
 * sphere-web file.
 */

import wasmUrl from "onnxruntime-web/ort-wasm-simd-threaded.wasm?url";
import type { InferenceSession, Tensor } from "onnxruntime-web/wasm";
import type { LDMConfig, ModelConfig, SOMARConfig, VQVAEConfig } from "./config";
import { CpuLDMModel, CpuSOMARModel, CpuVQVAEModel } from "./cpu_families";
import {
  cpuLatentShape,
  cpuUnsupported,
  CpuModel,
  onnxNeeds,
  type CpuConfig,
  type Graph,
  type GraphInput,
  type Network,
  type OnnxNetworkName,
} from "./cpu_model";
import { parseWeightFile, readParameter, type WeightFile } from "./format";
import { ldmConfigProblem, ldmLatentShape } from "./ldm_core";
import type { PageModel } from "./model";
import { checkSomarConfig, SomarCodebook, somarAutoencoder } from "./somar_core";
import { checkVqvaeConfig, CODEBOOK, VQVAECodebook } from "./vqvae_core";

type Ort = typeof import("onnxruntime-web/wasm");

/** One ONNX file of an index.json entry (file relative to index.json). */
export interface OnnxFile {
  file: string;
  bytes: number;
  sha256: string;
}

/** index.json's `onnx` object of a model exported with its ONNX files (engine/webformat.py index_entry). */
export interface OnnxIndex {
  decoder?: OnnxFile;
  encoder?: OnnxFile;
  unet?: OnnxFile;
  tensors?: OnnxFile; // model_tensors.bin: a sphere-web fp32 file of the tensors the page reads beside the networks
  config: ModelConfig;
}

/** One input of a graph: its name in the file, its type, and the shape of one batch item. */
export interface InputSpec {
  name: string;
  type: "float32" | "int64";
  shape: number[];
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
 * An ONNX session as a Graph: inputs `specs` (in this order in `run`), output its first (int64 read as float values).
 * A file whose inputs are not these fails here, naming what it has.
 */
export async function ortGraph(bytes: ArrayBuffer, source: string, specs: InputSpec[]): Promise<Graph> {
  const ort = await loadOrt();
  let session: InferenceSession;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(bytes), SESSION_OPTIONS);
  } catch (error) {
    throw new Error(`the ONNX file '${source}' could not be loaded (${(error as Error)?.message ?? error}); re-export it`);
  }
  const expected = specs.map((spec) => spec.name);
  const names = [...session.inputNames].sort();
  if (names.join(",") !== [...expected].sort().join(",")) {
    await session.release();
    throw new Error(`the ONNX file '${source}' has inputs ${names.join(", ")}, expected ${expected.join(", ")}; re-export it`);
  }
  const output = session.outputNames[0];
  return {
    async run(inputs: GraphInput[], batch: number): Promise<Float32Array> {
      const feeds: Record<string, Tensor> = {};
      specs.forEach((spec, i) => (feeds[spec.name] = tensorOf(ort, spec, inputs[i], batch)));
      const results = await session.run(feeds);
      const data = results[output].data;
      const out = data instanceof Float32Array ? data : Float32Array.from(data as BigInt64Array, Number);
      for (const value of Object.values(results)) value.dispose();
      return out;
    },
    dispose: () => session.release(),
  };
}

/** A feed of `batch` items of spec's shape; int64 values must be integers (a token, a timestep, a class). */
function tensorOf(ort: Ort, spec: InputSpec, values: GraphInput, batch: number): Tensor {
  const dims = [batch, ...spec.shape];
  if (spec.type === "float32") return new ort.Tensor("float32", values as Float32Array, dims);
  const ints = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) {
    if (!Number.isInteger(values[i])) throw new Error(`${spec.name} must hold integers, got ${values[i]}`);
    ints[i] = BigInt(values[i]);
  }
  return new ort.Tensor("int64", ints, dims);
}

/** A graph of inputs (x [, labels]) as a Network: `labels` int64 (batch,) when the model is conditional. */
function asNetwork(graph: Graph, conditional: boolean): Network {
  return {
    run(input: Float32Array, batch: number, labels: Int32Array | null): Promise<Float32Array> {
      if (conditional && !labels) throw new Error("a conditional model needs labels");
      return graph.run(conditional ? [input, labels!] : [input], batch);
    },
    dispose: () => graph.dispose(),
  };
}

/** Reads an index entry's ONNX files (the page's cached download), each checked against its sha256. */
type FetchBytes = (file: OnnxFile) => Promise<ArrayBuffer>;

/**
 * The CPU model of an index entry's `onnx` object, its files read through `fetchBytes` and checked against their
 * sha256. A file the family needs that the object lacks is named.
 */
export async function onnxModel(onnx: OnnxIndex, fetchBytes: FetchBytes, name: string): Promise<PageModel> {
  const config = onnx.config;
  const unsupported = cpuUnsupported(config);
  if (unsupported) throw new Error(`'${name}': ${unsupported}`);
  const missing = onnxNeeds(config).filter((network) => !onnx[network]);
  if (missing.length) throw new Error(`'${name}' has no ONNX ${missing.join(", ")} file: re-export it with export_weights.py`);
  void startOrt().catch(() => undefined); // while the files download (a failure shows at the first session)
  const files = new OnnxFiles(onnx, fetchBytes);
  await files.download();
  switch (config.family) {
    case "vqvae":
      return vqvaeModel(config, files, name);
    case "ldm":
      return ldmModel(config, files, name);
    case "somar":
      return somarModel(config, files, name);
    default:
      return sphereModel(config, files);
  }
}

/** An entry's ONNX files: all downloaded and checked at once, each session made when asked. */
class OnnxFiles {
  private bytes = new Map<OnnxNetworkName, ArrayBuffer>();

  constructor(
    private onnx: OnnxIndex,
    private fetchBytes: FetchBytes,
  ) {}

  async download(): Promise<void> {
    const names = (["decoder", "encoder", "unet", "tensors"] as const).filter((network) => this.onnx[network]);
    const all = await Promise.all(names.map((network) => checkedBytes(this.onnx[network]!, this.fetchBytes)));
    names.forEach((network, i) => this.bytes.set(network, all[i]));
  }

  has(network: OnnxNetworkName): boolean {
    return this.bytes.has(network);
  }

  /** The session of a network now, or (lazy) at its first call: an encoder the first images do not need. */
  graph(network: OnnxNetworkName, specs: InputSpec[], lazy = false): Promise<Graph> {
    const bytes = this.bytes.get(network)!;
    const create = () => ortGraph(bytes, this.onnx[network]!.file, specs);
    return lazy ? Promise.resolve(lazyGraph(create)) : create();
  }

  /** model_tensors.bin as a parsed sphere-web file (its own header and checksum checked). */
  tensors(): Promise<WeightFile> {
    return parseWeightFile(this.bytes.get("tensors")!, this.onnx.tensors!.file);
  }
}

const image = (config: ModelConfig): InputSpec => ({
  name: "x",
  type: "float32",
  shape: [config.in_channels, config.image_size, config.image_size],
});
const floats = (name: string, shape: number[]): InputSpec => ({ name, type: "float32", shape });
const LABELS: InputSpec = { name: "labels", type: "int64", shape: [] };

async function sphereModel(config: CpuConfig, files: OnnxFiles): Promise<CpuModel> {
  const conditional = config.num_classes > 0;
  const network = async (name: "decoder" | "encoder", input: InputSpec, lazy: boolean): Promise<Network> =>
    asNetwork(await files.graph(name, conditional ? [input, LABELS] : [input], lazy), conditional);
  const decoder = await network("decoder", floats("v", cpuLatentShape(config)), false);
  const encoder = files.has("encoder") ? await network("encoder", image(config), true) : null;
  return new CpuModel(config, decoder, encoder);
}

async function vqvaeModel(config: VQVAEConfig, files: OnnxFiles, name: string): Promise<CpuVQVAEModel> {
  checkVqvaeConfig(config, name);
  const codebook = new VQVAECodebook(config, readParameter(await files.tensors(), CODEBOOK));
  const tokens: InputSpec = { name: "tokens", type: "int64", shape: [codebook.grid, codebook.grid] };
  const [encoder, decoder] = await Promise.all([files.graph("encoder", [image(config)]), files.graph("decoder", [tokens])]);
  return new CpuVQVAEModel(config, codebook, encoder, decoder);
}

async function ldmModel(config: LDMConfig, files: OnnxFiles, name: string): Promise<CpuLDMModel> {
  const problem = ldmConfigProblem(config, name);
  if (problem) throw new Error(problem);
  const shape = ldmLatentShape(config);
  const unetInputs = [floats("x", shape), { name: "t", type: "int64", shape: [] } as InputSpec];
  if (config.num_classes > 0) unetInputs.push(LABELS);
  const sampling = config.kind !== "autoencoder";
  const [unet, encoder, decoder] = await Promise.all([
    sampling ? files.graph("unet", unetInputs) : null,
    files.has("encoder") ? files.graph("encoder", [image(config)], sampling) : null, // a sampler's first images need no encoder
    files.has("decoder") ? files.graph("decoder", [floats("z", shape)]) : null,
  ]);
  return new CpuLDMModel(config, await latentScale(config, files), { unet, encoder, decoder });
}

/** A latent model's latent_scale: the stored buffer (model_tensors.bin) when exported, else the config's; 1 otherwise. */
async function latentScale(config: LDMConfig, files: OnnxFiles): Promise<number> {
  if (config.kind !== "latent") return 1;
  if (files.has("tensors")) return readParameter(await files.tensors(), "latent_scale").data[0];
  return config.latent_scale ?? 1;
}

async function somarModel(config: SOMARConfig, files: OnnxFiles, name: string): Promise<CpuSOMARModel> {
  checkSomarConfig(config, name);
  const shape = somarAutoencoder(config).latentShape;
  let codebook: SomarCodebook | null = null;
  if (config.kind !== "autoencoder") {
    const tensors = await files.tensors();
    codebook = new SomarCodebook(config, shape, (tensor) => readParameter(tensors, tensor), name);
  }
  const [encoder, decoder] = await Promise.all([files.graph("encoder", [image(config)]), files.graph("decoder", [floats("maps", shape)])]);
  return new CpuSOMARModel(config, codebook, encoder, decoder);
}

/**
 * A graph whose session is created at its first call: an encoder, so that the first images (a decoder pass, or a
 * diffusion run) do not wait for it. A file that does not load fails that call, and every later one, saying why.
 */
function lazyGraph(create: () => Promise<Graph>): Graph {
  let graph: Promise<Graph> | null = null;
  return {
    async run(inputs, batch) {
      graph ??= create();
      return (await graph).run(inputs, batch);
    },
    async dispose() {
      await (await graph?.catch(() => null))?.dispose();
    },
  };
}

async function checkedBytes(file: OnnxFile, fetchBytes: (file: OnnxFile) => Promise<ArrayBuffer>): Promise<ArrayBuffer> {
  const bytes = await fetchBytes(file);
  if (file.sha256 && (await sha256Hex(bytes)) !== file.sha256)
    throw new Error(`the ONNX file '${file.file}' is corrupt (sha256 mismatch); re-export it`);
  return bytes;
}
