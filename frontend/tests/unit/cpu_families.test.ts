/**
 * The backend-neutral logic of the vqvae, ldm and somar families (ldm_core.ts, somar_core.ts, vqvae_core.ts) and the
 * CPU path's classes over it (cpu_families.ts), with fake networks written here: the diffusion sampler against the
 * recorded runs of models/diffusion.py, guidance on a doubled batch and the rows and inputs each network receives;
 * a somar codebook's tokens, reconstruction and atlas against PyTorch's fixture; the tokenizer's round trip; which
 * ONNX files each family needs and which models the CPU path refuses.
 */
import { describe, expect, it } from "vitest";
import type { LDMConfig, SOMARConfig, VQVAEConfig } from "../../src/config";
import { CpuLDMModel, CpuSOMARModel, CpuVQVAEModel } from "../../src/cpu_families";
import { cpuUnsupported, onnxNeeds, type Graph, type GraphInput } from "../../src/cpu_model";
import { parseWeightFile, readParameter } from "../../src/format";
import { DiffusionSampler } from "../../src/ldm_core";
import { Random } from "../../src/rng";
import { SomarCodebook } from "../../src/somar_core";
import { atlasMaps, tokenMaps } from "../../src/somar_grid";
import { CODEBOOK, VQVAECodebook } from "../../src/vqvae_core";
import { readBuffer, readTensors, recordedRuns } from "./fixtures";

/** A fake network: records each call's inputs and batch, answers with `answer`. */
class FakeGraph implements Graph {
  calls: { inputs: GraphInput[]; batch: number }[] = [];
  constructor(private answer: (inputs: GraphInput[], batch: number) => Float32Array) {}
  async run(inputs: GraphInput[], batch: number): Promise<Float32Array> {
    this.calls.push({ inputs: inputs.map((input) => input.slice()), batch });
    return this.answer(inputs, batch);
  }
  async dispose(): Promise<void> {}
}

const diffusionConfig = (kind: "latent" | "pixel", run: Record<string, unknown>, num_classes = 0): LDMConfig =>
  ({
    family: "ldm",
    kind,
    image_size: kind === "pixel" ? 4 : 8,
    in_channels: 3,
    num_classes,
    ae_mults: [1, 2], // a 4x4 latent of an 8 px image
    latent_channels: 3,
    autoencoder: null,
    latent_scale: 1,
    ...run,
  }) as unknown as LDMConfig;

describe("the diffusion sampler shared by both backends (ldm_core.ts)", () => {
  const runs = recordedRuns();
  const tensors = readTensors("diffusion.safetensors");

  it.each(Object.keys(runs))("%s: a whole run over an injected UNet gives PyTorch's result", async (name) => {
    const run = runs[name];
    const xs = tensors.get(`${name}.x`)!;
    const [outputs, noise] = [tensors.get(`${name}.outputs`)!, tensors.get(`${name}.noise`)!];
    const size = xs.length / (run.steps + 1);
    const slice = (values: Float32Array, i: number) => values.slice(i * size, (i + 1) * size);
    const config = diffusionConfig(run.clip === null ? "latent" : "pixel", { ...run });
    let calls = 0;
    const seen: Float32Array[] = [];
    const sampler = new DiffusionSampler(config, 1, {
      unet: async (x) => (seen.push(x.slice()), slice(outputs, calls++)),
      decodeLatents: async (z) => z.slice(), // identity "decoder": the images are the latents
    });
    const stepNoise = Array.from({ length: noise.length / size }, (_, i) => slice(noise, i));
    const previews: number[] = [];
    const { images } = await sampler.sample(2, {
      steps: run.steps,
      noise: slice(xs, 0),
      stepNoise,
      sampler: run.sampler,
      eta: run.eta,
      onStep: (_, step) => void previews.push(step),
    });
    const expected = slice(xs, run.steps).map((v) => (run.clip === null ? v : Math.min(1, Math.max(-1, v))));
    const scale = Math.max(1, ...expected.map(Math.abs));
    expect(Math.max(...images.map((v, j) => Math.abs(v - expected[j]))) / scale).toBeLessThan(1e-6);
    seen.forEach((x, i) => expect(Math.max(...x.map((v, j) => Math.abs(v - slice(xs, i)[j])))).toBeLessThan(1e-4 * scale));
    expect(previews).toEqual(Array.from({ length: run.steps }, (_, i) => i + 1));
  });

  it("guidance runs one UNet pass of the doubled batch [labels; null] and mixes it; per-image seed streams", async () => {
    const config = diffusionConfig(
      "latent",
      { timesteps: 10, beta_schedule: "linear", beta_start: 1e-4, beta_end: 0.02, prediction: "eps" },
      4,
    );
    const rows: { n: number; labels: number[] }[] = [];
    const unet = async (x: Float32Array, _t: number, labels: Uint32Array | null) => {
      rows.push({ n: x.length / 48, labels: Array.from(labels!) });
      return x.map((_, i) => (i < x.length / 2 ? 1 : 0)); // conditional half 1, unconditional half 0
    };
    const sampler = new DiffusionSampler(config, 0.5, { unet, decodeLatents: async (z) => z });
    const guided = await sampler.denoise(new Float32Array(96), 7, { labels: [1, 2], guidance: 3 });
    expect(rows).toEqual([{ n: 4, labels: [1, 2, 4, 4] }]);
    expect(Array.from(guided)).toEqual(new Array(96).fill(3)); // 0 + 3 (1 - 0)
    expect(() => sampler.denoise(new Float32Array(48), 7, { labels: [5] })).toThrow(/label 5 out of range 0..4/);
    const rowwise = new DiffusionSampler(config, 0.5, { unet: async (x) => x.map((v) => 0.1 * v), decodeLatents: async (z) => z });
    const a = await rowwise.sample(2, { steps: 2, seed: 9, sampler: "ddim", eta: 1, labels: [0, 1] });
    const b = await rowwise.sample(1, { steps: 2, seed: 9, sampler: "ddim", eta: 1, labels: [0] });
    expect(Array.from(b.images)).toEqual(Array.from(a.images.subarray(0, 48))); // an image does not depend on its batch
  });
});

describe("the CPU path's ldm model (cpu_families.ts)", () => {
  const schedule = { timesteps: 100, beta_schedule: "linear", beta_start: 1e-4, beta_end: 0.02, prediction: "eps" };

  it("feeds the UNet x, int timesteps and labels, decodes x̂_0 / latent_scale, and reconstructs through the autoencoder", async () => {
    const unet = new FakeGraph((inputs) => (inputs[0] as Float32Array).map((v) => 0.1 * v));
    const decoder = new FakeGraph((inputs, batch) => new Float32Array(batch * 192).fill((inputs[0] as Float32Array)[0]));
    const encoder = new FakeGraph((_, batch) => new Float32Array(batch * 48).fill(2));
    const model = new CpuLDMModel(diffusionConfig("latent", schedule, 10), 0.5, { unet, encoder, decoder });
    expect([model.latentSize, model.canSample, model.canEncode, model.sampler, model.eta]).toEqual([48, true, true, "ddim", 0]);
    const x = new Random(3).gaussians(96);
    await model.sample(2, { steps: 2, noise: x, labels: [3, 10], guidance: 2 });
    expect(unet.calls.map((call) => [call.batch, Array.from(call.inputs[1]), Array.from(call.inputs[2])])).toEqual([
      [4, [100, 100, 100, 100], [3, 10, 10, 10]],
      [4, [50, 50, 50, 50], [3, 10, 10, 10]],
    ]);
    expect(decoder.calls.length).toBe(1); // no onStep: the sample alone is decoded
    const { images } = await model.reconstruct(new Float32Array(2 * 192));
    expect(encoder.calls[0].batch).toBe(2);
    expect(decoder.calls[1].inputs[0]).toEqual(new Float32Array(96).fill(2)); // the mean, unscaled
    expect(images.length).toBe(384);
    await model.dispose();
    await expect(model.sample(1)).rejects.toThrow(/disposed/);
  });

  it("a pixel model has a UNet alone: no encoder, x̂_0 clamped; an autoencoder refuses to sample", async () => {
    const unet = new FakeGraph((inputs) => new Float32Array(inputs[0].length).fill(-5));
    const pixel = new CpuLDMModel(diffusionConfig("pixel", schedule), 1, { unet, encoder: null, decoder: null });
    const images = await pixel.sample(1, { steps: 1, seed: 1 });
    expect(Math.max(...images.map(Math.abs))).toBeLessThanOrEqual(1);
    expect(unet.calls[0].inputs.length).toBe(2); // unconditional: x and t
    await expect(pixel.reconstruct(new Float32Array(48))).rejects.toThrow(/cannot reconstruct/);
    const ae = new CpuLDMModel({ ...diffusionConfig("latent", schedule), kind: "autoencoder" }, 1, {
      unet: null,
      encoder: new FakeGraph(() => new Float32Array(48)),
      decoder: new FakeGraph(() => new Float32Array(192)),
    });
    await expect(ae.sample(1)).rejects.toThrow(/stage-1 autoencoder/);
  });
});

describe("the CPU path's somar and vqvae models over the shared codebooks", () => {
  it("somar: PyTorch's tokens, reconstruction and atlas maps through the codebook (somar_cb16)", async () => {
    const file = await parseWeightFile(readBuffer("somar_cb16/model_fp32.safetensors"));
    const ref = readTensors("somar_cb16/reference_fp32.safetensors");
    const config = file.config as SOMARConfig;
    const codebook = new SomarCodebook(config, [4, 8, 8], (name) => readParameter(file, name), "cb");
    const encoder = new FakeGraph(() => ref.get("latent")!); // the maps of the reference's two images
    const decoder = new FakeGraph((_, batch) => new Float32Array(batch * 768).fill(batch));
    const model = new CpuSOMARModel(config, codebook, encoder, decoder);
    expect([model.units, model.layout!.tokens, model.autoencoderFamily]).toEqual([16, 16, "somar"]);
    const { tokens } = await model.reconstruct(ref.get("images")!);
    expect(Array.from(tokens!)).toEqual(Array.from(ref.get("tokens")!));
    expect(decoder.calls[0].inputs[0]).toEqual(tokenMaps(tokens!, codebook.codes, codebook.layout));
    const atlas = await model.atlas();
    expect(decoder.calls[1]).toEqual({ inputs: [atlasMaps(codebook.codes, codebook.layout)], batch: 16 });
    expect([atlas.geometry.width, atlas.picture.length]).toEqual([21, 3 * 21 * 21]);
    expect(model.tokenMap(tokens!).length).toBe(3 * 16);
    await expect(model.sample()).rejects.toThrow(/somar_prior_\* model samples/);
  });

  it("vqvae: the encoder's tokens go to the decoder; the token map is the codebook's colours", async () => {
    const file = await parseWeightFile(readBuffer("vqvae_tiny16/model_fp32.safetensors"));
    const ref = readTensors("vqvae_tiny16/reference_fp32.safetensors");
    const config = file.config as VQVAEConfig;
    const codebook = new VQVAECodebook(config, readParameter(file, CODEBOOK));
    const encoder = new FakeGraph(() => ref.get("tokens")!);
    const decoder = new FakeGraph((_, batch) => new Float32Array(batch * 768));
    const model = new CpuVQVAEModel(config, codebook, encoder, decoder);
    const out = await model.reconstruct(ref.get("images")!);
    expect(decoder.calls[0]).toEqual({ inputs: [ref.get("tokens")], batch: 2 });
    expect(out.tokens).toEqual(ref.get("tokens"));
    const map = model.tokenMap(ref.get("tokens")!);
    expect(Math.max(...map.map((v, i) => Math.abs(v - ref.get("token_map")![i])))).toBeLessThan(1e-5);
    await expect(model.sample()).rejects.toThrow(/no prior over its tokens/);
  });
});

describe("which models the CPU path runs, and from which files", () => {
  it("names the ONNX files each family and kind needs", () => {
    const needs = (config: object) => onnxNeeds(config as LDMConfig);
    expect(needs({ family: "sphere" })).toEqual(["decoder"]);
    expect(needs({ family: "vqvae" })).toEqual(["encoder", "decoder", "tensors"]);
    expect(needs({ family: "ldm", kind: "latent" })).toEqual(["unet", "encoder", "decoder"]);
    expect(needs({ family: "ldm", kind: "pixel" })).toEqual(["unet"]);
    expect(needs({ family: "ldm", kind: "autoencoder" })).toEqual(["encoder", "decoder"]);
    expect(needs({ family: "somar", kind: "codebook" })).toEqual(["encoder", "decoder", "tensors"]);
    expect(needs({ family: "somar", kind: "autoencoder" })).toEqual(["encoder", "decoder"]);
  });

  it("refuses other quantizers and priors over a vqvae's tokens, saying why", () => {
    expect(cpuUnsupported({ family: "vqvae", quantizer: "fsq" })).toMatch(/quantizer 'fsq' are not shown/);
    expect(cpuUnsupported({ family: "vqvae", quantizer: "vq" })).toBeNull();
    const prior = { family: "somar", kind: "prior", codebook: { family: "vqvae" } };
    expect(cpuUnsupported(prior)).toMatch(/prior over a vqvae's tokens/);
    expect(cpuUnsupported({ family: "ldm", kind: "pixel" })).toBeNull();
    expect(cpuUnsupported({ family: "gan" })).toMatch(/does not run 'gan' models/);
  });
});
