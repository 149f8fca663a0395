"""The vqvae family's web export (docs/web_format.md): which layers stay fp16 in q8/q4, the index.json fields and
which vqvae models the format cannot hold. The codebook (`quantizer.embedding.weight`) is an nn.Embedding, never
quantized: F16 in fp16/q8/q4, F32 in fp32."""

from __future__ import annotations

import math

import torch

from .family import WebExport

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


VQVAE_WEB = WebExport(
    VQVAE_WEB_KEYS,
    vqvae_edge_layers,
    vqvae_index_fields,
    unsupported=vqvae_web_unsupported,
    export_state=vqvae_export_state,
)
