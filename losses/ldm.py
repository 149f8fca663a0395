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
classifier-free guidance has an unconditional branch. The per-sample losses are also logged by timestep bin
(t_bin_k: bin k of `timestep_bins` equal bins of 1..T), for images/timestep_loss.png.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .gan import GANSettings, ImageGANLoss, check_gan_settings

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

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch[0]
        core = getattr(model, "module", model)
        x_hat, mean, logvar = model(x)
        terms, rec_total = self.image_terms(x_hat, x)
        terms["kl"] = kl_divergence(mean, logvar).mean() / x[0].numel()
        gan, gan_logs = self.gan_terms(core, x, x_hat, rec_total, step)
        loss = rec_total + self.config.kl_weight * terms["kl"] + gan
        values = torch.stack([loss.detach(), *(t.detach().float() for t in terms.values())]).tolist()  # one sync
        return loss, {**dict(zip(["loss", *terms], values)), **gan_logs}


def sample_timesteps(batch: int, timesteps: int, device: torch.device) -> torch.Tensor:
    """t ~ U{1..T} (index 0 is the clean image), (B,) long."""
    return torch.randint(1, timesteps + 1, (batch,), device=device)


def noised(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
    abar = alphas_bar.to(x0.device, torch.float32)[t].view(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def target_of(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_bar, prediction: str) -> torch.Tensor:
    """What the UNet predicts: eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    if prediction == "eps":
        return noise
    abar = alphas_bar.to(x0.device, torch.float32)[t].view(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def drop_labels(labels: torch.Tensor | None, num_classes: int, probability: float) -> torch.Tensor | None:
    """Labels with each replaced by the null class (num_classes) with the given probability; None stays None."""
    if labels is None or num_classes == 0:
        return None
    drop = torch.rand(labels.shape, device=labels.device) < probability
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def timestep_bin_logs(per_sample: torch.Tensor, t: torch.Tensor, timesteps: int, bins: int) -> dict[str, float]:
    """{"t_bin_k": mean loss of the batch's samples whose t falls in bin k} for the bins present."""
    index = ((t - 1) * bins // timesteps).clamp(0, bins - 1)
    sums = torch.zeros(bins, device=t.device).index_add_(0, index, per_sample.detach().float())
    counts = torch.bincount(index, minlength=bins)
    means = (sums / counts.clamp_min(1)).tolist()
    return {f"t_bin_{k}": means[k] for k, count in enumerate(counts.tolist()) if count > 0}


class DiffusionLoss:
    """loss(model, batch, step) -> (loss, logs) for a LatentDiffusion or PixelDiffusion model: x0 from
    `diffusion_input(model, batch)` (the scaled latents, or the pixels), the UNet as model.unet(x_t, t, labels),
    the schedule's alphas_bar (T + 1 values, index 0 = 1) and config.prediction / timesteps / num_classes."""

    def __init__(self, config: DiffusionLossConfig, input_fn=None):
        self.config = config
        self.input_fn = input_fn or default_input  # (core, batch) -> x0; the latent cache swaps in its own

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        core = getattr(model, "module", model)
        settings, alphas_bar = core.config, alphas_bar_of(core)
        with torch.no_grad():
            x0 = self.input_fn(core, batch).float()
        t = sample_timesteps(x0.shape[0], settings.timesteps, x0.device)
        noise = torch.randn_like(x0)
        labels = batch[1] if len(batch) > 1 else None
        labels = drop_labels(labels, settings.num_classes, self.config.label_dropout)
        prediction = core.unet(noised(x0, t, noise, alphas_bar), t, labels)
        target = target_of(x0, t, noise, alphas_bar, settings.prediction)
        per_sample = (prediction.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        loss = per_sample.mean()
        logs = {"loss": float(loss.detach()), "mse": float(loss.detach())}
        logs.update(timestep_bin_logs(per_sample, t, settings.timesteps, self.config.timestep_bins))
        return loss, logs


def alphas_bar_of(core: nn.Module) -> torch.Tensor:
    """The model's schedule's alphas_bar (T + 1 values, index 0 = 1)."""
    return core.schedule.alphas_bar


def default_input(core: nn.Module, batch) -> torch.Tensor:
    """x0 of a batch of images: a latent model's scaled latent z = mean + std eps (so the posterior is sampled),
    a pixel model's images themselves."""
    x = batch[0]
    if getattr(core.config, "kind", "pixel") != "latent":
        return x
    mean, std = core.latents(x)
    return mean + std * torch.randn_like(mean)
