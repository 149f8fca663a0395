// Tiled matrix product C[m, n] = act(sum_k A(m, k) * W(n, k) + bias[n]) for every linear and convolution
// layer. W is the (out, in) weight matrix, dequantized on load from its packed buffer; LOAD_W is the only
// generated part (f32, f16, q8 or q4 with fp16 group scales), so a model needs one pipeline per weight
// encoding. How A is read (P.A_MODE), how C is written (P.OUT_MODE) and the activation (P.ACT) are
// uniform switches: compiling is slow (seconds per pipeline on software adapters) and these branches are
// uniform, outside the multiply-add loop.
//   A_MODE 0 rows: A = x (M, K) row-major; 1: silu(x); 2 cols: A[(b, c), t] = x[b, t, c] (token mixing);
//          3 conv: im2col of an NCHW input (B, IN_C, IN_H, IN_W), nearest-upsampled by 2^UP_SHIFT.
//   OUT_MODE 0 rows: y[m, n] = v; 1: y = v + aux[(m % PERIOD), n] (position table); 2: y += v;
//          3: y += aux[n] v (per-channel scale); 4: y += aux[b, OFFSET + n] v with b = m / TOKENS (adaLN
//          gate, row stride STRIDE_ADA); 5: y[b, n, c] += aux[c] v with m = (b, c) (token-mixing residual);
//          6 nchw: m = (b, pixel), y[b, n, pixel] = v; 7 unpatchify: token rows (b, gy, gx) x (py, px, c)
//          -> image (b, c, gy * PATCH + py, gx * PATCH + px); 8 nchw residual: y[b, n, pixel] += v.
//   ACT 0 none, 1 silu, 2 gelu (erf), 3 tanh.
// ALIGNED variants (K a multiple of 4, quantization groups too) load A rows and W four k at a time.
// 32x32 output tile per workgroup of 8x8 threads, each thread a 4x4 block; K in tiles of 32.

{{BINDINGS}}

const ALIGNED: bool = {{ALIGNED}};
const TM: u32 = 32u;
const TN: u32 = 32u;
const TK: u32 = 32u;

// [TK][TM / 4] and [TK][TN / 4]: a thread's 4 rows (4 columns) are one vec4, read in one access
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_w: array<vec4<f32>, 256>;

// conv: decomposition of this thread's output pixel, hoisted out of the K loop
var<private> conv_base: u32;
var<private> conv_iy0: i32;
var<private> conv_ix0: i32;

fn load_w(n: u32, k: u32) -> f32 {
  {{LOAD_W}}
}

// W(n, k..k+3), k a multiple of 4 (ALIGNED variants only)
fn load_w4(n: u32, k: u32) -> vec4<f32> {
  {{LOAD_W4}}
}

// A as scalars, whatever the binding's element type
fn a_at(i: u32) -> f32 {
  {{A_AT}}
}

// A rows (m, k..k+3), k a multiple of 4 (ALIGNED variants only)
fn load_a4(m: u32, k: u32) -> vec4<f32> {
  {{LOAD_A4}}
}

fn load_a(m: u32, k: u32) -> f32 {
  switch P.A_MODE {
    case 0u: {
      return a_at(m * P.K + k);
    }
    case 1u: {
      return silu(a_at(m * P.K + k));
    }
    case 2u: {
      return a_at(((m / P.A_CH) * P.A_TOK + k) * P.A_CH + m % P.A_CH);
    }
    default: {
      let area = P.KSIZE * P.KSIZE;
      let ci = k / area;
      let r = k - ci * area;
      let ky = r / P.KSIZE;
      let iy = conv_iy0 + i32(ky);
      let ix = conv_ix0 + i32(r - ky * P.KSIZE);
      if (iy < 0 || ix < 0 || iy >= i32(P.IN_H << P.UP_SHIFT) || ix >= i32(P.IN_W << P.UP_SHIFT)) {
        return 0.0;
      }
      return a_at(conv_base + (ci * P.IN_H + (u32(iy) >> P.UP_SHIFT)) * P.IN_W + (u32(ix) >> P.UP_SHIFT));
    }
  }
}

fn epilogue(n: u32, acc: f32) -> f32 {
  var v = acc;
  if (P.HAS_BIAS != 0u) {
    v += bias[n];
  }
  switch P.ACT {
    case 1u: {
      return silu(v);
    }
    case 2u: {
      return gelu(v);
    }
    case 3u: {
      return tanh_safe(v);
    }
    default: {
      return v;
    }
  }
}

fn store_c(m: u32, n: u32, v: f32) {
  switch P.OUT_MODE {
    case 0u: {
      y[m * P.N + n] = v;
    }
    case 1u: {
      y[m * P.N + n] = v + aux[(m % P.PERIOD) * P.N + n];
    }
    case 2u: {
      y[m * P.N + n] += v;
    }
    case 3u: {
      y[m * P.N + n] += aux[n] * v;
    }
    case 4u: {
      y[m * P.N + n] += aux[(m / P.TOKENS) * P.STRIDE_ADA + P.OFFSET + n] * v;
    }
    case 5u: {
      let c = m % P.Y_CH;
      y[((m / P.Y_CH) * P.Y_TOK + n) * P.Y_CH + c] += aux[c] * v;
    }
    case 6u: {
      y[((m / P.Y_HW) * P.N + n) * P.Y_HW + m % P.Y_HW] = v;
    }
    case 8u: {
      y[((m / P.Y_HW) * P.N + n) * P.Y_HW + m % P.Y_HW] += v;
    }
    default: {
      let gx = m % P.GRID;
      let gy = (m / P.GRID) % P.GRID;
      let b = m / (P.GRID * P.GRID);
      let c = n % P.OUT_C;
      let px = (n / P.OUT_C) % P.PATCH;
      let py = n / (P.OUT_C * P.PATCH);
      let side = P.GRID * P.PATCH;
      y[((b * P.OUT_C + c) * side + gy * P.PATCH + py) * side + gx * P.PATCH + px] = v;
    }
  }
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let row0 = wg.y * TM;
  let col0 = wg.x * TN;
  let t = lid.y * 8u + lid.x;
  // Scalar loads: each thread loads 16 values of A and of W per K tile, one fixed index (t % 32) and one
  // that steps by 2. W and row-major A: fixed k, so consecutive threads read consecutive k of a row;
  // cols/conv A: fixed m, so consecutive threads read consecutive channels/pixels.
  let fixed = t % 32u;
  let m_fixed = P.A_MODE >= 2u;
  if (P.A_MODE == 3u) {
    let m = row0 + fixed;
    let ox = m % P.OUT_W;
    let oy = (m / P.OUT_W) % P.OUT_H;
    conv_base = (m / (P.OUT_W * P.OUT_H)) * P.IN_C * P.IN_H * P.IN_W;
    conv_iy0 = i32(oy * P.STRIDE) - P.PAD;
    conv_ix0 = i32(ox * P.STRIDE) - P.PAD;
  }
  // thread block: rows 4 lid.y + i (acc_i), columns 4 lid.x + j (component j); vectors, not an indexed
  // array, so the accumulators stay in registers
  var acc0 = vec4<f32>();
  var acc1 = vec4<f32>();
  var acc2 = vec4<f32>();
  var acc3 = vec4<f32>();
  let vector_a = ALIGNED && P.A_MODE < 2u;
  for (var k0 = 0u; k0 < P.K; k0 += TK) {
    if (vector_a) {
      // 32 rows x 8 vec4: four per thread, 8 consecutive threads cover 32 consecutive k of a row
      for (var i = 0u; i < 4u; i++) {
        let q = t + 64u * i;
        let mm = q / 8u;
        let kv = (q % 8u) * 4u;
        let m = row0 + mm;
        let ka = k0 + kv;
        var va = vec4<f32>();
        if (m < P.M && ka < P.K) {
          va = load_a4(m, ka);
        }
        for (var j = 0u; j < 4u; j++) {
          tile_a[(kv + j) * 8u + mm / 4u][mm % 4u] = va[j];
        }
      }
    } else {
      for (var i = 0u; i < 16u; i++) {
        let stepped = t / 32u + 2u * i;
        let mm = select(stepped, fixed, m_fixed);
        let ka_local = select(fixed, stepped, m_fixed);
        let m = row0 + mm;
        let ka = k0 + ka_local;
        var va = 0.0;
        if (m < P.M && ka < P.K) {
          va = load_a(m, ka);
        }
        tile_a[ka_local * 8u + mm / 4u][mm % 4u] = va;
      }
    }
    if (ALIGNED) {
      for (var i = 0u; i < 4u; i++) {
        let q = t + 64u * i;
        let nn = q / 8u;
        let kv = (q % 8u) * 4u;
        let n = col0 + nn;
        let kw = k0 + kv;
        var vw = vec4<f32>();
        if (n < P.N && kw < P.K) {
          vw = load_w4(n, kw);
        }
        for (var j = 0u; j < 4u; j++) {
          tile_w[(kv + j) * 8u + nn / 4u][nn % 4u] = vw[j];
        }
      }
    } else {
      for (var i = 0u; i < 16u; i++) {
        let stepped = t / 32u + 2u * i;
        let n = col0 + stepped;
        let kw = k0 + fixed;
        var vw = 0.0;
        if (n < P.N && kw < P.K) {
          vw = load_w(n, kw);
        }
        tile_w[fixed * 8u + stepped / 4u][stepped % 4u] = vw;
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let a4 = tile_a[kk * 8u + lid.y];
      let w4 = tile_w[kk * 8u + lid.x];
      acc0 = fma(vec4<f32>(a4.x), w4, acc0);
      acc1 = fma(vec4<f32>(a4.y), w4, acc1);
      acc2 = fma(vec4<f32>(a4.z), w4, acc2);
      acc3 = fma(vec4<f32>(a4.w), w4, acc3);
    }
    workgroupBarrier();
  }
  let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    for (var j = 0u; j < 4u; j++) {
      let m = row0 + 4u * lid.y + i;
      let n = col0 + 4u * lid.x + j;
      if (m < P.M && n < P.N) {
        store_c(m, n, epilogue(n, accs[i][j]));
      }
    }
  }
}
