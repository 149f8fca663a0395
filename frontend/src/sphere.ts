/**
 * Geometry on a latent sphere (CPU side): projection, slerp, great-circle walks. The radius is sqrt(L) for the
 * Sphere Encoder (the default) and 1 for a psvae's unit sphere S^(d-1): pass the model's `radius`.
 */

import { Random } from "./rng";

export function norm(v: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  return Math.sqrt(sum);
}

/** f(z) = z * radius / ||z|| for one latent of L entries. */
export function project(z: Float32Array, radius = Math.sqrt(z.length)): Float32Array {
  const scale = radius / Math.max(norm(z), 1e-12);
  return z.map((x) => x * scale);
}

function dot(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
  return sum;
}

function lerp(a: Float32Array, b: Float32Array, t: number): Float32Array {
  return a.map((x, i) => x + t * (b[i] - x));
}

/** Spherical interpolation between two points of the sphere of `radius` (t = 0 gives a, t = 1 gives b). */
export function slerp(a: Float32Array, b: Float32Array, t: number, radius = Math.sqrt(a.length)): Float32Array {
  const cos = Math.min(1, Math.max(-1, dot(a, b) / (norm(a) * norm(b))));
  const angle = Math.acos(cos);
  if (angle < 1e-6) return project(lerp(a, b, t), radius);
  const wa = Math.sin((1 - t) * angle) / Math.sin(angle);
  const wb = Math.sin(t * angle) / Math.sin(angle);
  const out = a.map((x, i) => wa * x + wb * b[i]);
  const scale = radius / Math.max(norm(out), 1e-12);
  return out.map((x) => x * scale);
}

/** Bilinear slerp inside four corners (top-left, top-right, bottom-left, bottom-right), u along x, v along y. */
export function slerp2d(corners: Float32Array[], u: number, v: number, radius = Math.sqrt(corners[0].length)): Float32Array {
  const top = slerp(corners[0], corners[1], u, radius);
  const bottom = slerp(corners[2], corners[3], u, radius);
  return slerp(top, bottom, v, radius);
}

/** Random point of the sphere of `radius` (uniform: a normalised Gaussian). */
export function randomPoint(latentSize: number, random: Random, radius = Math.sqrt(latentSize)): Float32Array {
  return project(random.gaussians(latentSize), radius);
}

/**
 * A walk along great circles: p(t) = cos(t) a + sin(t) b with a, b orthogonal of norm `radius`; after each
 * quarter turn the walk continues from the current point towards a fresh random direction.
 */
export class GreatCircleWalk {
  private a: Float32Array;
  private b: Float32Array;
  private angle = 0;

  constructor(
    start: Float32Array,
    private random: Random,
    public speed = 0.05, // radians per step
    private radius = Math.sqrt(start.length),
  ) {
    this.a = project(start, radius);
    this.b = this.orthogonalDirection(this.a);
  }

  private orthogonalDirection(a: Float32Array): Float32Array {
    const r = this.random.gaussians(a.length);
    const along = dot(r, a) / dot(a, a);
    const orthogonal = r.map((x, i) => x - along * a[i]);
    return project(orthogonal, this.radius);
  }

  /** The next point of the walk (norm `radius`). */
  step(): Float32Array {
    this.angle += this.speed;
    if (this.angle >= Math.PI / 2) {
      this.a = this.point(this.angle);
      this.b = this.orthogonalDirection(this.a);
      this.angle = 0;
    }
    return this.point(this.angle);
  }

  private point(t: number): Float32Array {
    const c = Math.cos(t);
    const s = Math.sin(t);
    return this.a.map((x, i) => c * x + s * this.b[i]);
  }
}
