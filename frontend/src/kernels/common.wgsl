// Shared helpers, prepended to every kernel.

// IEEE half (low 16 bits of h) to f32, exact for subnormals (unpack2x16float may flush them). Branch-free
// (selects): it runs inside GEMM K loops, where a branch costs software adapters their SIMD lanes.
fn f16_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let exponent = (h >> 10u) & 0x1fu;
  let mantissa = h & 0x3ffu;
  let normal = bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
  let special = bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u)); // inf, nan
  let tiny = f32(mantissa) * 5.9604644775390625e-8; // zero, subnormal
  return select(select(normal, special, exponent == 31u), select(tiny, -tiny, sign != 0u), exponent == 0u);
}

// One half of an unpack2x16float pair: the low one for an even index i, the high one for an odd i
fn pick_half(v: vec2<f32>, i: u32) -> f32 {
  return select(v.x, v.y, (i & 1u) != 0u);
}

fn silu(x: f32) -> f32 {
  return x / (1.0 + exp(-x));
}

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), so GELU matches torch's exact (erf) GELU.
fn erf_approx(x: f32) -> f32 {
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  let y = 1.0 - poly * exp(-a * a);
  return select(y, -y, x < 0.0);
}

fn gelu(x: f32) -> f32 {
  return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476));
}

// tanh that cannot overflow to NaN for large |x| (tanh(15) is 1 in f32).
fn tanh_safe(x: f32) -> f32 {
  return tanh(clamp(x, -15.0, 15.0));
}

// Sum of one value per thread over a 64-thread workgroup (every thread gets the total). Kernels that reduce
// use workgroups of 64 and this shared scratch array.
var<workgroup> partial: array<f32, 64>;

fn reduce_sum(lid: u32, value: f32) -> f32 {
  partial[lid] = value;
  workgroupBarrier();
  var total = 0.0;
  for (var j = 0u; j < 64u; j++) {
    total += partial[j];
  }
  workgroupBarrier();
  return total;
}
