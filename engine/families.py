"""The model families and what the scripts ask of each: one table, FAMILIES (docs/families.md).

A family is a model file (config dataclass with a `family` key, model class, registry of named sizes) and a loss
file; its row (engine/family.py) adds how training flags become its model overrides and its loss, its flag group,
its optimizer lr multipliers, presets and web export. Scripts ask the family of a model name or a saved config;
they never test family names.
"""

from __future__ import annotations

import torch.nn as nn

from .family import DEFAULT_FAMILY, Family, LatentSphere, WebExport
from .family_ldm import LDM_FAMILY
from .family_psvae import PSVAE_FAMILY
from .family_somar import SOMAR_FAMILY
from .family_sphere import SPHERE_FAMILY
from .family_vqvae import VQVAE_FAMILY

FAMILIES: dict[str, Family] = {
    family.name: family for family in (SPHERE_FAMILY, PSVAE_FAMILY, VQVAE_FAMILY, LDM_FAMILY, SOMAR_FAMILY)
}
__all__ = ["DEFAULT_FAMILY", "FAMILIES", "Family", "FamilyError", "LatentSphere", "WebExport"]


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


def family_of(model: nn.Module) -> Family:
    """The table entry of a built model (from its config's family)."""
    return family_named(family_name_of(model))


def input_shape(model: nn.Module) -> tuple[int, ...]:
    """One input item without batch: the config's data_shape where it has one ((C, L) for signals), else images
    (in_channels, image_size, image_size)."""
    config = model.config
    return tuple(getattr(config, "data_shape", None) or (config.in_channels, config.image_size, config.image_size))


def takes_signals(model: nn.Module) -> bool:
    """Whether the model encodes 1-D signals (B, C, L) rather than images: its optional `is_signal` attribute."""
    return bool(getattr(model, "is_signal", False))


def cannot_sample_reason(model: nn.Module) -> str | None:
    """None when the model can draw samples, else why not (for the user: one clause)."""
    if model.can_sample:
        return None
    why = getattr(model, "cannot_sample_reason", None) or "it has no sampler"
    return f"a {family_name_of(model)} model ({type(model).__name__}) cannot draw samples: {why}"
