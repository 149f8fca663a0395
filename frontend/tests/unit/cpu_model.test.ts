/**
 * The CPU path's glue (src/cpu_model.ts) with small networks written here: sampling, reconstruction, guidance and
 * labels against a direct transcription of models/sphere.py and models/psvae.py (one image at a time, guidance as
 * two separate passes), and the rows and labels each network call receives.
 */
import { describe, expect, it } from "vitest";
import { sigmaForAngle, type PSVAEConfig, type SphereConfig } from "../../src/config";
import { CpuModel, cpuUnsupported, mixHalves, project, type Network } from "../../src/cpu_model";
import { Random } from "../../src/rng";

const C = 3;
const S = 4;
const IMAGE = C * S * S; // 48 values per image

const sphereConfig = (num_classes = 0): SphereConfig =>
  ({
    family: "sphere",
    backbone: "convnet",
    image_size: S,
    in_channels: C,
    latent_dim: 8,
    channel_mults: [1, 2],
    num_classes,
    noise_angle: 40,
  }) as SphereConfig;
const psvaeConfig = (num_classes = 0): PSVAEConfig =>
  ({ family: "psvae", backbone: "conv", image_size: S, in_channels: C, z_dim: 3, num_classes }) as PSVAEConfig;

interface Call {
  rows: number;
  labels: number[] | null;
}

/** A fixed random dense layer per label, squashed by tanh: rows of `inSize` values to rows of `outSize`. */
class Dense implements Network {
  calls: Call[] = [];
  private weights: Float32Array;

  constructor(
    private inSize: number,
    private outSize: number,
    seed: number,
    private squash = true,
  ) {
    this.weights = new Random(seed).gaussians(inSize * outSize).map((w) => w / Math.sqrt(inSize));
  }

  one(row: Float32Array, label: number | null): Float32Array {
    const out = new Float32Array(this.outSize);
    for (let o = 0; o < this.outSize; o++) {
      let sum = label === null ? 0 : 0.3 * Math.cos(label + o);
      for (let i = 0; i < this.inSize; i++) sum += this.weights[o * this.inSize + i] * row[i];
      out[o] = this.squash ? Math.tanh(sum) : sum;
    }
    return out;
  }

  async run(input: Float32Array, batch: number, labels: Int32Array | null): Promise<Float32Array> {
    this.calls.push({ rows: batch, labels: labels && Array.from(labels) });
    expect(input.length).toBe(batch * this.inSize);
    const out = new Float32Array(batch * this.outSize);
    for (let b = 0; b < batch; b++)
      out.set(this.one(input.subarray(b * this.inSize, (b + 1) * this.inSize), labels ? labels[b] : null), b * this.outSize);
    return out;
  }

  async dispose(): Promise<void> {}
}

function networks(L: number, seed = 1) {
  return { decoder: new Dense(L, IMAGE, seed), encoder: new Dense(IMAGE, L, seed + 1, false) };
}

const f = (z: Float32Array, radius: number): Float32Array => project(z, 1, z.length, radius);

/** PyTorch's `_guided` for one image: u + w * (c - u) of two separate calls, or the plain call. */
function guided(net: Dense, input: Float32Array, label: number | null, nullClass: number, scale: number | null, clamp: boolean) {
  if (scale === null) return net.one(input, label);
  const c = net.one(input, label);
  const u = net.one(input, nullClass);
  return c.map((value, i) => {
    const g = u[i] + scale * (value - u[i]);
    return clamp ? Math.min(1, Math.max(-1, g)) : g;
  });
}

function close(a: Float32Array, b: Float32Array, tolerance = 1e-5): void {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  expect(worst).toBeLessThanOrEqual(tolerance);
}

describe("projection and guidance helpers", () => {
  it("projects each row onto the sphere, and re-noises as f(f(z) + sigma e)", () => {
    const z = Float32Array.from([3, 4, 0, 0, 0, 2]);
    expect(Array.from(project(z, 2, 3, 1))).toEqual([0.6, 0.8, 0, 0, 0, 1].map(Math.fround));
    const e = Float32Array.from([1, 0, 0, 0, 1, 0]);
    const renoised = project(z, 2, 3, 1, { noise: e, sigma: 1 });
    const w = [0.6 + 1, 0.8, 0];
    const n = Math.hypot(...w);
    close(renoised.subarray(0, 3), Float32Array.from(w.map((x) => x / n)));
    close(renoised.subarray(3), Float32Array.from([0, Math.SQRT1_2, Math.SQRT1_2]));
  });
  it("mixes the conditional and unconditional halves into both, clamping pixels", () => {
    const values = Float32Array.from([1, 0.5, 0, 0.5]);
    mixHalves(values, 3, true);
    expect(Array.from(values)).toEqual([1, 0.5, 1, 0.5]);
    const latent = Float32Array.from([1, 0]);
    mixHalves(latent, 3, false);
    expect(Array.from(latent)).toEqual([3, 3]);
  });
});

describe("Sphere Encoder on the CPU", () => {
  it("samples as models/sphere.py: e then e′ from the seed, e′ reused every round", async () => {
    const config = sphereConfig();
    const { decoder, encoder } = networks(8);
    const model = new CpuModel(config, decoder, encoder);
    const [n, steps, seed] = [3, 3, 42];
    const images = await model.sample(n, { steps, seed });
    const random = new Random(seed);
    const noise = random.gaussians(n * 8);
    const renoise = random.gaussians(n * 8);
    const sigma = sigmaForAngle(config.noise_angle);
    const radius = Math.sqrt(8);
    for (let i = 0; i < n; i++) {
      let x = decoder.one(f(noise.subarray(i * 8, (i + 1) * 8), radius), null);
      for (let s = 1; s < steps; s++) {
        const v = f(
          f(encoder.one(x, null), radius).map((value, k) => value + sigma * renoise[i * 8 + k]),
          radius,
        );
        x = decoder.one(v, null);
      }
      close(images.subarray(i * IMAGE, (i + 1) * IMAGE), x);
    }
    expect(decoder.calls.every((call) => call.rows === n && call.labels === null)).toBe(true);
    expect(decoder.calls.length).toBe(steps);
    const rounds: number[] = [];
    const last = await model.sample(n, { steps, seed, onStep: (x, step, total) => void rounds.push(step, total, x.length) });
    expect(rounds).toEqual([1, steps, n * IMAGE, 2, steps, n * IMAGE]); // every round but the last, which is returned
    close(last, images, 0);
  });

  it("guides with sqrt(w) after E and after D on a doubled batch, the null class in its second half", async () => {
    const config = sphereConfig(10);
    const { decoder, encoder } = networks(8, 5);
    const model = new CpuModel(config, decoder, encoder);
    const noise = new Random(1).gaussians(16);
    const renoise = new Random(2).gaussians(16);
    const images = await model.sample(2, { steps: 2, noise, renoise, labels: [3, 7], guidance: 4 });
    expect(decoder.calls.map((call) => call.rows)).toEqual([4, 4]);
    expect(decoder.calls[0].labels).toEqual([3, 7, 10, 10]);
    expect(encoder.calls[0].labels).toEqual([3, 7, 10, 10]);
    const sigma = sigmaForAngle(config.noise_angle);
    const radius = Math.sqrt(8);
    [3, 7].forEach((label, i) => {
      let x = guided(decoder, f(noise.subarray(i * 8, (i + 1) * 8), radius), label, 10, 2, true);
      const z = guided(encoder, x, label, 10, 2, false);
      x = guided(
        decoder,
        f(
          f(z, radius).map((value, k) => value + sigma * renoise[i * 8 + k]),
          radius,
        ),
        label,
        10,
        2,
        true,
      );
      close(images.subarray(i * IMAGE, (i + 1) * IMAGE), x);
    });
  });

  it("guidance 1 or an unconditional model runs a single batch", async () => {
    const { decoder, encoder } = networks(8);
    await new CpuModel(sphereConfig(10), decoder, encoder).sample(2, { seed: 1, guidance: 1 });
    await new CpuModel(sphereConfig(0), decoder, encoder).sample(2, { seed: 1, guidance: 3 });
    expect(decoder.calls.map((call) => call.rows)).toEqual([2, 2]);
    expect(decoder.calls[0].labels).toEqual([10, 10]); // default: the null class
  });

  it("reconstructs: D(f(E(x))), then rounds re-noised by noiseAngle (e′ of the seed), 0 = pure cycles", async () => {
    const { decoder, encoder } = networks(8, 9);
    const model = new CpuModel(sphereConfig(), decoder, encoder);
    const images = new Random(3).gaussians(2 * IMAGE).map(Math.tanh);
    const radius = Math.sqrt(8);
    for (const angle of [0, 30]) {
      const { images: out, timings } = await model.reconstruct(images, { steps: 2, noiseAngle: angle, seed: 5 });
      const renoise = angle ? new Random(5).gaussians(16) : new Float32Array(16);
      for (let i = 0; i < 2; i++) {
        let x = decoder.one(f(encoder.one(images.subarray(i * IMAGE, (i + 1) * IMAGE), null), radius), null);
        const z = f(encoder.one(x, null), radius);
        x = decoder.one(
          f(
            z.map((v, k) => v + sigmaForAngle(angle) * renoise[i * 8 + k]),
            radius,
          ),
          null,
        );
        close(out.subarray(i * IMAGE, (i + 1) * IMAGE), x);
      }
      expect(timings.totalMs).toBeGreaterThanOrEqual(timings.encodeMs);
    }
  });

  it("encode returns E(x) before projection; decode runs D on the given rows", async () => {
    const { decoder, encoder } = networks(8);
    const model = new CpuModel(sphereConfig(4), decoder, encoder);
    const x = new Random(4).gaussians(IMAGE).map(Math.tanh);
    close(await model.encode(x, [2]), encoder.one(x, 2));
    const v = f(new Random(5).gaussians(8), Math.sqrt(8));
    close(await model.decode(v), decoder.one(v, 4));
    expect(model.latentShape).toEqual([2, 2, 2]);
    expect(model.radius).toBeCloseTo(Math.sqrt(8), 12);
  });

  it("refuses bad labels, steps and inputs with a one-line reason", async () => {
    const { decoder, encoder } = networks(8);
    await expect(new CpuModel(sphereConfig(0), decoder, encoder).sample(1, { labels: [1] })).rejects.toThrow(/unconditional/);
    await expect(new CpuModel(sphereConfig(4), decoder, encoder).sample(1, { labels: [5] })).rejects.toThrow(/label 5 out of range 0..4/);
    await expect(new CpuModel(sphereConfig(), decoder, encoder).sample(1, { steps: 0 })).rejects.toThrow(/steps must be/);
    await expect(new CpuModel(sphereConfig(), decoder, encoder).decode(new Float32Array(5))).rejects.toThrow(/not a multiple of 8/);
    await expect(new CpuModel(sphereConfig(), decoder, encoder).sample(2, { noise: new Float32Array(8) })).rejects.toThrow(/n \* L = 16/);
  });
});

describe("psvae on the CPU", () => {
  it("samples from normalised Gaussians, cycles D(f(E(x))) with no noise, guided as the sphere family", async () => {
    const { decoder, encoder } = networks(3, 11);
    const model = new CpuModel(psvaeConfig(5), decoder, encoder);
    expect(model.radius).toBe(1);
    const images = await model.sample(2, { steps: 3, seed: 8, labels: [1, 2], guidance: 2.25 });
    const noise = new Random(8).gaussians(6);
    [1, 2].forEach((label, i) => {
      let x = guided(decoder, f(noise.subarray(i * 3, (i + 1) * 3), 1), label, 5, 1.5, true);
      for (let s = 1; s < 3; s++) x = guided(decoder, f(guided(encoder, x, label, 5, 1.5, false), 1), label, 5, 1.5, true);
      close(images.subarray(i * IMAGE, (i + 1) * IMAGE), x);
    });
  });

  it("a decoder-only file decodes and samples one step; encoding calls say why they fail", async () => {
    const decoder = new Dense(3, IMAGE, 2);
    const model = new CpuModel(psvaeConfig(), decoder, null);
    expect(model.canEncode).toBe(false);
    expect((await model.sample(2, { seed: 1 })).length).toBe(2 * IMAGE);
    await expect(model.sample(2, { steps: 2 })).rejects.toThrow(/holds no encoder/);
    await expect(model.encode(new Float32Array(IMAGE))).rejects.toThrow(/holds no encoder/);
    await expect(model.reconstruct(new Float32Array(IMAGE))).rejects.toThrow(/holds no encoder/);
  });

  it("refuses families and backbones the CPU path does not run, and calls after dispose", async () => {
    expect(cpuUnsupported({ family: "gan" })).toMatch(/does not run 'gan' models/);
    expect(cpuUnsupported({ family: "psvae", backbone: "conv1d" })).toMatch(/1-D signal/);
    expect(cpuUnsupported({ backbone: "vit" })).toBeNull();
    const model = new CpuModel(psvaeConfig(), new Dense(3, IMAGE, 2), null);
    await model.dispose();
    await expect(model.decode(new Float32Array(3))).rejects.toThrow(/disposed/);
  });
});
