"""The vqvae family's row of the table: the VQ-VAE tokenizer (models/vqvae.py, models/quantize.py, losses/vqvae.py).

--recon and --perceptual_weight are common flags (psvae has them too); their vqvae defaults are l2 and 1.0.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn

from losses import VQVAELoss, VQVAELossConfig, build_lpips
from losses.vqvae import RECON_TERMS
from models.vqvae import VQVAE, VQVAE_MODELS, VQVAEConfig

from .family import Family
from .flags import ConfigError, Rule, weight_rule
from .gan_flags import GAN_RULES, check_patch_grid, gan_values
from .web_vqvae import VQVAE_WEB

QUANTIZERS = ("vq", "fsq")
DOWNSAMPLE_FACTORS = (4, 8, 16)
DEFAULT_RECON, DEFAULT_PERCEPTUAL_WEIGHT = "l2", 1.0  # LlamaGen's tokenizer recipe: L2 + LPIPS 1.0
# flags that set VQVAEConfig fields of the same name (None: the size's default)
MODEL_FLAGS = ("codebook_size", "codebook_dim", "quantizer", "l2_norm", "dead_code_threshold", "kmeans_init")
MODEL_FLAGS += ("commit_beta", "width", "num_res_blocks", "z_channels")


def add_vqvae_model_flags(group: argparse._ArgumentGroup) -> None:
    """Quantiser and architecture flags (None: the size's default)."""
    group.add_argument("--codebook_size", type=int, default=None, help="K codes (tiny 512, small 4096, base 16384)")
    group.add_argument("--codebook_dim", type=int, default=None, help="code vector size (default 8; = --latent_dim)")
    group.add_argument("--quantizer", choices=QUANTIZERS, default=None, help="vq (codebook, default) or fsq")
    group.add_argument("--fsq_levels", type=int, nargs="+", default=None, help="fsq: levels per dim (8 5 5 5)")
    group.add_argument(
        "--l2_norm", action=argparse.BooleanOptionalAction, default=None, help="spherical codebook (default on)"
    )
    group.add_argument("--codebook_ema", type=float, default=None, metavar="DECAY", help="EMA codebook updates")
    group.add_argument("--dead_code_threshold", type=float, default=None, help="restart codes used less (EMA count)")
    group.add_argument(
        "--kmeans_init", action=argparse.BooleanOptionalAction, default=None, help="codebook from k-means (default on)"
    )
    group.add_argument("--commit_beta", type=float, default=None, help="commitment weight beta (default 0.25)")
    group.add_argument("--entropy_weight", type=float, default=None, help="entropy loss ratio (default 0 = off)")
    group.add_argument("--channel_mults", type=int, nargs="+", default=None, help="width multiplier per level")
    group.add_argument(
        "--downsample", type=int, choices=DOWNSAMPLE_FACTORS, default=None, help="f: the size's mults cut or extended"
    )
    group.add_argument("--width", type=int, default=None, help="channels of the first level")
    group.add_argument("--num_res_blocks", type=int, default=None, help="ResBlocks per encoder level")
    group.add_argument("--z_channels", type=int, default=None, help="encoder output channels before quant_conv")


def add_vqvae_flags(group: argparse._ArgumentGroup) -> None:
    """Quantiser and architecture flags (the patch-GAN's are the shared group of engine/gan_flags.py)."""
    add_vqvae_model_flags(group)


def size_channel_mults(model_type: str) -> tuple[int, ...]:
    """The registered size's channel multipliers (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return tuple(VQVAE_MODELS[model_type]().config.channel_mults)


def mults_for_downsample(mults: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """log2(factor) + 1 levels: the first ones of `mults`, or `mults` extended by repeating its last entry."""
    levels = int(math.log2(factor)) + 1
    return tuple(mults[:levels]) + (mults[-1],) * max(0, levels - len(mults))


def channel_mults(args: argparse.Namespace) -> tuple[int, ...] | None:
    """--channel_mults, else the size's cut or extended to --downsample, else None (the size's own)."""
    if args.channel_mults is not None:
        mults = tuple(args.channel_mults)
        if args.downsample is not None and 2 ** (len(mults) - 1) != args.downsample:
            raise ConfigError(
                f"--downsample {args.downsample} needs {int(math.log2(args.downsample)) + 1} --channel_mults, got "
                f"{len(mults)}; pass one of the two"
            )
        return mults
    if args.downsample is None:
        return None
    return mults_for_downsample(size_channel_mults(args.model_type), args.downsample)


def vqvae_overrides(args: argparse.Namespace, dataset) -> dict:
    """The model flags given (None: the size's default); --codebook_ema and --entropy_weight under their config
    names, --fsq_levels as a tuple."""
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS}
    overrides.update(ema_decay=args.codebook_ema, entropy_ratio=args.entropy_weight, channel_mults=channel_mults(args))
    overrides["fsq_levels"] = tuple(args.fsq_levels) if args.fsq_levels is not None else None
    return overrides


def vqvae_loss_config(args: argparse.Namespace) -> VQVAELossConfig:
    """The loss settings of the flags (the shared --recon / --perceptual_weight with vqvae defaults)."""
    values = gan_values(args, weight=0.0, start=0)  # vqvae: no GAN unless asked, on from step 0
    recon = args.recon if args.recon is not None else DEFAULT_RECON
    weight = args.perceptual_weight if args.perceptual_weight is not None else DEFAULT_PERCEPTUAL_WEIGHT
    try:
        return VQVAELossConfig(recon=recon, perceptual_weight=weight, **values)
    except ValueError as error:  # the loss names its settings as the flags do
        raise ConfigError(f"vqvae loss: {error}") from None


def build_vqvae_loss(args: argparse.Namespace, model: nn.Module, device: torch.device) -> VQVAELoss:
    """The objective; LPIPS-VGG is only loaded when the perceptual weight is > 0, the discriminator only with a GAN."""
    config = vqvae_loss_config(args)
    perceptual = build_lpips(args.vgg_weights).to(device) if config.perceptual_weight > 0 else None
    return VQVAELoss(config, perceptual, model.config.in_channels, device)


def check_vqvae_dataset(args: argparse.Namespace, dataset) -> None:
    """RGB images only, unconditional, and a discriminator that leaves at least one patch at the image size."""
    if args.conditional:
        raise ConfigError("--conditional: a vqvae is an unconditional tokenizer; drop --conditional")
    kind, channels = getattr(dataset, "kind", "image"), getattr(dataset, "in_channels", 3)
    if kind != "image" or channels != 3:
        raise ConfigError(
            f"vqvae models take RGB images, but dataset '{dataset.name}' holds {channels}-channel {kind}s"
        )
    check_patch_grid(args, args.image_size or dataset.image_size, args.disc_weight or 0.0)


VQVAE_RULES: tuple[Rule, ...] = (
    ("--recon", lambda v: v in RECON_TERMS, f"is no vqvae term: use one of {', '.join(RECON_TERMS)}"),
    weight_rule("--perceptual_weight"),
    weight_rule("--commit_beta"),
    weight_rule("--entropy_weight"),
    ("--codebook_size", lambda v: v >= 2, "must be >= 2 codes (LlamaGen uses 16384)"),
    ("--codebook_dim", lambda v: v >= 1, "must be >= 1 (LlamaGen uses 8)"),
    ("--fsq_levels", lambda v: all(level >= 2 for level in v), "must all be >= 2 levels (e.g. 8 5 5 5)"),
    ("--codebook_ema", lambda v: 0 < v < 1, "is an EMA decay: use a value in (0, 1), e.g. 0.99"),
    ("--dead_code_threshold", lambda v: 0 <= v < math.inf, "must be >= 0 (0 = no restarts)"),
    ("--channel_mults", lambda v: all(m >= 1 for m in v), "must all be >= 1 (e.g. 1 2 2 4)"),
    *((f"--{name}", lambda v: v >= 1, "must be >= 1") for name in ("width", "num_res_blocks", "z_channels")),
    *GAN_RULES,
)


VQVAE_FAMILY = Family(
    name="vqvae",
    config_class=VQVAEConfig,
    model_class=VQVAE,
    registry=VQVAE_MODELS,
    add_flags=add_vqvae_flags,
    model_overrides=vqvae_overrides,
    build_loss=build_vqvae_loss,
    lr_multipliers=lambda args: {},  # encoder, decoder and codebook at the same rate (LlamaGen: one Adam rate)
    check_dataset=check_vqvae_dataset,
    flag_rules=VQVAE_RULES,
    presets={"quickstart": "vqvae_fashion.yaml"},
    web=VQVAE_WEB,
    latent=None,  # discrete tokens: no points of a sphere to interpolate or map
    summary="VQ-VAE tokenizers (vqvae*): quantiser, codebook and architecture (the patch-GAN: its own group)",
)
