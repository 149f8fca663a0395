"""The Sphere Encoder objective (DESIGN §3): pixel reconstruction, pixel consistency, latent consistency."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .logs import detached_logs
from .perceptual import PerceptualDistance, perceptual_distance


@dataclass
class SphereLossConfig:
    """Noise schedule and loss weights; defaults are the paper's CIFAR-10 setting."""

    noise_angle: float = 80.0  # theta_max in degrees; sigma_max = tan(theta_max)
    small_noise_ratio: float = 0.5  # v_small uses r * u * ratio * sigma_max
    hard_case_prob: float = 0.1  # chance that a sample's angle is pushed beyond theta_max
    hard_case_extra_angle: float = 5.0  # hard cases reach up to min(theta_max + this, 89) degrees (official)
    recon_dist_weight: float = 1.0
    recon_perc_weight: float = 1.0
    con_dist_weight: float = 0.5
    con_perc_weight: float = 0.5
    latent_weight: float = 0.1
    distance: str = "smooth_l1"  # "smooth_l1" (beta = 1 on [0, 1] images, the official code) or "l1"
    label_dropout: float = 0.1  # conditional models: chance a label is replaced by the null class

    def __post_init__(self):
        if not 0.0 < self.noise_angle < 90.0:
            raise ValueError(f"noise_angle must be in (0, 90) degrees, got {self.noise_angle}")
        if self.distance not in ("l1", "smooth_l1"):
            raise ValueError(f"distance must be 'l1' or 'smooth_l1', got '{self.distance}'")

    @property
    def sigma_max(self) -> float:
        return math.tan(math.radians(self.noise_angle))

    def to_dict(self) -> dict:
        return asdict(self)


def stratified_levels(batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample r in [0, 1]: exactly one 0, one 1, the other B-2 at (i + u_i)/(B-2), shuffled (DESIGN §3)."""
    if batch == 1:
        return torch.rand(1, device=device, generator=generator)
    inner = batch - 2
    jitter = torch.rand(inner, device=device, generator=generator)
    middle = (torch.arange(inner, device=device) + jitter) / max(inner, 1)
    levels = torch.cat([torch.ones(1, device=device), torch.zeros(1, device=device), middle])
    return levels[torch.randperm(batch, device=device, generator=generator)]


HARD_CASE_MAX_ANGLE = 89.0  # degrees; nearer 90 the pushed r explodes (tan) and v_big becomes pure noise


def hard_case_levels(
    levels: torch.Tensor, noise_angle: float, prob: float, extra_angle: float, generator=None
) -> torch.Tensor:
    """With probability `prob`, push a sample's r above 1 so its angle atan(r sigma_max) lands uniformly in
    (theta_max, min(theta_max + extra, 89)] degrees. The r = 0 sample stays the clean anchor."""
    sigma_max = math.tan(math.radians(noise_angle))
    top = math.radians(max(noise_angle, min(noise_angle + extra_angle, HARD_CASE_MAX_ANGLE)))
    pushed = (torch.rand(levels.shape, device=levels.device, generator=generator) < prob) & (levels > 0)
    u = torch.rand(levels.shape, device=levels.device, generator=generator)
    angle = math.radians(noise_angle) + u * (top - math.radians(noise_angle))
    return torch.where(pushed, torch.tan(angle) / sigma_max, levels)


def _per_sample(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return levels.view(-1, *([1] * (like.ndim - 1)))


class SphereLoss:
    """loss(model, batch, step) -> (loss, logs), logs a dict of 0-dim detached tensors (no host sync). Owns its
    noise and label dropout; `perceptual` is a frozen PerceptualDistance or bare LPIPS on images in [-1, 1] (None
    only when both perceptual weights are 0)."""

    def __init__(self, config: SphereLossConfig, perceptual: nn.Module | None = None):
        needs_perceptual = config.recon_perc_weight > 0 or config.con_perc_weight > 0
        if needs_perceptual and perceptual is None:
            raise ValueError("perceptual weights are > 0 but no LPIPS module was given")
        self.config = config
        self.perceptual: PerceptualDistance | None = perceptual_distance(perceptual) if needs_perceptual else None

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pixel distance on images mapped to [0, 1]."""
        a, b = (a.float() + 1) / 2, (b.float() + 1) / 2
        if self.config.distance == "l1":
            return F.l1_loss(a, b)
        return F.smooth_l1_loss(a, b, beta=1.0)

    def perceptual_terms(
        self, x_small: torch.Tensor, x_big: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(recon_perc = perc(x_small, x), con_perc = perc(x_big, sg(x_small))), each image's features computed
        once: x_small's serve both terms (detached as the consistency target), x's without a graph; a term whose
        weight is 0 is a zero and costs nothing."""
        cfg, perceptual = self.config, self.perceptual
        zero = x_small.new_zeros((), dtype=torch.float32)
        if perceptual is None:
            return zero, zero
        if cfg.recon_perc_weight == 0:  # x_small is only the consistency target
            small = perceptual.target_features(x_small)
            return zero, perceptual.distance(perceptual.features(x_big), small).mean()
        small = perceptual.features(x_small)
        recon = perceptual.distance(small, perceptual.target_features(images)).mean()
        if cfg.con_perc_weight == 0:
            return recon, zero
        return recon, perceptual.distance(perceptual.features(x_big), small.detach()).mean()

    def draw_noise(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled noises (r u ratio sigma_max e, r_hard sigma_max e) sharing the same direction e; only v_big
        gets the hard-case push r_hard, v_small keeps the un-pushed r (DESIGN §3)."""
        cfg, batch, device = self.config, latent.shape[0], latent.device
        r = stratified_levels(batch, device)
        r_hard = hard_case_levels(r, cfg.noise_angle, cfg.hard_case_prob, cfg.hard_case_extra_angle)
        u = stratified_levels(batch, device)
        e = torch.randn(latent.shape, device=device)
        big = _per_sample(r_hard * cfg.sigma_max, e) * e
        small = _per_sample(r * u * cfg.small_noise_ratio * cfg.sigma_max, e) * e
        return small, big

    def drop_labels(self, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
        if labels is None or num_classes == 0:
            return None
        drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
        return torch.where(drop, torch.full_like(labels, num_classes), labels)

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch
        core = getattr(model, "module", model)  # DDP / compiled wrappers keep the real model in .module
        cfg = self.config
        labels = self.drop_labels(labels, core.config.num_classes)
        latent_like = images.new_empty((images.shape[0], *core.latent_shape), dtype=torch.float32)
        noise_small, noise_big = self.draw_noise(latent_like)
        out = model(images, noise_small, noise_big, labels)
        x_small, x_big = out["x_small"], out["x_big"]
        recon_perc, con_perc = self.perceptual_terms(x_small, x_big, images)
        terms = {
            "recon_dist": self.distance(x_small, images),
            "recon_perc": recon_perc,
            "con_dist": self.distance(x_big, x_small.detach()),
            "con_perc": con_perc,
            "latent": 1
            - F.cosine_similarity(out["z_big"].float().flatten(1), out["z"].detach().float().flatten(1)).mean(),
        }
        weights = {
            "recon_dist": cfg.recon_dist_weight,
            "recon_perc": cfg.recon_perc_weight,
            "con_dist": cfg.con_dist_weight,
            "con_perc": cfg.con_perc_weight,
            "latent": cfg.latent_weight,
        }
        loss = sum(weights[name] * value for name, value in terms.items())
        return loss, detached_logs(loss, terms)
