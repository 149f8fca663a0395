/**
 * Diffusion math on the CPU (models/diffusion.py): the noise schedule ᾱ_t for t = 0..T (ᾱ_0 = 1), the sampler
 * times ("trailing": T down to 0), classifier-free guidance of two network outputs, the output turned into
 * (x̂_0, ε̂), and the two samplers' steps: DDIM with any η and DDPM's ancestral step over strided times. The page
 * runs the UNet on the GPU and these between passes.
 */

const COSINE_OFFSET = 0.008;
const MAX_BETA = 0.999;

export const SAMPLERS = ["ddim", "ddpm"] as const;
export type Sampler = (typeof SAMPLERS)[number];

export interface ScheduleConfig {
  timesteps: number;
  beta_schedule: "linear" | "cosine";
  beta_start: number;
  beta_end: number;
}

/** ᾱ_t for t = 0..T in float64 (Schedule.alphas_bar): linear or cosine β_1..β_T, β_0 = 0. */
export function alphasBar(cfg: ScheduleConfig): Float64Array {
  const T = cfg.timesteps;
  const betas = new Float64Array(T + 1);
  if (cfg.beta_schedule === "linear") {
    for (let i = 0; i < T; i++) betas[i + 1] = T === 1 ? cfg.beta_start : cfg.beta_start + ((cfg.beta_end - cfg.beta_start) * i) / (T - 1);
  } else if (cfg.beta_schedule === "cosine") {
    const f = (t: number): number => Math.cos((((t / T + COSINE_OFFSET) / (1 + COSINE_OFFSET)) * Math.PI) / 2) ** 2;
    for (let t = 1; t <= T; t++) betas[t] = Math.min(1 - f(t) / f(t - 1), MAX_BETA);
  } else {
    throw new Error(`unknown beta schedule '${String(cfg.beta_schedule)}': use linear or cosine`);
  }
  const out = new Float64Array(T + 1);
  let product = 1;
  for (let t = 0; t <= T; t++) out[t] = product *= 1 - betas[t];
  return out;
}

/** round(T * k / steps) with halves to even (torch.round), exactly in integers. */
function roundRatio(numerator: number, denominator: number): number {
  const q = Math.floor(numerator / denominator);
  const twice = 2 * (numerator - q * denominator);
  if (twice > denominator || (twice === denominator && q % 2 === 1)) return q + 1;
  return q;
}

/** steps + 1 times from T down to 0 (ddim_timesteps): evenly spaced, rounded half to even. */
export function ddimTimesteps(timesteps: number, steps: number): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > timesteps) {
    throw new Error(`sampler steps must be an integer in 1..${timesteps} (the schedule's T), got ${steps}`);
  }
  return Array.from({ length: steps + 1 }, (_, i) => roundRatio(timesteps * (steps - i), steps));
}

/** (x̂_0, ε̂) from the network output at x_t (Schedule.predict_x0_eps), x̂_0 clamped to ±clip when given. */
export function predictX0Eps(
  x: Float32Array,
  output: Float32Array,
  alphaBar: number,
  prediction: "eps" | "v",
  clip: number | null,
): { x0: Float32Array; eps: Float32Array } {
  const root = Math.sqrt(alphaBar);
  const rest = Math.sqrt(1 - alphaBar);
  const x0 = new Float32Array(x.length);
  const eps = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    x0[i] = prediction === "eps" ? (x[i] - rest * output[i]) / root : root * x[i] - rest * output[i];
    eps[i] = prediction === "eps" ? output[i] : rest * x[i] + root * output[i];
    if (clip !== null) {
      x0[i] = Math.min(Math.max(x0[i], -clip), clip);
      eps[i] = (x[i] - root * x0[i]) / rest;
    }
  }
  return { x0, eps };
}

/** ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅) (guided_denoiser) of the two halves [cond; uncond] of a doubled batch's output. */
export function guide(output: Float32Array, guidance: number): Float32Array {
  const half = output.length / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) out[i] = output[half + i] + guidance * (output[i] - output[half + i]);
  return out;
}

/**
 * σ of the step t -> prev, the scale of its fresh noise: DDIM's σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)
 * (Song et al. 2021 eq. 16), or DDPM's posterior std √β̃ ("fixed small", the same value at η = 1). Both are 0 on
 * the step to t = 0 (ᾱ_prev = 1): the last step adds no noise.
 */
export function stepSigma(sampler: Sampler, alphaBar: number, alphaBarPrev: number, eta: number): number {
  const variance = ((1 - alphaBarPrev) / (1 - alphaBar)) * (1 - alphaBar / alphaBarPrev);
  return (sampler === "ddim" ? eta : 1) * Math.sqrt(variance);
}

/**
 * The DDIM step (ddim_sample, Song et al. 2021 eq. 12): x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z;
 * σ = 0 (η = 0) is deterministic and needs no noise z.
 */
export function ddimStep(
  x0: Float32Array,
  eps: Float32Array,
  alphaBarPrev: number,
  sigma = 0,
  noise: Float32Array | null = null,
): Float32Array {
  const a = Math.sqrt(alphaBarPrev);
  const b = Math.sqrt(Math.max(1 - alphaBarPrev - sigma ** 2, 0));
  const out = new Float32Array(x0.length);
  for (let i = 0; i < x0.length; i++) out[i] = a * x0[i] + b * eps[i];
  return sigma > 0 ? addNoise(out, sigma, noise) : out;
}

/**
 * The DDPM step (ddpm_sample): the posterior mean of q(x_prev | x_t, x̂_0) over the strided step t -> prev (DDPM
 * eq. 7 with α = ᾱ_t / ᾱ_prev) plus σ z with σ = stepSigma("ddpm", ...); the step to t = 0 returns the mean.
 */
export function ddpmStep(
  x: Float32Array,
  x0: Float32Array,
  alphaBar: number,
  alphaBarPrev: number,
  noise: Float32Array | null = null,
): Float32Array {
  const alpha = alphaBar / alphaBarPrev;
  const a = (Math.sqrt(alphaBarPrev) * (1 - alpha)) / (1 - alphaBar);
  const b = (Math.sqrt(alpha) * (1 - alphaBarPrev)) / (1 - alphaBar);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = a * x0[i] + b * x[i];
  const sigma = stepSigma("ddpm", alphaBar, alphaBarPrev, 1);
  return sigma > 0 ? addNoise(out, sigma, noise) : out;
}

/** x + σ z in place; z is required (a step with σ > 0 without noise is a caller's bug, not a deterministic step). */
function addNoise(x: Float32Array, sigma: number, noise: Float32Array | null): Float32Array {
  if (!noise || noise.length !== x.length) throw new Error(`a step with σ > 0 needs ${x.length} noise values, got ${noise?.length ?? 0}`);
  for (let i = 0; i < x.length; i++) x[i] += sigma * noise[i];
  return x;
}
