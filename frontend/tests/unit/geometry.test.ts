import { describe, expect, it } from "vitest";
import { latentShape, ropeTables, sigmaForAngle, sincosPosEmbed2d, type SphereConfig } from "../../src/config";
import { Random } from "../../src/rng";
import { GreatCircleWalk, norm, project, randomPoint, slerp, slerp2d } from "../../src/sphere";
import { readTensors } from "./fixtures";

const close = (a: Float32Array, b: Float32Array, tolerance: number) => {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  expect(worst).toBeLessThanOrEqual(tolerance);
};

describe("tables rebuilt from the config", () => {
  const reference = readTensors("kernels.safetensors");
  it("sin-cos position embedding matches models/layers.py", () => close(sincosPosEmbed2d(6, 48), reference.get("tables.pos")!, 1e-6));
  it("2D RoPE tables match models/layers.py", () => {
    const { cos, sin } = ropeTables(6, 32, 100);
    close(cos, reference.get("tables.rope_cos")!, 1e-6);
    close(sin, reference.get("tables.rope_sin")!, 1e-6);
  });
  it("derives latent shapes like SphereConfig", () => {
    const vit = { backbone: "vit", image_size: 32, patch_size: 2, latent_dim: 2048, channel_mults: [1, 2, 2] } as SphereConfig;
    expect(latentShape(vit)).toEqual([256, 8]);
    expect(latentShape({ ...vit, backbone: "convnet" })).toEqual([32, 8, 8]);
    expect(sigmaForAngle(45)).toBeCloseTo(1, 12);
  });
});

describe("sphere geometry", () => {
  const random = new Random(7);
  const L = 512;
  const a = randomPoint(L, random);
  const b = randomPoint(L, random);

  it("projects onto the sphere of radius sqrt(L)", () => {
    expect(norm(project(new Float32Array(L).fill(3)))).toBeCloseTo(Math.sqrt(L), 3);
  });
  it("slerp hits the endpoints and stays on the sphere", () => {
    close(slerp(a, b, 0), a, 1e-4);
    close(slerp(a, b, 1), b, 1e-4);
    for (const t of [0.25, 0.5, 0.9]) expect(norm(slerp(a, b, t))).toBeCloseTo(Math.sqrt(L), 3);
  });
  it("2D slerp returns the corners", () => {
    const corners = [a, b, randomPoint(L, random), randomPoint(L, random)];
    close(slerp2d(corners, 0, 0), corners[0], 1e-4);
    close(slerp2d(corners, 1, 1), corners[3], 1e-4);
  });
  it("great-circle walk keeps the norm and moves by the step angle", () => {
    const walk = new GreatCircleWalk(a, random, 0.1);
    let previous = project(a);
    for (let i = 0; i < 40; i++) {
      const point = walk.step();
      expect(norm(point)).toBeCloseTo(Math.sqrt(L), 2);
      let dot = 0;
      for (let j = 0; j < L; j++) dot += point[j] * previous[j];
      expect(Math.acos(Math.min(1, dot / L))).toBeLessThan(0.11);
      previous = point;
    }
  });
});

describe("seeded generator", () => {
  it("is deterministic per seed and roughly standard normal", () => {
    expect(Array.from(new Random(1).gaussians(5))).toEqual(Array.from(new Random(1).gaussians(5)));
    expect(Array.from(new Random(1).gaussians(5))).not.toEqual(Array.from(new Random(2).gaussians(5)));
    const values = new Random(3).gaussians(20000);
    const mean = values.reduce((s, v) => s + v, 0) / values.length;
    const variance = values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
  });
});
