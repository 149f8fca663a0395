"""The sphere family's row of the table: the Sphere Encoder (models/sphere.py, losses/sphere.py)."""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn

from losses import SphereLoss, SphereLossConfig, build_perceptual
from models.sphere import SPHERE_MODELS, SphereConfig, SphereEncoder

from .family import Family, LatentSphere, WebExport
from .flags import ConfigError, Rule, probability_rule, weight_rule
from .onnx_networks import POINT_LATENT_ONNX


def add_sphere_flags(group: argparse._ArgumentGroup) -> None:
    """Noise level, loss weights, the ConvNeXt term and the encoder's lr multiplier."""
    noise = group.add_mutually_exclusive_group()
    noise.add_argument("--noise_angle", type=float, default=None, help="theta_max in degrees (80 <=32px, else 85)")
    noise.add_argument("--sigma_max", type=float, default=None, help="sigma itself (give one): theta = atan(sigma)")
    for name, default in (("recon_dist", 1.0), ("recon_perc", 1.0), ("con_dist", 0.5), ("con_perc", 0.5)):
        group.add_argument(f"--{name}_weight", type=float, default=default)
    group.add_argument("--latent_weight", type=float, default=0.1)
    group.add_argument(
        "--distance",
        choices=["l1", "smooth_l1"],
        default="smooth_l1",
        help="pixel distance on [0, 1] images; smooth_l1 (beta 1) is the official code's",
    )
    group.add_argument("--hard_case_prob", type=float, default=0.1)
    group.add_argument("--small_noise_ratio", type=float, default=0.5)
    group.add_argument(
        "--convnext_weight",
        type=float,
        default=0.1,
        help="w of the official ConvNeXt-S logit term: perc = (LPIPS + w * MSE(logits)) / (1 + w); official 0.1",
    )
    group.add_argument(
        "--convnext_weights",
        default=None,
        help="local convnext_small() state_dict (or env SPHERE_CONVNEXT_WEIGHTS); default: torchvision download",
    )
    group.add_argument("--encoder_lr_mult", type=float, default=0.1, help="the encoder group's lr multiplier")


def noise_angle_from_args(args: argparse.Namespace) -> float | None:
    """theta_max in degrees from --noise_angle or --sigma_max (theta = atan(sigma)); None = size default."""
    if args.noise_angle is not None:
        return args.noise_angle
    if args.sigma_max is not None:
        return math.degrees(math.atan(args.sigma_max))
    return None


def sphere_overrides(args: argparse.Namespace, dataset) -> dict:
    """theta_max from --noise_angle / --sigma_max (None: the size default)."""
    angle = noise_angle_from_args(args)
    return {} if angle is None else {"noise_angle": angle}


def sphere_loss_config(args: argparse.Namespace, model: nn.Module) -> SphereLossConfig:
    return SphereLossConfig(
        noise_angle=model.config.noise_angle,
        small_noise_ratio=args.small_noise_ratio,
        hard_case_prob=args.hard_case_prob,
        recon_dist_weight=args.recon_dist_weight,
        recon_perc_weight=args.recon_perc_weight,
        con_dist_weight=args.con_dist_weight,
        con_perc_weight=args.con_perc_weight,
        latent_weight=args.latent_weight,
        distance=args.distance,
        label_dropout=args.label_dropout,
    )


def sphere_loss(
    config: SphereLossConfig,
    vgg_weights: str | None,
    device: torch.device | str,
    convnext_weight: float = 0.0,
    convnext_weights: str | None = None,
) -> SphereLoss:
    """The objective with its perceptual network: LPIPS-VGG, plus the official ConvNeXt-S logit term when
    convnext_weight > 0; only loaded when a perceptual weight is > 0."""
    needs_perceptual = config.recon_perc_weight > 0 or config.con_perc_weight > 0
    perceptual = build_perceptual(vgg_weights, convnext_weight, convnext_weights) if needs_perceptual else None
    return SphereLoss(config, perceptual.to(device) if perceptual is not None else None)


def build_sphere_loss(args: argparse.Namespace, model: nn.Module, device: torch.device) -> SphereLoss:
    config = sphere_loss_config(args, model)
    return sphere_loss(config, args.vgg_weights, device, args.convnext_weight, args.convnext_weights)


def check_sphere_dataset(args: argparse.Namespace, dataset) -> None:
    """Sphere Encoders encode images; 1-D signals need a family with a 1-D backbone."""
    kind = getattr(dataset, "kind", "image")
    if kind != "image":
        raise ConfigError(
            f"dataset '{dataset.name}' holds {kind}s, but {args.model_type} is a sphere model, which encodes images; "
            "pick a psvae model (e.g. --model_type psvae_tiny) for 1-D signals"
        )


SPHERE_RULES: tuple[Rule, ...] = (
    ("--recon", lambda v: False, "is a psvae/vqvae flag: sphere models have a fixed recon term; remove it"),
    ("--perceptual_weight", lambda v: False, "is a psvae/vqvae flag: sphere models use --recon_perc_weight"),
    ("--noise_angle", lambda v: 0 < v < 90, "must be in (0, 90) degrees; the paper uses 80 (85 above 32 px)"),
    ("--sigma_max", lambda v: 0 < v < math.inf, "must be > 0 (theta_max = atan(sigma); 5.67 is 80 degrees)"),
    ("--encoder_lr_mult", lambda v: 0 <= v < math.inf, "must be >= 0; the paper uses 0.1"),
    probability_rule("--hard_case_prob", 0.1),
    ("--small_noise_ratio", lambda v: 0 < v <= 1, "must be in (0, 1]; the paper uses 0.5"),
    *(weight_rule(f"--{name}_weight") for name in ("recon_dist", "recon_perc", "con_dist", "con_perc", "latent")),
    weight_rule("--convnext_weight"),
)


def sphere_edge_layers(config: dict) -> set[str]:
    """The first layer of the encoder and the last of the decoder (kept fp16 in q8/q4, web_format.md §4)."""
    if config["backbone"] == "vit":
        last = "decoder.head_out" if config["pixel_head"] == "conv" else "decoder.head"
        return {"encoder.patch_embed", last}
    return {"encoder.stem", "decoder.out"}


def sphere_index_fields(config: dict) -> dict:
    """latent_dim, latent_shape ([tokens, channels] or [channels, h, w]) and backbone of an index entry."""
    latent_shape = list(SphereConfig.from_dict(config).latent_shape)
    return {"latent_dim": config["latent_dim"], "latent_shape": latent_shape, "backbone": config["backbone"]}


def sphere_encode_point(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """f(E(x)) flattened: a point of the sphere of radius sqrt(L) (B, L), as the decoder sees it."""
    return model.project(model.encode(x, labels)).flatten(1)


def sphere_decode_point(model: nn.Module, v: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """D(f(v)) for flattened points (B, L); f puts a point that slerp left slightly off the sphere back on it."""
    return model.decode(model.project(v.view(-1, *model.latent_shape)), labels).clamp(-1, 1)


SPHERE_FAMILY = Family(
    name="sphere",
    config_class=SphereConfig,
    model_class=SphereEncoder,
    registry=SPHERE_MODELS,
    add_flags=add_sphere_flags,
    model_overrides=sphere_overrides,
    build_loss=build_sphere_loss,
    lr_multipliers=lambda args: {"encoder": args.encoder_lr_mult},
    check_dataset=check_sphere_dataset,
    flag_rules=SPHERE_RULES,
    presets={"quickstart": "sphere_fashion.yaml", "paper": "sphere_cifar10.yaml"},
    web=WebExport(("backbone", "latent_dim"), sphere_edge_layers, sphere_index_fields, onnx=POINT_LATENT_ONNX),
    latent=LatentSphere(sphere_encode_point, sphere_decode_point),
    summary="Sphere Encoder models (vit*, convnet*): noise level, loss weights and the encoder's lr",
)
