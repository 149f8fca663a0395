// RMSNorm over the last dim of (ROWS, D) rows: y = x / sqrt(mean(x^2) + eps) [* weight] [then adaLN
// modulate: y * (1 + scale[b]) + shift[b], b = row / TOKENS]. One workgroup of 64 threads per row.

{{BINDINGS}}

fn finish(row: u32, i: u32, v: f32) -> f32 {
  {{FINISH}}
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row = wg.x + wg.y * 65535u;
  let base = row * P.D;
  var sum = 0.0;
  if (row < P.ROWS) {
    for (var i = lid.x; i < P.D; i += 64u) {
      let v = x[base + i];
      sum += v * v;
    }
  }
  partial[lid.x] = sum;
  workgroupBarrier();
  // one barrier: every thread adds the 64 partials (barriers are what costs most on software adapters)
  var total = 0.0;
  for (var j = 0u; j < 64u; j++) {
    total += partial[j];
  }
  if (row >= P.ROWS) {
    return;
  }
  let inv = inverseSqrt(total / f32(P.D) + P.EPS);
  for (var i = lid.x; i < P.D; i += 64u) {
    y[base + i] = finish(row, i, x[base + i] * inv);
  }
}
