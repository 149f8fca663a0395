"""The psvae family's row of the table: the Power-Spherical VAE (models/psvae.py, losses/psvae.py)."""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn

from losses import PSVAELoss, PSVAELossConfig, build_lpips
from losses.psvae import BETA_SCHEDULES, NEEDS_SIGMA, RECON_TERMS
from models.psvae import BACKBONES, DECODERS, POSTERIORS, PSVAE, PSVAE_MODELS, PSVAEConfig

from .family import Family, LatentSphere, WebExport
from .flags import ConfigError, Rule, weight_rule
from .onnx_networks import POINT_LATENT_ONNX

# flags that set PSVAEConfig fields of the same name (None: the size's default)
MODEL_FLAGS = (
    "backbone",
    "decoder",
    "posterior",
    "deterministic",
    "kappa_min",
    "kappa_max",
    "kappa_init",
    "fixed_kappa",
)


def add_psvae_model_flags(group: argparse._ArgumentGroup) -> None:
    """Architecture and posterior flags (None: the size's default)."""
    group.add_argument("--backbone", choices=BACKBONES, default=None, help="encoder (default conv; conv1d for signals)")
    group.add_argument("--decoder", choices=DECODERS, default=None, help="2-D decoder (default conv)")
    group.add_argument("--posterior", choices=POSTERIORS, default=None, help="q(z|x) (default power_spherical)")
    group.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain spherical autoencoder: z = mu, no kappa, no KL",
    )
    group.add_argument("--kappa_min", type=float, default=None, help="kappa = softplus(.) + kappa_min (default 1)")
    group.add_argument("--kappa_max", type=float, default=None, help="cap on kappa (default none)")
    group.add_argument("--kappa_init", type=float, default=None, help="kappa of every input at the start (default 10)")
    group.add_argument("--fixed_kappa", type=float, default=None, help="kappa = this, exactly (no kappa head)")


def add_psvae_flags(group: argparse._ArgumentGroup) -> None:
    """Architecture, posterior, beta schedule (--recon and --perceptual_weight are common flags, shared with vqvae)."""
    add_psvae_model_flags(group)
    group.add_argument("--beta", type=float, default=1e-3, help="KL weight, relative to a per-value mean recon")
    group.add_argument("--beta_schedule", choices=BETA_SCHEDULES, default="constant")
    group.add_argument("--beta_start", type=float, default=0.0, help="beta at the start of a ramp")
    group.add_argument("--beta_warmup_steps", type=int, default=0, help="ramp length in steps")
    group.add_argument("--beta_cycle_steps", type=int, default=0, help="cyclic: period in steps")
    group.add_argument("--beta_cycles", type=int, default=0, help="cyclic: cycles, then constant (0 = for ever)")
    group.add_argument("--truncation_low", type=float, default=0.0, help="truncated_nll support, data scale")
    group.add_argument("--truncation_high", type=float, default=1.0)


def psvae_overrides(args: argparse.Namespace, dataset) -> dict:
    """The model flags given, and the 1-D backbone for a dataset of signals unless --backbone says otherwise."""
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS}
    if overrides["backbone"] is None and getattr(dataset, "kind", "image") == "signal":
        overrides["backbone"] = "conv1d"
    return overrides


def psvae_loss_config(args: argparse.Namespace) -> PSVAELossConfig:
    names = ("recon", "beta", "beta_schedule", "beta_start", "beta_warmup_steps", "beta_cycle_steps", "beta_cycles")
    names += ("perceptual_weight", "label_dropout", "truncation_low", "truncation_high")
    values = {name: getattr(args, name) for name in names}
    values.update(recon=args.recon or "mse", perceptual_weight=args.perceptual_weight or 0.0)  # shared flags' defaults
    try:
        return PSVAELossConfig(**values)
    except ValueError as error:  # the loss names its settings as the flags do
        raise ConfigError(f"psvae loss: {error}") from None


def build_psvae_loss(args: argparse.Namespace, model: nn.Module, device: torch.device) -> PSVAELoss:
    """The objective; LPIPS-VGG is only loaded when --perceptual_weight > 0."""
    config = psvae_loss_config(args)
    perceptual = build_lpips(args.vgg_weights).to(device) if config.perceptual_weight > 0 else None
    return PSVAELoss(config, perceptual)


def check_psvae_dataset(args: argparse.Namespace, dataset) -> None:
    """The sigma forms of --recon need a dataset with per-value errors; LPIPS needs RGB images."""
    if args.recon in NEEDS_SIGMA and not getattr(dataset, "has_sigma", False):
        raise ConfigError(
            f"--recon {args.recon} needs per-value errors, but dataset '{dataset.name}' has none; "
            "use a dataset with an error array or --recon mse / l1"
        )
    if (args.perceptual_weight or 0) > 0 and getattr(dataset, "kind", "image") != "image":
        raise ConfigError(f"--perceptual_weight (LPIPS) needs images, but dataset '{dataset.name}' holds signals")


PSVAE_RULES: tuple[Rule, ...] = (
    weight_rule("--beta"),
    weight_rule("--beta_start"),
    weight_rule("--perceptual_weight"),
    ("--recon", lambda v: v in RECON_TERMS, f"is no psvae term: use one of {', '.join(RECON_TERMS)}"),
    ("--kappa_min", lambda v: 0 <= v < math.inf, "must be >= 0 (Spherinator uses 1)"),
    ("--fixed_kappa", lambda v: 0 < v < math.inf, "must be > 0: the exact concentration of q(z|x)"),
    *((f"--beta_{name}", lambda v: v >= 0, "must be >= 0") for name in ("warmup_steps", "cycle_steps", "cycles")),
)


def psvae_edge_layers(config: dict) -> set[str]:
    """The first layer of the encoder and the last of the decoder (kept fp16 in q8/q4, web_format.md §4)."""
    return {"encoder.patch_embed" if config["backbone"] == "vit" else "encoder.stem", "decoder.out"}


def psvae_index_fields(config: dict) -> dict:
    """z_dim (the latent is a point of S^(z_dim-1)), backbone and decoder of an index entry."""
    PSVAEConfig.from_dict(config)  # a config this code cannot build is left out of the index
    return {"z_dim": config["z_dim"], "backbone": config["backbone"], "decoder": config["decoder"]}


def psvae_encode_point(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """mu(x): the posterior's location, a point of the unit sphere S^(d-1) (B, d)."""
    return model.encode(x, labels)[0]


def psvae_decode_point(model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """D(z) for points of the unit sphere (B, d); renormalised, so points a little off it decode as their direction."""
    return model.decode(torch.nn.functional.normalize(z, dim=-1), labels)


PSVAE_FAMILY = Family(
    name="psvae",
    config_class=PSVAEConfig,
    model_class=PSVAE,
    registry=PSVAE_MODELS,
    add_flags=add_psvae_flags,
    model_overrides=psvae_overrides,
    build_loss=build_psvae_loss,
    lr_multipliers=lambda args: {},  # encoder and decoder at the same rate (Spherinator: one Adam rate)
    check_dataset=check_psvae_dataset,
    flag_rules=PSVAE_RULES,
    presets={"quickstart": "psvae_fashion.yaml"},
    web=WebExport(("backbone", "decoder", "z_dim"), psvae_edge_layers, psvae_index_fields, onnx=POINT_LATENT_ONNX),
    latent=LatentSphere(psvae_encode_point, psvae_decode_point),
    summary="Power-Spherical VAE models (psvae*): architecture, posterior, reconstruction form and beta schedule",
)
