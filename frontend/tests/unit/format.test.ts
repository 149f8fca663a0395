import { describe, expect, it } from "vitest";
import {
  dequantizeGroups,
  halfToFloat,
  packedMatrix,
  parameterNames,
  parseSafetensors,
  parseWeightFile,
  readParameter,
  WebFormatError,
} from "../../src/format";
import type { SphereConfig } from "../../src/config";
import { manifest, readBuffer, readTensors, withHeader } from "./fixtures";

const fixtures = manifest();
const cases = Object.entries(fixtures.models).flatMap(([name, info]) => Object.keys(info.modes).map((mode) => ({ name, mode })));

describe("weight files written by engine/webformat.py", () => {
  it.each(cases)("$name/$mode parses with the exporter's config and tensor table", async ({ name, mode }) => {
    const file = await parseWeightFile(readBuffer(`${name}/model_${mode}.safetensors`));
    const info = fixtures.models[name];
    expect(file.mode).toBe(mode);
    expect(file.config).toEqual(info.config);
    expect([...file.tensors.keys()].sort()).toEqual(info.modes[mode].tensor_names);
    expect(Object.keys(file.quantization).length).toBe(info.modes[mode].quantized);
    expect(file.byteLength).toBe(info.modes[mode].bytes);
  });

  it.each(cases)("$name/$mode dequantizes bit-exactly like the Python reader", async ({ name, mode }) => {
    const file = await parseWeightFile(readBuffer(`${name}/model_${mode}.safetensors`));
    const expected = readTensors(`${name}/dequant_${mode}.safetensors`);
    const names = parameterNames(file);
    for (const param of names) {
      const reference = expected.get(param);
      expect(reference, `python state lacks ${param}`).toBeDefined();
      const { data } = readParameter(file, param);
      expect(data.length).toBe(reference!.length);
      expect(Buffer.from(data.buffer).equals(Buffer.from(reference!.buffer, reference!.byteOffset, reference!.byteLength)), param).toBe(
        true,
      );
    }
    // everything Python reads back is in the file, except BatchNorm entries it restores for folded models
    const missing = [...expected.keys()].filter((k) => !names.includes(k) && !/running_|num_batches|norm\d?\.(weight|bias)$/.test(k));
    expect(missing).toEqual([]);
  });

  it("reads a config without decoder_mixer (an older export) as the legacy decoder layout", async () => {
    const buffer = readBuffer("vit_legacy16/model_fp32.safetensors");
    const header = parseSafetensors(buffer).metadata;
    expect(JSON.parse(header.config)).not.toHaveProperty("decoder_mixer");
    const sphereConfig = async (bytes: ArrayBuffer) => (await parseWeightFile(bytes)).config as SphereConfig;
    expect((await sphereConfig(buffer)).decoder_mixer).toBe("latent");
    expect((await sphereConfig(readBuffer("vit_tiny16/model_fp32.safetensors"))).decoder_mixer).toBe("width");
  });

  it("packs matrices for the GPU with 4-byte aligned buffers", async () => {
    const file = await parseWeightFile(readBuffer("vit_tiny16/model_q4.safetensors"));
    const name = Object.keys(file.quantization)[0];
    const packed = packedMatrix(file, name);
    expect(packed.encoding).toBe("q4");
    expect(packed.data.byteLength % 4).toBe(0);
    expect(packed.scales!.byteLength % 4).toBe(0);
    expect(packed.data.byteLength).toBeGreaterThanOrEqual(packed.rows * Math.ceil(packed.cols / 2));
  });
});

describe("bad files are rejected with a clear message", () => {
  const good = () => readBuffer("vit_tiny16/model_q8.safetensors");
  const firstTensor = (header: Record<string, any>) => Object.keys(header).find((k) => k !== "__metadata__")!;
  const lastTensor = (header: Record<string, any>) =>
    Object.keys(header)
      .filter((k) => k !== "__metadata__")
      .sort((a, b) => header[b].data_offsets[1] - header[a].data_offsets[1])[0];

  const expectError = async (buffer: ArrayBuffer, pattern: RegExp) => {
    await expect(parseWeightFile(buffer, "bad.safetensors")).rejects.toThrow(WebFormatError);
    await expect(parseWeightFile(buffer, "bad.safetensors")).rejects.toThrow(pattern);
  };

  it("accepts the untouched file", async () => {
    await expect(parseWeightFile(good())).resolves.toMatchObject({ mode: "q8" });
  });
  it("rejects a flipped data byte as corrupt, in one line", async () => {
    const buffer = good();
    const bytes = new Uint8Array(buffer);
    bytes[bytes.length - 100] ^= 0x10; // inside the last tensors: the layout still checks out
    await expectError(buffer, /^web weight file 'bad.safetensors' is corrupt \(data checksum mismatch\); re-export it$/);
  });
  it("rejects a checksum that is not the data's", () =>
    expectError(
      withHeader(good(), (h) => (h.__metadata__.data_sha256 = "0".repeat(64))),
      /is corrupt \(data checksum mismatch\)/,
    ));
  it("rejects a file without a checksum", () =>
    expectError(
      withHeader(good(), (h) => delete h.__metadata__.data_sha256),
      /metadata lacks 'data_sha256'; re-export it with export_weights.py/,
    ));
  it("rejects a version-1 file (no checksum) with the way out", () =>
    expectError(
      withHeader(good(), (h) => {
        h.__metadata__.version = "1";
        delete h.__metadata__.data_sha256;
      }),
      /unsupported version "1": this reader knows version 2; re-export with export_weights.py/,
    ));
  it("reports a truncated file as truncated, not corrupt", async () => {
    const buffer = good();
    await expectError(buffer.slice(0, buffer.byteLength - 4), /truncated/);
  });
  it("rejects a file shorter than the length field", () => expectError(new ArrayBuffer(5), /truncated/));
  it("rejects a file cut inside the header", () => expectError(good().slice(0, 100), /truncated/));
  it("rejects a file cut inside the data", async () => {
    const buffer = good();
    await expectError(buffer.slice(0, buffer.byteLength - 10), /truncated/);
  });
  it("rejects an implausible header length (not our file)", async () => {
    const bytes = new Uint8Array(64).fill(0x89);
    await expectError(bytes.buffer, /wrong magic/);
  });
  it("rejects a header that is not JSON", async () => {
    const bytes = new Uint8Array(32);
    new DataView(bytes.buffer).setBigUint64(0, 16n, true);
    bytes.set(new TextEncoder().encode("PNG garbage here"), 8);
    await expectError(bytes.buffer, /wrong magic.*not JSON/);
  });
  it("rejects the wrong format name", () =>
    expectError(
      withHeader(good(), (h) => (h.__metadata__.format = "gguf")),
      /wrong magic/,
    ));
  it("rejects a missing metadata block", () =>
    expectError(
      withHeader(good(), (h) => delete h.__metadata__),
      /wrong magic/,
    ));
  it("rejects an unknown version", () =>
    expectError(
      withHeader(good(), (h) => (h.__metadata__.version = "3")),
      /unsupported version "3"/,
    ));
  it("rejects an unknown mode", () =>
    expectError(
      withHeader(good(), (h) => (h.__metadata__.mode = "q2")),
      /unknown mode/,
    ));
  it("rejects an unknown dtype", () =>
    expectError(
      withHeader(good(), (h) => (h[firstTensor(h)].dtype = "BF16")),
      /unknown dtype "BF16"/,
    ));
  it("rejects offsets beyond the data", () =>
    expectError(
      withHeader(good(), (h) => {
        const name = firstTensor(h);
        const [begin, end] = h[name].data_offsets;
        h[name].data_offsets = [begin + 1e9, end + 1e9];
      }),
      /out of range/,
    ));
  it("rejects overlapping tensors", () =>
    expectError(
      withHeader(good(), (h) => {
        const name = lastTensor(h);
        const [begin, end] = h[name].data_offsets;
        h[name].data_offsets = [begin - 4, end - 4];
      }),
      /overlap or leave a gap/,
    ));
  it("rejects a shape that does not match the byte length", () =>
    expectError(
      withHeader(good(), (h) => (h[firstTensor(h)].shape = [3, 5, 7])),
      /shape\/byte-length mismatch/,
    ));
  it("rejects trailing bytes", async () => {
    const buffer = good();
    const longer = new Uint8Array(buffer.byteLength + 8);
    longer.set(new Uint8Array(buffer));
    await expectError(longer.buffer, /trailing bytes/);
  });
  it("rejects a quantization entry naming a missing tensor", () =>
    expectError(
      withHeader(good(), (h) => {
        const quant = JSON.parse(h.__metadata__.quantization);
        const first = Object.keys(quant)[0];
        quant[first].scales = "nope.scales";
        h.__metadata__.quantization = JSON.stringify(quant);
      }),
      /names a missing tensor/,
    ));
  it("rejects a quantization group longer than the exporter allows", () =>
    expectError(
      withHeader(good(), (h) => {
        const quant = JSON.parse(h.__metadata__.quantization);
        for (const entry of Object.values(quant) as { group_size: number }[]) entry.group_size = 4096;
        h.__metadata__.quantization = JSON.stringify(quant);
      }),
      /bad mode\/shape\/group_size/,
    ));
  it("rejects a config without the keys every reader needs", () =>
    expectError(
      withHeader(good(), (h) => {
        const config = JSON.parse(h.__metadata__.config);
        delete config.latent_dim;
        h.__metadata__.config = JSON.stringify(config);
      }),
      /config lacks 'latent_dim'; re-export it/,
    ));
  it("rejects metadata that is not JSON", () =>
    expectError(
      withHeader(good(), (h) => (h.__metadata__.config = "{oops")),
      /'config' is not valid JSON/,
    ));
  it("parses plain safetensors without the sphere-web checks", () => {
    const file = parseSafetensors(readBuffer("kernels.safetensors"));
    expect(file.tensors.has("linear.x")).toBe(true);
  });
});

describe("fp16 and group dequantization", () => {
  it("decodes halves, subnormals and specials", () => {
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(halfToFloat(0x7bff)).toBe(65504);
    expect(halfToFloat(0x0001)).toBe(2 ** -24);
    expect(halfToFloat(0x8000)).toBe(-0);
    expect(halfToFloat(0x7c00)).toBe(Infinity);
    expect(Number.isNaN(halfToFloat(0x7e00))).toBe(true);
  });

  it("reads q4 nibbles low-first with q = nibble - 8 and per-group scales", () => {
    // one row, cols 3, group 2: q = [-7, 7, 1] -> nibbles [1, 15, 9] -> bytes [0xF1, 0x09]; scales [1, 0.5]
    const data = new Uint8Array([0xf1, 0x09]);
    const scales = new Uint8Array([0x00, 0x3c, 0x00, 0x38]);
    expect(Array.from(dequantizeGroups(data, scales, "q4", 1, 3, 2))).toEqual([-7, 7, 0.5]);
  });

  it("reads q8 as two's complement with a zero scale giving exact zeros", () => {
    const data = new Uint8Array([0x81, 0x7f, 0x05, 0xff]); // -127, 127 | 5, -1
    const scales = new Uint8Array([0x00, 0x38, 0x00, 0x00]); // 0.5 | 0
    expect(Array.from(dequantizeGroups(data, scales, "q8", 1, 4, 2))).toEqual([-63.5, 63.5, 0, -0]);
  });
});
