"""The Power-Spherical VAE objective: reconstruction + optional LPIPS + beta(step) KL(q(z|x) || Uniform(S^(d-1))).

Scale convention: the reconstruction term of a sample is the *mean* of its per-value terms (over channels and
pixels, or channels and signal values), so the same per-value error gives the same loss at any image size, and
beta is relative to a per-value mean: beta = 1e-3 (Spherinator's CNN example, whose MSE is also a per-pixel mean)
means the same at 32 px and at 224 px. The KL is the per-sample closed form. The batch loss is the batch mean of
recon_b + perceptual_weight LPIPS_b + beta(step) KL_b. (The true ELBO of a Gaussian likelihood over D values is the
per-value sum; it corresponds to beta / D here.)

Values are compared on the data scale: images in [-1, 1] are mapped to [0, 1] (as losses/sphere.py does), and a
per-value sigma with them (sigma / 2); 1-D signals are used as given. LPIPS sees images in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .logs import constant_log, detached_logs
from .perceptual import perceptual_distance

RECON_TERMS = ("mse", "l1", "gaussian_nll", "truncated_nll", "gaussian_kl")
NEEDS_SIGMA = ("gaussian_nll", "truncated_nll", "gaussian_kl")
BETA_SCHEDULES = ("constant", "linear", "cyclic")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class PSVAELossConfig:
    """Reconstruction form, beta schedule and the optional perceptual term."""

    # "mse", "l1"; with per-value errors sigma from the data: "gaussian_nll" (-log N(x; x_hat, sigma)),
    # "truncated_nll" (-log of the normal truncated to [truncation_low, truncation_high]), "gaussian_kl"
    # (KL(N(x_hat, sigma) || N(x, sigma)) = (x_hat - x)^2 / (2 sigma^2), Spherinator's "KL")
    recon: str = "mse"
    beta: float = 1e-3  # beta_max: the KL weight once warmed up (relative to the per-value mean recon)
    beta_schedule: str = "constant"  # "constant", "linear" (one ramp) or "cyclic" (ramp repeated, Fu et al. 2019)
    beta_start: float = 0.0  # beta at the start of a ramp
    beta_warmup_steps: int = 0  # length of a ramp from beta_start to beta, in optimizer steps
    beta_cycle_steps: int = 0  # cyclic: period in steps (the ramp takes the first beta_warmup_steps of it)
    beta_cycles: int = 0  # cyclic: number of cycles, after which beta stays at beta; 0 = cycle for ever
    perceptual_weight: float = 0.0  # LPIPS-VGG weight (images with 3 channels only); 0 = no LPIPS network
    label_dropout: float = 0.1  # conditional models: chance a label is replaced by the null class (for CFG)
    truncation_low: float = 0.0  # truncated_nll support, on the data scale ([0, 1] for images)
    truncation_high: float = 1.0

    def __post_init__(self):
        if self.recon not in RECON_TERMS:
            raise ValueError(f"unknown recon '{self.recon}': use one of {', '.join(RECON_TERMS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule '{self.beta_schedule}': use one of {', '.join(BETA_SCHEDULES)}")
        if not (self.beta >= 0 and self.beta_start >= 0 and self.perceptual_weight >= 0):
            raise ValueError("beta, beta_start and perceptual_weight must be >= 0")
        if self.beta_warmup_steps < 0 or self.beta_cycle_steps < 0 or self.beta_cycles < 0:
            raise ValueError("beta_warmup_steps, beta_cycle_steps and beta_cycles must be >= 0")
        if self.beta_schedule == "cyclic" and not 0 < self.beta_warmup_steps <= self.beta_cycle_steps:
            raise ValueError("a cyclic beta needs 0 < beta_warmup_steps <= beta_cycle_steps")
        if not self.truncation_low < self.truncation_high:
            raise ValueError(f"truncation_low {self.truncation_low} must be < truncation_high {self.truncation_high}")

    def to_dict(self) -> dict:
        return asdict(self)


def beta_at(config: PSVAELossConfig, step: int) -> float:
    """beta(step): constant; linear from beta_start to beta over beta_warmup_steps; or that ramp restarted every
    beta_cycle_steps (for beta_cycles cycles, then constant)."""
    ramp_step = step
    if config.beta_schedule == "constant" or config.beta_warmup_steps == 0:
        return config.beta
    if config.beta_schedule == "cyclic":
        finished = config.beta_cycles > 0 and step >= config.beta_cycles * config.beta_cycle_steps
        ramp_step = config.beta_warmup_steps if finished else step % config.beta_cycle_steps
    progress = min(1.0, ramp_step / config.beta_warmup_steps)
    return config.beta_start + (config.beta - config.beta_start) * progress


def log_normal_cdf_difference(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails: intervals above 0 are mirrored to
    the lower tail, where log_ndtr is accurate, and log(1 - e^r) is taken with expm1/log1p as appropriate."""
    mirror = lower > 0
    low, high = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    ratio = (log_low - log_high).clamp(max=-1e-30)  # log(Phi(low) / Phi(high)) < 0
    log1m = torch.where(ratio > -math.log(2), torch.log(-torch.expm1(ratio)), torch.log1p(-torch.exp(ratio)))
    return log_high + log1m


def truncated_normal_nll(x: torch.Tensor, loc: torch.Tensor, sigma: torch.Tensor, low: float, high: float):
    """-log p(x) of N(loc, sigma^2) truncated to [low, high], per value: 0.5 u^2 + log sqrt(2 pi) + log sigma +
    log(Phi(b) - Phi(a)), u = (x - loc) / sigma. Observations outside the support (noise past a bound) are clamped
    onto it; loc (the reconstruction) may lie anywhere."""
    u = (x.clamp(low, high) - loc) / sigma
    log_mass = log_normal_cdf_difference((low - loc) / sigma, (high - loc) / sigma)
    return 0.5 * u * u + LOG_SQRT_2PI + torch.log(sigma) + log_mass


def _data_scale(values: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> [0, 1]; signals (B, C, L) unchanged."""
    return (values.float() + 1) / 2 if values.ndim == 4 else values.float()


class PSVAELoss:
    """loss(model, batch, step) -> (loss, logs); batch is (x, labels) or (x, labels, sigma) with sigma the
    per-value errors of x (same shape, > 0). `perceptual`: a frozen LPIPS taking images in [-1, 1] (None only when
    perceptual_weight is 0). The logs are 0-dim detached tensors (no host sync)."""

    def __init__(self, config: PSVAELossConfig, perceptual: nn.Module | None = None):
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight is > 0 but no LPIPS module was given")
        self.config = config
        self.perceptual = perceptual_distance(perceptual) if config.perceptual_weight > 0 else None

    def checked_sigma(self, sigma: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """sigma on the data scale, or None when the recon form does not use it; errors when missing or <= 0."""
        if self.config.recon not in NEEDS_SIGMA:
            return None
        if sigma is None:
            raise ValueError(
                f"recon '{self.config.recon}' needs per-value errors sigma: the batch must be (x, labels, sigma), "
                "i.e. a dataset with an error array; or use recon 'mse' / 'l1'"
            )
        if sigma.shape != x.shape:
            raise ValueError(f"sigma has shape {tuple(sigma.shape)}, the data {tuple(x.shape)}: one error per value")
        if not bool((sigma > 0).all()):
            raise ValueError("every per-value error sigma must be > 0 (found zeros, negatives or NaN)")
        return sigma.float() / 2 if x.ndim == 4 else sigma.float()

    def recon_per_value(self, x_hat: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        """The per-value reconstruction term on the data scale (shape of x)."""
        x_hat, x, recon = _data_scale(x_hat), _data_scale(x), self.config.recon
        if recon == "mse":
            return (x_hat - x) ** 2
        if recon == "l1":
            return (x_hat - x).abs()
        if recon == "gaussian_kl":
            return (x_hat - x) ** 2 / (2 * sigma**2)
        if recon == "gaussian_nll":
            return 0.5 * ((x - x_hat) / sigma) ** 2 + torch.log(sigma) + LOG_SQRT_2PI
        return truncated_normal_nll(x, x_hat, sigma, self.config.truncation_low, self.config.truncation_high)

    def perceptual_per_sample(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """LPIPS of each reconstruction (the real images' features without a graph); None when its weight is 0."""
        if self.perceptual is None:
            return None
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (B, 3, H, W), got {tuple(x.shape)}; set perceptual_weight 0")
        perceptual = self.perceptual
        return perceptual.distance(perceptual.features(x_hat), perceptual.target_features(x))  # (B,)

    def drop_labels(self, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
        if labels is None or num_classes == 0:
            return None
        drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
        return torch.where(drop, torch.full_like(labels, num_classes), labels)

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels, sigma = (*batch, None)[:3]
        core = getattr(model, "module", model)  # DDP / compiled wrappers keep the real model in .module
        sigma = self.checked_sigma(sigma, x)
        out = model(x, self.drop_labels(labels, core.config.num_classes))
        recon = self.recon_per_value(out["x_hat"], x, sigma).flatten(1).mean(1)  # (B,)
        kl, beta = core.kl(out["mu"], out["kappa"]), beta_at(self.config, step)  # (B,)
        per_sample = recon + beta * kl
        terms = {"recon": recon.mean(), "kl": kl.mean()}
        perceptual = self.perceptual_per_sample(out["x_hat"], x)
        if perceptual is not None:
            per_sample = per_sample + self.config.perceptual_weight * perceptual
            terms["perceptual"] = perceptual.mean()
        if not core.config.deterministic:
            terms.update(kappa_mean=out["kappa"].mean(), kappa_max=out["kappa"].max())
        loss = per_sample.mean()
        return loss, {**detached_logs(loss, terms), "beta": constant_log(beta, x)}
