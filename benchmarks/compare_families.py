"""One table of the five model families: each family's tiny configuration trained for the same wall-clock budget
on the same data, then evaluated the same way (parameters, training img/s, held-out reconstruction PSNR / SSIM /
LPIPS / rFID, FID of samples at the family's default step counts, sampling img/s), with a figure of sample grids.

python benchmarks/compare_families.py                                   # all five, 120 s each, embedded fashion
python benchmarks/compare_families.py --families sphere ldm --budget_s 600 --fid_samples 5000 --device cuda
python benchmarks/compare_families.py --data ../shared/data/cifar10_train_subset.npz --out results/compare_cifar

Training. Every stage runs training.py in this process (training.main(training.parse_args([...]))) with its preset
file under configs/ (*_fashion.yaml), the chosen --data and --image_size, and a later stage takes the earlier
stage's run through its own flag (ldm: --autoencoder; somar: --autoencoder, then --codebook). A staged family's
budget is split over its stages by STAGES' shares, in proportion to the preset stages' measured times (the configs'
comments). Each stage first trains PROBE_STEPS steps with the preset's schedule (--stop_after_steps), which pays
the setup (data, a latent cache) and gives the step rate; it then resumes with --epochs 1 --steps N, N the steps
that fit the rest of its share at that rate, so its warm-up and cosine decay end inside the budget; the preset's
schedule-length flags (SCHEDULE_FLAGS: a GAN's start, the SOM's decay, the KL warm-up) are scaled by N over the
preset's own length (a scaled flag of the model's config, a codebook's --som_steps, makes the main run a new run
from step 0, and the probe's folder is removed). Should a stage still outrun its share, a SIGTERM at the deadline
takes the trainer's own stop (checkpoint, then return). Renders use --eval_samples 16 in every stage, so no family
pays more for its grids; ldm's UNet stage runs with --no-cache (NO_CACHE says why).

Evaluation: evaluate.py's functions on the last stage's EMA weights. Reconstructions: the first --num_recon
held-out images (the data's test split) encoded and decoded once (1 step, no noise); PSNR, SSIM and LPIPS per
image on the uint8 images, rFID against the same originals. Samples: --fid_samples per default step count (image
i from its own generator), FID against the first --num_ref training images' statistics (one cache for all
families); sampling img/s times one batch of --batch_size per step count after a warm-up. FID needs Inception
weights (--inception_weights or SPHERE_INCEPTION_WEIGHTS, else torch-fidelity's download), LPIPS a VGG16 (as
evaluate.py: --vgg_weights, SPHERE_VGG_WEIGHTS, else torchvision's download); without them those columns say why.
A family whose <out>/<family>/result.json was made with the same settings is reused, not retrained.

Writes <out>/table.md (the table, settings, machine, command), table.json and figure.png (one column per family:
samples at its largest default step count, or reconstructions for a family that cannot sample).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate  # noqa: E402
import training  # noqa: E402
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint  # noqa: E402
from engine.cli import InputError, check_device, check_output_dir, int_in_range, positive_int, seed_int  # noqa: E402
from engine.data import DatasetError, build_dataset  # noqa: E402
from engine.families import cannot_sample_reason  # noqa: E402
from engine.inception import (  # noqa: E402
    InceptionWeightsError,
    build_inception,
    images_to_uint8,
    resolve_inception_weights,  # noqa: E402
)
from engine.metrics import (  # noqa: E402
    fid_from_features,
    generation_metrics,
    lpips_distance,
    psnr,
    sample_step_batches,  # noqa: E402
    ssim,
)
from engine.runs import read_jsonl  # noqa: E402
from engine.threads import add_threads_flag, configure_threads  # noqa: E402
from losses import PerceptualWeightsError, build_lpips  # noqa: E402


@dataclass(frozen=True)
class Stage:
    """One training.py run of a family: its preset, its share of the family's budget, and the flag that takes
    the previous stage's run (None for a first stage)."""

    name: str
    config: str
    share: float
    previous_flag: str | None = None
    flags: tuple[str, ...] = ()  # training.py flags beyond the preset's


# ldm's UNet encodes its batches on the fly: the latent cache (every training image and its mirror image encoded
# before the first step, 34 s on one idle CPU thread for fashion) would eat most of a short budget's stage share
NO_CACHE = ("--no-cache",)
# shares follow the preset stages' measured times on one CPU thread (configs/*.yaml comments): ldm 298 s + 294 s,
# somar 342 s + 66 s + 236 s
STAGES = {
    "sphere": [Stage("sphere", "configs/sphere_fashion.yaml", 1.0)],
    "psvae": [Stage("psvae", "configs/psvae_fashion.yaml", 1.0)],
    "vqvae": [Stage("vqvae", "configs/vqvae_fashion.yaml", 1.0)],
    "ldm": [
        Stage("autoencoder", "configs/ldm_ae_fashion.yaml", 0.5),
        Stage("unet", "configs/ldm_fashion.yaml", 0.5, "--autoencoder", NO_CACHE),
    ],
    "somar": [
        Stage("autoencoder", "configs/somar_ae_fashion.yaml", 0.5),
        Stage("codebook", "configs/somar_codebook_fashion.yaml", 0.1, "--autoencoder"),
        Stage("prior", "configs/somar_prior_fashion.yaml", 0.4, "--codebook"),
    ],
}
SCHEDULE_FLAGS = ("warmup_steps", "disc_start", "som_steps", "beta_warmup_steps")  # lengths counted in steps
PROBE_STEPS = 10  # steps before the step rate is read (two metrics.jsonl windows: --log_every PROBE_STEPS // 2)
PLAN_MARGIN = 0.9  # of the time left, for steps: the rest covers the final render and checkpoint
EVAL_SAMPLES = 16  # render grids during training, the same for every family
GRID_SIDE = 6  # figure: GRID_SIDE x GRID_SIDE images per family
FIGURE_SCALE = 2  # nearest-neighbour enlargement of each grid (at least 2)
LABEL_HEIGHT = 100  # pixels of text above each figure column: family, model, what the grid shows, a number
MIN_COLUMN_WIDTH = 230  # pixels, so that the captions fit beside small grids
FIGURE_GAP = 16  # pixels between columns and around the figure
DASH = "—"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--families", nargs="+", choices=list(STAGES), default=list(STAGES), metavar="FAMILY")
    parser.add_argument("--budget_s", type=float, default=120.0, help="wall-clock training seconds per family")
    parser.add_argument("--max_steps", type=positive_int, default=None, help="cap on each stage's steps (smoke runs)")
    parser.add_argument("--data", default="fashion", help="anything training.py --dataset takes (default: fashion)")
    parser.add_argument("--data_root", default="data")
    parser.add_argument("--image_size", type=positive_int, default=32, help="every family at this resolution")
    parser.add_argument("--fid_samples", type=int_in_range(0), default=500, help="per step count; 0: no Inception")
    parser.add_argument("--num_recon", type=int_in_range(2), default=500, help="held-out images reconstructed")
    parser.add_argument("--num_ref", type=int_in_range(2), default=1000, help="training images for FID statistics")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="evaluation and sampling-speed batch")
    parser.add_argument("--inception_weights", default=None, help="FID Inception file (or SPHERE_INCEPTION_WEIGHTS)")
    parser.add_argument("--vgg_weights", default=None, help="vgg16().features file for LPIPS (or SPHERE_VGG_WEIGHTS)")
    parser.add_argument("--out", default=None, help="output folder (default results/compare_<stamp>); reused runs")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=seed_int, default=0)
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    args.families = list(dict.fromkeys(args.families))
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def check_args(args) -> None:
    """Every flag that cannot work, as one InputError, before any training."""
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise InputError(f"--budget_s must be a number of seconds > 0, got {args.budget_s:g}")
    if args.fid_samples == 1:
        raise InputError("--fid_samples 1: FID needs 2 samples or more; pass 0 for no Inception metrics")
    weights = resolve_inception_weights(args.inception_weights)
    if args.fid_samples and weights and not Path(weights).is_file():
        raise InputError(f"Inception weights '{weights}' do not exist; pass --inception_weights FILE")
    if args.vgg_weights and not Path(args.vgg_weights).is_file():
        raise InputError(f"--vgg_weights '{args.vgg_weights}' does not exist; pass a vgg16().features file")
    args.out = Path(args.out or f"results/compare_{time.strftime('%Y%m%d_%H%M%S')}")
    check_output_dir(args.out, "--out")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = str(check_device(auto if args.device == "auto" else args.device))
    build_dataset(args.data, args.image_size, train=True, hflip=False, root=args.data_root)  # DatasetError if unusable


# ---------------------------------------------------------------------------------------------------------
# Training under a wall-clock budget


@contextlib.contextmanager
def sigterm_at(seconds: float):
    """SIGTERM to this process after `seconds`: inside training.py the trainer's stop (checkpoint, then return)
    ends the run; outside it the signal is ignored. Yields an Event set when the deadline passed."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    timer = threading.Timer(max(seconds, 0.0), expire)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGTERM, previous)


def run_training(argv: list[str]) -> Path:
    """training.py in this process; its one-line errors become InputError naming the failing command."""
    try:
        return training.main(training.parse_args(argv))
    except SystemExit as error:
        if not isinstance(error.code, str):  # Ctrl-C (130) or a bare exit: stop everything
            raise
        raise InputError(f"{error.code.removeprefix('error: ')} (training.py {shlex.join(argv)})") from None


def preset_of(stage: Stage) -> dict:
    return yaml.safe_load((REPO / stage.config).read_text())


def stage_argv(stage: Stage, stage_dir: Path, previous: Path | None, args, threads: int, log_every: int) -> list[str]:
    """training.py flags shared by a stage's probe and its main run."""
    argv = ["--config", str(REPO / stage.config), "--dataset", args.data, "--data_root", args.data_root]
    argv += ["--image_size", str(args.image_size), "--device", args.device, "--threads", str(threads)]
    argv += ["--seed", str(args.seed), "--results_dir", str(stage_dir), "--eval_samples", str(EVAL_SAMPLES)]
    argv += ["--log_every", str(log_every), "--num_workers", "0"]
    return argv + ([stage.previous_flag, str(previous)] if stage.previous_flag else []) + list(stage.flags)


def step_rate(run_dir: Path) -> float:
    """Steps per second of the run's last throughput window (after the first, which may hold compilation)."""
    windows = [record for record in read_jsonl(run_dir / "metrics.jsonl") if "img_per_s" in record]
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    return windows[-1]["img_per_s"] / batch


def planned_steps(done: int, rate: float, seconds_left: float, max_steps: int | None) -> int:
    """Total steps of the stage: those done plus what fits the time left at `rate` steps/s (capped)."""
    total = done + max(0, math.floor(seconds_left * PLAN_MARGIN * rate))
    return min(total, max_steps) if max_steps else total


def schedule_flags(preset: dict, total: int) -> list[str]:
    """The preset's step-counted schedule lengths scaled from its own length to `total` steps."""
    length = preset["epochs"] * preset["steps"]
    flags = []
    for key in SCHEDULE_FLAGS:
        if preset.get(key) is not None:
            flags += [f"--{key}", str(max(1, round(preset[key] * total / length)))]
    return flags


def steps_of(run_dir: Path) -> int:
    return int(load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth", "cpu")["step"])


def train_stage(stage: Stage, stage_dir: Path, previous_run: Path | None, seconds: float, args, threads: int):
    """Probe, plan, train: the stage's run folder and what happened (steps, seconds, img/s)."""
    start = time.perf_counter()
    probe = min(PROBE_STEPS, max(1, (args.max_steps or PROBE_STEPS + 1) - 1))
    base = stage_argv(stage, stage_dir, previous_run, args, threads, log_every=max(1, probe // 2))
    with sigterm_at(seconds) as fired:
        probe_run = run_training([*base, "--stop_after_steps", str(probe)])
        done = steps_of(probe_run)
        total = planned_steps(done, step_rate(probe_run), seconds - (time.perf_counter() - start), args.max_steps)
        schedule = ["--epochs", "1", "--steps", str(total), *schedule_flags(preset_of(stage), total)]
        run_dir = run_training([*base, *schedule]) if total > done else probe_run
    if run_dir != probe_run:  # a scaled flag is part of the model's config (som_steps): a new run from step 0
        shutil.rmtree(probe_run)
    rates = [record["img_per_s"] for record in read_jsonl(run_dir / "metrics.jsonl") if "img_per_s" in record]
    return run_dir, {
        "stage": stage.name,
        "config": stage.config,
        "run": str(run_dir),
        "budget_s": seconds,
        "seconds": time.perf_counter() - start,
        "steps": steps_of(run_dir),
        "planned_steps": total,
        "stopped_at_deadline": fired.is_set(),
        "train_img_s": statistics.median(rates),
    }


def train_family(family: str, family_dir: Path, args, threads: int) -> tuple[Path, list[dict]]:
    """Every stage of the family in order, each taking the previous stage's run: (last run, stage records)."""
    shutil.rmtree(family_dir, ignore_errors=True)  # a half-done family starts again
    previous, records = None, []
    for stage in STAGES[family]:
        print(f"== {family}: stage {stage.name} ({stage.share * args.budget_s:.0f} s)", flush=True)
        previous, record = train_stage(
            stage, family_dir / stage.name, previous, stage.share * args.budget_s, args, threads
        )
        records.append(record)
    return previous, records


# ---------------------------------------------------------------------------------------------------------
# Evaluation, the same for every family


class Judges:
    """The networks every family is measured with, each built on first use: Inception and LPIPS (or why not),
    the reference statistics and the held-out originals' features."""

    def __init__(self, args):
        self.args, self.reference, self.real_features = args, None, None

    @functools.cached_property
    def inception(self) -> tuple[object | None, str | None]:
        """(the FID Inception, None) or (None, why there is none)."""
        if not self.args.fid_samples:
            return None, "--fid_samples 0: no Inception metrics asked for"
        try:
            return build_inception(self.args.inception_weights, self.args.device), None
        except InceptionWeightsError as error:
            return None, str(error)

    @functools.cached_property
    def lpips(self) -> tuple[torch.nn.Module | None, str | None]:
        """(LPIPS-VGG as evaluate.py builds it, None) or (None, why there is none)."""
        try:
            return build_lpips(self.args.vgg_weights).to(self.args.device), None
        except PerceptualWeightsError as error:
            return None, str(error)

    @property
    def extractor(self):
        return self.inception[0]

    def reference_for(self, eval_args, run_config: dict):
        if self.reference is None:
            self.reference, _ = evaluate.load_generation_reference(eval_args, run_config, self.extractor)
        return self.reference


def evaluation_args(checkpoint: Path, model, args) -> argparse.Namespace:
    """evaluate.py's flags for this comparison (its functions read them)."""
    argv = ["--checkpoint", str(checkpoint), "--num_samples", str(max(2, args.fid_samples))]
    argv += ["--num_recon", str(args.num_recon), "--batch_size", str(args.batch_size), "--seed", str(args.seed)]
    argv += ["--device", args.device, "--dataset", args.data, "--data_root", args.data_root]
    argv += ["--ref_cache_dir", str(args.out / "fid_stats"), "--num_ref", str(args.num_ref)]
    eval_args = evaluate.parse_args(argv)
    eval_args.steps = list(model.default_eval_steps)
    return eval_args


def mean(values: list[torch.Tensor]) -> float:
    return torch.cat(values).mean().item()


@torch.no_grad()
def reconstruction(model, eval_args, run_config: dict, judges: Judges) -> tuple[dict, torch.Tensor | None]:
    """PSNR, SSIM, LPIPS (per-image means) and rFID of 1-step reconstructions of the held-out images, and a
    figure grid (originals, reconstructions); values None with their reasons when unavailable."""
    if not getattr(model, "can_reconstruct", True):
        reason = f"a {type(model).__name__} has no encoder to reconstruct with"
        return {key: None for key in ("psnr", "ssim", "lpips", "rfid")} | {"reason": reason}, None
    dataset = evaluate.of_kind(evaluate.run_dataset(eval_args, run_config, train=False), "image")
    scores = {"psnr": [], "ssim": [], "lpips": [], "features": [], "real": []}
    pictures = None
    for _, originals, recons in evaluate.reconstruction_batches(model, dataset, eval_args, [1]):
        real_uint8, recon_uint8 = images_to_uint8(originals), images_to_uint8(recons[1])
        real, fake = real_uint8.double() / 255, recon_uint8.double() / 255
        scores["psnr"].append(psnr(real, fake).cpu())
        scores["ssim"].append(ssim(real, fake).cpu())
        if judges.lpips[0] is not None:
            scores["lpips"].append(lpips_distance(judges.lpips[0], real.float() * 2 - 1, fake.float() * 2 - 1).cpu())
        if judges.extractor is not None:
            scores["features"].append(judges.extractor(recon_uint8)[0].cpu())
            if judges.real_features is None:
                scores["real"].append(judges.extractor(real_uint8)[0].cpu())
        pictures = pictures if pictures is not None else (originals.cpu(), recons[1].cpu())
    if judges.extractor is not None and judges.real_features is None:
        judges.real_features = torch.cat(scores["real"])  # the same first images for every family
    result = {"psnr": mean(scores["psnr"]), "ssim": mean(scores["ssim"]), "split": dataset.split}
    result["num_images"] = min(len(dataset), eval_args.num_recon)
    result["lpips"] = mean(scores["lpips"]) if scores["lpips"] else None
    rfid = fid_from_features(torch.cat(scores["features"]), judges.real_features) if scores["features"] else None
    result["rfid"] = rfid
    notes = {"lpips": judges.lpips[1], "rfid": None if rfid is not None else judges.inception[1]}
    result["reasons"] = {key: reason for key, reason in notes.items() if reason}
    return result, pictures


@torch.no_grad()
def sampling_rate(model, steps: int, count: int, seed: int, device: str) -> float:
    """Images per second of one batch of `count` samples at `steps` steps, after a 2-image warm-up."""
    next(sample_step_batches(model, 2, [steps], 2, seed))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    next(sample_step_batches(model, count, [steps], count, seed))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


@torch.no_grad()
def generation(model, eval_args, run_config: dict, judges: Judges, args) -> tuple[dict, torch.Tensor | None]:
    """Sampling img/s and FID (with KID, IS, precision/recall) per default step count, and the figure's samples
    at the largest one; values None with the reason when the model cannot sample or there is no Inception."""
    reason = cannot_sample_reason(model)
    if reason is not None:
        return {"steps": [], "fid": {}, "sample_img_s": {}, "reason": reason}, None
    steps = list(model.default_eval_steps)
    rates = {t: sampling_rate(model, t, args.batch_size, args.seed, args.device) for t in steps}
    count = GRID_SIDE**2
    grid = next(sample_step_batches(model, count, [max(steps)], count, args.seed))[1][max(steps)].cpu()
    result = {"steps": steps, "sample_img_s": rates, "fid": {t: None for t in steps}, "metrics": {}}
    if judges.extractor is None:
        return result | {"fid_reason": judges.inception[1]}, grid
    reference = judges.reference_for(eval_args, run_config)
    features = evaluate.generated_features(model, judges.extractor, eval_args, cfg=1.0)
    for t, (pool3, logits) in features.items():
        metrics = generation_metrics(pool3, logits, reference, judges.extractor.logits_unavailable_reason, args.device)
        result["fid"][t] = metrics["fid"].value
        result["metrics"][t] = {name: metric.value for name, metric in metrics.items()}
    return result | {"num_samples": args.fid_samples, "num_ref": reference.num_features}, grid


def evaluate_family(run_dir: Path, judges: Judges, args) -> tuple[dict, torch.Tensor, str]:
    """The table's numbers for a family's last stage (EMA weights), its figure grid and the grid's caption."""
    checkpoint = run_dir / "checkpoints" / "checkpoint_latest.pth"
    model, run_config = load_model_from_checkpoint(checkpoint, use_ema=True, map_location=args.device)
    eval_args = evaluation_args(checkpoint, model, args)
    recon, pictures = reconstruction(model, eval_args, run_config, judges)
    gen, samples = generation(model, eval_args, run_config, judges, args)
    result = {"model": run_config["model_type"], "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    result |= {"reconstruction": recon, "generation": gen}
    if samples is not None:
        return result, samples, f"samples, {max(gen['steps'])} step{'s' * (max(gen['steps']) > 1)}"
    half = GRID_SIDE**2 // 2  # top rows the held-out images, bottom rows their reconstructions
    grid = torch.cat([padded(images[:half], half) for images in pictures])
    return result, grid, "no sampler: held-out (top), reconstructed"


# ---------------------------------------------------------------------------------------------------------
# Per-family results: run, evaluate, or reuse


def settings_of(args) -> dict:
    """What a family's result depends on: a saved result with other settings is redone."""
    keys = ("budget_s", "max_steps", "data", "image_size", "fid_samples", "num_recon", "num_ref", "batch_size")
    settings = {key: getattr(args, key) for key in keys} | {"device": args.device, "seed": args.seed}
    settings["inception_weights"] = resolve_inception_weights(args.inception_weights)
    settings["vgg_weights"] = args.vgg_weights or os.environ.get("SPHERE_VGG_WEIGHTS")
    return settings


def family_result(family: str, args, threads: int, judges: Judges) -> dict:
    """The family's result.json: reused when its settings match, else trained and evaluated now."""
    family_dir = args.out / family
    saved = family_dir / "result.json"
    if saved.is_file() and json.loads(saved.read_text()).get("settings") == settings_of(args):
        print(f"== {family}: reusing {saved}", flush=True)
        return json.loads(saved.read_text())
    run_dir, stages = train_family(family, family_dir, args, threads)
    print(f"== {family}: evaluating {run_dir}", flush=True)
    result, grid, caption = evaluate_family(run_dir, judges, args)
    save_cell(grid, family_dir / "grid.png")
    result |= {"family": family, "stages": stages, "caption": caption, "settings": settings_of(args)}
    result["seconds"] = sum(stage["seconds"] for stage in stages)
    saved.write_text(json.dumps(result, indent=2) + "\n")
    return result


def padded(images: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` images (B, C, H, W) in [-1, 1], followed by white ones up to `count`."""
    images = images[:count].float().clamp(-1, 1).cpu()
    return torch.cat([images, images.new_ones(count - len(images), *images.shape[1:])])


def save_cell(images: torch.Tensor, path: Path) -> None:
    """A full GRID_SIDE x GRID_SIDE grid of images in [-1, 1], enlarged FIGURE_SCALE times (nearest neighbour)."""
    grid = make_grid(padded(images, GRID_SIDE**2), nrow=GRID_SIDE, padding=2, pad_value=1.0)  # (3, H, W)
    pixels = ((grid + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * FIGURE_SCALE, picture.height * FIGURE_SCALE), Image.NEAREST).save(path)


def data_cell(args) -> Path:
    """The figure's first column: the first held-out images, as every family's grid is drawn."""
    path = args.out / "data_grid.png"
    dataset = build_dataset(args.data, args.image_size, train=False, hflip=False, root=args.data_root)
    images = torch.stack([dataset[i][0] for i in range(min(len(dataset), GRID_SIDE**2))])
    save_cell(images, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Table and figure


def number(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def per_steps(values: dict, digits: int = 1) -> str:
    """'1: 98.1, 4: 80.2' (JSON keys are strings after a reuse)."""
    return ", ".join(f"{steps}: {number(value, digits)}" for steps, value in values.items()) or DASH


COLUMNS = ["family", "model", "params (M)", "steps per stage", "train img/s", "PSNR (dB)", "SSIM", "LPIPS", "rFID"]
COLUMNS += ["FID (steps: value)", "sample img/s (steps: value)"]


def table_row(result: dict) -> list[str]:
    """One markdown row of a family's result."""
    if "error" in result:
        return [result["family"], *[DASH] * (len(COLUMNS) - 1)]
    recon, gen, stages = result["reconstruction"], result["generation"], result["stages"]
    return [
        result["family"],
        result["model"],
        f"{result['params_m']:.2f}",
        " + ".join(
            f"{stage['stage']} {stage['steps']}" if len(stages) > 1 else str(stage["steps"]) for stage in stages
        ),
        " / ".join(f"{stage['train_img_s']:.0f}" for stage in stages),
        number(recon["psnr"], 2),
        number(recon["ssim"], 3),
        number(recon["lpips"], 3),
        number(recon["rfid"]),
        per_steps(gen["fid"]) if gen["fid"] and any(v is not None for v in gen["fid"].values()) else DASH,
        per_steps(gen["sample_img_s"]),
    ]


def dash_reasons(result: dict) -> list[tuple[str, str]]:
    """(column, reason) for each of a family's dashes."""
    if "error" in result:
        return [("every column", f"training failed: {result['error']}")]
    gen, recon = result["generation"], result["reconstruction"]
    pairs = [("FID and sample img/s", gen["reason"])] if gen.get("reason") else []
    pairs += [("FID", gen["fid_reason"])] if gen.get("fid_reason") else []
    if recon.get("reason"):
        return pairs + [("PSNR, SSIM, LPIPS, rFID", recon["reason"])]
    names = {"lpips": "LPIPS", "rfid": "rFID"}
    return pairs + [(names[key], reason) for key, reason in recon.get("reasons", {}).items()]


def table_notes(results: list[dict]) -> list[str]:
    """Why each dash is a dash: one line per reason, naming the columns and families it applies to."""
    grouped: dict[str, dict[str, list[str]]] = {}  # reason -> column -> families
    for result in results:
        for column, reason in dash_reasons(result):
            grouped.setdefault(reason, {}).setdefault(column, []).append(result["family"])
    return [
        "- " + "; ".join(f"{column} of {', '.join(families)}" for column, families in columns.items()) + f": {reason}"
        for reason, columns in grouped.items()
    ]


def machine(args, threads: int) -> str:
    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(args.device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    return f"CPU {name}, {os.cpu_count()} cores, {threads} torch thread{'s' * (threads > 1)}, torch {torch.__version__}"


def markdown(results: list[dict], args, context: dict) -> str:
    """table.md: what was run, then the table, then why any cell is a dash."""
    lines = [
        f"# Model families compared ({context['date']})",
        "",
        f"- budget: {args.budget_s:g} s of training per family (staged families split it over their stages)"
        + (f", at most {args.max_steps} steps a stage" if args.max_steps else ""),
        f"- data: `{args.data}` at {args.image_size} px; reconstructions of the first {args.num_recon} held-out images",
        f"- FID: {args.fid_samples} samples per step count against the statistics of {args.num_ref} training images"
        f" (Inception: `{context['inception']}`); LPIPS VGG16: `{context['vgg']}`",
        f"- machine: {context['machine']}; load average {context['load_start']} at the start, {context['load_end']}"
        " at the end",
        f"- command: `{context['command']}`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(table_row(result)) + " |" for result in results),
    ]
    notes = table_notes(results)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def figure_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def caption_lines(result: dict) -> tuple[str, ...]:
    """The lines above a family's grid: its name, its model, what the grid shows, and its headline number."""
    if "error" in result:
        return result["family"], "training failed", "(see table.md)", ""
    gen, recon = result["generation"], result["reconstruction"]
    fid = gen["fid"].get(max(gen["fid"], key=int)) if gen.get("fid") else None
    score = f"FID {fid:.1f}" if fid is not None else f"recon. PSNR {recon['psnr']:.1f} dB" if recon["psnr"] else ""
    return result["family"], result["model"], result["caption"], score


def figure_layout(cell: tuple[int, int], columns: int) -> tuple[int, int, int]:
    """(column width, figure width, figure height) for `columns` grids of size `cell` (width, height)."""
    column = max(cell[0], MIN_COLUMN_WIDTH)
    return column, FIGURE_GAP + columns * (column + FIGURE_GAP), LABEL_HEIGHT + cell[1] + FIGURE_GAP


def write_figure(results: list[dict], data_grid: Path, path: Path) -> Path:
    """figure.png: a labelled column per family (its grid.png), after a column of the held-out data."""
    data = Image.open(data_grid).convert("RGB")
    cells = [(("data", "held-out images", "", ""), data)]
    for result in results:
        grid = Path(result.get("grid", ""))
        cells.append((caption_lines(result), Image.open(grid).convert("RGB") if grid.is_file() else None))
    column, width, height = figure_layout(data.size, len(cells))
    figure = Image.new("RGB", (width, height), "white")
    draw, title, text = ImageDraw.Draw(figure), figure_font(22), figure_font(15)
    for index, (lines, picture) in enumerate(cells):
        left = FIGURE_GAP + index * (column + FIGURE_GAP)
        draw.text((left, 8), lines[0], fill="black", font=title)
        for row, line in enumerate(lines[1:]):
            draw.text((left, 38 + 18 * row), line, fill=(60, 60, 60), font=text)
        if picture is not None:
            figure.paste(picture.resize(data.size, Image.NEAREST), (left, LABEL_HEIGHT))
    figure.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------


def run_family(family: str, args, threads: int, judges: Judges) -> dict:
    """A family's result, or {family, error} when one of its training runs failed (the others go on)."""
    try:
        result = family_result(family, args, threads, judges)
    except (InputError, CheckpointError) as error:
        print(f"error: {family}: {error}", flush=True)
        return {"family": family, "error": str(error)}
    return result | {"grid": str(args.out / family / "grid.png")}


def main(args: argparse.Namespace) -> list[dict]:
    try:
        check_args(args)
        threads = configure_threads(args.threads)
        load_start = " ".join(f"{value:.2f}" for value in os.getloadavg())
        args.out.mkdir(parents=True, exist_ok=True)
        data_grid = data_cell(args)
        judges = Judges(args)
    except (InputError, DatasetError) as error:
        raise SystemExit(f"error: {error}") from None
    results = [run_family(family, args, threads, judges) for family in args.families]
    context = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(args, threads),
        "load_start": load_start,
        "load_end": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "command": "python benchmarks/compare_families.py " + shlex.join(args.argv),
        "inception": resolve_inception_weights(args.inception_weights) or "torch-fidelity download",
        "vgg": args.vgg_weights or os.environ.get("SPHERE_VGG_WEIGHTS") or "torchvision download",
    }
    table = markdown(results, args, context)
    (args.out / "table.md").write_text(table)
    (args.out / "table.json").write_text(json.dumps({"context": context, "families": results}, indent=2) + "\n")
    write_figure(results, data_grid, args.out / "figure.png")
    print(table + f"wrote {args.out / 'table.md'}, table.json and figure.png")
    return results


if __name__ == "__main__":
    main(parse_args())
