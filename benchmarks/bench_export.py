"""File size per mode and fidelity against fp32 of the sphere-web export (docs/web_format.md §9), for models of
any family with a web exporter and a latent sphere (sphere, psvae).

    python benchmarks/bench_export.py --checkpoint results/<run>/checkpoints/checkpoint_latest.pth
    python benchmarks/bench_export.py --model convnet_small --image_size 32      # random (perturbed) weights
    python benchmarks/bench_export.py --checkpoint CKPT --no-keep_edges    # quantize first/last layers too

For each mode: bytes (and ratio to fp32), PSNR of D(v) against the fp32 export's D(v) on the same random
points v of the latent sphere, and PSNR of one encode -> decode round trip of those images; dB on images in [0, 1].
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checkpoint import load_model_from_checkpoint  # noqa: E402
from engine.globe import latent_sphere, random_points  # noqa: E402
from engine.webformat import MODES, export_model, load_model_from_web_weights  # noqa: E402
from models import MODELS, build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="training checkpoint; else --model with random weights")
    parser.add_argument("--model", default="convnet_small", choices=sorted(MODELS))
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--noise_std", type=float, default=0.02, help="perturbation of random weights")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--keep_edges",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first/last layers fp16 in q8/q4 (the default policy)",
    )
    parser.add_argument("--group_size", type=int, default=32)
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_model(args):
    if args.checkpoint:
        return load_model_from_checkpoint(args.checkpoint, use_ema=args.ema)[0]
    torch.manual_seed(args.seed)
    model = build_model(args.model, image_size=args.image_size)
    with torch.no_grad():
        for param in model.parameters():  # zero-initialised heads would make every mode trivially equal
            param.add_(torch.randn_like(param) * args.noise_std)
    return model.eval()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """dB for images in [-1, 1] compared in [0, 1]."""
    mse = ((images - reference) / 2).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def decode_and_reconstruct(model, latents: torch.Tensor, images: torch.Tensor | None):
    """D(v) of points v of the latent sphere, and D(E(x)) of those outputs (or of `images`), through the model's
    family's notion of a point of its sphere (engine/globe.py)."""
    latent = latent_sphere(model)
    with torch.no_grad():
        decoded = latent.decode(model, latents, None)
        source = decoded if images is None else images
        return decoded, latent.decode(model, latent.encode(model, source, None), None)


def main(args: argparse.Namespace) -> list[dict]:
    model = load_model(args)
    latents = random_points(model, args.num_images, torch.Generator().manual_seed(args.seed))
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:  # fp32 first: it is the reference
            path = Path(folder) / f"model_{mode}.safetensors"
            start = time.perf_counter()
            summary = export_model(model, path, mode, args.group_size, keep_edges=args.keep_edges)
            seconds = time.perf_counter() - start
            exported = load_model_from_web_weights(path)
            decoded, recon = decode_and_reconstruct(exported, latents, None if reference is None else reference[0])
            reference = reference or (decoded, recon)
            rows.append(
                {
                    "mode": mode,
                    "bytes": summary["bytes"],
                    "ratio": summary["bytes"] / rows[0]["bytes"] if rows else 1.0,
                    "psnr_decode": psnr(decoded, reference[0]),
                    "psnr_recon": psnr(recon, reference[1]),
                    "export_s": seconds,
                }
            )
    print(
        f"{args.checkpoint or args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"keep_edges={args.keep_edges}, group_size={args.group_size}, {args.num_images} images"
    )
    for row in rows:
        print(
            f"{row['mode']:>5} {row['bytes'] / 1e6:9.3f} MB  {100 * row['ratio']:5.1f}%  decode PSNR "
            f"{row['psnr_decode']:6.2f} dB  enc+dec PSNR {row['psnr_recon']:6.2f} dB  "
            f"export {row['export_s']:.2f} s"
        )
    return rows


if __name__ == "__main__":
    main(parse_args())
