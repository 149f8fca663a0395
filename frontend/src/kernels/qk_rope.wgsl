// Split fused qkv rows (B, T, 3, H, D) into q, k, v of shape (B, H, T, D); q and k get their RMSNorm
// (QK norm) then 2D axial RoPE on pairs (i, i + D/2): [x1 cos - x2 sin, x1 sin + x2 cos].
// One thread per (sample, token, head).

{{BINDINGS}}

const EPS: f32 = 1e-6;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let index = gid.x + gid.y * 65535u * 64u;
  if (index >= P.B * P.T * P.H) {
    return;
  }
  let D = P.D;
  let H = P.H;
  let HALF = D / 2u;
  let h = index % H;
  let t = (index / H) % P.T;
  let b = index / (H * P.T);
  let src = (b * P.T + t) * 3u * H * D + h * D;
  let dst = ((b * H + h) * P.T + t) * D;
  let table = t * HALF;
  for (var i = 0u; i < D; i++) {
    v[dst + i] = qkv[src + 2u * H * D + i];
  }
  {{ROTATE_Q}}
  {{ROTATE_K}}
}
