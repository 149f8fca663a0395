// Softmax attention out = softmax(q k^T * scale) v per (sample, head), as scaled_dot_product_attention.
// q, k, v are (B, H, T, D), or (B, T, H*D) token rows when generated with that index; out is (B, T, H*D) token rows. A workgroup holds 64 queries (one per thread,
// online softmax in registers) and streams keys/values through workgroup memory in tiles of KT.
// D (head dim) is a compile-time constant: it sizes the per-thread arrays.

{{BINDINGS}}

const D: u32 = {{D}}u;
const KT: u32 = {{KT}}u;

// flat index of (sample b, head h, token t, channel d) in q, k and v
fn qkv_index(b: u32, h: u32, t: u32, d: u32) -> u32 {
  return {{QKV_INDEX}};
}

var<workgroup> tile_k: array<f32, {{TILE}}>;
var<workgroup> tile_v: array<f32, {{TILE}}>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let T = P.T;
  let bh = wg.y;
  let b = bh / P.H;
  let h = bh % P.H;
  let i = wg.x * 64u + lid.x;
  let valid = i < T;
  var query: array<f32, D>;
  var acc: array<f32, D>;
  if (valid) {
    for (var d = 0u; d < D; d++) {
      query[d] = q[qkv_index(b, h, i, d)] * P.SCALE;
    }
  }
  var best = -3.0e38;
  var total = 0.0;
  for (var j0 = 0u; j0 < T; j0 += KT) {
    for (var e = lid.x; e < KT * D; e += 64u) {
      let j = j0 + e / D;
      var kv = 0.0;
      var vv = 0.0;
      if (j < T) {
        kv = k[qkv_index(b, h, j, e % D)];
        vv = v[qkv_index(b, h, j, e % D)];
      }
      tile_k[e] = kv;
      tile_v[e] = vv;
    }
    workgroupBarrier();
    if (valid) {
      let count = min(KT, T - j0);
      for (var jj = 0u; jj < count; jj++) {
        var s = 0.0;
        for (var d = 0u; d < D; d++) {
          s = fma(query[d], tile_k[jj * D + d], s);
        }
        if (s > best) {
          let correction = exp(best - s);
          total = total * correction + 1.0;
          for (var d = 0u; d < D; d++) {
            acc[d] = acc[d] * correction + tile_v[jj * D + d];
          }
          best = s;
        } else {
          let p = exp(s - best);
          total += p;
          for (var d = 0u; d < D; d++) {
            acc[d] = fma(p, tile_v[jj * D + d], acc[d]);
          }
        }
      }
    }
    workgroupBarrier();
  }
  if (valid) {
    let dst = ((b * T + i) * P.H + h) * D;
    for (var d = 0u; d < D; d++) {
      out[dst + d] = acc[d] / total;
    }
  }
}
