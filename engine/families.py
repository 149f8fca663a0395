"""The model families and what the scripts ask of each: one table, FAMILIES (docs/families.md).

A family is a model file (config dataclass with a `family` key, model class, registry of named sizes) and a loss
file; its entry here adds how training flags become its model overrides and its loss, its flag group, its
optimizer lr multipliers and its web export. Scripts ask the family of a model name or a saved config; they never
test family names.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from losses import SphereLoss, SphereLossConfig, build_perceptual
from models.sphere import SPHERE_MODELS, SphereConfig, SphereEncoder

from .flags import Rule, probability_rule, weight_rule

DEFAULT_FAMILY = "sphere"  # configs saved before families existed are Sphere Encoder ones


@dataclass(frozen=True)
class WebExport:
    """How a family's models are written to the sphere-web format (engine/webformat.py, docs/web_format.md)."""

    required_config_keys: tuple[str, ...]  # beyond image_size and num_classes, which every file has
    edge_layers: Callable[[dict], set[str]]  # first/last layers, kept fp16 in q8/q4 (web_format.md §4)
    index_fields: Callable[[dict], dict]  # the family's own fields of an index.json entry


@dataclass(frozen=True)
class Family:
    """One row of the table: everything the scripts need to train, rebuild and export a family's models."""

    name: str
    config_class: type  # dataclass with family, image_size, in_channels, num_classes, to_dict(), from_dict()
    model_class: type  # built as model_class(config); capabilities as class attributes
    registry: dict[str, Callable[..., nn.Module]]  # named sizes, merged into models.MODELS
    add_flags: Callable[[argparse._ArgumentGroup], None]  # the family's training flags (one --help group)
    model_overrides: Callable[[argparse.Namespace], dict]  # its flags -> builder overrides (beyond the common)
    build_loss: Callable[[argparse.Namespace, nn.Module, torch.device], Callable]  # loss(model, batch, step)
    lr_multipliers: Callable[[argparse.Namespace], dict[str, float]]  # parameter group -> lr multiplier
    flag_rules: tuple[Rule, ...] = ()  # numeric checks of its flags (engine.flags.check_rules)
    presets: dict[str, str] = field(default_factory=dict)  # --preset name -> file under configs/
    web: WebExport | None = None  # None: no web exporter
    summary: str = ""  # the description of its --help group


class FamilyError(ValueError):
    """A model family this code does not know, or a model used where its family does not fit."""


def family_named(name: str) -> Family:
    """The table entry of a family name; FamilyError naming it when unknown."""
    if name not in FAMILIES:
        raise FamilyError(f"unknown model family '{name}'; this code knows {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def family_of_config(config: dict) -> Family:
    """The family of a saved model config (absent `family`: a sphere config from before families)."""
    return family_named(config.get("family", DEFAULT_FAMILY))


def family_of_model(model_type: str) -> Family:
    """The family whose registry holds the model name `model_type`."""
    for family in FAMILIES.values():
        if model_type in family.registry:
            return family
    raise FamilyError(f"model '{model_type}' is in no family's registry")


def model_from_config(config: dict) -> nn.Module:
    """Rebuild a model from the config dict saved in a checkpoint, config.json or a web file."""
    family = family_of_config(config)
    return family.model_class(family.config_class.from_dict(config))


def with_family(config: dict) -> dict:
    """A model config with its `family` spelled out, so configs saved before families compare equal."""
    return {"family": DEFAULT_FAMILY, **config}


def family_name_of(model: nn.Module) -> str:
    return getattr(model.config, "family", DEFAULT_FAMILY)


def cannot_sample_reason(model: nn.Module) -> str | None:
    """None when the model can draw samples, else why not (for the user: one clause)."""
    if model.can_sample:
        return None
    why = getattr(model, "cannot_sample_reason", None) or "it has no sampler"
    return f"a {family_name_of(model)} model ({type(model).__name__}) cannot draw samples: {why}"


# ---------------------------------------------------------------------------------------------------------
# sphere: the Sphere Encoder (models/sphere.py, losses/sphere.py)


def add_sphere_flags(group: argparse._ArgumentGroup) -> None:
    """Noise level, loss weights, label dropout, the ConvNeXt term and the encoder's lr multiplier."""
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
    group.add_argument("--label_dropout", type=float, default=0.1, help="conditional models: null-class rate")
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


def sphere_overrides(args: argparse.Namespace) -> dict:
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


SPHERE_RULES: tuple[Rule, ...] = (
    ("--noise_angle", lambda v: 0 < v < 90, "must be in (0, 90) degrees; the paper uses 80 (85 above 32 px)"),
    ("--sigma_max", lambda v: 0 < v < math.inf, "must be > 0 (theta_max = atan(sigma); 5.67 is 80 degrees)"),
    ("--encoder_lr_mult", lambda v: 0 <= v < math.inf, "must be >= 0; the paper uses 0.1"),
    probability_rule("--hard_case_prob", 0.1),
    probability_rule("--label_dropout", 0.1),
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


SPHERE = Family(
    name="sphere",
    config_class=SphereConfig,
    model_class=SphereEncoder,
    registry=SPHERE_MODELS,
    add_flags=add_sphere_flags,
    model_overrides=sphere_overrides,
    build_loss=build_sphere_loss,
    lr_multipliers=lambda args: {"encoder": args.encoder_lr_mult},
    flag_rules=SPHERE_RULES,
    presets={"quickstart": "sphere_fashion.yaml", "paper": "sphere_cifar10.yaml"},
    web=WebExport(("backbone", "latent_dim"), sphere_edge_layers, sphere_index_fields),
    summary="Sphere Encoder models (vit*, convnet*): noise level, loss weights and the encoder's lr",
)

FAMILIES: dict[str, Family] = {family.name: family for family in (SPHERE,)}
