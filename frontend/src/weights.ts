/** GPU copies of a weight file's tensors: matrices stay packed (dequantized in the shaders) or are widened to
 * float32 once at load (kernelChoice.weights: software adapters), small vectors (biases, norms, scales, label
 * tables) are widened to float32 once at load. */

import { BufferOwner, kernelChoice, type Gpu } from "./gpu";
import { hasParameter, packedMatrix, readParameter, WebFormatError, type PackedMatrix, type WeightFile } from "./format";
import type { GpuMatrix } from "./ops";

export interface ConvWeight extends GpuMatrix {
  kernel: number; // square kernel side
  inChannels: number;
}

export class GpuWeights {
  readonly owner: BufferOwner;
  private matrices = new Map<string, ConvWeight>();
  private vectors = new Map<string, GPUBuffer>();
  private maxBinding: number;
  /** Matrices widened to float32 at load (kernelChoice.weights "expanded"). */
  expanded = 0;

  constructor(
    gpu: Gpu,
    public file: WeightFile,
  ) {
    this.owner = new BufferOwner(gpu.device);
    this.maxBinding = gpu.device.limits.maxStorageBufferBindingSize;
  }

  has(name: string): boolean {
    return hasParameter(this.file, name);
  }

  /** A Linear (out, in) or Conv2d (out, in, k, k) weight, uploaded in its stored encoding or as float32. */
  matrix(name: string): ConvWeight {
    let matrix = this.matrices.get(name);
    if (!matrix) {
      const packed = packedMatrix(this.file, name);
      if (packed.shape.length !== 2 && packed.shape.length !== 4) {
        throw new WebFormatError(`tensor '${name}' has shape [${packed.shape}], expected a 2D linear or 4D conv weight`);
      }
      const shape = {
        rows: packed.rows,
        cols: packed.cols,
        kernel: packed.shape.length === 4 ? packed.shape[2] : 1,
        inChannels: packed.shape[1],
      };
      if (this.expands(packed)) {
        matrix = {
          ...shape,
          encoding: "f32",
          groupSize: 0,
          data: this.owner.upload(readParameter(this.file, name).data, name),
          scales: null,
        };
        this.expanded++;
      } else {
        const scales = packed.scales ? this.owner.upload(packed.scales, `${name}.scales`) : null;
        matrix = { ...shape, encoding: packed.encoding, groupSize: packed.groupSize, data: this.owner.upload(packed.data, name), scales };
      }
      this.matrices.set(name, matrix);
    }
    return matrix;
  }

  /** Whether a packed matrix is widened to float32 here: "expanded" weights, where the float32 copy fits a binding. */
  private expands(packed: PackedMatrix): boolean {
    return kernelChoice.weights === "expanded" && packed.encoding !== "f32" && 4 * packed.rows * packed.cols <= this.maxBinding;
  }

  /** A small tensor as float32 (biases, norm weights, mixer scales, embedding tables). */
  vector(name: string): GPUBuffer {
    let buffer = this.vectors.get(name);
    if (!buffer) {
      buffer = this.owner.upload(readParameter(this.file, name).data, name);
      this.vectors.set(name, buffer);
    }
    return buffer;
  }

  /** The bias of a layer when the file has one. */
  bias(layer: string): GPUBuffer | undefined {
    return this.has(`${layer}.bias`) ? this.vector(`${layer}.bias`) : undefined;
  }

  destroy(): void {
    this.owner.destroy();
    this.matrices.clear();
    this.vectors.clear();
  }
}
