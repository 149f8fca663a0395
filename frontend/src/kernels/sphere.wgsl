// Sphere projection f(z) = z * RADIUS / ||z|| per sample, one workgroup per sample: RADIUS = sqrt(L) for the
// Sphere Encoder (DESIGN §3), 1 for a psvae's unit sphere.
// With NOISE: dst = f(f(src) + sigma * noise), the re-noising step of sampling and reconstruction.

{{BINDINGS}}

const NOISE: bool = {{NOISE}};

fn noisy(base: u32, e: u32, scale: f32) -> f32 {
  {{NOISY}}
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let L = P.L;
  let radius = P.RADIUS;
  let base = wg.x * L;
  var sq = 0.0;
  for (var e = lid.x; e < L; e += 64u) {
    let v = src[base + e];
    sq += v * v;
  }
  let scale = radius / max(sqrt(reduce_sum(lid.x, sq)), 1e-12);
  if (!NOISE) {
    for (var e = lid.x; e < L; e += 64u) {
      dst[base + e] = src[base + e] * scale;
    }
    return;
  }
  var sq2 = 0.0;
  for (var e = lid.x; e < L; e += 64u) {
    let w = noisy(base, e, scale);
    sq2 += w * w;
  }
  let scale2 = radius / max(sqrt(reduce_sum(lid.x, sq2)), 1e-12);
  for (var e = lid.x; e < L; e += 64u) {
    dst[base + e] = noisy(base, e, scale) * scale2;
  }
}
