"""The pieces of the families' ONNX declarations (engine.family.OnnxExport, written by engine/onnx_export.py):
example inputs, and the encoder/decoder pair of the families whose latent is a point (sphere, psvae).

Example inputs are deterministic (a generator of their own, not the global one) and a batch of any size: their
values do not matter to the exporter, only their shapes and dtypes (int64 for tokens, timesteps and labels).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .family import OnnxExport, OnnxNetwork


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def example_images(config, batch: int) -> torch.Tensor:
    """(B, C, S, S) images in [-1, 1] of a config with in_channels and image_size."""
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    return torch.rand(shape, generator=_generator()) * 2 - 1


def example_normal(batch: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal values (latents, maps, x_t)."""
    return torch.randn((batch, *shape), generator=_generator())


def example_integers(batch: int, shape: tuple[int, ...], high: int) -> torch.Tensor:
    """(B, *shape) int64 in [0, high) (tokens, timesteps)."""
    return torch.randint(0, high, (batch, *shape), generator=_generator())


def example_labels(config, batch: int) -> dict[str, torch.Tensor]:
    """{"labels": (B,) int64 classes, the null class num_classes included} of a conditional model; {} otherwise."""
    if config.num_classes <= 0:
        return {}
    return {"labels": torch.arange(batch) % (config.num_classes + 1)}


# ---------------------------------------------------------------------------------------------------------
# sphere and psvae: v (a point of the latent) <-> x


def _decode(model: nn.Module, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    return model.decode(v, labels)


def _encode(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The sphere family's z before projection (the page projects), the psvae's mu (its kappa is not used)."""
    z = model.encode(x, labels)
    return z[0] if isinstance(z, tuple) else z


def point_latent_networks(model: nn.Module) -> dict[str, OnnxNetwork]:
    """decoder: v (B, *latent_shape) [, labels] -> x = model.decode; encoder: x [, labels] -> z (see _encode)."""
    config = model.config
    shape = tuple(model.latent_shape) if hasattr(model, "latent_shape") else (config.z_dim,)
    return {
        "decoder": OnnxNetwork(
            _decode, lambda batch: {"v": example_normal(batch, shape), **example_labels(config, batch)}, "x"
        ),
        "encoder": OnnxNetwork(
            _encode, lambda batch: {"x": example_images(config, batch), **example_labels(config, batch)}, "z"
        ),
    }


def signal_unsupported(model: nn.Module) -> str | None:
    """1-D signal models get no ONNX files (None for image models)."""
    if getattr(model, "is_signal", False):
        return "1-D signal models (psvae conv1d) get no ONNX export: the page does not show them"
    return None


POINT_LATENT_ONNX = OnnxExport(point_latent_networks, unsupported=signal_unsupported)
