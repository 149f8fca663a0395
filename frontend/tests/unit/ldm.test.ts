import { describe, expect, it } from "vitest";
import type { LDMConfig } from "../../src/config";
import { ldmAutoencoder } from "../../src/config";
import { alphasBar, ddimStep, ddimTimesteps, predictX0Eps } from "../../src/diffusion";
import { entryProblem } from "../../src/family";
import { parseWeightFile, WebFormatError } from "../../src/format";
import type { Gpu } from "../../src/gpu";
import { LDMModel, timeFeatures } from "../../src/ldm";
import { VQVAEModel } from "../../src/vqvae";
import { readBuffer, withHeader } from "./fixtures";

const noGpu = {} as Gpu; // every check below fails before any GPU work
const STAGE2 = "ldm_tiny16/model_q4.safetensors";
const LINEAR = { timesteps: 1000, beta_schedule: "linear", beta_start: 1e-4, beta_end: 0.02 } as const;

const editConfig = (file: string, edit: (config: Record<string, unknown>) => void) =>
  withHeader(readBuffer(file), (header) => {
    const config = JSON.parse(header.__metadata__.config);
    edit(config);
    header.__metadata__.config = JSON.stringify(config);
  });

describe("an ldm weight file", () => {
  it("parses a stage-2 file: kind, latent scale, time embedding and edges fp16, the UNet's convs quantized", async () => {
    const file = await parseWeightFile(readBuffer(STAGE2));
    const cfg = file.config as LDMConfig;
    expect([cfg.family, cfg.kind, cfg.latent_scale, cfg.unet_heads]).toEqual(["ldm", "latent", 0.8, 2]);
    for (const name of ["unet.time_embed.0.weight", "unet.conv_out.weight", "autoencoder.decoder.conv_out.weight", "latent_scale"]) {
      expect(file.quantization[name]).toBeUndefined();
      expect(file.tensors.get(name)!.dtype).toBe("F16");
    }
    expect(file.quantization["unet.mid.block_1.conv1.weight"]?.mode).toBe("q4");
    expect(ldmAutoencoder(cfg)).toMatchObject({ kind: "autoencoder", latent_channels: 4, ae_mults: [1, 2] });
  });

  it("needs the ldm keys in its config", async () => {
    await expect(
      parseWeightFile(
        editConfig(STAGE2, (config) => delete config.unet_heads),
        "bad",
      ),
    ).rejects.toThrow(/config lacks .*unet_heads/);
  });

  it("is refused by another family's class; unknown kinds and conditional UNets in one line", async () => {
    const file = await parseWeightFile(readBuffer(STAGE2), "ldm");
    expect(() => VQVAEModel.fromFile(noGpu, file, "ldm")).toThrow(/holds a 'ldm' model, not a vqvae/);
    const kind = { ...file, config: { ...file.config, kind: "video" } } as unknown as typeof file;
    expect(() => LDMModel.fromFile(noGpu, kind, "k")).toThrow(/^'k' has unknown ldm kind 'video'$/);
    const conditional = { ...file, config: { ...file.config, num_classes: 10 } };
    expect(() => LDMModel.fromFile(noGpu, conditional, "c")).toThrow(WebFormatError);
  });

  it("index entries of every kind are shown", () => {
    expect(entryProblem({ name: "ae", family: "ldm" })).toBeNull();
  });
});

describe("diffusion math (models/diffusion.py)", () => {
  it("linear and cosine schedules", () => {
    const linear = alphasBar(LINEAR);
    expect(linear[0]).toBe(1);
    expect(linear[1000]).toBeCloseTo(4.0358297653756754e-5, 12);
    expect(linear[500]).toBeCloseTo(0.07858724288177824, 12);
    const cosine = alphasBar({ ...LINEAR, beta_schedule: "cosine" });
    expect(cosine[1]).toBeCloseTo(0.999958715775178, 12);
    expect(cosine[500]).toBeCloseTo(0.4938435904406382, 12);
    for (let t = 1; t <= 1000; t++) expect(linear[t]).toBeLessThan(linear[t - 1]);
  });

  it("DDIM times run from T to 0, rounded half to even as torch", () => {
    expect(ddimTimesteps(1000, 3)).toEqual([1000, 667, 333, 0]);
    expect(ddimTimesteps(1000, 16).slice(0, 4)).toEqual([1000, 938, 875, 812]);
    expect(ddimTimesteps(1000, 16).slice(-3)).toEqual([125, 62, 0]);
    expect(() => ddimTimesteps(1000, 0)).toThrow(/sampler steps must be an integer in 1..1000/);
  });

  it("a DDIM step with the true noise lands on q(x_prev | x_0) exactly (η = 0); v gives the same x̂_0", () => {
    const abar = alphasBar(LINEAR);
    const x0 = new Float32Array([0.5, -0.25, 0.75]);
    const eps = new Float32Array([1.2, -0.4, 0.3]);
    const [t, prev] = [700, 350];
    const xt = x0.map((v, i) => Math.sqrt(abar[t]) * v + Math.sqrt(1 - abar[t]) * eps[i]);
    const fromEps = predictX0Eps(xt, eps, abar[t], "eps", null);
    const next = ddimStep(fromEps.x0, fromEps.eps, abar[prev]);
    x0.forEach((v, i) => expect(next[i]).toBeCloseTo(Math.sqrt(abar[prev]) * v + Math.sqrt(1 - abar[prev]) * eps[i], 5));
    const v = eps.map((e, i) => Math.sqrt(abar[t]) * e - Math.sqrt(1 - abar[t]) * x0[i]);
    predictX0Eps(xt, v, abar[t], "v", null).x0.forEach((value, i) => expect(value).toBeCloseTo(x0[i], 5));
    expect(Array.from(ddimStep(fromEps.x0, fromEps.eps, 1))).toEqual(Array.from(fromEps.x0)); // to t = 0: x̂_0 itself
  });

  it("time features are [cos, sin] of t ω_k", () => {
    const features = timeFeatures(0, 8);
    expect(Array.from(features)).toEqual([1, 1, 1, 1, 0, 0, 0, 0]);
    expect(timeFeatures(3, 8)[4]).toBeCloseTo(Math.sin(3), 6);
  });
});
