"""Gaussian diffusion: noise schedules, the forward process q(x_t | x_0), ε- and v-prediction targets, and the DDPM
(Ho et al. 2020) and DDIM (Song et al. 2021) reverse samplers with classifier-free guidance.

Timesteps are 1..T; index 0 means "no noise" (β_0 = 0, ᾱ_0 = 1), so a reverse run ends exactly at t = 0 and its
last step adds no noise. Schedules are kept in float64 and cast to the data's dtype when read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .sphere import per_image_noise

BETA_SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "ddpm")
COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal 2021 eq. 17: keeps β_1 from being tiny
MAX_BETA = 0.999  # Nichol & Dhariwal clip β below 1 so the last steps stay finite

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> model output (ε or v)

__all__ = ["Schedule", "ddim_sample", "ddim_timesteps", "ddpm_sample", "guided_denoiser", "per_image_noise"]


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_1..β_T evenly spaced (DDPM: 1e-4..0.02 for T = 1000), float64 (T,)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64, device="cpu")


def cosine_betas(timesteps: int) -> torch.Tensor:
    """β_t = 1 − ᾱ_t / ᾱ_{t−1} with ᾱ(t) = f(t) / f(0), f(t) = cos²(π/2 (t/T + s) / (1 + s)), clipped at MAX_BETA."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu") / timesteps
    f = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)


class Schedule:
    """β_t and ᾱ_t = Π_{s≤t} (1 − β_s) for t = 0..T (β_0 = 0: t = 0 is the clean data); CPU float64 tensors
    (also when models are built under a meta or CUDA default device), cast where they are read."""

    def __init__(self, timesteps: int = 1000, kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02):
        if kind not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule '{kind}': use one of {', '.join(BETA_SCHEDULES)}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        betas = linear_betas(timesteps, beta_start, beta_end) if kind == "linear" else cosine_betas(timesteps)
        if not (betas.min() > 0 and betas.max() < 1):
            raise ValueError(f"betas must lie in (0, 1); got beta_start={beta_start}, beta_end={beta_end}")
        self.timesteps, self.kind = timesteps, kind
        self.betas = torch.cat([betas.new_zeros(1), betas])  # (T + 1,)
        self.alphas_bar = torch.cumprod(1 - self.betas, 0)  # (T + 1,), ᾱ_0 = 1

    def __len__(self) -> int:
        return self.timesteps

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, ..., 1) to broadcast over `like`, in its dtype and device."""
        picked = values[t.long().cpu()].to(device=like.device, dtype=like.dtype)
        return picked.view(-1, *[1] * (like.ndim - 1))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4)."""
        alpha_bar = self._at(self.alphas_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def training_timesteps(self, n: int, generator=None, device="cpu") -> torch.Tensor:
        """t ~ U{1..T} (both ends included: the seed's randint(1, T) never trained t = T)."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(1, self.timesteps + 1, (n,), generator=generator, device=gen_device).to(device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str):
        """What the network regresses: ε, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)."""
        check_prediction(prediction)
        if prediction == "eps":
            return noise
        alpha_bar = self._at(self.alphas_bar, t, x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def predict_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor, prediction: str):
        """(x̂_0, ε̂) from the network output at x_t: ε-prediction inverts q_sample; v gives both linearly."""
        check_prediction(prediction)
        alpha_bar = self._at(self.alphas_bar, t, x_t)
        root, root_rest = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if prediction == "eps":
            return (x_t - root_rest * output) / root, output
        return root * x_t - root_rest * output, root_rest * x_t + root * output


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction '{prediction}': use one of {', '.join(PREDICTIONS)}")


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """steps + 1 evenly spaced times from T down to 0 ("trailing" spacing): the first call sees pure noise at t = T,
    the last step lands on t = 0. steps = T gives every timestep."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampler steps must be in 1..{timesteps} (the schedule's T), got {steps}")
    return torch.linspace(timesteps, 0, steps + 1, dtype=torch.float64, device="cpu").round().long().tolist()


def guided_denoiser(model: Callable, labels: torch.Tensor | None, null_label: int, cfg: float) -> Denoiser:
    """(x_t, t) -> output with classifier-free guidance ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅) (both halves in one batch);
    labels None (unconditional) or w = 1: the plain conditional output, one pass."""
    if labels is None or cfg == 1.0:
        return lambda x, t: model(x, t, labels)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, null_label)
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return uncond + cfg * (cond - uncond)

    return denoise


def _reverse(denoise, schedule, x, steps, prediction, update, return_all, clip_x0):
    """The loop both samplers share: at each (t, prev) pair, predict (x̂_0, ε̂) and let `update` step to prev.
    Returns x_0 or the list of x̂_0 after each step (its last item is x_0: every run ends at t = 0)."""
    predictions = []
    times = ddim_timesteps(len(schedule), steps)
    for t, prev in zip(times[:-1], times[1:]):
        t_batch = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        x0, eps = schedule.predict_x0_eps(x, t_batch, denoise(x, t_batch), prediction)
        if clip_x0 is not None:  # keep x̂_0 in the data range and the ε̂ consistent with it (pixels only)
            x0 = x0.clamp(-clip_x0, clip_x0)
            alpha_bar = float(schedule.alphas_bar[t])
            eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
        x = update(x, x0, eps, t, prev)
        predictions.append(x0 if prev > 0 else x)
    return predictions if return_all else x


def _step_noise(x: torch.Tensor, generator) -> torch.Tensor:
    """N(0, I) like x, drawn per image when generator is a list (an image's draws never depend on its batch)."""
    return per_image_noise(len(x), tuple(x.shape[1:]), generator, x.device).to(x.dtype)


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    generator=None,
    return_all: bool = False,
    clip_x0: float | None = None,
):
    """DDIM (Song et al. 2021 eq. 12): x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z with
    σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev); η = 0 is deterministic given x_T, η = 1 is DDPM-like.
    generator: None, one, or a list of len(x_T) (per-image noise). clip_x0: None (latents) or the data bound."""

    def update(x, x0, eps, t, prev):
        alpha_bar, alpha_bar_prev = float(schedule.alphas_bar[t]), float(schedule.alphas_bar[prev])
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
        return x_prev + sigma * _step_noise(x, generator) if sigma > 0 else x_prev

    return _reverse(denoise, schedule, x_T, steps, prediction, update, return_all, clip_x0)


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int | None = None,
    prediction: str = "eps",
    generator=None,
    return_all: bool = False,
    clip_x0: float | None = None,
):
    """Ancestral sampling from the posterior q(x_prev | x_t, x̂_0) (DDPM eq. 6-7, variance β̃ = "fixed small") over
    `steps` evenly spaced times (None: all T); the step to t = 0 returns the posterior mean, with no noise."""

    def update(x, x0, eps, t, prev):
        alpha_bar, alpha_bar_prev = float(schedule.alphas_bar[t]), float(schedule.alphas_bar[prev])
        alpha = alpha_bar / alpha_bar_prev  # α of the (possibly strided) step t -> prev
        mean = (math.sqrt(alpha_bar_prev) * (1 - alpha) * x0 + math.sqrt(alpha) * (1 - alpha_bar_prev) * x) / (
            1 - alpha_bar
        )
        if prev == 0:  # the seed added √β_1 z here too: the last step must not add noise
            return mean
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha)
        return mean + math.sqrt(variance) * _step_noise(x, generator)

    steps = len(schedule) if steps is None else steps
    return _reverse(denoise, schedule, x_T, steps, prediction, update, return_all, clip_x0)
