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
// 32x32 output tile per workgroup of 8x8 threads, each thread a 4x4 block. The main function is appended:
// gemm_tiled.wgsl (K in tiles of 32 through workgroup memory: hardware GPUs) or gemm_direct.wgsl (no
// workgroup memory, no barriers: software adapters, where a barrier costs more than the loads it saves).

{{BINDINGS}}

const ALIGNED: bool = {{ALIGNED}};


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

// A(m, k); conv: (base, iy0, ix0) is the decomposition of row m's output pixel (conv_origin)
fn load_a(m: u32, k: u32, base: u32, iy0: i32, ix0: i32) -> f32 {
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
      let iy = iy0 + i32(ky);
      let ix = ix0 + i32(r - ky * P.KSIZE);
      if (iy < 0 || ix < 0 || iy >= i32(P.IN_H << P.UP_SHIFT) || ix >= i32(P.IN_W << P.UP_SHIFT)) {
        return 0.0;
      }
      return a_at(base + (ci * P.IN_H + (u32(iy) >> P.UP_SHIFT)) * P.IN_W + (u32(ix) >> P.UP_SHIFT));
    }
  }
}

// conv: the input offset of row m's sample and the top-left input pixel of its receptive field
struct ConvOrigin {
  base: u32,
  iy0: i32,
  ix0: i32,
}

fn conv_origin(m: u32) -> ConvOrigin {
  let ox = m % P.OUT_W;
  let oy = (m / P.OUT_W) % P.OUT_H;
  let base = (m / (P.OUT_W * P.OUT_H)) * P.IN_C * P.IN_H * P.IN_W;
  return ConvOrigin(base, i32(oy * P.STRIDE) - P.PAD, i32(ox * P.STRIDE) - P.PAD);
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
