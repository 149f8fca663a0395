/**
 * The globe of a psvae with z_dim = 3: its latent sphere S^2 seen in orthographic projection and turned by
 * dragging (CPU math only; src/app/globe.ts draws it). World points are latents (x, y, z) on the unit sphere,
 * z the north pole: latitude = asin(z), longitude = atan2(y, x), so (1, 0, 0) is latitude 0, longitude 0.
 * View coordinates: x to the right, y up, z towards the viewer; a rotation maps world to view.
 */

export type Vec3 = [number, number, number];
export type Rotation = [Vec3, Vec3, Vec3]; // rows: the world directions seen as view x, y and z

const DEGREES = 180 / Math.PI;

function dot(a: Vec3, b: Vec3): number {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

function scaled(a: Vec3, s: number): Vec3 {
  return [a[0] * s, a[1] * s, a[2] * s];
}

function minus(a: Vec3, b: Vec3): Vec3 {
  return [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
}

function unit(a: Vec3): Vec3 {
  return scaled(a, 1 / Math.max(Math.hypot(...a), 1e-12));
}

function cross(a: Vec3, b: Vec3): Vec3 {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

/** Product of a rotation and a (world or view) vector: R v. */
export function apply(rotation: Rotation, v: Vec3): Vec3 {
  return [dot(rotation[0], v), dot(rotation[1], v), dot(rotation[2], v)];
}

/** R^T v: a view vector back to world coordinates. */
export function applyInverse(rotation: Rotation, v: Vec3): Vec3 {
  const [r0, r1, r2] = rotation;
  return [
    r0[0] * v[0] + r1[0] * v[1] + r2[0] * v[2],
    r0[1] * v[0] + r1[1] * v[1] + r2[1] * v[2],
    r0[2] * v[0] + r1[2] * v[1] + r2[2] * v[2],
  ];
}

function multiply(a: Rotation, b: Rotation): Rotation {
  const columns: Vec3[] = [0, 1, 2].map((j) => [b[0][j], b[1][j], b[2][j]] as Vec3);
  return a.map((row) => columns.map((column) => dot(row, column))) as Rotation;
}

/** Gram-Schmidt on the rows, so that many small drags do not let the rotation drift from orthonormal. */
function orthonormal(rotation: Rotation): Rotation {
  const x = unit(rotation[0]);
  const y = unit(minus(rotation[1], scaled(x, dot(x, rotation[1]))));
  return [x, y, cross(x, y)];
}

/** Rotation about the view's x axis by `angle` radians (positive: the front point moves down). */
function aboutViewX(angle: number): Rotation {
  const c = Math.cos(angle);
  const s = Math.sin(angle);
  return [
    [1, 0, 0],
    [0, c, -s],
    [0, s, c],
  ];
}

/** Rotation about the view's y axis by `angle` radians (positive: the front point moves right). */
function aboutViewY(angle: number): Rotation {
  const c = Math.cos(angle);
  const s = Math.sin(angle);
  return [
    [c, 0, s],
    [0, 1, 0],
    [-s, 0, c],
  ];
}

/**
 * The starting view: latitude 0, longitude 0 in front, north up, tipped by `tiltDegrees` towards the viewer
 * so that the north pole shows (the front point is then at latitude `tiltDegrees`).
 */
export function initialRotation(tiltDegrees = 20): Rotation {
  const northUp: Rotation = [
    [0, 1, 0], // view x = world y (east)
    [0, 0, 1], // view y = world z (north)
    [1, 0, 0], // view z = world x (longitude 0)
  ];
  return multiply(aboutViewX(tiltDegrees / DEGREES), northUp);
}

/**
 * The rotation after dragging by (dx, dy) screen pixels (y down) on a globe of `radius` pixels: the surface
 * follows the pointer, one radius of drag turning it by one radian.
 */
export function dragged(rotation: Rotation, dx: number, dy: number, radius: number): Rotation {
  const turn = multiply(aboutViewX(dy / radius), aboutViewY(dx / radius));
  return orthonormal(multiply(turn, rotation));
}

/** The world point in front of the viewer (the centre of the disk). */
export function frontPoint(rotation: Rotation): Vec3 {
  return [...rotation[2]];
}

/**
 * The world point under a position of the disk, in units of its radius from its centre (u right, v down as
 * on screens), or null outside the globe.
 */
export function pointAt(rotation: Rotation, u: number, v: number): Vec3 | null {
  const r2 = u * u + v * v;
  if (r2 > 1) return null;
  return applyInverse(rotation, [u, -v, Math.sqrt(1 - r2)]);
}

/** Where a world point appears: (u right, v down) in units of the radius, and whether it faces the viewer. */
export function screenOf(rotation: Rotation, point: Vec3): { u: number; v: number; front: boolean } {
  const view = apply(rotation, point);
  return { u: view[0], v: -view[1], front: view[2] >= 0 };
}

/** Latitude and longitude in degrees of a point (any norm): latitude = asin(z / |p|), longitude = atan2(y, x). */
export function latLon(point: Vec3): { lat: number; lon: number } {
  const [x, y, z] = unit(point);
  return { lat: Math.asin(Math.min(1, Math.max(-1, z))) * DEGREES, lon: Math.atan2(y, x) * DEGREES };
}

/** The unit vector at a latitude and longitude in degrees. */
export function fromLatLon(lat: number, lon: number): Vec3 {
  const phi = lat / DEGREES;
  const lambda = lon / DEGREES;
  return [Math.cos(phi) * Math.cos(lambda), Math.cos(phi) * Math.sin(lambda), Math.sin(phi)];
}

/** "12.3° N · 45.0° W" for a point. */
export function formatLatLon(point: Vec3): string {
  const { lat, lon } = latLon(point);
  const ns = lat >= 0 ? "N" : "S";
  const ew = lon >= 0 ? "E" : "W";
  return `lat ${Math.abs(lat).toFixed(1)}° ${ns} · lon ${Math.abs(lon).toFixed(1)}° ${ew}`;
}
