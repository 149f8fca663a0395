"""The ldm family's objectives: the stage-1 KL autoencoder's and the diffusion models' (latent and pixel).

Autoencoder (Rombach et al. 2022, CompVis LDM's LPIPSWithDiscriminator):

    loss = rec + perceptual_weight LPIPS + kl_weight KL + GAN

rec is the per-value mean L1 or L2 error on [0, 1] images (as the vqvae's). KL is KL(N(mean, exp(logvar)) || N(0, 1))
summed over the latent's values and divided by the image's value count C H W: CompVis sums both rec and KL per image,
so dividing both by C H W keeps their balance and kl_weight 1e-6 means what it means there. The GAN is the shared
patch-GAN of losses/gan.py (hinge, adaptive weight at the decoder's last layer, its own Adam, disc_start).

Diffusion (Ho et al. 2020; Salimans & Ho 2022 for v): t ~ U{1..T}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
loss = mean (target - unet(x_t, t, y))^2 with target eps or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0. A
conditional model's labels are replaced by the null class (index num_classes) with probability label_dropout, so
classifier-free guidance has an unconditional branch. Every sample's loss is also summed into its timestep bin (bin k
of `timestep_bins` equal bins of 1..T); each epoch's means (t_bin_k) draw images/timestep_loss.png.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .gan import GANSettings, ImageGANLoss, check_gan_settings
from .logs import detached_logs

RECON_TERMS = ("l1", "l2")
PREDICTIONS = ("eps", "v")


@dataclass
class LDMAELossConfig:
    """Stage-1 loss: reconstruction form, LPIPS and KL weights, the patch-GAN."""

    recon: str = "l1"  # per-value "l1" or "l2" (squared) error on [0, 1] images (CompVis: L1)
    perceptual_weight: float = 1.0  # LPIPS-VGG weight (CompVis: 1.0); 0 = no LPIPS network
    kl_weight: float = 1e-6  # on KL summed per image / (C H W), the balance of CompVis's per-image sums
    disc_weight: float = 0.5  # patch-GAN generator weight (times the adaptive lambda); 0 = no discriminator
    disc_start: int = 0  # optimizer step from which the GAN is on (CompVis: 50001 at 256 px)
    disc_lr: float = 1e-4  # discriminator Adam rate
    disc_layers: int = 3  # stride-2 4x4 conv layers of the PatchGAN
    disc_width: int = 64  # channels of its first layer
    adaptive_weight: bool = True  # False: lambda = 1

    def __post_init__(self):
        if self.recon not in RECON_TERMS:
            raise ValueError(f"unknown recon '{self.recon}': use one of {', '.join(RECON_TERMS)}")
        if not (self.perceptual_weight >= 0 and self.kl_weight >= 0):
            raise ValueError("perceptual_weight and kl_weight must be >= 0")
        check_gan_settings(self.disc_weight, self.disc_start, self.disc_lr, self.disc_layers, self.disc_width)

    def gan_settings(self) -> GANSettings:
        """The patch-GAN's part of the settings."""
        values = {name: getattr(self, f"disc_{name}") for name in ("weight", "start", "lr", "layers", "width")}
        return GANSettings(**values, adaptive_weight=self.adaptive_weight)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DiffusionLossConfig:
    """Stage-2 / pixel loss: label dropout for classifier-free guidance and the timestep bins logged."""

    label_dropout: float = 0.1  # probability of the null class for a conditional model (CFG; Ho & Salimans 2022)
    timestep_bins: int = 10  # t_bin_k logs: equal bins of 1..T

    def __post_init__(self):
        if not 0 <= self.label_dropout <= 1:
            raise ValueError("label_dropout must be in [0, 1]")
        if self.timestep_bins < 1:
            raise ValueError("timestep_bins must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch dim: (B,)."""
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float())
    return kl.flatten(1).sum(1)


class LDMAutoencoderLoss(ImageGANLoss):
    """loss(model, batch, step) -> (loss, logs) for a KLAutoencoder: forward(x) -> (raw x_hat, mean, logvar),
    last_layer(). `perceptual`: a frozen LPIPS on [-1, 1] images (None only when perceptual_weight is 0)."""

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch[0]
        core = getattr(model, "module", model)
        x_hat, mean, logvar = model(x)
        terms, rec_total = self.image_terms(x_hat, x)
        terms["kl"] = kl_divergence(mean, logvar).mean() / x[0].numel()
        gan, gan_logs = self.gan_terms(core, x, x_hat, rec_total, step)
        loss = rec_total + self.config.kl_weight * terms["kl"] + gan
        return loss, {**detached_logs(loss, terms), **gan_logs}


def drop_labels(labels: torch.Tensor | None, num_classes: int, probability: float) -> torch.Tensor | None:
    """Labels with each replaced by the null class (num_classes) with the given probability; None stays None."""
    if labels is None or num_classes == 0:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < probability
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


class TimestepBins:
    """The loss per timestep bin, summed over every sample of every step since the last `take()` (bin k holds
    t in (k T / n, (k + 1) T / n]); saved with the loss so a resumed epoch's average still covers all its steps."""

    def __init__(self, timesteps: int, bins: int):
        self.timesteps, self.bins = timesteps, bins
        self.sums, self.counts = torch.zeros(bins, dtype=torch.float64), torch.zeros(bins, dtype=torch.float64)

    def add(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        index = ((t - 1) * self.bins // self.timesteps).clamp(0, self.bins - 1)
        sums = torch.zeros(self.bins, device=t.device, dtype=torch.float64)
        sums.index_add_(0, index, per_sample.detach().double())
        ones = torch.ones(index.shape, device=t.device, dtype=torch.float64)
        counts = torch.zeros_like(sums).index_add_(0, index, ones)  # torch.bincount reads back to the host on CUDA
        if self.sums.device != t.device:  # follow the model's device: no host sync per step
            self.sums, self.counts = self.sums.to(t.device), self.counts.to(t.device)
        self.sums += sums
        self.counts += counts

    def take(self) -> dict[str, float]:
        """{"t_bin_k": mean loss of bin k} for the bins that saw a sample (summed over ranks under DDP); resets."""
        sums, counts = self.sums.clone(), self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        self.sums.zero_(), self.counts.zero_()
        means, counts = (sums / counts.clamp_min(1)).tolist(), counts.tolist()
        return {f"t_bin_{k}": means[k] for k in range(self.bins) if counts[k] > 0}

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "counts": self.counts.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state["sums"].shape != (self.bins,):
            raise ValueError(f"the saved loss has {len(state['sums'])} timestep bins, this run {self.bins}")
        self.sums = state["sums"].to(self.sums.device, torch.float64)
        self.counts = state["counts"].to(self.counts.device, torch.float64)


class DiffusionLoss:
    """loss(model, batch, step) -> (loss, logs) for a LatentDiffusion or PixelDiffusion model: x0 from
    `diffusion_input(core, batch)` (scaled latents of images or of cached posteriors, or the pixels), the UNet as
    model.unet(x_t, t, labels), the model's schedule (training_timesteps, q_sample, training_target) and
    config.prediction / timesteps / num_classes. The per-sample losses are gathered per timestep bin for the
    epoch's t_bin_k (epoch_stats); the bins are the loss's saved state."""

    state_optional = True  # checkpoints written before the bins were saved resume with empty bins

    def __init__(self, config: DiffusionLossConfig, timesteps: int = 1000):
        self.config = config
        self.bins = TimestepBins(timesteps, config.timestep_bins)

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        core = getattr(model, "module", model)
        settings, schedule = core.config, core.schedule
        with torch.no_grad():
            x0 = diffusion_input(core, batch).float()
        t = schedule.training_timesteps(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        labels = batch[1] if len(batch) > 1 else None
        labels = drop_labels(labels, settings.num_classes, self.config.label_dropout)
        prediction = core.unet(schedule.q_sample(x0, t, noise), t, labels)
        target = schedule.training_target(x0, noise, t, settings.prediction)
        per_sample = (prediction.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        self.bins.add(per_sample, t)
        loss = per_sample.mean()
        return loss, detached_logs(loss, {"mse": loss})

    def epoch_stats(self) -> dict[str, float]:
        """The epoch's mean loss per timestep bin, over every sample it trained (images/timestep_loss.png)."""
        return self.bins.take()

    def state_dict(self) -> dict:
        return {"timestep_bins": self.bins.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.bins.load_state_dict(state["timestep_bins"])


def diffusion_input(core: nn.Module, batch) -> torch.Tensor:
    """x0 of a batch: a latent model's scaled latent z = mean + std eps (a fresh posterior sample each step) of
    images or of cached posteriors (B, F, 2, c, h, w), where one of the F encoded flips is picked per item with a
    fair coin; a pixel model's images themselves."""
    x = batch[0]
    if getattr(core.config, "kind", "pixel") != "latent":
        return x
    if x.ndim == 6:  # the latent cache (engine/latent_cache.py)
        flip = torch.randint(x.shape[1], (x.shape[0],), device=x.device) if x.shape[1] > 1 else 0
        mean, std = x[torch.arange(x.shape[0], device=x.device), flip].unbind(1)
    else:
        mean, std = core.latents(x)
    return mean + std * torch.randn_like(mean)
