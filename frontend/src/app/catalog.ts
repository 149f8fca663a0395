/** The list of exported models (index.json from batch_export.py) and cached downloads of weight files. */

export interface ModeEntry {
  file: string; // relative to index.json
  bytes: number;
}

/** An index.json entry (engine/webformat.py index_entry): common fields, then its family's own. */
export interface CatalogEntry {
  name: string;
  family?: string; // absent in index files written before families existed: "sphere"
  dataset: string | null;
  image_size: number;
  backbone?: string; // sphere: vit | convnet; psvae: conv | vit | conv1d (the encoder)
  latent_dim?: number; // sphere
  latent_shape?: number[]; // sphere; ldm and somar: the (autoencoder's) latent map [C, h, w]
  z_dim?: number; // psvae: the latent is a point of S^(z_dim - 1)
  decoder?: string; // psvae: conv | upsample
  codebook_size?: number; // vqvae: K codes
  codebook_dim?: number; // vqvae
  downsample_factor?: number; // vqvae: image side / token grid side
  quantizer?: string; // vqvae: vq (shown) | fsq
  kind?: string; // ldm: autoencoder | latent | pixel
  sampler?: string; // ldm diffusion kinds: the file's default sampler, ddim | ddpm (absent in older indexes: ddim)
  eta?: number; // ldm diffusion kinds: the file's default DDIM η (absent in older indexes: 0)
  autoencoder_family?: string; // somar codebook and prior: the frozen autoencoder's family (somar | ldm | vqvae)
  codebook_family?: string; // somar prior over a vqvae's tokens: "vqvae" (not shown)
  level_patches?: number[]; // somar: each codebook level's patch side, coarse to fine (0 = the whole map)
  level_sizes?: number[]; // somar: SOM units per level
  token_grids?: number[][]; // somar: each level's token grid [rows, cols]
  num_classes: number;
  param_count: number;
  modes: Partial<Record<"fp32" | "fp16" | "q8" | "q4", ModeEntry>>;
}

export const CACHE_NAME = "sphere-encoder-weights-v1";
export const HUB_ENDPOINT = "https://huggingface.co"; // like huggingface_hub's default HF_ENDPOINT
const HUB_REPO = /^([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@(.+))?$/; // OWNER/NAME[@REVISION]
const LOCAL_HOSTS = ["127.0.0.1", "localhost"];

/** The folder URL (ending with /) of a Hub model repository's files: ?hub=OWNER/NAME[@REVISION] (default main). */
export function hubBase(spec: string, endpoint: string = HUB_ENDPOINT): string {
  const match = HUB_REPO.exec(spec.trim());
  if (!match) throw new Error(`?hub=${spec} is not a Hub repository: write ?hub=OWNER/NAME or ?hub=OWNER/NAME@REVISION`);
  const revision = encodeURIComponent(match[3] ?? "main");
  return `${endpoint.replace(/\/+$/, "")}/${match[1]}/${match[2]}/resolve/${revision}/`;
}

/** ?hub_endpoint= (like HF_ENDPOINT), honoured only for a server on this machine (tests, a local mirror). */
export function hubEndpoint(value: string | null): string {
  if (value === null) return HUB_ENDPOINT;
  let url: URL | null = null;
  try {
    url = new URL(value);
  } catch {
    url = null;
  }
  if (!url || url.protocol !== "http:" || !LOCAL_HOSTS.includes(url.hostname)) {
    throw new Error(`?hub_endpoint=${value} is only honoured for http://127.0.0.1 or http://localhost; drop it`);
  }
  return `${url.origin}${url.pathname}`;
}

/** Where index.json is read from: the Hub repository of ?hub= in `search` (the page's location.search), else `base`. */
export function catalogBase(base: string, search: string): string {
  const params = new URLSearchParams(search);
  const hub = params.get("hub");
  return hub === null ? base : hubBase(hub, hubEndpoint(params.get("hub_endpoint")));
}

/** A copy of `value` whose "file" fields (relative to index.json) are absolute URLs under `root`. */
function withAbsoluteFiles<T>(value: T, root: string): T {
  if (Array.isArray(value)) return value.map((item) => withAbsoluteFiles(item, root)) as T;
  if (!value || typeof value !== "object") return value;
  const entries = Object.entries(value).map(([key, item]) => [
    key,
    key === "file" && typeof item === "string" ? new URL(item, root).href : withAbsoluteFiles(item, root),
  ]);
  return Object.fromEntries(entries) as T;
}

function pageSearch(): string {
  return typeof location === "undefined" ? "" : location.search;
}

/**
 * Fetch and check index.json; `base` is its folder URL (ending with /). With ?hub=OWNER/NAME[@REVISION] in `search`
 * (the page's URL by default) index.json comes from that Hub repository instead, and the entries' file paths become
 * absolute URLs there, so every download (checked the same way) goes to the Hub.
 */
export async function loadCatalog(base: string, search: string = pageSearch()): Promise<CatalogEntry[]> {
  const root = catalogBase(base, search);
  const fromHub = root !== base;
  let response: Response;
  try {
    response = await fetch(new URL("index.json", root), { cache: "no-cache" });
  } catch (error) {
    throw new Error(`could not fetch ${root}index.json (${(error as Error).message})`);
  }
  if (fromHub && (response.status === 404 || response.status === 401)) {
    throw new Error(
      `no exported models at ${root}index.json (HTTP ${response.status}): the repository, revision or index.json is missing, or the repository is private. Push one with \`python batch_export.py --push_to_hub OWNER/NAME\`.`,
    );
  }
  if (response.status === 404)
    throw new Error(`no exported models: ${root}index.json not found. Run \`python batch_export.py\` and reload.`);
  if (!response.ok) throw new Error(`${root}index.json: HTTP ${response.status}`);
  const data = (await response.json()) as CatalogEntry[] | { models: CatalogEntry[] };
  const entries = Array.isArray(data) ? data : data.models;
  if (!Array.isArray(entries)) throw new Error(`${root}index.json is not a list of models`);
  const listed = entries.filter((entry) => entry && typeof entry.name === "string" && entry.modes && Object.keys(entry.modes).length);
  return fromHub ? listed.map((entry) => withAbsoluteFiles(entry, root)) : listed;
}

function cacheAvailable(): boolean {
  return typeof caches !== "undefined";
}

function cacheKey(url: string, expectedBytes: number): string {
  return `${url}#bytes=${expectedBytes}`;
}

/**
 * The bytes of a weight file, from the Cache API when present, else downloaded with progress and cached.
 * The cache key carries the expected size, so a re-exported file of another size is fetched again.
 */
export async function fetchWeights(
  url: string,
  expectedBytes: number,
  onProgress: (loaded: number, total: number, cached: boolean) => void,
  signal?: AbortSignal,
): Promise<ArrayBuffer> {
  const key = cacheKey(url, expectedBytes);
  const cache = cacheAvailable() ? await caches.open(CACHE_NAME).catch(() => null) : null;
  const hit = await cache?.match(key);
  if (hit) {
    const buffer = await hit.arrayBuffer();
    onProgress(buffer.byteLength, buffer.byteLength, true);
    if (buffer.byteLength === expectedBytes) return buffer;
    await cache?.delete(key);
  }
  const response = await fetch(url, { signal });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || expectedBytes;
  const buffer = await readWithProgress(response, total, (loaded) => onProgress(loaded, total, false));
  if (expectedBytes && buffer.byteLength !== expectedBytes) {
    throw new Error(`${url}: got ${buffer.byteLength} bytes, index.json says ${expectedBytes} (incomplete download or stale index.json)`);
  }
  await cache?.put(key, new Response(buffer.slice(0), { headers: { "content-type": "application/octet-stream" } })).catch(() => undefined);
  return buffer;
}

async function readWithProgress(response: Response, total: number, onProgress: (loaded: number) => void): Promise<ArrayBuffer> {
  if (!response.body) return response.arrayBuffer();
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    onProgress(Math.min(loaded, total || loaded));
  }
  const out = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out.buffer;
}

/** Drop a cached weight file (one that failed to parse: a corrupt copy must not be served again). */
export async function forgetWeights(url: string, expectedBytes: number): Promise<void> {
  if (cacheAvailable()) await (await caches.open(CACHE_NAME)).delete(cacheKey(url, expectedBytes));
}

/** Bytes held by our cache (0 when the Cache API is missing). */
export async function cachedBytes(): Promise<{ files: number; bytes: number }> {
  if (!cacheAvailable()) return { files: 0, bytes: 0 };
  const cache = await caches.open(CACHE_NAME);
  const keys = await cache.keys();
  let bytes = 0;
  for (const request of keys) {
    const match = /#bytes=(\d+)$/.exec(request.url);
    bytes += match ? Number(match[1]) : 0;
  }
  return { files: keys.length, bytes };
}

export async function clearCache(): Promise<void> {
  if (cacheAvailable()) await caches.delete(CACHE_NAME);
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
}

export function formatCount(count: number): string {
  if (count >= 1e6) return `${(count / 1e6).toFixed(1)}M`;
  if (count >= 1e3) return `${(count / 1e3).toFixed(0)}k`;
  return String(count);
}
