/**
 * Token-map colours of a codebook (models/vqvae.py VQVAE.token_map): each code's coordinates on the first three
 * principal components of the codebook (as used for lookup), so that similar codes get similar colours. Plain
 * CPU math: the codebook is small (K x d, d of a few dozen at most) and this runs once per model.
 */

/** Rows of a (rows, dim) matrix scaled to unit length (F.normalize, eps 1e-12). */
export function normalizedRows(values: Float32Array, dim: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r * dim < values.length; r++) {
    let sq = 0;
    for (let c = 0; c < dim; c++) sq += values[r * dim + c] ** 2;
    const inv = 1 / Math.max(Math.sqrt(sq), 1e-12);
    for (let c = 0; c < dim; c++) out[r * dim + c] = values[r * dim + c] * inv;
  }
  return out;
}

/** Column means and the (dim, dim) covariance of centred rows, in float64. */
function covariance(values: Float32Array, rows: number, dim: number): { mean: Float64Array; cov: Float64Array } {
  const mean = new Float64Array(dim);
  for (let r = 0; r < rows; r++) for (let c = 0; c < dim; c++) mean[c] += values[r * dim + c] / rows;
  const cov = new Float64Array(dim * dim);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < dim; i++) {
      const a = values[r * dim + i] - mean[i];
      for (let j = 0; j < dim; j++) cov[i * dim + j] += a * (values[r * dim + j] - mean[j]);
    }
  }
  return { mean, cov };
}

/** Eigenvalues and eigenvectors (columns of `vectors`) of a symmetric (n, n) matrix, by cyclic Jacobi rotations. */
export function symmetricEigen(matrix: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(matrix);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q] ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) rotate(a, v, n, p, q);
  }
  return { values: Float64Array.from({ length: n }, (_, i) => a[i * n + i]), vectors: v };
}

/** One Jacobi rotation zeroing a[p][q] (and a[q][p]); v accumulates the rotations. */
function rotate(a: Float64Array, v: Float64Array, n: number, p: number, q: number): void {
  const apq = a[p * n + q];
  if (Math.abs(apq) < 1e-300) return;
  const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
  const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
  const c = 1 / Math.sqrt(t * t + 1);
  const s = t * c;
  for (let k = 0; k < n; k++) {
    const akp = a[k * n + p];
    const akq = a[k * n + q];
    a[k * n + p] = c * akp - s * akq;
    a[k * n + q] = s * akp + c * akq;
  }
  for (let k = 0; k < n; k++) {
    const apk = a[p * n + k];
    const aqk = a[q * n + k];
    a[p * n + k] = c * apk - s * aqk;
    a[q * n + k] = s * apk + c * aqk;
  }
  for (let k = 0; k < n; k++) {
    const vkp = v[k * n + p];
    const vkq = v[k * n + q];
    v[k * n + p] = c * vkp - s * vkq;
    v[k * n + q] = s * vkp + c * vkq;
  }
}

/**
 * (K, 3) colours in [-1, 1]: the centred codes projected on the three leading principal directions (each
 * direction's sign set so that its largest loading is positive), each component divided by its largest
 * absolute value. Fewer than three dimensions: the missing components are 0.
 */
export function codebookColors(codebook: Float32Array, codes: number, dim: number): Float32Array {
  const { mean, cov } = covariance(codebook, codes, dim);
  const { values, vectors } = symmetricEigen(cov, dim);
  const order = Array.from({ length: dim }, (_, i) => i).sort((x, y) => values[y] - values[x]);
  const out = new Float32Array(codes * 3);
  for (let component = 0; component < Math.min(3, dim); component++) {
    const column = order[component];
    let sign = 1;
    let largest = 0;
    for (let i = 0; i < dim; i++) {
      const loading = vectors[i * dim + column];
      if (Math.abs(loading) > largest) [largest, sign] = [Math.abs(loading), Math.sign(loading) || 1];
    }
    const projected = new Float64Array(codes);
    let peak = 0;
    for (let k = 0; k < codes; k++) {
      let sum = 0;
      for (let i = 0; i < dim; i++) sum += (codebook[k * dim + i] - mean[i]) * vectors[i * dim + column] * sign;
      projected[k] = sum;
      peak = Math.max(peak, Math.abs(sum));
    }
    for (let k = 0; k < codes; k++) out[k * 3 + component] = peak > 0 ? projected[k] / peak : 0;
  }
  return out;
}
