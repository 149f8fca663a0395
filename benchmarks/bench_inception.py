"""FID-Inception feature-extraction throughput (images/s) on the current device, for a few batch sizes.

    python benchmarks/bench_inception.py                                   # CPU, or CUDA when available
    python benchmarks/bench_inception.py --device cpu --batch_sizes 16 64 --iters 3
    python benchmarks/bench_inception.py --inception_weights PATH   # offline weights (or set SPHERE_INCEPTION_WEIGHTS)

Inputs are uint8 32x32 images (resized to 299 inside the network, as for CIFAR-10), so the cost per image
does not depend on the dataset's resolution. 50k images take 50000 / (images/s) seconds per evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.inception import build_inception  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default: 8 32 (CPU), 64 256 (GPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed batches per size (default 2 CPU, 20 GPU)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--inception_weights", default=None, help="or SPHERE_INCEPTION_WEIGHTS; default: download")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(extractor, batch_size: int, image_size: int, iters: int, device: torch.device) -> float:
    """Images per second over `iters` batches after one warm-up batch."""
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    extractor(images)  # warm-up: cuDNN autotuning, allocator
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        extractor(images)
    synchronize(device)
    return batch_size * iters / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([64, 256] if on_gpu else [8, 32])
    iters = args.iters or (20 if on_gpu else 2)
    extractor = build_inception(args.inception_weights, device)
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"FID Inception-v3 feature extraction on {name} (torch {torch.__version__})")
    print(f"{'batch':>6}  {'images/s':>9}  {'50k images':>10}")
    for batch_size in batch_sizes:
        rate = throughput(extractor, batch_size, args.image_size, iters, device)
        print(f"{batch_size:>6}  {rate:>9.1f}  {50_000 / rate / 60:>8.1f} min")


if __name__ == "__main__":
    main(parse_args())
