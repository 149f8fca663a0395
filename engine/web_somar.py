"""The somar family's web export (docs/web_format.md): which layers stay fp16 in q8/q4, the index.json fields and
the state as written. Three kinds share it. An `autoencoder` file holds the stage-1 autoencoder (`encoder.*`,
`decoder.*`); a `codebook` file holds the frozen autoencoder (`autoencoder.net.*`: a somar, vqvae or ldm one, the
config's `autoencoder_family`) and one SOM per level (`levels.{k}.codes` (K, D), `levels.{k}.grid` (K, 2) unit
(row, col)); a `prior` file holds that codebook under `codebook.` (or a vqvae tokenizer, `codebook.net.*`) and the
transformer `prior.*`. SOM codes and grids are buffers, never quantized (F16 in fp16/q8/q4, F32 in fp32); their
training statistics are written reset.

ONNX (every kind the page shows; not a prior over a vqvae's tokens): the frozen autoencoder's encoder (images -> the
latent map, as FrozenMap.encode) and decoder (map -> images, clamped), and for kinds codebook and prior
model_tensors.bin with the finest level's SOM codes and grid."""

from __future__ import annotations

import torch
import torch.nn as nn

from .family import OnnxExport, OnnxNetwork, WebExport
from .onnx_networks import example_images, example_normal
from .web_ldm import AE_EDGES
from .web_vqvae import vqvae_edge_layers, vqvae_export_state

SOMAR_WEB_KEYS = ("kind", "level_patches", "level_sizes", "ae_width", "ae_mults", "ae_groups", "latent_channels")
KINDS = ("autoencoder", "codebook", "prior")
# each AE family's edges: first and last layers and both sides of the latent map (the codes live there)
VQVAE_LATENT_EDGES = ("quant_conv", "post_quant_conv")
# a SOM's training state, written reset: no part of inference (steps_done, the schedules' t, would not even be exact
# in fp16 past 2048; `initialized` stays true)
SOM_STATISTICS = ("steps_done", "counts", "error_sums", "vectors_seen")


def somar_web_unsupported(config: dict) -> str | None:
    """Why the web format cannot hold this somar model (None when it can): an unknown kind."""
    kind = config.get("kind")
    if kind not in KINDS:
        return f"somar models of kind '{kind}' have no web export; kinds: {', '.join(KINDS)}"
    return None


def _codebook_dict(config: dict) -> dict:
    """The codebook stage of a file: its own config (codebook), the saved one or the own fields (prior)."""
    if config["kind"] != "prior":
        return config
    return config.get("codebook") or {**config, "kind": "codebook", "codebook": None, "codebook_sha256": None}


def autoencoder_prefix(config: dict) -> str:
    """Where the autoencoder's encoder/decoder sit in the state_dict of a file of this config."""
    return {"autoencoder": "", "codebook": "autoencoder.net.", "prior": "codebook.autoencoder.net."}[config["kind"]]


def _ae_edges(family: str, config: dict) -> set[str]:
    if family == "vqvae":
        return vqvae_edge_layers(config) | set(VQVAE_LATENT_EDGES)
    return set(AE_EDGES)  # somar and ldm autoencoders: the same conv blocks


def somar_edge_layers(config: dict) -> set[str]:
    """Layers kept fp16 in q8/q4 (web_format.md §4): the autoencoder's first, last and latent-side convs, and a
    prior's output heads."""
    codebook = _codebook_dict(config)
    if codebook.get("family", "somar") == "vqvae":  # a prior over a vqvae's tokens
        edges = {f"codebook.net.{name}" for name in _ae_edges("vqvae", codebook)}
    else:
        family = (codebook.get("autoencoder_family") if config["kind"] != "autoencoder" else None) or "somar"
        edges = {f"{autoencoder_prefix(config)}{name}" for name in _ae_edges(family, codebook.get("autoencoder"))}
    if config["kind"] == "prior":
        edges |= {f"prior.heads.{k}" for k in range(len(codebook.get("level_sizes") or [1]))}
    return edges


def somar_index_fields(config: dict) -> dict:
    """Kind, the autoencoder's family, latent map shape and downsample factor, and per codebook level its patch side
    (0 = the whole map), units and token grid [rows, cols] of an index entry (a prior over a vqvae's tokens: its
    tokenizer's family and token grid)."""
    from models.somar import SOMARConfig  # the model file is only needed once a somar model is listed

    reason = somar_web_unsupported(config)
    if reason:
        raise ValueError(reason)
    own = SOMARConfig.from_dict(config)  # a config this code cannot build is left out of the index
    fields = {"kind": config["kind"]}
    stage = own.codebook_config() if own.kind == "prior" else own
    if not isinstance(stage, SOMARConfig):  # a vqvae tokenizer's token grid
        side = stage.latent_size
        return fields | {"codebook_family": "vqvae", "codebook_size": stage.codebook_size, "token_grid": [side, side]}
    channels, height, width = stage.map_shape if stage.kind == "codebook" else _own_map(stage)
    fields |= {"autoencoder_family": stage.autoencoder_family or "somar", "latent_shape": [channels, height, width]}
    fields["downsample_factor"] = stage.image_size // height
    if stage.kind == "codebook":
        grids = [[1, 1] if not p else [height // p, width // p] for p in stage.level_patches]
        fields |= {"level_patches": list(stage.level_patches), "level_sizes": list(stage.level_sizes)}
        fields |= {"token_grids": grids, "som_topology": stage.som_topology}
    return fields


def _own_map(config) -> tuple[int, int, int]:
    """(C, h, w) of a stage-1 autoencoder's latent map."""
    side = config.image_size // config.ae_factor
    return config.latent_channels, side, side


def somar_export_state(state: dict) -> dict:
    """The state_dict as written: each SOM's training state reset (SOM_STATISTICS), a frozen vqvae's quantizer
    statistics reset as in its own files."""
    out = dict(state)
    for name, tensor in state.items():
        leaf = name.rsplit(".", 1)[-1]
        if ".levels." in f".{name}" and leaf in SOM_STATISTICS:
            out[name] = torch.zeros_like(tensor)
    out.update(_vqvae_parts(state))
    return out


def _vqvae_parts(state: dict) -> dict:
    """The quantizer statistics of a vqvae inside the file (a codebook's autoencoder, a prior's tokenizer), reset."""
    prefixes = {name[: name.index("quantizer.")] for name in state if "quantizer." in name}
    out = {}
    for prefix in prefixes:
        part = {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}
        out |= {f"{prefix}{name}": tensor for name, tensor in vqvae_export_state(part).items()}
    return out


def _frozen_map(model: nn.Module) -> nn.Module:
    """What maps images to latent maps and back: the autoencoder itself, a codebook's or a prior's codebook's
    FrozenMap."""
    kind = model.config.kind
    return model if kind == "autoencoder" else (model.autoencoder if kind == "codebook" else model.codebook.autoencoder)


def _codebook_config(model: nn.Module):
    return model.config if model.config.kind == "codebook" else model.codebook.config


def _maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _frozen_map(model).encode(x)  # (B, C, h, w): tanh map, ldm mean, or a cosine vqvae's unit latents


def _images(model: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    return _frozen_map(model).decode(maps).clamp(-1, 1)


def somar_onnx_networks(model: nn.Module) -> dict[str, OnnxNetwork]:
    """encoder: x (B, C, S, S) -> maps (B, *map_shape); decoder: maps -> x in [-1, 1]."""
    config = model.config
    shape = _own_map(config) if config.kind == "autoencoder" else _codebook_config(model).map_shape
    return {
        "encoder": OnnxNetwork(_maps, lambda batch: {"x": example_images(config, batch)}, "maps"),
        "decoder": OnnxNetwork(_images, lambda batch: {"maps": example_normal(batch, tuple(shape))}, "x"),
    }


def somar_onnx_tensors(model: nn.Module) -> tuple[str, ...]:
    """The finest level's SOM codes (K, D) and grid (K, 2) of a codebook or prior file; () for an autoencoder."""
    if model.config.kind == "autoencoder":
        return ()
    prefix = "codebook." if model.config.kind == "prior" else ""
    finest = len(_codebook_config(model).level_sizes) - 1
    return (f"{prefix}levels.{finest}.codes", f"{prefix}levels.{finest}.grid")


def somar_onnx_unsupported(model: nn.Module) -> str | None:
    """Why a somar model gets no ONNX files: a prior over a vqvae's tokens (the page does not show it)."""
    config = model.config.to_dict()
    if _codebook_dict(config).get("family", "somar") == "vqvae":
        return (
            "a somar prior over a vqvae's tokens gets no ONNX files: the page does not show it (its prior does not "
            "run there); export the vqvae run for its tokenizer"
        )
    return somar_web_unsupported(config)


SOMAR_ONNX = OnnxExport(somar_onnx_networks, tensors=somar_onnx_tensors, unsupported=somar_onnx_unsupported)
SOMAR_WEB = WebExport(
    SOMAR_WEB_KEYS,
    somar_edge_layers,
    somar_index_fields,
    unsupported=somar_web_unsupported,
    export_state=somar_export_state,
    onnx=SOMAR_ONNX,
)
