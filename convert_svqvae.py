"""Convert SVQVAE (LlamaGen-layout) weights into a checkpoint of this project's vqvae family.

    python convert_svqvae.py --weights svqvae.safetensors --settings model_args.json --output svqvae.pth

--settings is a JSON or YAML mapping of SVQVAE's ModelArgs (codebook_size, codebook_embed_dim, codebook_l2_norm,
encoder_ch_mult, decoder_ch_mult, z_channels, ...; SVQVAE's load() uses ch_mult [1, 2, 2, 4] and z_channels 32) plus
optional ch, num_res_blocks, norm_groups, image_size, in_channels (LlamaGen's defaults otherwise). The weights take
images in [0, 1]: the converted model maps our [-1, 1] images onto that range (input_range "zero_one"). The output
is a plain checkpoint (`model`, `ema` = the same weights, `config`, `step`/`epoch` 0) that sampling.py, evaluate.py and
export_weights.py read like a trained run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from engine.checkpoint import atomic_save
from engine.cli import InputError
from models.vqvae import VQVAE, svqvae_state_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="SVQVAE state dict (.safetensors, or a torch .pth/.pt)")
    parser.add_argument("--settings", required=True, help="its ModelArgs as a JSON or YAML mapping")
    parser.add_argument("--output", required=True, help="checkpoint file to write (.pth)")
    return parser.parse_args(argv)


def read_settings(path: str) -> dict:
    """The ModelArgs mapping of a JSON or YAML file; one-line InputError otherwise."""
    try:
        text = Path(path).read_text()
        settings = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        first = str(error).splitlines()[0][:150]
        raise InputError(f"--settings '{path}' cannot be read ({first}); pass a JSON or YAML file") from None
    if not isinstance(settings, dict):
        raise InputError(f"--settings '{path}' is not a mapping of ModelArgs names to values")
    return settings


def read_weights(path: str) -> dict:
    """The state dict of a .safetensors file (or a torch file holding a plain state dict)."""
    if not Path(path).is_file():
        raise InputError(f"--weights '{path}' does not exist; pass the SVQVAE .safetensors file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: any loader error is one line
        raise InputError(f"--weights '{path}' cannot be read ({str(error).splitlines()[0][:150]})") from None


def checkpoint_for(model: VQVAE, source: str) -> dict:
    """The plain checkpoint dict: weights twice (raw and EMA), a run config without training flags, step and epoch
    0 (the checkpoint loader requires them; without optimizer state it cannot be resumed, only --init_from)."""
    state = model.state_dict()
    config = model.config
    return {
        "model": state,
        "ema": state,
        "step": 0,
        "epoch": 0,
        "config": {
            "dataset_name": None,
            "dataset": None,
            "image_size": config.image_size,
            "model_type": "vqvae",
            "num_classes": 0,
            "model": config.to_dict(),
            "train": {},
            "config_files": [],
            "converted_from": source,
        },
    }


def main(args: argparse.Namespace) -> Path:
    try:
        config, state = svqvae_state_dict(read_weights(args.weights), read_settings(args.settings))
    except (InputError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    model = VQVAE(config)
    model.load_state_dict(state, strict=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(checkpoint_for(model, str(args.weights)), output)
    print(f"{output}: vqvae f{config.downsample_factor}, {config.codebook_size} codes of dim {config.codebook_dim}")
    return output


if __name__ == "__main__":
    main(parse_args())
