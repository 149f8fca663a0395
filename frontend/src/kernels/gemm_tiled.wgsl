// GEMM main for hardware GPUs: K in tiles of TK through workgroup memory (appended to gemm.wgsl).

const TM: u32 = 32u;
const TN: u32 = 32u;
const TK: u32 = 32u;

// [TK][TM / 4] and [TK][TN / 4]: a thread's 4 rows (4 columns) are one vec4, read in one access
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_w: array<vec4<f32>, 256>;

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
  var conv = ConvOrigin(0u, 0, 0);
  if (P.A_MODE == 3u) {
    conv = conv_origin(row0 + fixed);
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
          va = load_a(m, ka, conv.base, conv.iy0, conv.ix0);
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
