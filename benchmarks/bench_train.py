"""Training and sampling throughput of Sphere Encoder configs on the current device (prints a table).

python benchmarks/bench_train.py                                   # vit/convnet tiny + base, CPU or GPU
python benchmarks/bench_train.py --models vit_small --batch_size 256 --iters 50 --compile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.optim import build_optimizer  # noqa: E402
from engine.setup import build_loss  # noqa: E402
from engine.trainer import peak_memory_mb  # noqa: E402
from losses import SphereLossConfig  # noqa: E402
from models import MODELS, build_model  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["vit_tiny", "convnet_tiny", "vit_base", "convnet_base"], choices=sorted(MODELS)
    )
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=None, help="default 128 on GPU, 16 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--vgg_weights", default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters: int, warmup: int, device) -> float:
    """Seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def bench_model(name: str, args, device: torch.device) -> dict:
    model = build_model(name, image_size=args.image_size).to(device)
    weight = 1.0 if args.perceptual else 0.0
    loss_fn = build_loss(
        SphereLossConfig(recon_perc_weight=weight, con_perc_weight=weight / 2), args.vgg_weights, device
    )
    optimizer = build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), 0.0)
    forward = torch.compile(model) if args.compile else model
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def train_step():
        with autocast:
            loss, _ = loss_fn(forward, (images, None))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, args.iters, args.warmup, device)
    peak = peak_memory_mb(device) / 1024  # CUDA: max allocated; CPU: the process's peak RSS
    model.eval()

    def sample():
        with autocast:
            model.sample(args.batch_size, steps=1)

    sample_s = timed(sample, args.iters, args.warmup, device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return dict(
        model=name,
        params_m=params,
        train_img_s=args.batch_size / train_s,
        peak_gib=peak,
        sample_img_s=args.batch_size / sample_s,
    )


def main(args):
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.iters = args.iters or (20 if gpu else 3)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name} | image {args.image_size}px | batch {args.batch_size} | perceptual {args.perceptual}")
    print(f"{'model':<14}{'params (M)':>11}{'train img/s':>13}{'peak GiB':>10}{'1-step sample img/s':>21}")
    if not gpu:
        print(
            "(CPU peak memory is the process's peak RSS so far, so it never goes down between rows:"
            " run one --models entry per call for per-model numbers)"
        )
    for model_name in args.models:
        row = bench_model(model_name, args, device)
        print(
            f"{row['model']:<14}{row['params_m']:>11.1f}{row['train_img_s']:>13.1f}{row['peak_gib']:>10.2f}"
            f"{row['sample_img_s']:>21.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main(parse_args())
