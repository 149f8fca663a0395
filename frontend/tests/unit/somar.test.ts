import { describe, expect, it } from "vitest";
import type { SOMARConfig } from "../../src/config";
import { entryProblem, loadModel } from "../../src/family";
import { parseWeightFile, readParameter, WebFormatError } from "../../src/format";
import type { Gpu } from "../../src/gpu";
import { UnsupportedModelError } from "../../src/psvae";
import { SOMARModel, unitChannels } from "../../src/somar";
import {
  atlasGeometry,
  atlasMaps,
  cellAt,
  gridColors,
  meanCode,
  middleToken,
  nearestUnits,
  paintStroke,
  patchify,
  patchLayout,
  tokenMaps,
  tokenRegion,
  unitAt,
  unitAtCell,
  unpatchify,
} from "../../src/somar_grid";
import { readBuffer, readTensors, withHeader } from "./fixtures";

const noGpu = {} as Gpu; // every check below fails before any GPU work
const CODEBOOK = "somar_cb16/model_q8.safetensors";
const PRIOR = "somar_prior16/model_q4.safetensors";

const editConfig = (file: string, edit: (config: Record<string, unknown>) => void) =>
  withHeader(readBuffer(file), (header) => {
    const config = JSON.parse(header.__metadata__.config);
    edit(config);
    header.__metadata__.config = JSON.stringify(config);
  });

describe("patches of a latent map", () => {
  // a (2, 4, 4) map whose value is 100 c + 10 y + x: every position names itself
  const map = Float32Array.from({ length: 32 }, (_, i) => 100 * Math.floor(i / 16) + 10 * (Math.floor(i / 4) % 4) + (i % 4));

  it("are row-major over patches and channel-major inside a patch (models/som.py patchify)", () => {
    const layout = patchLayout([2, 4, 4], 2);
    expect([layout.rows, layout.cols, layout.tokens, layout.dim]).toEqual([2, 2, 4, 8]);
    const vectors = patchify(map, layout);
    // token 1 = the top-right patch: channel 0's (y, x) in (0, 2) (0, 3) (1, 2) (1, 3), then channel 1's
    expect(Array.from(vectors.subarray(8, 16))).toEqual([2, 3, 12, 13, 102, 103, 112, 113]);
    expect(Array.from(vectors.subarray(16, 20))).toEqual([20, 21, 30, 31]); // token 2: bottom-left
    expect(unpatchify(vectors, layout)).toEqual(map);
  });

  it("patch 0 is the whole map, one token; a patch that does not divide the map is an error", () => {
    const whole = patchLayout([2, 4, 4], 0);
    expect([whole.tokens, whole.dim]).toEqual([1, 32]);
    expect(patchify(map, whole)).toEqual(map);
    expect(() => patchLayout([2, 4, 4], 3)).toThrow(/cannot be cut into 3x3 patches/);
  });

  it("match PyTorch's patches of the fixture's latent maps, both ways, over a batch", () => {
    const ref = readTensors("somar_cb16/reference_fp32.safetensors");
    const layout = patchLayout([4, 8, 8], 2);
    expect(patchify(ref.get("latent")!, layout)).toEqual(ref.get("patches"));
    expect(unpatchify(ref.get("patches")!, layout)).toEqual(ref.get("latent"));
  });
});

describe("tokens of a somar codebook", () => {
  it("are PyTorch's best-matching units (ties to the lowest index) and decode to their codes' maps", async () => {
    const file = await parseWeightFile(readBuffer("somar_cb16/model_fp32.safetensors"));
    const ref = readTensors("somar_cb16/reference_fp32.safetensors");
    const codes = readParameter(file, "levels.1.codes").data;
    expect(Array.from(nearestUnits(ref.get("patches")!, codes, 16))).toEqual(Array.from(ref.get("tokens")!));
    expect(Array.from(nearestUnits(new Float32Array(4), new Float32Array([1, 0, 0, 1, -1, 0, 0, -1]), 2))).toEqual([0, 0]);
    const layout = patchLayout([4, 8, 8], 2);
    const maps = tokenMaps(ref.get("tokens")!, codes, layout);
    expect(Array.from(patchify(maps, layout).subarray(0, 16))).toEqual(Array.from(codes.subarray(10 * 16, 11 * 16))); // token 0: unit 10
    expect(() => tokenMaps([16], codes, patchLayout([16, 1, 1], 0))).toThrow(/token 16 is not a unit/);
  });

  it("atlas maps hold a unit at the middle token and the mean code elsewhere", () => {
    const layout = patchLayout([1, 2, 4], 2); // two tokens of 4 values: the middle one is token 1
    const codes = new Float32Array([1, 1, 1, 1, 3, 3, 3, 3]);
    expect(middleToken(layout)).toBe(1);
    expect(Array.from(meanCode(codes, 4))).toEqual([2, 2, 2, 2]);
    const maps = atlasMaps(codes, layout); // (2, 1, 2, 4): unit 0, then unit 1, in the right half
    expect(Array.from(maps.subarray(0, 8))).toEqual([2, 2, 1, 1, 2, 2, 1, 1]);
    expect(Array.from(maps.subarray(8, 16))).toEqual([2, 2, 3, 3, 2, 2, 3, 3]);
    expect(tokenRegion(patchLayout([4, 8, 8], 2), 16, 10)).toEqual({ top: 8, left: 8, height: 4, width: 4 });
  });
});

describe("painting", () => {
  const layout = patchLayout([4, 8, 8], 2); // a 4 x 4 token grid

  it("finds the cell under the pointer and paints strokes without gaps", () => {
    expect(cellAt(layout, 0, 0)).toBe(0);
    expect(cellAt(layout, 0.99, 0.3)).toBe(7);
    expect(cellAt(layout, 1.2, -0.1)).toBe(3); // dragged outside: the nearest edge cell
    const tokens = new Int32Array(16);
    expect(paintStroke(tokens, layout, null, 5, 9)).toBe(true);
    expect(Array.from(tokens).filter((t) => t === 9).length).toBe(1);
    expect(paintStroke(tokens, layout, 5, 5, 9)).toBe(false); // nothing changed: no decode needed
    expect(paintStroke(tokens, layout, 0, 15, 2)).toBe(true); // the diagonal in one fast move
    expect([0, 5, 10, 15].map((cell) => tokens[cell])).toEqual([2, 2, 2, 2]);
    expect(tokens[1]).toBe(0);
  });

  it("picks the unit of an atlas cell, none in gaps or on a pruned cell", () => {
    const grid = new Float32Array([0, 0, 0, 1, 1, 1]); // three units left of a 2 x 2 map: (1, 0) was pruned
    const geometry = atlasGeometry(grid, 4, 4);
    expect([geometry.rows, geometry.cols, geometry.height, geometry.width]).toEqual([2, 2, 11, 11]);
    expect(unitAt(grid, geometry, 1, 1)).toBe(0);
    expect(unitAt(grid, geometry, 9, 4)).toBe(1);
    expect(unitAt(grid, geometry, 8, 8)).toBe(2);
    expect(unitAt(grid, geometry, 5, 1)).toBeNull(); // the gap between cells
    expect(unitAt(grid, geometry, 2, 7)).toBeNull(); // the pruned cell
    expect([unitAtCell(grid, 1, 1), unitAtCell(grid, 1, 0), unitAtCell(grid, 0, 2)]).toEqual([2, null, null]);
    expect(Array.from(gridColors(grid).subarray(6, 9))).toEqual([1, 1, Math.fround(0.2)]);
  });
});

describe("a somar weight file", () => {
  it("parses with its codebook config; SOM codes and grid are stored, never quantized", async () => {
    const file = await parseWeightFile(readBuffer(CODEBOOK));
    const cfg = file.config as SOMARConfig;
    expect([cfg.family, cfg.kind, cfg.level_patches, cfg.level_sizes]).toEqual(["somar", "codebook", [0, 2], [4, 16]]);
    expect(file.quantization["levels.1.codes"]).toBeUndefined();
    expect(file.tensors.get("levels.1.codes")!.dtype).toBe("F16");
    expect(readParameter(file, "levels.1.grid").shape).toEqual([16, 2]);
    expect(Object.keys(file.quantization).some((name) => name.startsWith("autoencoder.net.decoder."))).toBe(true);
  });

  it("needs its family's keys and a known kind, and refuses a prior over a vqvae's tokens in one line", async () => {
    await expect(
      parseWeightFile(
        editConfig(CODEBOOK, (config) => delete config.level_patches),
        "bad",
      ),
    ).rejects.toThrow(/config lacks .*level_patches/);
    const unknown = await parseWeightFile(
      editConfig(CODEBOOK, (config) => (config.kind = "video")),
      "v",
    );
    expect(() => SOMARModel.fromFile(noGpu, unknown, "v")).toThrow(WebFormatError);
    const overVqvae = editConfig(PRIOR, (config) => (config.codebook = { family: "vqvae", image_size: 16 }));
    await expect(loadModel(noGpu, overVqvae, "p")).rejects.toThrow(UnsupportedModelError);
    await expect(loadModel(noGpu, overVqvae, "p")).rejects.toThrow(/^'p': a somar prior over a vqvae's tokens is not shown/);
  });

  it("index entries: codebooks and priors of SOM codebooks shown, a prior over vqvae tokens refused without a download", () => {
    expect(entryProblem({ name: "cb", family: "somar" })).toBeNull();
    expect(entryProblem({ name: "pr", family: "somar", codebook_family: "vqvae" })).toMatch(/^'pr': a somar prior over a vqvae's tokens/);
  });

  it("puts a cosine vqvae's latent on the unit sphere per position", () => {
    const maps = new Float32Array([3, 0, 4, 2]); // (1, 2, 2): positions (3, 4) and (0, 2)
    expect(Array.from(unitChannels(maps, 2, 2))).toEqual([0.6, 0, 0.8, 1].map(Math.fround));
  });
});
