"""The ldm family's web export (docs/web_format.md): which layers stay fp16 in q8/q4, the index.json fields and
which ldm models the format cannot hold. Three kinds share it: an `autoencoder` file holds the KL autoencoder
(`encoder.*`, `decoder.*`); a `latent` file holds the UNet (`unet.*`), the frozen autoencoder (`autoencoder.*`) and
the buffer `latent_scale`; a `pixel` file holds the UNet alone (a class-conditional UNet also `unet.label_embed`,
whose last row is the null class). The diffusion settings travel in the config; the sampler defaults (`sampler`,
`eta`) are optional keys, so files written before they existed still read (as DDIM, η = 0).

ONNX: the autoencoder's encoder (posterior mean) and decoder (clamped) for kinds autoencoder and latent (unscaled
latents), the UNet for kinds latent and pixel (its raw prediction at int64 timesteps, its sinusoidal features
computed in the graph), and for kind latent model_tensors.bin with `latent_scale`."""

from __future__ import annotations

import torch
import torch.nn as nn

from .family import OnnxExport, OnnxNetwork, WebExport
from .onnx_networks import example_images, example_integers, example_labels, example_normal

LDM_WEB_KEYS = (
    "kind",
    "latent_channels",
    "ae_width",
    "ae_mults",
    "ae_groups",
    "unet_width",
    "unet_mults",
    "unet_groups",
    "unet_heads",
    "timesteps",
    "beta_schedule",
    "prediction",
)
KINDS = ("autoencoder", "latent", "pixel")
SAMPLER_DEFAULTS = {"sampler": "ddim", "eta": 0.0}  # what a file without these keys samples with (LDMConfig's defaults)
# the AE's edges: first and last layers, and both sides of the latent (its error lands on every pixel)
AE_EDGES = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out")
# the UNet's edges and its time-embedding MLP (every ResBlock's scale and shift goes through it)
UNET_EDGES = ("conv_in", "conv_out", "time_embed.0", "time_embed.2")


def ldm_web_unsupported(config: dict) -> str | None:
    """Why the web format cannot hold this ldm model (None when it can): an unknown kind."""
    kind = config.get("kind")
    if kind not in KINDS:
        return f"ldm models of kind '{kind}' have no web export; kinds: {', '.join(KINDS)}"
    return None


def ldm_edge_layers(config: dict) -> set[str]:
    """Layers kept fp16 in q8/q4 (web_format.md §4): the AE's first, last and latent-side convs, the UNet's first
    and last convs and its time-embedding MLP."""
    kind = config["kind"]
    if kind == "autoencoder":
        return set(AE_EDGES)
    unet = {f"unet.{name}" for name in UNET_EDGES}
    return unet | {f"autoencoder.{name}" for name in AE_EDGES} if kind == "latent" else unet


def _autoencoder(config: dict) -> dict:
    """The AE config of a file: its own (autoencoder), the saved stage-1 one or the ae_* fields (latent)."""
    return (config.get("autoencoder") or config) if config["kind"] == "latent" else config


def ldm_downsample_factor(config: dict) -> int:
    """Image side / latent side: 2^(len(ae_mults) - 1) for an autoencoder or a latent model, 1 on pixels."""
    return 1 if config["kind"] == "pixel" else 2 ** (len(_autoencoder(config)["ae_mults"]) - 1)


def ldm_latent_shape(config: dict) -> list[int]:
    """[channels, h, w] of what the UNet denoises (latent, pixel) or the AE encodes (autoencoder)."""
    side = config["image_size"] // ldm_downsample_factor(config)
    channels = config["in_channels"] if config["kind"] == "pixel" else _autoencoder(config)["latent_channels"]
    return [channels, side, side]


def ldm_index_fields(config: dict) -> dict:
    """Kind, latent shape, downsample factor, latent scale, the diffusion settings and sampler defaults of an index
    entry (num_classes, which the page needs for its class picker, is common to every family's entry)."""
    reason = ldm_web_unsupported(config)
    if reason:
        raise ValueError(reason)
    fields = {
        "kind": config["kind"],
        "latent_shape": ldm_latent_shape(config),
        "downsample_factor": ldm_downsample_factor(config),
    }
    if config["kind"] != "autoencoder":
        fields |= {key: config.get(key) for key in ("timesteps", "beta_schedule", "prediction")}
        fields |= {key: config.get(key, default) for key, default in SAMPLER_DEFAULTS.items()}
    if config["kind"] == "latent":
        fields["latent_scale"] = config.get("latent_scale") or 1.0  # None: not computed yet, the model uses 1
    return fields


def _autoencoder_of(model: nn.Module) -> nn.Module:
    """The KL autoencoder of a model: itself (autoencoder) or its frozen stage 1 (latent)."""
    return model if model.config.kind == "autoencoder" else model.autoencoder


def _mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _autoencoder_of(model).encode(x)[0]  # (B, c, h, w) posterior mean, unscaled


def _decoded(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return _autoencoder_of(model).decode(z).clamp(-1, 1)  # z unscaled: a latent model's x0 / latent_scale


def _unet(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    return model.unet(x, t, labels)  # eps, v or x0 per config.prediction; labels = num_classes: the null class


def ldm_onnx_networks(model: nn.Module) -> dict[str, OnnxNetwork]:
    """encoder: x -> mean and decoder: z -> x in [-1, 1] (kinds autoencoder, latent); unet: x (B, *latent_shape),
    t int64 (B,) [, labels int64 (B,)] -> out (kinds latent, pixel)."""
    config = model.config
    shape = tuple(ldm_latent_shape(config.to_dict()))
    networks = {}
    if config.kind != "pixel":
        networks["encoder"] = OnnxNetwork(_mean, lambda batch: {"x": example_images(config, batch)}, "mean")
        networks["decoder"] = OnnxNetwork(_decoded, lambda batch: {"z": example_normal(batch, shape)}, "x")
    if config.kind != "autoencoder":
        networks["unet"] = OnnxNetwork(_unet, lambda batch: _unet_example(config, shape, batch), "out")
    return networks


def _unet_example(config, shape: tuple[int, ...], batch: int) -> dict[str, torch.Tensor]:
    timesteps = example_integers(batch, (), config.timesteps)
    return {"x": example_normal(batch, shape), "t": timesteps, **example_labels(config, batch)}


LDM_ONNX = OnnxExport(
    ldm_onnx_networks,
    tensors=lambda model: ("latent_scale",) if model.config.kind == "latent" else (),
    unsupported=lambda model: ldm_web_unsupported(model.config.to_dict()),
)
LDM_WEB = WebExport(LDM_WEB_KEYS, ldm_edge_layers, ldm_index_fields, unsupported=ldm_web_unsupported, onnx=LDM_ONNX)
