"""The vqvae family's web export (docs/web_format.md): which layers stay fp16 in q8/q4, the index.json fields and
which vqvae models the format cannot hold. The codebook (`quantizer.embedding.weight`) is an nn.Embedding, never
quantized: F16 in fp16/q8/q4, F32 in fp32. ONNX (quantizer "vq"): the encoder gives tokens, the decoder takes them,
and model_tensors.bin holds the stored codebook (the page normalises its rows itself when l2_norm)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .family import OnnxExport, OnnxNetwork, WebExport
from .onnx_networks import example_images, example_integers

CODEBOOK = "quantizer.embedding.weight"
VQVAE_WEB_KEYS = ("channel_mults", "codebook_size", "codebook_dim", "l2_norm", "quantizer", "norm_groups", "width")


def vqvae_web_unsupported(config: dict) -> str | None:
    """Why the web format cannot hold this vqvae (None when it can): FSQ models have no stored codebook."""
    if config.get("quantizer", "vq") != "vq":
        return (
            f"vqvae models with quantizer '{config.get('quantizer')}' have no web export yet (the page looks codes "
            "up in a stored codebook); export a quantizer 'vq' model"
        )
    return None


def vqvae_edge_layers(config: dict) -> set[str]:
    """The encoder's first conv and the decoder's last (kept fp16 in q8/q4, web_format.md §4)."""
    return {"encoder.conv_in", "decoder.conv_out"}


def vqvae_downsample_factor(config: dict) -> int:
    """f = 2^(len(channel_mults) - 1): image side / token grid side."""
    return 2 ** (len(config["channel_mults"]) - 1)


def vqvae_index_fields(config: dict) -> dict:
    """Codebook size and dimension, downsample factor, token grid and quantizer of an index entry."""
    from models.vqvae import VQVAEConfig  # the model file is only needed once a vqvae is listed

    VQVAEConfig.from_dict(config)  # a config this code cannot build is left out of the index
    reason = vqvae_web_unsupported(config)
    if reason:
        raise ValueError(reason)
    factor = vqvae_downsample_factor(config)
    grid = math.ceil(config["image_size"] / factor)
    return {
        "codebook_size": config["codebook_size"],
        "codebook_dim": config["codebook_dim"],
        "downsample_factor": factor,
        "token_grid": [grid, grid],
        "quantizer": config["quantizer"],
        "l2_norm": config["l2_norm"],
    }


# training-only statistics of VectorQuantizer: written reset (zeros; `initialized` true) so that every file loads
# strictly and fits fp16 (a mid-epoch `counts` can exceed 65504)
RESET_STATISTICS = ("counts", "usage_ema", "embed_sum")


def vqvae_export_state(state: dict) -> dict:
    """The state_dict as written: the quantizer's assignment statistics reset (they play no part in inference)."""
    out = dict(state)
    for name, tensor in state.items():
        if name.startswith("quantizer.") and name.rsplit(".", 1)[-1] in RESET_STATISTICS:
            out[name] = torch.zeros_like(tensor)
        elif name == "quantizer.initialized":
            out[name] = torch.ones_like(tensor)
    return out


def _tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.encode(x)  # (B, h, w) int64: each position's nearest code


def _images(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model.decode_indices(tokens)  # (B, C, S, S) clamped to [-1, 1]


def vqvae_onnx_networks(model: nn.Module) -> dict[str, OnnxNetwork]:
    """encoder: x (B, C, S, S) -> tokens int64 (B, h, w) (VQVAE.encode); decoder: tokens -> x (decode_indices)."""
    config = model.config
    grid = (config.latent_size, config.latent_size)
    return {
        "encoder": OnnxNetwork(_tokens, lambda batch: {"x": example_images(config, batch)}, "tokens"),
        "decoder": OnnxNetwork(
            _images, lambda batch: {"tokens": example_integers(batch, grid, config.codebook_size)}, "x"
        ),
    }


VQVAE_ONNX = OnnxExport(
    vqvae_onnx_networks,
    tensors=lambda model: (CODEBOOK,),
    unsupported=lambda model: vqvae_web_unsupported(model.config.to_dict()),
)
VQVAE_WEB = WebExport(
    VQVAE_WEB_KEYS,
    vqvae_edge_layers,
    vqvae_index_fields,
    unsupported=vqvae_web_unsupported,
    export_state=vqvae_export_state,
    onnx=VQVAE_ONNX,
)
