import { describe, expect, it } from "vitest";
import { latentShape, ropeTables, sigmaForAngle, sincosPosEmbed2d, type SphereConfig } from "../../src/config";
import { Random } from "../../src/rng";
import { dragged, formatLatLon, fromLatLon, frontPoint, initialRotation, latLon, pointAt, screenOf, type Vec3 } from "../../src/globe";
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

describe("the unit sphere of a psvae (radius 1)", () => {
  const random = new Random(11);
  const d = 8;
  const a = randomPoint(d, random, 1);
  const b = randomPoint(d, random, 1);

  it("projects, samples and interpolates on radius 1, not sqrt(L)", () => {
    expect(norm(project(new Float32Array(d).fill(3), 1))).toBeCloseTo(1, 6);
    expect(norm(a)).toBeCloseTo(1, 6);
    for (const t of [0, 0.3, 1]) expect(norm(slerp(a, b, t, 1))).toBeCloseTo(1, 6);
    close(slerp(a, b, 1, 1), b, 1e-6);
    expect(norm(slerp2d([a, b, randomPoint(d, random, 1), randomPoint(d, random, 1)], 0.4, 0.6, 1))).toBeCloseTo(1, 6);
  });
  it("walks great circles of radius 1 by the step angle", () => {
    const walk = new GreatCircleWalk(a, random, 0.1, 1);
    let previous = a;
    for (let i = 0; i < 40; i++) {
      const point = walk.step();
      expect(norm(point)).toBeCloseTo(1, 5);
      let dot = 0;
      for (let j = 0; j < d; j++) dot += point[j] * previous[j];
      expect(Math.acos(Math.min(1, dot))).toBeLessThan(0.11);
      previous = point;
    }
  });
});

describe("the globe (z_dim = 3)", () => {
  const closeVec = (u: Vec3, v: Vec3) => u.forEach((x, i) => expect(x).toBeCloseTo(v[i], 9));
  const orthonormal = (r: Vec3[]) => {
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 3; j++) expect(r[i][0] * r[j][0] + r[i][1] * r[j][1] + r[i][2] * r[j][2]).toBeCloseTo(i === j ? 1 : 0, 9);
  };

  it("reads latitude and longitude with z north and x at longitude 0", () => {
    expect(latLon([1, 0, 0])).toEqual({ lat: 0, lon: 0 });
    expect(latLon([0, 1, 0]).lon).toBeCloseTo(90, 9);
    expect(latLon([0, 0, 2]).lat).toBeCloseTo(90, 9);
    for (const [lat, lon] of [
      [12.5, -130],
      [-60, 45],
    ]) {
      const back = latLon(fromLatLon(lat, lon));
      expect(back.lat).toBeCloseTo(lat, 9);
      expect(back.lon).toBeCloseTo(lon, 9);
    }
    expect(formatLatLon(fromLatLon(-12.34, -45))).toBe("lat 12.3° S · lon 45.0° W");
  });
  it("starts with longitude 0 in front, north up, tipped towards the viewer", () => {
    const rotation = initialRotation(20);
    orthonormal(rotation);
    const front = latLon(frontPoint(rotation));
    expect(front.lat).toBeCloseTo(20, 9);
    expect(front.lon).toBeCloseTo(0, 9);
    const north = screenOf(rotation, [0, 0, 1]);
    expect(north.front).toBe(true);
    expect(north.u).toBeCloseTo(0, 9);
    expect(north.v).toBeLessThan(0); // above the centre (screen v points down)
  });
  it("finds the point under a position of the disk, and puts it back there", () => {
    const rotation = dragged(initialRotation(), 37, -12, 100);
    closeVec(pointAt(rotation, 0, 0)!, frontPoint(rotation));
    expect(pointAt(rotation, 0.8, 0.7)).toBeNull(); // outside the disk
    const point = pointAt(rotation, 0.3, -0.5)!;
    expect(Math.hypot(...point)).toBeCloseTo(1, 9);
    const at = screenOf(rotation, point);
    expect([at.u, at.v, at.front]).toEqual([expect.closeTo(0.3, 9), expect.closeTo(-0.5, 9), true]);
  });
  it("turns with the pointer: dragging right brings the west to the front, one radius per radian", () => {
    const start = initialRotation(0);
    const right = dragged(start, 50, 0, 100); // half a radius: 0.5 rad
    expect(latLon(frontPoint(right)).lon).toBeCloseTo(-0.5 * (180 / Math.PI), 6);
    const down = dragged(start, 0, 50, 100);
    expect(latLon(frontPoint(down)).lat).toBeCloseTo(0.5 * (180 / Math.PI), 6); // the north comes to the front
    let rotation = start;
    for (let i = 0; i < 500; i++) rotation = dragged(rotation, 7, -3, 90);
    orthonormal(rotation); // no drift after many drags
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
