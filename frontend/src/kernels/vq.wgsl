// Nearest codebook entry of each latent vector (VectorQuantizer in eval mode), one thread per position.
// z is NCHW (B, DIM, HW); the vector of position (b, p) is z[b, :, p]. COSINE: z is normalised (as
// F.normalize, eps 1e-12) and the code with the largest dot product wins (the codebook was normalised on
// load); else the smallest squared distance ||z - e||^2. Strict comparisons: ties keep the lowest index.
// The index is written as f32 (exact below 2^24 codes) into indices[b * HW + p].

{{BINDINGS}}

const COSINE: bool = {{COSINE}};
const MAX_DIM: u32 = {{MAX_DIM}}u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * 65535u * 64u;
  if (i >= P.COUNT) {
    return;
  }
  let b = i / P.HW;
  let p = i % P.HW;
  var v: array<f32, MAX_DIM>;
  var sq = 0.0;
  for (var c = 0u; c < P.DIM; c++) {
    let x = z[(b * P.DIM + c) * P.HW + p];
    v[c] = x;
    sq += x * x;
  }
  if (COSINE) {
    let inv = 1.0 / max(sqrt(sq), 1e-12);
    for (var c = 0u; c < P.DIM; c++) {
      v[c] = v[c] * inv;
    }
  }
  var best = 0u;
  var best_score = 3.0e38;
  for (var k = 0u; k < P.K; k++) {
    var score = 0.0;
    for (var c = 0u; c < P.DIM; c++) {
      let e = codebook[k * P.DIM + c];
      if (COSINE) {
        score -= v[c] * e;
      } else {
        let d = v[c] - e;
        score += d * d;
      }
    }
    if (score < best_score) {
      best_score = score;
      best = k;
    }
  }
  indices[i] = f32(best);
}
