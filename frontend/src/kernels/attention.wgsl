// Softmax attention out = softmax(q k^T * scale) v per (sample, head), as scaled_dot_product_attention.
// q, k, v are (B, H, T, D), or (B, T, H*D) token rows when generated with that index; out is (B, T, H*D) token
// rows. A workgroup holds 64 queries (one per thread) and streams keys/values through workgroup memory in tiles
// of KT keys. Online softmax without a data-dependent branch (lanes never diverge): per key, the running max
// m' = max(m, s), the running sum and accumulator rescaled by exp(m - m') and the key added with exp(s - m').
// The head's channels are D4 vec4 registers per thread for the query (q0..) and the accumulator (o0..): the
// per-channel lines are generated (Q_LOAD, DOT, UPDATE, STORE), so no array is indexed at run time.

{{BINDINGS}}

const D4: u32 = {{D4}}u;
const KT: u32 = {{KT}}u;
const D: u32 = 4u * D4;

// flat index of (sample b, head h, token t, channel d) in q, k and v
fn qkv_index(b: u32, h: u32, t: u32, d: u32) -> u32 {
  return {{QKV_INDEX}};
}

fn query4(b: u32, h: u32, t: u32, d4: u32) -> vec4<f32> {
  let e = qkv_index(b, h, t, 4u * d4);
  return vec4<f32>(q[e], q[e + 1u], q[e + 2u], q[e + 3u]);
}

var<workgroup> tile_k: array<vec4<f32>, {{TILE}}>;
var<workgroup> tile_v: array<vec4<f32>, {{TILE}}>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let T = P.T;
  let bh = wg.y;
  let b = bh / P.H;
  let h = bh % P.H;
  let i = min(wg.x * 64u + lid.x, T - 1u); // a thread past the end computes the last query again, never stores
  {{Q_LOAD}}
  var best = -3.0e38;
  var total = 0.0;
  for (var j0 = 0u; j0 < T; j0 += KT) {
    for (var e = lid.x; e < KT * D4; e += 64u) {
      let j = min(j0 + e / D4, T - 1u); // a partial last tile repeats a key that is never read
      let src = qkv_index(b, h, j, 4u * (e % D4));
      tile_k[e] = vec4<f32>(k[src], k[src + 1u], k[src + 2u], k[src + 3u]);
      tile_v[e] = vec4<f32>(v[src], v[src + 1u], v[src + 2u], v[src + 3u]);
    }
    workgroupBarrier();
    let count = min(KT, T - j0);
    for (var jj = 0u; jj < count; jj++) {
      let base = jj * D4;
      var dot4 = vec4<f32>();
      {{DOT}}
      let s = (dot4.x + dot4.y) + (dot4.z + dot4.w);
      let next = max(best, s);
      let correction = exp(best - next);
      let p = exp(s - next);
      total = total * correction + p;
      {{UPDATE}}
      best = next;
    }
    workgroupBarrier();
  }
  if (wg.x * 64u + lid.x < T) {
    let dst = ((b * T + i) * P.H + h) * D;
    let inv = 1.0 / total;
    {{STORE}}
  }
}
