import { describe, expect, it } from "vitest";
import type { VQVAEConfig } from "../../src/config";
import { entryProblem, loadModel } from "../../src/family";
import { parseWeightFile, readParameter, WebFormatError } from "../../src/format";
import type { Gpu } from "../../src/gpu";
import { PSVAEModel, UnsupportedModelError } from "../../src/psvae";
import { codebookColors, normalizedRows, symmetricEigen } from "../../src/tokenmap";
import { CODEBOOK, VQVAEModel } from "../../src/vqvae";
import { readBuffer, withHeader } from "./fixtures";

const noGpu = {} as Gpu; // every check below fails before any GPU work
const TINY = "vqvae_tiny16/model_q4.safetensors";

const editConfig = (file: string, edit: (config: Record<string, unknown>) => void) =>
  withHeader(readBuffer(file), (header) => {
    const config = JSON.parse(header.__metadata__.config);
    edit(config);
    header.__metadata__.config = JSON.stringify(config);
  });

describe("a vqvae weight file", () => {
  it("parses with its tokenizer config and an unquantized codebook", async () => {
    const file = await parseWeightFile(readBuffer(TINY));
    const cfg = file.config as VQVAEConfig;
    expect([cfg.family, cfg.codebook_size, cfg.codebook_dim, cfg.l2_norm, cfg.quantizer]).toEqual(["vqvae", 64, 8, true, "vq"]);
    expect(file.quantization[CODEBOOK]).toBeUndefined();
    expect(file.tensors.get(CODEBOOK)!.dtype).toBe("F16");
    expect(readParameter(file, CODEBOOK).shape).toEqual([64, 8]);
    expect(Object.keys(file.quantization).length).toBeGreaterThan(0);
  });

  it("needs the codebook keys in its config", async () => {
    await expect(
      parseWeightFile(
        editConfig(TINY, (config) => delete config.codebook_size),
        "bad",
      ),
    ).rejects.toThrow(/config lacks .*codebook_size/);
  });

  it("is refused by another family's class and refuses FSQ models in one line", async () => {
    const file = await parseWeightFile(readBuffer(TINY), "tok");
    expect(() => PSVAEModel.fromFile(noGpu, file, "tok")).toThrow(/holds a 'vqvae' model, not a psvae/);
    const fsq = editConfig(TINY, (config) => (config.quantizer = "fsq"));
    await expect(loadModel(noGpu, fsq, "fsq")).rejects.toThrow(UnsupportedModelError);
    await expect(loadModel(noGpu, fsq, "fsq")).rejects.toThrow(/^'fsq': vqvae models with quantizer 'fsq' are not shown/);
    expect(() => VQVAEModel.fromFile(noGpu, { ...file, config: { ...file.config, num_classes: 3 } }, "c")).toThrow(WebFormatError);
  });

  it("index entries: vq shown, fsq refused without a download", () => {
    expect(entryProblem({ name: "tok", family: "vqvae", quantizer: "vq" })).toBeNull();
    expect(entryProblem({ name: "tok", family: "vqvae", quantizer: "fsq" })).toMatch(/^'tok': vqvae models with quantizer 'fsq'/);
  });
});

describe("token-map colours", () => {
  it("are the leading principal components, each scaled to [-1, 1]", () => {
    // codes spread most along x, then y, then z: the colours are their centred coordinates on those axes
    const codes = new Float32Array([3, 0, 0, -3, 0, 0, 0, 2, 0, 0, -2, 0, 0, 0, 1, 0, 0, -1]);
    const colors = codebookColors(codes, 6, 3);
    expect(Array.from(colors.subarray(0, 3)).map(Math.abs)).toEqual([1, 0, 0]);
    expect(Array.from(colors.subarray(6, 9)).map(Math.abs)).toEqual([0, 1, 0]);
    expect(Array.from(colors.subarray(12, 15)).map(Math.abs)).toEqual([0, 0, 1]);
    expect(Math.max(...Array.from(colors).map(Math.abs))).toBe(1);
  });

  it("pad missing components with 0 and use unit codes when asked", () => {
    const colors = codebookColors(new Float32Array([1, 0, -1, 0, 0, 0.5]), 3, 2);
    expect([colors[2], colors[5], colors[8]]).toEqual([0, 0, 0]);
    const unit = normalizedRows(new Float32Array([3, 4, 0, 0]), 2);
    expect(Array.from(unit)).toEqual([0.6000000238418579, 0.800000011920929, 0, 0]);
  });

  it("eigen-decompose a symmetric matrix", () => {
    const { values, vectors } = symmetricEigen(new Float64Array([2, 1, 1, 2]), 2);
    expect(Array.from(values).sort()).toEqual([1, 3].map((v) => expect.closeTo(v, 12)) as unknown as number[]);
    expect(Math.abs(vectors[0])).toBeCloseTo(Math.SQRT1_2, 12);
  });
});
