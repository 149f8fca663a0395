"""The patch-GAN flags shared by the families whose autoencoders train with one (vqvae, ldm): one --help group,
owned by each of them (engine/training_flags.py), and their rules."""

from __future__ import annotations

import argparse

from losses.gan import patch_grid

from .flags import ConfigError, Rule, weight_rule

GAN_FAMILIES = ("vqvae", "ldm")
GAN_FLAGS = ("disc_weight", "disc_start", "disc_lr", "disc_layers", "disc_width", "adaptive_weight")


def add_gan_flags(group: argparse._ArgumentGroup) -> None:
    """--disc_weight (None: the family's default), --disc_start, the discriminator's size and rate."""
    group.add_argument(
        "--disc_weight", type=float, default=None, help="patch-GAN weight (times lambda); 0 = no GAN (vqvae 0, ldm 0.5)"
    )
    group.add_argument("--disc_start", type=int, default=None, help="step from which the GAN is on (vqvae 0)")
    group.add_argument("--disc_lr", type=float, default=1e-4, help="discriminator Adam rate")
    group.add_argument("--disc_layers", type=int, default=3, help="stride-2 layers of the PatchGAN")
    group.add_argument("--disc_width", type=int, default=64, help="channels of its first layer")
    group.add_argument(
        "--adaptive_weight",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lambda = |grad rec| / |grad g_loss| at the decoder's last layer (else 1)",
    )


def gan_values(args: argparse.Namespace, weight: float, start: int) -> dict:
    """The loss config's disc_* values of the flags; `weight` and `start` stand in for flags left at None."""
    values = {name: getattr(args, name) for name in GAN_FLAGS}
    values["disc_weight"] = weight if values["disc_weight"] is None else values["disc_weight"]
    values["disc_start"] = start if values["disc_start"] is None else values["disc_start"]
    return values


def check_patch_grid(args: argparse.Namespace, size: int, weight: float) -> None:
    """ConfigError when a discriminator would leave no patch at the image size."""
    if weight > 0 and patch_grid(size, args.disc_layers) < 1:
        raise ConfigError(
            f"--disc_layers {args.disc_layers} leaves no patch at {size} px; pass a smaller --disc_layers"
        )


GAN_RULES: tuple[Rule, ...] = (
    weight_rule("--disc_weight"),
    ("--disc_start", lambda v: v >= 0, "must be >= 0 (a step)"),
    ("--disc_lr", lambda v: 0 < v <= 1, "must be in (0, 1]; LlamaGen uses 1e-4"),
    ("--disc_layers", lambda v: 1 <= v <= 6, "must be in [1, 6] (pix2pix uses 3)"),
    ("--disc_width", lambda v: v >= 1, "must be >= 1 (pix2pix uses 64)"),
)
