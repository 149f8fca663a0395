"""The VQ-VAE (VQGAN / LlamaGen tokenizer) objective: reconstruction + LPIPS + the quantiser's terms + an optional
patch-GAN.

    loss = rec + perceptual_weight LPIPS + vq + commit + entropy + disc_factor(step) disc_weight lambda g_loss

rec is the per-value mean L1 or L2 error on [0, 1] images (so it means the same at any image size); vq, commit and
entropy are the model's own terms (already weighted: commit by beta, entropy by its ratio; zeros under EMA or FSQ).
The patch-GAN (Isola et al. 2017, as in taming-transformers and LlamaGen) uses the hinge loss; its adaptive weight
lambda = ||grad_last rec_total|| / (||grad_last g_loss|| + 1e-4), clamped to [0, 1e4] (Esser et al. 2021, eq. 7),
balances it against rec + LPIPS at the decoder's last layer (model.last_layer()). Before --disc_start the GAN is
off: no discriminator step and no generator term.

Order within a step: the discriminator is updated first, on the real images and the detached reconstructions, with
its own Adam (under torch.distributed its gradients are averaged over ranks); the generator term then goes through
the updated discriminator, whose weights are frozen for that pass. (Updating it after the generator's forward would
modify weights the generator's backward still needs.) The discriminator and its optimizer state are the loss's
state_dict, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

RECON_TERMS = ("l1", "l2")
ADAPTIVE_WEIGHT_MAX = 1e4  # taming-transformers' clamp of lambda
ADAPTIVE_WEIGHT_EPS = 1e-4  # keeps lambda finite when the generator gradient vanishes


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
        if self.disc_start < 0 or not self.disc_lr > 0:
            raise ValueError("disc_start must be >= 0 and disc_lr > 0")
        if self.disc_layers < 1 or self.disc_width < 1:
            raise ValueError("disc_layers and disc_width must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


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


def batch_usage(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of the K codes used, perplexity exp(H(p))) of one batch's assignments (B, h, w)."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean(), entropy.exp()


def average_gradients(module: nn.Module) -> None:
    """Under torch.distributed: replace each gradient by its mean over ranks (no-op otherwise)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(dist.get_world_size())


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
        self.discriminator, self.disc_optimizer = None, None
        if config.disc_weight > 0:
            self.discriminator = PatchDiscriminator(in_channels, config.disc_width, config.disc_layers).to(device)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.disc_lr, betas=(0.5, 0.9))

    # ---- state (the trainer's stateful-loss hook) -------------------------------------------------
    def state_dict(self) -> dict:
        """The discriminator's weights and its Adam state (empty without a GAN)."""
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.disc_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() saved; a GAN run needs its discriminator back."""
        if self.discriminator is None:
            return
        if "discriminator" not in state:
            raise ValueError("this checkpoint has no discriminator state, which --disc_weight > 0 needs")
        self.discriminator.load_state_dict(state["discriminator"])
        self.disc_optimizer.load_state_dict(state["optimizer"])

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

    def gan_on(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start

    def discriminator_step(self, x: torch.Tensor, x_hat: torch.Tensor) -> float:
        """One Adam step of the discriminator on real x and detached x_hat; returns its hinge loss."""
        self.discriminator.requires_grad_(True)
        d_loss = hinge_d_loss(self.discriminator(x.detach()), self.discriminator(x_hat.detach()))
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        average_gradients(self.discriminator)
        self.disc_optimizer.step()
        return float(d_loss.detach())

    def generator_term(self, model: nn.Module, rec_total: torch.Tensor, x_hat: torch.Tensor):
        """(disc_weight * lambda * g_loss, g_loss, lambda) through the (frozen) discriminator."""
        self.discriminator.requires_grad_(False)
        g_loss = hinge_g_loss(self.discriminator(x_hat))
        weight = torch.ones((), device=x_hat.device)
        if self.config.adaptive_weight and torch.is_grad_enabled():
            weight = adaptive_weight(rec_total, g_loss, model.last_layer())
        return self.config.disc_weight * weight * g_loss, g_loss, weight

    def gan_terms(self, core: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, rec_total: torch.Tensor, step: int):
        """(generator loss term, logs): zero and the disc_factor 0 before disc_start or without a GAN."""
        if not self.gan_on(step):
            return torch.zeros((), device=x.device), {"disc_factor": 0.0} if self.discriminator is not None else {}
        d_loss = self.discriminator_step(x, x_hat)
        term, g_loss, weight = self.generator_term(core, rec_total, x_hat)
        logs = {"g_loss": float(g_loss.detach()), "d_loss": d_loss, "disc_weight_adaptive": float(weight)}
        return term, {**logs, "disc_factor": 1.0}

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
