"""Model registry: one `MODELS` dict (name -> builder(**overrides)) merged from the per-family dicts.

Rebuilding a model from a saved config dispatches on its `family` key: engine/families.py holds that table.
"""

from __future__ import annotations

from .ldm import LDM_MODELS, LDMConfig
from .psvae import PSVAE, PSVAE_MODELS, PSVAEConfig
from .somar import SOMAR_MODELS, SOMARConfig
from .sphere import CFG_MODES, SPHERE_MODELS, SphereConfig, SphereEncoder
from .vqvae import VQVAE, VQVAE_MODELS, VQVAEConfig

_FAMILIES = [SPHERE_MODELS, PSVAE_MODELS, VQVAE_MODELS, LDM_MODELS, SOMAR_MODELS]


def _merge(families: list[dict]) -> dict:
    merged: dict = {}
    for family in families:
        clash = set(merged) & set(family)
        if clash:
            raise RuntimeError(f"duplicate model names in the registry: {sorted(clash)}")
        merged.update(family)
    return merged


MODELS = _merge(_FAMILIES)


def build_model(name: str, **overrides):
    """Build a registered model; overrides (image_size, latent_dim, num_classes, ...) go to its config."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of {sorted(MODELS)}")
    return MODELS[name](**overrides)


__all__ = [
    "CFG_MODES",
    "LDMConfig",
    "MODELS",
    "PSVAE",
    "PSVAEConfig",
    "SOMARConfig",
    "SphereConfig",
    "SphereEncoder",
    "VQVAE",
    "VQVAEConfig",
    "build_model",
]
