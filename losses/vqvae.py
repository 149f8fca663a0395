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
    ImageGANLoss,
    PatchDiscriminator,
    PatchGAN,
    adaptive_weight,
    build_gan,
    check_gan_settings,
    hinge_d_loss,
    hinge_g_loss,
    patch_grid,
)
from .logs import detached_logs

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
    """(fraction of the K codes used, perplexity exp(H(p))) of one batch's assignments (B, h, w). Counted with
    index_add_ rather than bincount, which reads the largest index back to the host on CUDA."""
    flat = indices.reshape(-1)
    counts = torch.zeros(codebook_size, device=flat.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.float)
    )
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean(), entropy.exp()


class VQVAELoss(ImageGANLoss):
    """loss(model, batch, step) -> (loss, logs); the model's forward(x) returns (raw reconstruction, aux) with
    aux holding "vq", "commit", "entropy" and "indices". `perceptual`: a frozen LPIPS taking images in [-1, 1]
    (None only when perceptual_weight is 0). With disc_weight > 0 the loss owns a discriminator on `device`."""

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch[0]
        core = getattr(model, "module", model)  # DDP / compiled wrappers keep the real model in .module
        x_hat, aux = model(x)
        terms, rec_total = self.image_terms(x_hat, x)
        terms.update({name: aux[name].float() for name in ("vq", "commit", "entropy")})
        gan, gan_logs = self.gan_terms(core, x, x_hat, rec_total, step)
        loss = rec_total + terms["vq"] + terms["commit"] + terms["entropy"] + gan
        usage, perplexity = batch_usage(aux["indices"], core.quantizer.codebook_size)
        return loss, {**detached_logs(loss, terms), "usage": usage, "perplexity": perplexity, **gan_logs}
