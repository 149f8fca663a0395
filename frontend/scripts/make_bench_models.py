"""Randomly initialised Sphere Encoders of the registry sizes, exported in every mode for `npm run bench`,
plus their PyTorch CPU decode latency for comparison (trained weights time the same as random ones).

    python frontend/scripts/make_bench_models.py [--models vit_tiny vit_small convnet_small] [--image_size 32]

Writes frontend/test-results/bench-models/<model>_<size>px/model_<mode>.safetensors and index.json (git-ignored);
prints the median PyTorch CPU decode time per model (batch 1, float32, after warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.webformat import MODES, export_model, write_index  # noqa: E402
from models import build_model  # noqa: E402
from models.layers import sphere_project  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "vit_small", "convnet_tiny", "convnet_small"])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "frontend" / "test-results" / "bench-models"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    return parser.parse_args(argv)


@torch.no_grad()
def cpu_decode_ms(model, runs: int) -> float:
    """Median wall time of model.decode on one random point of the sphere (batch 1)."""
    v = sphere_project(torch.randn(1, *model.latent_shape))
    for _ in range(2):
        model.decode(v)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.decode(v)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    for name in args.models:
        model = build_model(name, image_size=args.image_size).eval()
        with torch.no_grad():
            for param in model.parameters():  # zero-initialised heads would make every image flat
                param.normal_(0, 0.02)
        folder = out / f"{name}_{args.image_size}px"
        sizes = {mode: export_model(model, folder / f"model_{mode}.safetensors", mode)["bytes"] for mode in MODES}
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{folder.name}: {params / 1e6:.2f}M params, PyTorch CPU decode (batch 1, {torch.get_num_threads()} "
            f"threads) {cpu_decode_ms(model, args.runs):.1f} ms; files "
            + ", ".join(f"{mode} {size / 1e6:.2f} MB" for mode, size in sizes.items())
        )
    write_index(out)


if __name__ == "__main__":
    main(parse_args())
