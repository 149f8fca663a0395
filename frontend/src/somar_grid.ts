/**
 * The CPU side of a somar codebook (models/som.py, models/somar.py): cutting a latent map into the tokens of a level
 * (patchify: patches row-major, channel-major inside a patch; patch 0 = the whole map, one token) and back
 * (unpatchify), each patch's best-matching unit (nearest code, ties to the lowest index as torch's argmin), the
 * codebook atlas (SOMARCodebook.codebook_atlas: each unit decoded at the map's middle token, the other tokens at the
 * level's mean code, cropped to that token's image region and laid out on its SOM grid cell), and the painting of
 * token grids (which cell a pointer is over, which atlas unit, a stroke from one cell to the next). Plain math on
 * small arrays: a level has at most a few thousand units of a few dozen values.
 */

/** How a level cuts a (C, H, W) latent map: patches of patchH x patchW, rows x cols of them, `dim` values each. */
export interface PatchLayout {
  channels: number;
  height: number;
  width: number;
  patchH: number;
  patchW: number;
  rows: number;
  cols: number;
  tokens: number; // rows * cols
  dim: number; // channels * patchH * patchW
}

/** The layout of patch side `patch` (0: the whole map) on a map of `shape` (C, H, W); an error if it does not divide it. */
export function patchLayout(shape: number[], patch: number): PatchLayout {
  const [channels, height, width] = shape;
  const [patchH, patchW] = patch ? [patch, patch] : [height, width];
  if (height % patchH || width % patchW) throw new Error(`a ${height}x${width} latent map cannot be cut into ${patch}x${patch} patches`);
  const rows = height / patchH;
  const cols = width / patchW;
  return { channels, height, width, patchH, patchW, rows, cols, tokens: rows * cols, dim: channels * patchH * patchW };
}

/** Index in a (C, H, W) map of value `v` of token `t` (patches row-major, channel-major inside a patch). */
function mapIndex(layout: PatchLayout, t: number, v: number): number {
  const { patchH, patchW, cols, height, width } = layout;
  const channel = Math.floor(v / (patchH * patchW));
  const i = Math.floor(v / patchW) % patchH;
  const j = v % patchW;
  const y = Math.floor(t / cols) * patchH + i;
  const x = (t % cols) * patchW + j;
  return (channel * height + y) * width + x;
}

/** Maps (n, C, H, W) -> token vectors (n, N, D) (models/som.py patchify). */
export function patchify(maps: Float32Array, layout: PatchLayout): Float32Array {
  const size = layout.channels * layout.height * layout.width;
  const out = new Float32Array(maps.length);
  for (let b = 0; b * size < maps.length; b++) {
    for (let t = 0; t < layout.tokens; t++) {
      for (let v = 0; v < layout.dim; v++) out[b * size + t * layout.dim + v] = maps[b * size + mapIndex(layout, t, v)];
    }
  }
  return out;
}

/** Token vectors (n, N, D) -> maps (n, C, H, W) (models/som.py unpatchify, the inverse of patchify). */
export function unpatchify(vectors: Float32Array, layout: PatchLayout): Float32Array {
  const size = layout.channels * layout.height * layout.width;
  const out = new Float32Array(vectors.length);
  for (let b = 0; b * size < vectors.length; b++) {
    for (let t = 0; t < layout.tokens; t++) {
      for (let v = 0; v < layout.dim; v++) out[b * size + mapIndex(layout, t, v)] = vectors[b * size + t * layout.dim + v];
    }
  }
  return out;
}

/** The codes (K, dim) of tokens (any count): (count, dim). An index outside 0..K-1 is an error. */
export function gatherCodes(tokens: ArrayLike<number>, codes: Float32Array, dim: number): Float32Array {
  const units = codes.length / dim;
  const out = new Float32Array(tokens.length * dim);
  for (let t = 0; t < tokens.length; t++) {
    const k = tokens[t];
    if (!Number.isInteger(k) || k < 0 || k >= units) throw new Error(`token ${k} is not a unit of this codebook (0..${units - 1})`);
    out.set(codes.subarray(k * dim, (k + 1) * dim), t * dim);
  }
  return out;
}

/** The latent maps (n, C, H, W) of token grids (n, N): each token's code put back in its patch (decode_tokens). */
export function tokenMaps(tokens: ArrayLike<number>, codes: Float32Array, layout: PatchLayout): Float32Array {
  return unpatchify(gatherCodes(tokens, codes, layout.dim), layout);
}

/** The best-matching unit of each vector (count, dim): argmin_k ||x - e_k||^2 in float64, ties to the lowest k. */
export function nearestUnits(vectors: Float32Array, codes: Float32Array, dim: number): Int32Array {
  const units = codes.length / dim;
  const out = new Int32Array(vectors.length / dim);
  for (let m = 0; m < out.length; m++) {
    let best = Infinity;
    for (let k = 0; k < units; k++) {
      let distance = 0;
      for (let v = 0; v < dim; v++) distance += (vectors[m * dim + v] - codes[k * dim + v]) ** 2;
      if (distance < best) [best, out[m]] = [distance, k];
    }
  }
  return out;
}

/** The mean code of a level (dim,), in float64 then float32. */
export function meanCode(codes: Float32Array, dim: number): Float32Array {
  const units = codes.length / dim;
  const sum = new Float64Array(dim);
  for (let k = 0; k < units; k++) for (let v = 0; v < dim; v++) sum[v] += codes[k * dim + v];
  return Float32Array.from(sum, (value) => value / units);
}

/** The middle token of a level (N // 2): where the atlas puts each unit. */
export const middleToken = (layout: PatchLayout): number => Math.floor(layout.tokens / 2);

/** Maps (K, C, H, W): unit k at the middle token, every other token at the level's mean code (codebook_atlas). */
export function atlasMaps(codes: Float32Array, layout: PatchLayout): Float32Array {
  const units = codes.length / layout.dim;
  const mean = meanCode(codes, layout.dim);
  const vectors = new Float32Array(units * layout.tokens * layout.dim);
  for (let k = 0; k < units; k++) {
    for (let t = 0; t < layout.tokens; t++) {
      const source = t === middleToken(layout) ? codes.subarray(k * layout.dim, (k + 1) * layout.dim) : mean;
      vectors.set(source, (k * layout.tokens + t) * layout.dim);
    }
  }
  return unpatchify(vectors, layout);
}

/** Where token `t` lies in an image of side `imageSide` ((top, left, height, width) in pixels). */
export function tokenRegion(
  layout: PatchLayout,
  imageSide: number,
  t: number,
): { top: number; left: number; height: number; width: number } {
  const scale = imageSide / layout.width;
  const height = layout.patchH * scale;
  const width = layout.patchW * scale;
  return { top: Math.floor(t / layout.cols) * height, left: (t % layout.cols) * width, height, width };
}

/** The atlas picture's geometry: cells of cellH x cellW pixels on the SOM grid (rows x cols), `pad` pixels apart. */
export interface AtlasGeometry {
  rows: number;
  cols: number;
  cellH: number;
  cellW: number;
  pad: number;
  height: number;
  width: number;
}

/** The geometry of units at grid (K, 2) (row, col) coordinates (a pruned map keeps its survivors' cells). */
export function atlasGeometry(grid: Float32Array, cellH: number, cellW: number, pad = 1): AtlasGeometry {
  let rows = 0;
  let cols = 0;
  for (let k = 0; 2 * k < grid.length; k++) [rows, cols] = [Math.max(rows, grid[2 * k] + 1), Math.max(cols, grid[2 * k + 1] + 1)];
  return { rows, cols, cellH, cellW, pad, height: rows * (cellH + pad) + pad, width: cols * (cellW + pad) + pad };
}

/**
 * The atlas (C, height, width) in [-1, 1]: image k of images (K, C, S, S), cropped to `region`, at unit k's grid
 * cell; empty cells and gaps stay -1 (_grid_picture).
 */
export function atlasPicture(
  images: Float32Array,
  channels: number,
  side: number,
  region: { top: number; left: number },
  grid: Float32Array,
  geometry: AtlasGeometry,
): Float32Array {
  const { cellH, cellW, pad, height, width } = geometry;
  const out = new Float32Array(channels * height * width).fill(-1);
  for (let k = 0; 2 * k < grid.length; k++) {
    const top = pad + grid[2 * k] * (cellH + pad);
    const left = pad + grid[2 * k + 1] * (cellW + pad);
    for (let c = 0; c < channels; c++) {
      for (let y = 0; y < cellH; y++) {
        for (let x = 0; x < cellW; x++) {
          const source = ((k * channels + c) * side + region.top + y) * side + region.left + x;
          out[(c * height + top + y) * width + left + x] = images[source];
        }
      }
    }
  }
  return out;
}

/** The unit whose atlas cell holds pixel (x, y) of the picture, or null (a gap, an empty cell). */
export function unitAt(grid: Float32Array, geometry: AtlasGeometry, x: number, y: number): number | null {
  const col = Math.floor((x - geometry.pad) / (geometry.cellW + geometry.pad));
  const row = Math.floor((y - geometry.pad) / (geometry.cellH + geometry.pad));
  const inCell = x - geometry.pad - col * (geometry.cellW + geometry.pad) < geometry.cellW;
  const inRow = y - geometry.pad - row * (geometry.cellH + geometry.pad) < geometry.cellH;
  if (x < geometry.pad || y < geometry.pad || !inCell || !inRow) return null;
  return unitAtCell(grid, row, col);
}

/** The unit at SOM grid cell (row, col), or null (outside the grid, a pruned cell). */
export function unitAtCell(grid: Float32Array, row: number, col: number): number | null {
  for (let k = 0; 2 * k < grid.length; k++) if (grid[2 * k] === row && grid[2 * k + 1] === col) return k;
  return null;
}

/** The token under a point at fractions (u, v) in [0, 1) of the token grid's width and height. */
export function cellAt(layout: PatchLayout, u: number, v: number): number {
  const col = Math.min(layout.cols - 1, Math.max(0, Math.floor(u * layout.cols)));
  const row = Math.min(layout.rows - 1, Math.max(0, Math.floor(v * layout.rows)));
  return row * layout.cols + col;
}

/**
 * Paint `unit` into the cells of a stroke from token `from` (null: a new stroke) to token `to` of one grid (the
 * cells a straight line between their centres crosses, so a fast drag leaves no gaps); returns whether any changed.
 */
export function paintStroke(tokens: Int32Array, layout: PatchLayout, from: number | null, to: number, unit: number): boolean {
  const start = from ?? to;
  const [r0, c0, r1, c1] = [Math.floor(start / layout.cols), start % layout.cols, Math.floor(to / layout.cols), to % layout.cols];
  const steps = Math.max(Math.abs(r1 - r0), Math.abs(c1 - c0));
  let changed = false;
  for (let s = 0; s <= steps; s++) {
    const f = steps ? s / steps : 0;
    const cell = Math.round(r0 + f * (r1 - r0)) * layout.cols + Math.round(c0 + f * (c1 - c0));
    changed ||= tokens[cell] !== unit;
    tokens[cell] = unit;
  }
  return changed;
}

/** (K, 3) colours in [-1, 1] of units by their grid place (row -> red, column -> green): SOM neighbours look alike. */
export function gridColors(grid: Float32Array): Float32Array {
  const geometry = atlasGeometry(grid, 1, 1);
  const scale = (value: number, count: number): number => (count > 1 ? (2 * value) / (count - 1) - 1 : 0);
  const out = new Float32Array((grid.length / 2) * 3);
  for (let k = 0; 2 * k < grid.length; k++) {
    out.set([scale(grid[2 * k], geometry.rows), scale(grid[2 * k + 1], geometry.cols), 0.2], 3 * k);
  }
  return out;
}

/** A picture (C, height, width) in [-1, 1] as RGBA bytes (one channel: grey). */
export function pictureRGBA(picture: Float32Array, channels: number, height: number, width: number): Uint8ClampedArray {
  const pixels = height * width;
  const out = new Uint8ClampedArray(pixels * 4);
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) out[4 * p + c] = Math.round((picture[Math.min(c, channels - 1) * pixels + p] + 1) * 127.5);
    out[4 * p + 3] = 255;
  }
  return out;
}
