// RMSNorm as rmsnorm.wgsl (same FINISH), one thread per row: no workgroup memory and no barrier, for software
// adapters (gpu.ts kernelChoice), where a barrier costs more than a row of loads.

{{BINDINGS}}

fn finish(row: u32, i: u32, v: f32) -> f32 {
  {{FINISH}}
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let row = gid.x + gid.y * 65535u * 64u;
  if (row >= P.ROWS) {
    return;
  }
  let base = row * P.D;
  var sum = 0.0;
  for (var i = 0u; i < P.D; i++) {
    let v = x[base + i];
    sum = fma(v, v, sum);
  }
  let inv = inverseSqrt(sum / f32(P.D) + P.EPS);
  for (var i = 0u; i < P.D; i++) {
    y[base + i] = finish(row, i, x[base + i] * inv);
  }
}
