import { describe, expect, it } from "vitest";
import type { LDMConfig } from "../../src/config";
import { ldmAutoencoder } from "../../src/config";
import { alphasBar, ddimStep, ddimTimesteps, ddpmStep, guide, predictX0Eps, stepSigma } from "../../src/diffusion";
import { entryProblem } from "../../src/family";
import { parseWeightFile, WebFormatError } from "../../src/format";
import type { Gpu } from "../../src/gpu";
import { LDMModel, samplerProblem, timeFeatures } from "../../src/ldm";
import { Random } from "../../src/rng";
import { VQVAEModel } from "../../src/vqvae";
import { readBuffer, readTensors, recordedRuns, withHeader } from "./fixtures";

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

  it("is refused by another family's class; unknown kinds, samplers, η and class counts in one line", async () => {
    const file = await parseWeightFile(readBuffer(STAGE2), "ldm");
    expect(() => VQVAEModel.fromFile(noGpu, file, "ldm")).toThrow(/holds a 'ldm' model, not a vqvae/);
    const edited = (edit: Record<string, unknown>) => ({ ...file, config: { ...file.config, ...edit } }) as unknown as typeof file;
    expect(() => LDMModel.fromFile(noGpu, edited({ kind: "video" }), "k")).toThrow(/^'k' has unknown ldm kind 'video'$/);
    expect(() => LDMModel.fromFile(noGpu, edited({ sampler: "euler" }), "s")).toThrow(
      /^'s': unknown sampler 'euler': use one of ddim, ddpm$/,
    );
    expect(() => LDMModel.fromFile(noGpu, edited({ eta: 2 }), "e")).toThrow(WebFormatError);
    expect(() => LDMModel.fromFile(noGpu, edited({ num_classes: -1 }), "c")).toThrow(/num_classes -1/);
  });

  it("a class-conditional file holds its label table (null class last) and its sampler defaults; older files have none", async () => {
    const file = await parseWeightFile(readBuffer("ldm_cond16/model_q8.safetensors"));
    const cfg = file.config as LDMConfig;
    expect([cfg.num_classes, cfg.sampler, cfg.eta]).toEqual([10, "ddpm", 0.5]);
    expect(file.tensors.get("unet.label_embed.weight")!.shape).toEqual([11, 64]);
    expect(file.quantization["unet.label_embed.weight"]).toBeUndefined(); // an embedding is never quantized
    const older = await parseWeightFile(
      editConfig(STAGE2, (config) => {
        delete config.sampler;
        delete config.eta;
      }),
    );
    expect((older.config as LDMConfig).sampler).toBeUndefined(); // LDMModel reads it as ddim, η 0
    expect(samplerProblem("ddim", 0)).toBeNull();
    expect(samplerProblem("ddim", -0.1)).toMatch(/η must be in \[0, 1\]/);
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

  it("σ: DDIM's grows with η and equals DDPM's at η = 1; the step to t = 0 has none", () => {
    const abar = alphasBar(LINEAR);
    const [t, prev] = [700, 350];
    expect(stepSigma("ddim", abar[t], abar[prev], 0)).toBe(0);
    const ddpm = stepSigma("ddpm", abar[t], abar[prev], 0);
    expect(stepSigma("ddim", abar[t], abar[prev], 1)).toBeCloseTo(ddpm, 15);
    expect(stepSigma("ddim", abar[t], abar[prev], 0.5)).toBeCloseTo(ddpm / 2, 15);
    expect(stepSigma("ddpm", abar[t], abar[0], 0)).toBe(0);
    const x = new Float32Array([0.5]);
    expect(() => ddpmStep(x, x, abar[t], abar[prev])).toThrow(/needs 1 noise values, got 0/);
  });

  it("guidance mixes the halves [cond; uncond]: w = 0 the unconditional, w = 1 the conditional output", () => {
    const output = new Float32Array([1, 2, 10, 20]); // cond (2 values), then uncond
    expect(Array.from(guide(output, 0))).toEqual([10, 20]);
    expect(Array.from(guide(output, 1))).toEqual([1, 2]);
    expect(Array.from(guide(output, 3))).toEqual([10 + 3 * -9, 20 + 3 * -18]);
  });

  it("seeded streams: stream 0 is the seed's generator, other streams differ", () => {
    const draws = (random: Random) => Array.from({ length: 4 }, () => random.nextUint32());
    expect(draws(new Random(7, 0))).toEqual(draws(new Random(7)));
    expect(draws(new Random(7, 1))).not.toEqual(draws(new Random(7)));
    expect(draws(new Random(7, 1))).not.toEqual(draws(new Random(8, 1)));
    expect(draws(new Random(7, 3))).toEqual(draws(new Random(7, 3)));
  });

  it("time features are [cos, sin] of t ω_k", () => {
    const features = timeFeatures(0, 8);
    expect(Array.from(features)).toEqual([1, 1, 1, 1, 0, 0, 0, 0]);
    expect(timeFeatures(3, 8)[4]).toBeCloseTo(Math.sin(3), 6);
  });
});

describe("the samplers against models/diffusion.py (recorded runs, the same outputs and step noise)", () => {
  const runs = recordedRuns();
  const tensors = readTensors("diffusion.safetensors");

  it.each(Object.keys(runs))("%s: every step's x", (name) => {
    const run = runs[name];
    const abar = alphasBar(run);
    const times = ddimTimesteps(run.timesteps, run.steps);
    const xs = tensors.get(`${name}.x`)!;
    const [outputs, noise] = [tensors.get(`${name}.outputs`)!, tensors.get(`${name}.noise`)!];
    const size = xs.length / (run.steps + 1);
    const slice = (values: Float32Array, i: number) => values.slice(i * size, (i + 1) * size);
    let x: Float32Array = slice(xs, 0);
    let draws = 0;
    for (let i = 0; i < run.steps; i++) {
      const [t, prev] = [times[i], times[i + 1]];
      const { x0, eps } = predictX0Eps(x, slice(outputs, i), abar[t], run.prediction, run.clip);
      const sigma = stepSigma(run.sampler, abar[t], abar[prev], run.eta);
      const z = sigma > 0 ? slice(noise, draws++) : null;
      x = run.sampler === "ddim" ? ddimStep(x0, eps, abar[prev], sigma, z) : ddpmStep(x, x0, abar[t], abar[prev], z);
      const expected = slice(xs, i + 1);
      const worst = Math.max(...x.map((v, j) => Math.abs(v - expected[j])));
      const scale = Math.max(1, ...expected.map(Math.abs)); // random outputs drive x far from N(0, I): float32 is relative
      expect(worst / scale, `step ${i + 1}`).toBeLessThan(1e-6);
    }
    expect(draws).toBe(noise.length / size); // noise on every step but the last, as PyTorch drew it
  });
});
