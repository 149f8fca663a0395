"""Training and sampling throughput of registered models of any family on the current device (prints a table).

python benchmarks/bench_train.py                                   # sphere, psvae, vqvae, ldm: tiny and base
python benchmarks/bench_train.py --models vit_small psvae_small --batch_size 256 --iters 50 --compile
python benchmarks/bench_train.py --models psvae_tiny --train_flags="--recon l1 --perceptual_weight 0.1"
python benchmarks/bench_train.py --models vit_tiny --threads 1 --out bench.jsonl   # CPU threads; rows as JSON lines

Each model trains with its family's loss and optimizer groups as training.py builds them from its flag defaults
(no preset), plus --train_flags; --no-perceptual turns every perceptual weight off (LPIPS, ConvNeXt). A diffusion
model (ldm_*, ddpm_*) also reports its sampler's img/s at each of its default step counts (DDIM 10 and 50 steps:
steps are not prefixes, so each is its own run); a stage-2 ldm_* model runs on an untrained autoencoder of its size
and also reports its training img/s on cached latents (what training.py does by default) and the autoencoder's
encoding img/s (what building the cache costs per image and flip).

FLOPs per image are those of one training step, forward and backward, loss networks (LPIPS) included, counted by
torch.utils.flop_counter on the uncompiled model (matmuls, convolutions and attention; elementwise ops and the
optimizer are not counted). Achieved FLOP/s = FLOPs per image x train img/s; MFU divides it by the device's dense
bf16 peak from PEAK_BF16_TFLOPS (CUDA only: a device missing from the table prints FLOP/s and says so).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training  # noqa: E402
from engine.families import input_shape  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.setup import build_loss, lr_multipliers, model_overrides  # noqa: E402
from engine.threads import add_threads_flag, configure_threads  # noqa: E402
from engine.trainer import peak_memory_mb  # noqa: E402
from losses import PerceptualWeightsError  # noqa: E402
from models import MODELS, build_model  # noqa: E402

DEFAULT_MODELS = ["vit_tiny", "convnet_tiny", "psvae_tiny", "vqvae_tiny", "vit_base", "convnet_base", "psvae_base"]
DEFAULT_MODELS += ["vqvae_base", "ldm_ae_tiny", "ldm_tiny", "ddpm_tiny"]
# every family's perceptual weights: --no-perceptual sets those of the model's family to 0
PERCEPTUAL_FLAGS = ("recon_perc_weight", "con_perc_weight", "perceptual_weight")
# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched in this order against
# torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe" the PCIe one)
PEAK_BF16_TFLOPS = [
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.5),
    ("GH200", 989.5),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.5),
    ("H800", 989.5),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(MODELS), metavar="NAME")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=None, help="default 128 on GPU, 16 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--perceptual",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each family's default perceptual terms (sphere: LPIPS; psvae: none); --no-perceptual: none",
    )
    parser.add_argument("--vgg_weights", default=None)
    parser.add_argument("--train_flags", default="", help="training.py flags for every model, e.g. '--recon l1'")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_threads_flag(parser)
    parser.add_argument("--out", type=Path, default=None, help="also append every row to this file as a JSON line")
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


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (PEAK_BF16_TFLOPS), or None for a device not in the table."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """CPU's fused attention kernel, which torch's flop counter does not know: the same count as the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops,
}


def flops_per_image(step, batch_size: int) -> float:
    """FLOPs of one call of step (a training step: forward and backward) divided by the batch size."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step()
    return counter.get_total_flops() / batch_size


def training_flags(name: str, args) -> argparse.Namespace:
    """training.py's flags for this model: its family's defaults and --train_flags, then the perceptual weights
    of whichever family it is off for --no-perceptual; ConvNeXt-S always off (its weights are a download)."""
    argv = ["--model_type", name, "--preset", "none", "--image_size", str(args.image_size)]
    argv += ["--vgg_weights", args.vgg_weights] if args.vgg_weights else []
    flags = training.parse_args([*argv, *shlex.split(args.train_flags)])
    off = ("convnext_weight", *(() if args.perceptual else PERCEPTUAL_FLAGS))
    for key in off:
        if hasattr(flags, key):  # the other families' flags were dropped while parsing
            setattr(flags, key, 0.0)
    return flags


def bench_model(name: str, args, device: torch.device) -> dict:
    """Train img/s, peak memory and 1-step sampling img/s of one registered model with its family's loss."""
    flags = training_flags(name, args)
    images_like = SimpleNamespace(name="random", kind="image", image_size=args.image_size, in_channels=3, num_classes=0)
    model = build_model(name, **model_overrides(flags, images_like)).to(device)
    loss_fn = build_loss(flags, model, device)
    optimizer = build_optimizer(model, 1e-4, lr_multipliers(flags), (0.9, 0.95), 0.0)
    forward = torch.compile(model) if args.compile else model
    images = torch.rand(args.batch_size, *input_shape(model), device=device) * 2 - 1
    labels = torch.zeros(args.batch_size, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def train_step(net=forward):
        with autocast:
            loss, _ = loss_fn(net, (images, labels), 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops = flops_per_image(lambda: train_step(model), args.batch_size)  # uncompiled: the counter sees every op
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, args.iters, args.warmup, device)
    peak = peak_memory_mb(device) / 1024  # CUDA: max allocated; CPU: the process's peak RSS
    model.eval()

    def sample():
        with autocast:
            model.sample(args.batch_size, steps=1)

    sample_s = timed(sample, args.iters, args.warmup, device) if model.can_sample else None  # a tokenizer
    step_img_s = {}
    if model.can_sample and not model.steps_are_prefix:  # diffusion: each step count is its own run
        for steps in model.default_eval_steps:
            seconds = timed(lambda: model.sample(args.batch_size, steps=steps), 1, 0, device)  # noqa: B023
            step_img_s[steps] = args.batch_size / seconds
    params = sum(p.numel() for p in model.parameters()) / 1e6
    cached = latent_cache_rates(model, loss_fn, optimizer, images, labels, args, device)
    return cached | dict(
        model=name,
        params_m=params,
        train_img_s=args.batch_size / train_s,
        gflop_per_img=flops / 1e9,
        tflop_s=flops * args.batch_size / train_s / 1e12,
        peak_gib=peak,
        sample_img_s=None if sample_s is None else args.batch_size / sample_s,
        sample_img_s_at_steps=step_img_s,
    )


def latent_cache_rates(model, loss_fn, optimizer, images, labels, args, device) -> dict:
    """A stage-2 latent model's training img/s on cached posteriors (engine/latent_cache.py: the batch's scaled
    mean and std, encoded once) and its autoencoder's encoding img/s; {} for other models."""
    if getattr(model.config, "kind", None) != "latent":
        return {}
    encode = lambda: model.latents(images)  # noqa: E731
    encode_s = timed(encode, args.iters, args.warmup, device)
    posteriors = torch.stack(model.latents(images), 1).unsqueeze(1)  # (B, 1 flip, 2, c, h, w)
    model.train()

    def cached_step():
        loss, _ = loss_fn(model, (posteriors, labels), 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cached_s = timed(cached_step, args.iters, args.warmup, device)
    model.eval()
    return {"cached_train_img_s": args.batch_size / cached_s, "encode_img_s": args.batch_size / encode_s}


def main(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.iters = args.iters or (20 if gpu else 3)
    threads = configure_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({threads} threads)"
    peak = peak_tflops(name) if gpu else None
    print(f"device: {name} | image {args.image_size}px | batch {args.batch_size} | perceptual {args.perceptual}")
    print(peak_note(name, gpu, peak))
    print(
        f"{'model':<14}{'params (M)':>11}{'train img/s':>13}{'GFLOP/img':>11}{'TFLOP/s':>9}{'MFU':>7}"
        f"{'peak GiB':>10}{'1-step sample img/s':>21}"
    )
    if not gpu:
        print(
            "(CPU peak memory is the process's peak RSS so far, so it never goes down between rows:"
            " run one --models entry per call for per-model numbers)"
        )
    rows = []
    for model_name in args.models:
        row = bench_model(model_name, args, device)
        rows.append(row | {"device": name, "batch_size": args.batch_size, "compile": args.compile, "threads": threads})
        rows[-1]["mfu"] = None if peak is None else row["tflop_s"] / peak
        print_row(rows[-1])
        append_json(args.out, rows[-1])
    return rows


def peak_note(name: str, gpu: bool, peak: float | None) -> str:
    """The line under the device line saying what MFU is measured against, or why there is none."""
    if peak is not None:
        return f"MFU: achieved FLOP/s over the dense bf16 peak of {peak:g} TFLOP/s"
    if gpu:
        return f"MFU: n/a, {name} is not in PEAK_BF16_TFLOPS (benchmarks/bench_train.py): add its dense bf16 peak"
    return "MFU: n/a on CPU (TFLOP/s is what the step achieved)"


def append_json(path: Path | None, row: dict) -> None:
    if path is not None:
        with path.open("a") as file:
            file.write(json.dumps(row) + "\n")


def print_row(row: dict) -> None:
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    print(
        f"{row['model']:<14}{row['params_m']:>11.1f}{row['train_img_s']:>13.1f}{row['gflop_per_img']:>11.2f}"
        f"{row['tflop_s']:>9.3g}{mfu:>7}{row['peak_gib']:>10.2f}"
        f"{'n/a (cannot sample)' if row['sample_img_s'] is None else format(row['sample_img_s'], '.1f'):>21}",
        flush=True,
    )
    if "cached_train_img_s" in row:
        print(f"{'':<14}training on cached latents: {row['cached_train_img_s']:.1f} img/s", flush=True)
        print(f"{'':<14}encoding for the cache: {row['encode_img_s']:.1f} img/s", flush=True)
    for steps, rate in row.get("sample_img_s_at_steps", {}).items():
        print(f"{'':<14}sampling at {steps} steps: {rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    try:
        main(parse_args())
    except PerceptualWeightsError as error:  # no VGG16 file and no network: one line, the fix in it
        raise SystemExit(f"error: {error}") from None
