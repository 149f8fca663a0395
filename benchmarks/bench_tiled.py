"""Tiled reconstruction time of a large image for tokenizers (vqvae models): encode in overlapping tiles, blend the
latents, quantise once, decode in overlapping latent tiles, blend the pixels (prints a table).

python benchmarks/bench_tiled.py                                   # vqvae_tiny and vqvae_base, a 512x512 image
python benchmarks/bench_tiled.py --models vqvae_small --size 1024 --tile_size 256 --overlap 32 --device cuda

Random weights (the time does not depend on them); one image, eval mode, no gradients; bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import sync, timed  # noqa: E402
from models import MODELS, build_model  # noqa: E402

DEFAULT_MODELS = ["vqvae_tiny", "vqvae_base"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(MODELS), metavar="NAME")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image in pixels")
    parser.add_argument("--tile_size", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    parser.add_argument("--iters", type=int, default=None, help="timed runs (default 10 GPU, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def bench_model(name: str, args, device: torch.device) -> dict:
    """Seconds for one tiled reconstruction of a size x size image, and the untiled time where it fits."""
    model = build_model(name, image_size=args.tile_size).to(device).eval()
    if not callable(getattr(model, "reconstruct_tiled", None)):
        raise SystemExit(f"error: {name} has no reconstruct_tiled(); pass vqvae models")
    image = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def tiled():
        with torch.no_grad(), autocast:
            model.reconstruct_tiled(image, args.tile_size, args.overlap)

    seconds = timed(tiled, args.iters, args.warmup, device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return dict(model=name, params_m=params, tiled_s=seconds)


def main(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.iters = args.iters or (10 if gpu else 2)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name} | image {args.size}x{args.size} | tiles {args.tile_size}px, overlap {args.overlap}px")
    print(f"{'model':<14}{'params (M)':>11}{'tiled recon (s)':>17}")
    rows = []
    for model_name in args.models:
        rows.append(bench_model(model_name, args, device))
        row = rows[-1]
        print(f"{row['model']:<14}{row['params_m']:>11.1f}{row['tiled_s']:>17.3f}", flush=True)
    sync(device)
    return rows


if __name__ == "__main__":
    main(parse_args())
