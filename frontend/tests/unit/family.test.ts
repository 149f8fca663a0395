import { describe, expect, it } from "vitest";
import type { PSVAEConfig, SphereConfig } from "../../src/config";
import { entryProblem, loadModel } from "../../src/family";
import { parseWeightFile, WebFormatError } from "../../src/format";
import type { Gpu } from "../../src/gpu";
import { SphereModel } from "../../src/model";
import { PSVAEModel, UnsupportedModelError } from "../../src/psvae";
import { manifest, readBuffer, withHeader } from "./fixtures";

// The checks below all fail before any GPU work, so a stand-in that is never touched is enough here (the
// models themselves run in the browser parity tests).
const noGpu = {} as Gpu;
const fixtures = manifest();

const editConfig = (file: string, edit: (config: Record<string, unknown>) => void) =>
  withHeader(readBuffer(file), (header) => {
    const config = JSON.parse(header.__metadata__.config);
    edit(config);
    header.__metadata__.config = JSON.stringify(config);
  });

const expectError = async (buffer: ArrayBuffer, pattern: RegExp) => {
  await expect(parseWeightFile(buffer, "bad.safetensors")).rejects.toThrow(WebFormatError);
  await expect(parseWeightFile(buffer, "bad.safetensors")).rejects.toThrow(pattern);
};

describe("the family of a weight file", () => {
  it("is read from the config: every fixture's family is the exporter's", async () => {
    for (const [name, info] of Object.entries(fixtures.models)) {
      const mode = Object.keys(info.modes)[0];
      const file = await parseWeightFile(readBuffer(`${name}/model_${mode}.safetensors`));
      expect(file.config.family, name).toBe(info.config.family);
    }
    const psvae = (await parseWeightFile(readBuffer("psvae_globe16/model_q8.safetensors"))).config as PSVAEConfig;
    expect([psvae.family, psvae.z_dim, psvae.backbone, psvae.decoder]).toEqual(["psvae", 3, "conv", "conv"]);
  });

  it("is sphere when the config has no family key (files written before families existed)", async () => {
    const buffer = editConfig("vit_tiny16/model_fp32.safetensors", (config) => delete config.family);
    const config = (await parseWeightFile(buffer)).config as SphereConfig;
    expect(config.family).toBe("sphere");
    expect(config.decoder_mixer).toBe("width");
  });

  it("names a family this reader does not know, in one line", async () => {
    await expectError(
      editConfig("psvae_globe16/model_fp32.safetensors", (config) => (config.family = "gan")),
      /^'bad.safetensors' holds a 'gan' model, a family this reader does not know$/,
    );
    await expectError(
      editConfig("vit_tiny16/model_fp32.safetensors", (config) => (config.family = 3)),
      /holds a '3' model, a family this reader does not know/,
    );
  });
});

describe("config keys are checked per family", () => {
  it("a psvae needs z_dim, backbone and decoder, not latent_dim", async () => {
    const psvae = "psvae_globe16/model_fp32.safetensors";
    expect(JSON.parse((await parseWeightFile(readBuffer(psvae))).metadata.config)).not.toHaveProperty("latent_dim");
    await expectError(
      editConfig(psvae, (config) => delete config.z_dim),
      /config lacks 'z_dim'; re-export it/,
    );
    await expectError(
      editConfig(psvae, (config) => {
        delete config.decoder;
        delete config.backbone;
      }),
      /config lacks 'backbone', 'decoder'/,
    );
  });

  it("a sphere file needs latent_dim, whatever keys a psvae has", async () => {
    await expectError(
      editConfig("vit_tiny16/model_fp32.safetensors", (config) => {
        delete config.latent_dim;
        config.z_dim = 3;
      }),
      /config lacks 'latent_dim'/,
    );
  });

  it("every family needs image_size and num_classes", async () => {
    await expectError(
      editConfig("psvae_up32/model_fp32.safetensors", (config) => delete config.num_classes),
      /config lacks 'num_classes'/,
    );
  });
});

describe("loading dispatches on the family", () => {
  const psvaeFile = () => parseWeightFile(readBuffer("psvae_globe16/model_fp32.safetensors"), "psvae_globe16");

  it("refuses a file of another family in each model class", async () => {
    expect(() => SphereModel.fromFile(noGpu, {} as never, "x")).toThrow(); // not a parsed file at all
    const psvae = await psvaeFile();
    expect(() => SphereModel.fromFile(noGpu, psvae, "psvae_globe16")).toThrow(/holds a 'psvae' model, not a Sphere Encoder/);
    const sphere = await parseWeightFile(readBuffer("vit_tiny16/model_fp32.safetensors"));
    expect(() => PSVAEModel.fromFile(noGpu, sphere, "vit_tiny16")).toThrow(/holds a 'sphere' model, not a psvae/);
  });

  it("says a 1-D signal psvae is not shown, before any GPU work", async () => {
    const load = loadModel(noGpu, readBuffer("psvae_signal32/model_fp32.safetensors"), "psvae_signal32");
    await expect(load).rejects.toThrow(UnsupportedModelError);
    await expect(loadModel(noGpu, readBuffer("psvae_signal32/model_fp32.safetensors"), "psvae_signal32")).rejects.toThrow(
      /^'psvae_signal32': 1-D signal models \(psvae conv1d\) are not shown in this page/,
    );
  });

  it("rejects psvae settings the page cannot run", async () => {
    const psvae = await psvaeFile();
    const withConfig = (edit: Partial<PSVAEConfig>) => ({ ...psvae, config: { ...(psvae.config as PSVAEConfig), ...edit } });
    expect(() => PSVAEModel.fromFile(noGpu, withConfig({ decoder: "mlp" as never }), "f")).toThrow(/unknown decoder 'mlp'/);
    expect(() => PSVAEModel.fromFile(noGpu, withConfig({ backbone: "resnet" as never }), "f")).toThrow(/unknown backbone 'resnet'/);
    expect(() => PSVAEModel.fromFile(noGpu, withConfig({ z_dim: 1 }), "f")).toThrow(/z_dim 1; the sphere needs d >= 2/);
    expect(() => PSVAEModel.fromFile(noGpu, { ...withConfig({ norm: "batch" }), bnFolded: false }, "f")).toThrow(
      /BatchNorm that was not folded/,
    );
  });
});

describe("index.json entries the page will not load (no download)", () => {
  it("passes sphere and image psvae entries", () => {
    expect(entryProblem({ name: "old" })).toBeNull(); // no family key: sphere
    expect(entryProblem({ name: "s", family: "sphere", backbone: "vit" })).toBeNull();
    expect(entryProblem({ name: "p", family: "psvae", backbone: "conv" })).toBeNull();
    expect(entryProblem({ name: "p", family: "psvae", backbone: "vit" })).toBeNull();
  });
  it("names an unknown family and a 1-D psvae", () => {
    expect(entryProblem({ name: "m", family: "gan" })).toBe("'m' holds a 'gan' model, a family this page does not know");
    expect(entryProblem({ name: "sig", family: "psvae", backbone: "conv1d" })).toMatch(
      /^'sig': 1-D signal models .* not shown in this page/,
    );
  });
});
