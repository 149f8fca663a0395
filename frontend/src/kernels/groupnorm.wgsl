// GroupNorm on NCHW (B, C, HW) maps, one workgroup of 64 threads per (sample, group): two-pass mean and
// biased variance, then a generated tail (affine, adaLN-Zero modulation, residual add, SiLU). Without
// STATS (BatchNorm folded at export) the norm is the identity or a per-channel affine and GROUPS = C.

{{BINDINGS}}

const STATS: bool = {{STATS}};

// v is the normalized value of channel c (before the affine); i is the flat NCHW index.
fn finish(b: u32, c: u32, i: u32, v: f32) -> f32 {
  {{FINISH}}
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wg.x;
  let b = wg.y;
  let channels_per_group = P.C / P.GROUPS;
  let count = channels_per_group * P.HW;
  let base = (b * P.C + g * channels_per_group) * P.HW; // a group's channels are contiguous in NCHW
  var mean = 0.0;
  var inv = 1.0;
  if (STATS) {
    var sum = 0.0;
    for (var e = lid.x; e < count; e += 64u) {
      sum += x[base + e];
    }
    mean = reduce_sum(lid.x, sum) / f32(count);
    var sq = 0.0;
    for (var e = lid.x; e < count; e += 64u) {
      let d = x[base + e] - mean;
      sq += d * d;
    }
    inv = inverseSqrt(reduce_sum(lid.x, sq) / f32(count) + P.EPS);
  }
  for (var e = lid.x; e < count; e += 64u) {
    let c = g * channels_per_group + e / P.HW;
    y[base + e] = finish(b, c, base + e, (x[base + e] - mean) * inv);
  }
}
