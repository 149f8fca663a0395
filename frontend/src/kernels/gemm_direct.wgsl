// GEMM main for software adapters (SwiftShader, llvmpipe...), appended to gemm.wgsl: no workgroup memory and no
// barrier (emulated lanes make each barrier a context switch of every lane group, and workgroup memory is the
// same RAM as storage). Each thread loads its rows of A and 4 rows of W four k at a time straight from the
// storage buffers: no dynamic indexing of arrays or vector components. On the FAST path a thread takes 8 rows x
// 4 columns (12 loads per 32 dot products) with a scalar accumulator per output; elsewhere two 4x4 blocks with a
// vec4 partial dot product per output (reduced once at the end). Rows past M and columns past N
// read row M - 1 / column N - 1 and are never stored.

// FAST: A rows (optionally through SiLU) or token-mixing columns, and W, read four k at a time (K a multiple
// of 4) with no branch in the K loop; a_base(m) is where row m of A starts, a4_at its k-th group of four
const FAST: bool = {{FAST}};

fn a_base(m: u32) -> u32 {
  {{A_BASE}}
}

fn a4_at(base: u32, k4: u32) -> vec4<f32> {
  {{A4_AT}}
}

// FAST weights: K in chunks of CHUNK4 steps of four k (a quantization group; unquantized: the whole row). Each
// column's scale of a chunk is decoded once (w_scale(n, g), g the group; 1 unquantized), not once per four weights,
// then w4_scaled(n, k4, s) = W(n, 4 k4..4 k4 + 3) (the weight decoding of ops.ts fastW, one variant per encoding)
const CHUNK4: u32 = {{CHUNK4}};

fn w_scale(n: u32, g: u32) -> f32 {
  {{W_SCALE}}
}

fn w4_scaled(n: u32, k4: u32, s: f32) -> vec4<f32> {
  {{W4_SCALED}}
}

fn sum4(v: vec4<f32>) -> f32 {
  return (v.x + v.y) + (v.z + v.w);
}

// A(m, k..k+3), zero past K
fn a_block(m: u32, k: u32, o: ConvOrigin) -> vec4<f32> {
  if (ALIGNED && P.A_MODE < 2u) {
    return load_a4(m, k);
  }
  var v = vec4<f32>();
  v.x = load_a(m, k, o.base, o.iy0, o.ix0);
  if (k + 1u < P.K) {
    v.y = load_a(m, k + 1u, o.base, o.iy0, o.ix0);
  }
  if (k + 2u < P.K) {
    v.z = load_a(m, k + 2u, o.base, o.iy0, o.ix0);
  }
  if (k + 3u < P.K) {
    v.w = load_a(m, k + 3u, o.base, o.iy0, o.ix0);
  }
  return v;
}

// W(n, k..k+3), zero past K
fn w_block(n: u32, k: u32) -> vec4<f32> {
  if (ALIGNED) {
    return load_w4(n, k);
  }
  var v = vec4<f32>();
  v.x = load_w(n, k);
  if (k + 1u < P.K) {
    v.y = load_w(n, k + 1u);
  }
  if (k + 2u < P.K) {
    v.z = load_w(n, k + 2u);
  }
  if (k + 3u < P.K) {
    v.w = load_w(n, k + 3u);
  }
  return v;
}

fn store_row(m: u32, n0: u32, v: vec4<f32>) {
  if (m >= P.M) {
    return;
  }
  if (n0 < P.N) {
    store_c(m, n0, epilogue(n0, v.x));
  }
  if (n0 + 1u < P.N) {
    store_c(m, n0 + 1u, epilogue(n0 + 1u, v.y));
  }
  if (n0 + 2u < P.N) {
    store_c(m, n0 + 2u, epilogue(n0 + 2u, v.z));
  }
  if (n0 + 3u < P.N) {
    store_c(m, n0 + 3u, epilogue(n0 + 3u, v.w));
  }
}

// 4x4 block of rows row0.. and columns col0.. with the general loads (conv im2col, unaligned K)
fn general_block(row0: u32, col0: u32) {
  let m0 = min(row0 + 0u, P.M - 1u);
  let m1 = min(row0 + 1u, P.M - 1u);
  let m2 = min(row0 + 2u, P.M - 1u);
  let m3 = min(row0 + 3u, P.M - 1u);
  let n0 = min(col0 + 0u, P.N - 1u);
  let n1 = min(col0 + 1u, P.N - 1u);
  let n2 = min(col0 + 2u, P.N - 1u);
  let n3 = min(col0 + 3u, P.N - 1u);
  var o0 = ConvOrigin(0u, 0, 0);
  var o1 = o0;
  var o2 = o0;
  var o3 = o0;
  if (P.A_MODE == 3u) {
    o0 = conv_origin(m0);
    o1 = conv_origin(m1);
    o2 = conv_origin(m2);
    o3 = conv_origin(m3);
  }
  var c00 = vec4<f32>(); var c01 = vec4<f32>(); var c02 = vec4<f32>(); var c03 = vec4<f32>();
  var c10 = vec4<f32>(); var c11 = vec4<f32>(); var c12 = vec4<f32>(); var c13 = vec4<f32>();
  var c20 = vec4<f32>(); var c21 = vec4<f32>(); var c22 = vec4<f32>(); var c23 = vec4<f32>();
  var c30 = vec4<f32>(); var c31 = vec4<f32>(); var c32 = vec4<f32>(); var c33 = vec4<f32>();
  for (var k = 0u; k < P.K; k += 4u) {
    let a0 = a_block(m0, k, o0);
    let a1 = a_block(m1, k, o1);
    let a2 = a_block(m2, k, o2);
    let a3 = a_block(m3, k, o3);
    let w0 = w_block(n0, k);
    let w1 = w_block(n1, k);
    let w2 = w_block(n2, k);
    let w3 = w_block(n3, k);
    c00 = fma(a0, w0, c00); c01 = fma(a0, w1, c01); c02 = fma(a0, w2, c02); c03 = fma(a0, w3, c03);
    c10 = fma(a1, w0, c10); c11 = fma(a1, w1, c11); c12 = fma(a1, w2, c12); c13 = fma(a1, w3, c13);
    c20 = fma(a2, w0, c20); c21 = fma(a2, w1, c21); c22 = fma(a2, w2, c22); c23 = fma(a2, w3, c23);
    c30 = fma(a3, w0, c30); c31 = fma(a3, w1, c31); c32 = fma(a3, w2, c32); c33 = fma(a3, w3, c33);
  }
  store_row(row0 + 0u, col0, vec4<f32>(sum4(c00), sum4(c01), sum4(c02), sum4(c03)));
  store_row(row0 + 1u, col0, vec4<f32>(sum4(c10), sum4(c11), sum4(c12), sum4(c13)));
  store_row(row0 + 2u, col0, vec4<f32>(sum4(c20), sum4(c21), sum4(c22), sum4(c23)));
  store_row(row0 + 3u, col0, vec4<f32>(sum4(c30), sum4(c31), sum4(c32), sum4(c33)));
}

// 8x4 block on the FAST path: each W column decoded once per 8 rows (fp16 / q8 / q4 decoding costs more than
// the f32 A loads, so a thread takes more rows than columns)
// c + dot(a, w) as a chain of FMAs (scalar accumulators: a quarter of the registers of vec4 partial sums)
fn dot_acc(a: vec4<f32>, w: vec4<f32>, c: f32) -> f32 {
  return fma(a.w, w.w, fma(a.z, w.z, fma(a.y, w.y, fma(a.x, w.x, c))));
}

fn fast_block(row0: u32, col0: u32) {
  let K4 = P.K >> 2u;
  let b0 = a_base(min(row0 + 0u, P.M - 1u));
  let b1 = a_base(min(row0 + 1u, P.M - 1u));
  let b2 = a_base(min(row0 + 2u, P.M - 1u));
  let b3 = a_base(min(row0 + 3u, P.M - 1u));
  let b4 = a_base(min(row0 + 4u, P.M - 1u));
  let b5 = a_base(min(row0 + 5u, P.M - 1u));
  let b6 = a_base(min(row0 + 6u, P.M - 1u));
  let b7 = a_base(min(row0 + 7u, P.M - 1u));
  let n0 = min(col0 + 0u, P.N - 1u);
  let n1 = min(col0 + 1u, P.N - 1u);
  let n2 = min(col0 + 2u, P.N - 1u);
  let n3 = min(col0 + 3u, P.N - 1u);
  var c00 = 0.0; var c01 = 0.0; var c02 = 0.0; var c03 = 0.0;
  var c10 = 0.0; var c11 = 0.0; var c12 = 0.0; var c13 = 0.0;
  var c20 = 0.0; var c21 = 0.0; var c22 = 0.0; var c23 = 0.0;
  var c30 = 0.0; var c31 = 0.0; var c32 = 0.0; var c33 = 0.0;
  var c40 = 0.0; var c41 = 0.0; var c42 = 0.0; var c43 = 0.0;
  var c50 = 0.0; var c51 = 0.0; var c52 = 0.0; var c53 = 0.0;
  var c60 = 0.0; var c61 = 0.0; var c62 = 0.0; var c63 = 0.0;
  var c70 = 0.0; var c71 = 0.0; var c72 = 0.0; var c73 = 0.0;
  var k = 0u;
  for (var g = 0u; k < K4; g++) {
    let s0 = w_scale(n0, g);
    let s1 = w_scale(n1, g);
    let s2 = w_scale(n2, g);
    let s3 = w_scale(n3, g);
    let end = k + min(CHUNK4, K4 - k);
    for (; k < end; k++) {
      let w0 = w4_scaled(n0, k, s0);
      let w1 = w4_scaled(n1, k, s1);
      let w2 = w4_scaled(n2, k, s2);
      let w3 = w4_scaled(n3, k, s3);
      let a0 = a4_at(b0, k);
      c00 = dot_acc(a0, w0, c00); c01 = dot_acc(a0, w1, c01); c02 = dot_acc(a0, w2, c02); c03 = dot_acc(a0, w3, c03);
      let a1 = a4_at(b1, k);
      c10 = dot_acc(a1, w0, c10); c11 = dot_acc(a1, w1, c11); c12 = dot_acc(a1, w2, c12); c13 = dot_acc(a1, w3, c13);
      let a2 = a4_at(b2, k);
      c20 = dot_acc(a2, w0, c20); c21 = dot_acc(a2, w1, c21); c22 = dot_acc(a2, w2, c22); c23 = dot_acc(a2, w3, c23);
      let a3 = a4_at(b3, k);
      c30 = dot_acc(a3, w0, c30); c31 = dot_acc(a3, w1, c31); c32 = dot_acc(a3, w2, c32); c33 = dot_acc(a3, w3, c33);
      let a4 = a4_at(b4, k);
      c40 = dot_acc(a4, w0, c40); c41 = dot_acc(a4, w1, c41); c42 = dot_acc(a4, w2, c42); c43 = dot_acc(a4, w3, c43);
      let a5 = a4_at(b5, k);
      c50 = dot_acc(a5, w0, c50); c51 = dot_acc(a5, w1, c51); c52 = dot_acc(a5, w2, c52); c53 = dot_acc(a5, w3, c53);
      let a6 = a4_at(b6, k);
      c60 = dot_acc(a6, w0, c60); c61 = dot_acc(a6, w1, c61); c62 = dot_acc(a6, w2, c62); c63 = dot_acc(a6, w3, c63);
      let a7 = a4_at(b7, k);
      c70 = dot_acc(a7, w0, c70); c71 = dot_acc(a7, w1, c71); c72 = dot_acc(a7, w2, c72); c73 = dot_acc(a7, w3, c73);
    }
  }
  store_row(row0 + 0u, col0, vec4<f32>(c00, c01, c02, c03));
  store_row(row0 + 1u, col0, vec4<f32>(c10, c11, c12, c13));
  store_row(row0 + 2u, col0, vec4<f32>(c20, c21, c22, c23));
  store_row(row0 + 3u, col0, vec4<f32>(c30, c31, c32, c33));
  store_row(row0 + 4u, col0, vec4<f32>(c40, c41, c42, c43));
  store_row(row0 + 5u, col0, vec4<f32>(c50, c51, c52, c53));
  store_row(row0 + 6u, col0, vec4<f32>(c60, c61, c62, c63));
  store_row(row0 + 7u, col0, vec4<f32>(c70, c71, c72, c73));
}

// A 32x32 tile per workgroup of 8x4 threads, each thread 8 rows x 4 columns (two 4x4 blocks off the FAST path)
@compute @workgroup_size(8, 4)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row0 = wg.y * 32u + 8u * lid.y;
  let col0 = wg.x * 32u + 4u * lid.x;
  if (FAST) {
    fast_block(row0, col0);
  } else {
    general_block(row0, col0);
    general_block(row0 + 4u, col0);
  }
}
