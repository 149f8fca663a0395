"""The VQ-VAE (VQGAN / LlamaGen tokenizer) objective: reconstruction + LPIPS + the quantiser's terms + an optional
patch-GAN.

    loss = rec + perceptual_weight LPIPS + vq + commit + entropy + disc_factor(step) disc_weight lambda g_loss

rec is the per-value mean L1 or L2 error on [0, 1] images (so it means the same at any image size); vq, commit and
entropy are the model's own terms (already weighted: commit by beta, entropy by its ratio; zeros under EMA or FSQ).
The patch-GAN (hinge loss, adaptive weight, its own Adam, the start step and its resumable state) is the shared one
of losses/gan.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .gan import (  # noqa: F401  (re-exported: the vqvae's tests and family import them from here)
    GANSettings,
    PatchDiscriminator,
    PatchGAN,
    adaptive_weight,
    build_gan,
    check_gan_settings,
    hinge_d_loss,
    hinge_g_loss,
    patch_grid,
)

RECON_TERMS = ("l1", "l2")


@dataclass
class VQVAELossConfig:
    """Reconstruction form, LPIPS weight and the optional patch-GAN."""

    recon: str = "l2"  # per-value "l1" or "l2" (squared) error on [0, 1] images
    perceptual_weight: float = 1.0  # LPIPS-VGG weight (LlamaGen: 1.0); 0 = no LPIPS network
    disc_weight: float = 0.0  # patch-GAN generator weight (times the adaptive lambda); 0 = no discriminator
    disc_start: int = 0  # optimizer step from which the GAN (both players) is on
    disc_lr: float = 1e-4  # discriminator Adam rate
    disc_layers: int = 3  # stride-2 4x4 conv layers of the PatchGAN (pix2pix's n_layers)
    disc_width: int = 64  # channels of its first layer (doubled per layer, at most 8x)
    adaptive_weight: bool = True  # False: lambda = 1

    def __post_init__(self):
        if self.recon not in RECON_TERMS:
            raise ValueError(f"unknown recon '{self.recon}': use one of {', '.join(RECON_TERMS)}")
        if not (self.perceptual_weight >= 0 and self.disc_weight >= 0):
            raise ValueError("perceptual_weight and disc_weight must be >= 0")
        check_gan_settings(self.disc_weight, self.disc_start, self.disc_lr, self.disc_layers, self.disc_width)

    def gan_settings(self) -> GANSettings:
        """The patch-GAN's part of the settings."""
        names = ("weight", "start", "lr", "layers", "width")
        values = {name: getattr(self, f"disc_{name}") for name in names}
        return GANSettings(**values, adaptive_weight=self.adaptive_weight)

    def to_dict(self) -> dict:
        return asdict(self)


def batch_usage(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the K codes used, perplexity exp(H(p))) of one batch's assignments (B, h, w)."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean(), entropy.exp()


class VQVAELoss:
    """loss(model, batch, step) -> (loss, logs); the model's forward(x) returns (raw reconstruction, aux) with
    aux holding "vq", "commit", "entropy" and "indices". `perceptual`: a frozen LPIPS taking images in [-1, 1]
    (None only when perceptual_weight is 0). With disc_weight > 0 the loss owns a discriminator on `device`."""

    def __init__(
        self,
        config: VQVAELossConfig,
        perceptual: nn.Module | None = None,
        in_channels: int = 3,
        device: torch.device | str = "cpu",
    ):
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight is > 0 but no LPIPS module was given")
        self.config, self.perceptual = config, perceptual
        self.gan = build_gan(config.gan_settings(), in_channels, device)

    @property
    def discriminator(self) -> nn.Module | None:
        """The patch discriminator (None without a GAN)."""
        return self.gan.discriminator if self.gan is not None else None

    # ---- state (the trainer's stateful-loss hook) -------------------------------------------------
    def state_dict(self) -> dict:
        """The discriminator's weights and its Adam state (empty without a GAN)."""
        return self.gan.state_dict() if self.gan is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved; a GAN run needs its discriminator back."""
        if self.gan is not None:
            self.gan.load_state_dict(state)

    # ---- terms ------------------------------------------------------------------------------------
    def recon_term(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-value mean L1 or L2 error on the [0, 1] scale."""
        difference = (x_hat.float() - x.float()) / 2
        return difference.abs().mean() if self.config.recon == "l1" else difference.pow(2).mean()

    def perceptual_term(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Mean LPIPS of images in [-1, 1]; None when its weight is 0."""
        if self.config.perceptual_weight == 0:
            return None
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (B, 3, H, W), got {tuple(x.shape)}; set perceptual_weight 0")
        return self.perceptual(x_hat.float(), x.float()).mean()

    def gan_terms(self, core: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, rec_total: torch.Tensor, step: int):
        """(generator loss term, logs): zero (and no logs) without a GAN; see losses/gan.py."""
        if self.gan is None:
            return torch.zeros((), device=x.device), {}
        return self.gan.terms(core, x, x_hat, rec_total, step)

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch[0]
        core = getattr(model, "module", model)  # DDP / compiled wrappers keep the real model in .module
        x_hat, aux = model(x)
        terms = {"rec": self.recon_term(x_hat, x)}
        rec_total = terms["rec"]
        perceptual = self.perceptual_term(x_hat, x)
        if perceptual is not None:
            terms["perc"] = perceptual
            rec_total = rec_total + self.config.perceptual_weight * perceptual
        terms.update({name: aux[name].float() for name in ("vq", "commit", "entropy")})
        gan, gan_logs = self.gan_terms(core, x, x_hat, rec_total, step)
        loss = rec_total + terms["vq"] + terms["commit"] + terms["entropy"] + gan
        usage, perplexity = batch_usage(aux["indices"], core.quantizer.codebook_size)
        values = [loss.detach(), *(t.detach().float() for t in terms.values()), usage, perplexity]
        logs = dict(zip(["loss", *terms, "usage", "perplexity"], torch.stack(values).tolist()))  # one sync
        return loss, {**logs, **gan_logs}
