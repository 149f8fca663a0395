/**
 * WebGPU context: device acquisition with clear errors, a pipeline cache keyed by shader source, buffers
 * tracked per owner (destroyed together), and plans: recorded dispatch lists whose scratch buffers are
 * allocated once per (model, batch size) and reused by every call.
 */

export type GpuErrorKind = "no-webgpu" | "no-adapter" | "device-failed";

/** WebGPU is unusable here; `kind` says why so the UI can explain it. */
export class GpuUnavailableError extends Error {
  constructor(
    public kind: GpuErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "GpuUnavailableError";
  }
}

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  description: string;
  isFallback: boolean; // a software adapter (SwiftShader, llvmpipe...): correct but slow
}

const SOFTWARE_ADAPTERS = /swiftshader|llvmpipe|software|lavapipe|warp|microsoft basic/i;

function summarize(adapter: GPUAdapter): AdapterSummary {
  const info = (adapter as GPUAdapter & { info?: GPUAdapterInfo }).info;
  const vendor = info?.vendor ?? "";
  const architecture = info?.architecture ?? "";
  const description = info?.description ?? "";
  const flagged =
    (info as (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined)?.isFallbackAdapter ??
    (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    false;
  const isFallback = flagged || SOFTWARE_ADAPTERS.test(`${vendor} ${architecture} ${description}`);
  return { vendor, architecture, description, isFallback };
}

/** Tracks GPU buffers of one owner (a model, a plan) so they are destroyed together. */
export class BufferOwner {
  private buffers: GPUBuffer[] = [];

  constructor(private device: GPUDevice) {}

  create(bytes: number, usage: GPUBufferUsageFlags, label: string): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    const buffer = this.device.createBuffer({ size, usage, label });
    this.buffers.push(buffer);
    return buffer;
  }

  /** A read-only storage buffer holding `data` (zero-padded to the allocation size). */
  upload(data: ArrayBufferView, label: string): GPUBuffer {
    const buffer = this.create(data.byteLength, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded =
      bytes.byteLength % 4 === 0
        ? bytes
        : (() => {
            const copy = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
            copy.set(bytes);
            return copy;
          })();
    this.device.queue.writeBuffer(buffer, 0, padded as Uint8Array<ArrayBuffer>);
    return buffer;
  }

  get byteSize(): number {
    return this.buffers.reduce((total, buffer) => total + buffer.size, 0);
  }

  destroy(): void {
    for (const buffer of this.buffers) buffer.destroy();
    this.buffers = [];
  }
}

/**
 * Which kernel variants graphs are built with, set by Gpu.create from the adapter: software adapters
 * (SwiftShader, llvmpipe) run workgroups as lane groups on CPU threads, where a barrier is a context switch and
 * workgroup memory the same RAM as storage, so they get the GEMM without workgroup memory ("direct"); hardware
 * GPUs get the workgroup-memory tiled GEMM. "direct" also picks RMSNorm with a thread per row (no barrier).
 * `weights`: "packed" keeps fp16/q8/q4 matrices as stored and decodes them inside every GEMM (less memory and
 * memory traffic: hardware GPUs); "expanded" widens them to float32 once at load, as software adapters get by
 * default: there the GPU is the CPU, compute rather than memory traffic limits a GEMM, and decoding costs more
 * than the bytes it saves. The URL overrides both: `?gemm=tiled|direct`, `?weights=packed|expanded`.
 */
export const kernelChoice: { gemm: "tiled" | "direct"; weights: "packed" | "expanded" } = { gemm: "tiled", weights: "packed" };

/** The kernel choice for an adapter and the page's query string (pure: unit-tested). */
export function kernelsFor(isFallback: boolean, search: string): typeof kernelChoice {
  const query = new URLSearchParams(search);
  const gemm = query.get("gemm");
  const weights = query.get("weights");
  return {
    gemm: gemm === "tiled" || gemm === "direct" ? gemm : isFallback ? "direct" : "tiled",
    weights: weights === "packed" || weights === "expanded" ? weights : isFallback ? "expanded" : "packed",
  };
}

function chooseKernels(adapter: AdapterSummary): void {
  Object.assign(kernelChoice, kernelsFor(adapter.isFallback, typeof location === "undefined" ? "" : location.search));
}

/** The device, its adapter summary, pipelines, and device-loss notification. */
export class Gpu {
  private pipelines = new Map<string, GPUComputePipeline>();
  private lostHandlers: ((reason: string) => void)[] = [];
  lost = false;

  private constructor(
    public device: GPUDevice,
    public adapter: AdapterSummary,
  ) {
    device.lost.then((info) => {
      this.lost = true;
      const reason = info.message || info.reason || "unknown reason";
      for (const handler of this.lostHandlers) handler(reason);
    });
  }

  /** Request an adapter and a device with the storage limits our kernels need. */
  static async create(powerPreference: GPUPowerPreference = "high-performance"): Promise<Gpu> {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
      throw new GpuUnavailableError(
        "no-webgpu",
        "This browser does not expose WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or Safari 26+, or Firefox with WebGPU enabled, over https or localhost.",
      );
    }
    const adapter = await navigator.gpu.requestAdapter({ powerPreference });
    if (!adapter)
      throw new GpuUnavailableError(
        "no-adapter",
        "WebGPU is present but no GPU adapter is available (blocklisted driver or disabled hardware acceleration).",
      );
    const limits = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: Math.min(limits.maxStorageBuffersPerShaderStage, 10),
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
    };
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({ requiredLimits });
    } catch (error) {
      throw new GpuUnavailableError("device-failed", `Could not create a WebGPU device: ${(error as Error).message}`);
    }
    const summary = summarize(adapter);
    chooseKernels(summary);
    return new Gpu(device, summary);
  }

  onLost(handler: (reason: string) => void): void {
    this.lostHandlers.push(handler);
  }

  /** A compute pipeline for a WGSL source with entry point `main`, compiled once per distinct source. */
  pipeline(source: string, label: string): GPUComputePipeline {
    let pipeline = this.pipelines.get(source);
    if (!pipeline) {
      const module = this.device.createShaderModule({ code: source, label });
      void module.getCompilationInfo().then((info) => {
        const errors = info.messages.filter((m) => m.type === "error");
        if (errors.length)
          console.error(`WGSL errors in '${label}':\n${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("\n")}`);
      });
      pipeline = this.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" }, label });
      this.pipelines.set(source, pipeline);
    }
    return pipeline;
  }

  get pipelineCount(): number {
    return this.pipelines.size;
  }

  destroy(): void {
    this.pipelines.clear();
    this.device.destroy();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Plans

/** A scratch buffer requested while a plan is built; its size is the largest request for its role. */
export class BufferRef {
  buffer: GPUBuffer | null = null;
  constructor(
    public role: string,
    public words: number,
  ) {}

  get gpu(): GPUBuffer {
    if (!this.buffer) throw new Error(`buffer '${this.role}' used before the workspace was allocated`);
    return this.buffer;
  }
}

export type Binding = GPUBuffer | BufferRef;

/** A bound buffer; null stands for a small zero buffer (bindings a kernel variant declares but ignores). */
export type MaybeBinding = Binding | null;

export interface Dispatch {
  kind: "dispatch";
  label: string;
  source: string;
  bindings: MaybeBinding[];
  workgroups: [number, number, number];
  params?: ArrayBuffer; // contents of the uniform buffer bound after `bindings`
  pipeline?: GPUComputePipeline;
  bindGroup?: GPUBindGroup;
}

export interface Copy {
  kind: "copy";
  src: Binding;
  dst: Binding;
  bytes: number;
  srcOffset?: number; // bytes (default 0)
  dstOffset?: number;
}

export type Step = Dispatch | Copy;

/** Scratch buffers shared by every plan of one (model, batch size): one buffer per role, max size. */
export class Workspace {
  private refs = new Map<string, BufferRef>();
  private owner: BufferOwner;
  private allocated = false;

  constructor(private gpu: Gpu) {
    this.owner = new BufferOwner(gpu.device);
  }

  /** The scratch buffer for `role`, at least `words` 4-byte words (same role = same buffer). */
  ref(role: string, words: number): BufferRef {
    if (this.allocated) throw new Error("workspace already allocated");
    let ref = this.refs.get(role);
    if (!ref) this.refs.set(role, (ref = new BufferRef(role, words)));
    ref.words = Math.max(ref.words, words);
    return ref;
  }

  /** Create every buffer (once), then the pipelines and bind groups of the given steps. */
  finalize(steps: Step[]): void {
    if (!this.allocated) {
      const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
      for (const ref of this.refs.values()) ref.buffer = this.owner.create(ref.words * 4, usage, ref.role);
      this.allocated = true;
    }
    for (const step of steps) {
      if (step.kind !== "dispatch" || step.bindGroup) continue;
      step.pipeline = this.gpu.pipeline(step.source, step.label);
      const entries: GPUBindGroupEntry[] = step.bindings.map((binding, index) => ({
        binding: index,
        resource: { buffer: binding ? resolve(binding) : this.zeros() },
      }));
      if (step.params) {
        const uniform = this.owner.create(step.params.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, `${step.label}.params`);
        this.gpu.device.queue.writeBuffer(uniform, 0, step.params);
        entries.push({ binding: entries.length, resource: { buffer: uniform } });
      }
      step.bindGroup = this.gpu.device.createBindGroup({ layout: step.pipeline.getBindGroupLayout(0), entries, label: step.label });
    }
  }

  private zeroBuffer: GPUBuffer | null = null;

  private zeros(): GPUBuffer {
    this.zeroBuffer ??= this.owner.create(16, GPUBufferUsage.STORAGE, "zeros");
    return this.zeroBuffer;
  }

  /** A buffer outside the role pool (staging, small parameters), destroyed with the workspace. */
  buffer(bytes: number, usage: GPUBufferUsageFlags, label: string): GPUBuffer {
    return this.owner.create(bytes, usage, label);
  }

  get byteSize(): number {
    return this.owner.byteSize;
  }

  destroy(): void {
    this.owner.destroy();
  }
}

export function resolve(binding: Binding): GPUBuffer {
  return binding instanceof BufferRef ? binding.gpu : binding;
}

/** Record steps into one command encoder (compute passes split around copies). */
export function encodeSteps(encoder: GPUCommandEncoder, steps: Step[]): void {
  let pass: GPUComputePassEncoder | null = null;
  for (const step of steps) {
    if (step.kind === "copy") {
      pass?.end();
      pass = null;
      encoder.copyBufferToBuffer(resolve(step.src), step.srcOffset ?? 0, resolve(step.dst), step.dstOffset ?? 0, step.bytes);
      continue;
    }
    pass ??= encoder.beginComputePass();
    pass.setPipeline(step.pipeline!);
    pass.setBindGroup(0, step.bindGroup!);
    pass.dispatchWorkgroups(...step.workgroups);
  }
  pass?.end();
}
