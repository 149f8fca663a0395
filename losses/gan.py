"""The patch-GAN shared by the autoencoder objectives (vqvae, ldm's stage 1): discriminator, hinge losses, the
adaptive weight, its own Adam, the start step and its state.

The patch-GAN (Isola et al. 2017, as in taming-transformers, LlamaGen and CompVis LDM) uses the hinge loss; its
adaptive weight lambda = ||grad_last rec_total|| / (||grad_last g_loss|| + 1e-4), clamped to [0, 1e4] (Esser et al.
2021, eq. 7), balances it against rec + LPIPS at the decoder's last layer (model.last_layer()). Before disc_start
the GAN is off: no discriminator step and no generator term.

Order within a step: the discriminator is updated first, on the real images and the detached reconstructions, with
its own Adam (under torch.distributed its gradients are averaged over ranks); the generator term then goes through
the updated discriminator, whose weights are frozen for that pass. (Updating it after the generator's forward would
modify weights the generator's backward still needs.) The discriminator and its optimizer state are the GAN's
state_dict, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .logs import constant_log
from .perceptual import perceptual_distance

ADAPTIVE_WEIGHT_MAX = 1e4  # taming-transformers' clamp of lambda
ADAPTIVE_WEIGHT_EPS = 1e-4  # keeps lambda finite when the generator gradient vanishes


@dataclass(frozen=True)
class GANSettings:
    """The patch-GAN's settings (a loss config's disc_* fields); weight 0 = no discriminator."""

    weight: float = 0.0  # generator weight (times the adaptive lambda)
    start: int = 0  # optimizer step from which the GAN (both players) is on
    lr: float = 1e-4  # discriminator Adam rate
    layers: int = 3  # stride-2 4x4 conv layers (pix2pix's n_layers)
    width: int = 64  # channels of its first layer (doubled per layer, at most 8x)
    adaptive_weight: bool = True  # False: lambda = 1


def check_gan_settings(weight: float, start: int, lr: float, layers: int, width: int) -> None:
    """ValueError naming the first bad disc_* setting."""
    if not weight >= 0:
        raise ValueError("disc_weight must be >= 0")
    if start < 0 or not lr > 0:
        raise ValueError("disc_start must be >= 0 and disc_lr > 0")
    if layers < 1 or width < 1:
        raise ValueError("disc_layers and disc_width must be >= 1")


def discriminator_groups(channels: int) -> int:
    """GroupNorm groups for a discriminator layer: 32 where the channels allow, else the largest divisor <= 32."""
    return next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)


class PatchDiscriminator(nn.Module):
    """NLayer PatchGAN (pix2pix): `layers` 4x4 stride-2 convs, one 4x4 stride-1 conv, a 4x4 conv to one logit per
    patch. GroupNorm instead of BatchNorm: a patch's logit never depends on its batch mates or the rank."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for index in range(1, layers + 1):
            out = width * min(2**index, 8)
            stride = 2 if index < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride, 1, bias=False), nn.GroupNorm(discriminator_groups(out), out)]
            blocks += [nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1, h, w) patch logits


def patch_grid(image_size: int, layers: int) -> int:
    """Side of the discriminator's logit map on square images: `layers` halvings, then two 4x4 pad-1 convs (-1 each)."""
    side = image_size
    for _ in range(layers):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(x_hat)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """lambda = ||d rec / d last|| / (||d g / d last|| + 1e-4), clamped to [0, 1e4], detached (Esser et al., eq. 7)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0, ADAPTIVE_WEIGHT_MAX).detach()


def average_gradients(module: nn.Module) -> None:
    """Under torch.distributed: replace each gradient by its mean over ranks (no-op otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(dist.get_world_size())


class PatchGAN:
    """The discriminator, its Adam and the schedule; terms(model, x, x_hat, rec_total, step) -> (term, logs)."""

    def __init__(self, settings: GANSettings, in_channels: int = 3, device: torch.device | str = "cpu"):
        self.settings = settings
        self.discriminator = PatchDiscriminator(in_channels, settings.width, settings.layers).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=settings.lr, betas=(0.5, 0.9))

    def state_dict(self) -> dict:
        """The discriminator's weights and its Adam state."""
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved; one line when the checkpoint has none."""
        if "discriminator" not in state:
            raise ValueError("this checkpoint has no discriminator state, which --disc_weight > 0 needs")
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

    def on(self, step: int) -> bool:
        return step >= self.settings.start

    def discriminator_step(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """One Adam step of the discriminator on real x and detached x_hat; returns its hinge loss (detached)."""
        self.discriminator.requires_grad_(True)
        d_loss = hinge_d_loss(self.discriminator(x.detach()), self.discriminator(x_hat.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        average_gradients(self.discriminator)
        self.optimizer.step()
        return d_loss.detach()

    def generator_term(self, model: nn.Module, rec_total: torch.Tensor, x_hat: torch.Tensor):
        """(weight * lambda * g_loss, g_loss, lambda) through the (frozen) discriminator."""
        self.discriminator.requires_grad_(False)
        g_loss = hinge_g_loss(self.discriminator(x_hat))
        weight = torch.ones((), device=x_hat.device)
        if self.settings.adaptive_weight and torch.is_grad_enabled():
            weight = adaptive_weight(rec_total, g_loss, model.last_layer())
        return self.settings.weight * weight * g_loss, g_loss, weight

    def terms(self, core: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, rec_total: torch.Tensor, step: int):
        """(generator loss term, logs of 0-dim tensors): zero and disc_factor 0 before the start step."""
        if not self.on(step):
            return torch.zeros((), device=x.device), {"disc_factor": constant_log(0.0, x)}
        d_loss = self.discriminator_step(x, x_hat)
        term, g_loss, weight = self.generator_term(core, rec_total, x_hat)
        logs = {"g_loss": g_loss.detach().float(), "d_loss": d_loss.float(), "disc_weight_adaptive": weight.float()}
        return term, {**logs, "disc_factor": constant_log(1.0, x)}

    @torch.no_grad()
    def verdict(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch probability of "real", sigmoid(D(x)): (B, 1, h, w), for renders."""
        return torch.sigmoid(self.discriminator(x))


def build_gan(settings: GANSettings, in_channels: int, device: torch.device | str) -> PatchGAN | None:
    """A PatchGAN when its weight is > 0, else None."""
    return PatchGAN(settings, in_channels, device) if settings.weight > 0 else None


class ImageGANLoss:
    """What the tokenizer and autoencoder objectives share: an L1/L2 error on the [0, 1] scale, an optional LPIPS
    term and an optional patch-GAN whose discriminator and Adam state are the loss's state (the trainer's
    stateful-loss hook). `config` has recon, perceptual_weight and gan_settings(); `perceptual` is a frozen LPIPS
    (or PerceptualDistance) on [-1, 1] images (None only when perceptual_weight is 0)."""

    def __init__(self, config, perceptual: nn.Module | None = None, in_channels: int = 3, device="cpu"):
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight is > 0 but no LPIPS module was given")
        self.config = config
        self.perceptual = perceptual_distance(perceptual) if config.perceptual_weight > 0 else None
        self.gan = build_gan(config.gan_settings(), in_channels, device)

    @property
    def discriminator(self) -> nn.Module | None:
        """The patch discriminator (None without a GAN)."""
        return self.gan.discriminator if self.gan is not None else None

    def verdict(self, x: torch.Tensor, steps_done: int) -> torch.Tensor | None:
        """The discriminator's per-patch probability that images are real (B, 1, h, w), for renders; None without
        a GAN or until it has trained (steps_done optimizer steps, the last one at index steps_done - 1)."""
        if self.gan is None or not self.gan.on(steps_done - 1):
            return None
        return self.gan.verdict(x)

    def state_dict(self) -> dict:
        """The discriminator's weights and its Adam state (empty without a GAN)."""
        return self.gan.state_dict() if self.gan is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved; a GAN run needs its discriminator back."""
        if self.gan is not None:
            self.gan.load_state_dict(state)

    def recon_term(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-value mean L1 or L2 error on the [0, 1] scale of images in [-1, 1]."""
        difference = (x_hat.float() - x.float()) / 2
        return difference.abs().mean() if self.config.recon == "l1" else difference.pow(2).mean()

    def perceptual_term(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Mean LPIPS of images in [-1, 1] (the real images' features without a graph); None when its weight is 0."""
        if self.perceptual is None:
            return None
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (B, 3, H, W), got {tuple(x.shape)}; set perceptual_weight 0")
        perceptual = self.perceptual
        return perceptual.distance(perceptual.features(x_hat), perceptual.target_features(x)).mean()

    def image_terms(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"rec", "perc" when on}, rec + perceptual_weight * perc): the reconstruction the GAN weight balances."""
        terms = {"rec": self.recon_term(x_hat, x)}
        rec_total = terms["rec"]
        perceptual = self.perceptual_term(x_hat, x)
        if perceptual is not None:
            terms["perc"] = perceptual
            rec_total = rec_total + self.config.perceptual_weight * perceptual
        return terms, rec_total

    def gan_terms(self, core: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, rec_total: torch.Tensor, step: int):
        """(generator loss term, logs): zero (and no logs) without a GAN."""
        if self.gan is None:
            return torch.zeros((), device=x.device), {}
        return self.gan.terms(core, x, x_hat, rec_total, step)
