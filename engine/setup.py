"""Turning training flags into a run: model/loss settings, run folder choice, resume, saved config."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from losses import SphereLoss, SphereLossConfig, build_perceptual
from models import build_model

from .distributed import DistInfo, broadcast_object
from .runs import (
    LATEST_CHECKPOINT,
    clean_run_dir,
    find_resumable_run,
    new_run_dir,
    read_run_config,
    truncate_metrics,
    write_run_config,
)
from .trainer import TrainSettings

# Flags that describe where/how this invocation runs, never taken from a resumed run's saved config.
_PER_INVOCATION = {"explicit", "resume", "stop_after_steps", "device", "num_workers", "results_dir"}
MAX_EVAL_SAMPLES = 256  # render grids are one batch through the model; more would only risk running out of memory


# Defaults the paper recipe does not fit. The flag defaults of training.py are the paper's CIFAR-10 recipe; a
# preset replaces the flags the user did not type (typed flags always win; a resumed run keeps its saved flags).
PRESETS: dict[str, dict] = {
    "paper": {},
    # One-step generation you can see within 5 minutes on 2 CPU cores (README, Quickstart): a small real dataset at
    # 16 px, a tiny convnet, 1,800 steps, and no perceptual loss (no 528 MB VGG download; LPIPS tints grey images).
    "quickstart": dict(
        dataset="fashion",
        image_size=16,
        model_type="convnet_tiny",
        batch_size=32,
        epochs=6,
        steps=300,
        lr=2.4e-2,  # 3e-3 at batch 32 (linear scaling): a 0.5M-parameter model trained for minutes, not days
        recon_perc_weight=0.0,
        con_perc_weight=0.0,
        convnext_weight=0.0,
        eval_frequency=1,
        checkpoint_frequency=3,
        eval_samples=64,
        num_workers=0,  # the data is in memory: worker processes would only compete for the 2 cores
    ),
}


def resolve_preset(name: str, device: str) -> str:
    """ "auto" is the quickstart where training would run on the CPU, and the paper recipe on a GPU."""
    if name != "auto":
        return name
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "paper" if on_gpu else "quickstart"


def apply_preset(args) -> None:
    """Replace the flags the user did not type by the preset's values; args.preset becomes the resolved name."""
    args.preset = resolve_preset(args.preset, args.device)
    for key, value in PRESETS[args.preset].items():
        if key not in args.explicit:
            setattr(args, key, value)


class ConfigError(ValueError):
    """A flag value (or combination) that cannot train; the message names the flag, the value and the fix."""


def _probability(flag: str, default: float) -> tuple[str, Callable[[float], bool], str]:
    return flag, lambda v: 0 <= v <= 1, f"is a probability: use a value in [0, 1] (default {default})"


def _weight(flag: str) -> tuple[str, Callable[[float], bool], str]:
    return flag, lambda v: 0 <= v < math.inf, "is a loss weight: use a value >= 0 (0 turns the term off)"


# One rule per numeric flag: (flag, test the value must pass, what it must be). None values mean "default".
FLAG_RULES = [
    ("--noise_angle", lambda v: 0 < v < 90, "must be in (0, 90) degrees; the paper uses 80 (85 above 32 px)"),
    ("--sigma_max", lambda v: 0 < v < math.inf, "must be > 0 (theta_max = atan(sigma); 5.67 is 80 degrees)"),
    ("--lr", lambda v: 0 < v <= 1, "must be in (0, 1]; the paper uses 1e-4 at batch 256"),
    ("--min_lr", lambda v: 0 <= v <= 1, "must be in [0, 1] and at most --lr; the paper decays to 1e-6"),
    ("--warmup_steps", lambda v: v >= 0, "must be >= 0 (0 = no warm-up)"),
    ("--encoder_lr_mult", lambda v: 0 <= v < math.inf, "must be >= 0; the paper uses 0.1"),
    ("--beta1", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.9"),
    ("--beta2", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.95"),
    ("--weight_decay", lambda v: 0 <= v < math.inf, "must be >= 0; the paper uses 0"),
    ("--grad_clip", lambda v: 0 < v < math.inf, "must be > 0; the paper clips at 1.0"),
    ("--ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.9997"),
    _probability("--hard_case_prob", 0.1),
    _probability("--label_dropout", 0.1),
    ("--small_noise_ratio", lambda v: 0 < v <= 1, "must be in (0, 1]; the paper uses 0.5"),
    *(_weight(f"--{name}_weight") for name in ("recon_dist", "recon_perc", "con_dist", "con_perc", "latent")),
    _weight("--convnext_weight"),
    ("--num_workers", lambda v: v >= 0, "must be >= 0 (0 loads data in the main process)"),
    ("--eval_samples", lambda v: 1 <= v <= MAX_EVAL_SAMPLES, f"must be in [1, {MAX_EVAL_SAMPLES}] (one render batch)"),
    ("--fid-every", lambda v: v >= 0, "must be >= 0 epochs (0 = no FID during training)"),
    ("--seed", lambda v: v >= 0, "must be >= 0"),
]


def validate_args(args, world_size: int) -> None:
    """ConfigError for the first flag that cannot train; reads the disk, writes nothing."""
    for flag, test, requirement in FLAG_RULES:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None and not test(value):
            raise ConfigError(f"{flag} {value} {requirement}")
    if args.min_lr > args.lr:
        raise ConfigError(f"--min_lr {args.min_lr} is above --lr {args.lr}; pass a --min_lr below the peak rate")
    if args.batch_size < world_size or args.batch_size % world_size:
        raise ConfigError(
            f"--batch_size {args.batch_size} (the global batch) does not split over the {world_size} processes; "
            "pass a multiple of the number of processes"
        )
    check_results_dir(args.results_dir)


def check_results_dir(path: str) -> None:
    """ConfigError unless `path` is a folder, or can be made one, that this process may write to."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--results_dir '{path}' is a file, not a folder; pass a folder (default: results)")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"--results_dir '{path}' cannot be created: '{existing}' is a file; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--results_dir '{path}' cannot be written: '{existing}' is read-only; pass another folder")


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags the user actually typed (these override a resumed run's saved config)."""
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    return {action.dest for action in parser._actions if typed & set(action.option_strings)}


def noise_angle_from_args(args) -> float | None:
    """theta_max in degrees from --noise_angle or --sigma_max (theta = atan(sigma)); None = size default."""
    if args.noise_angle is not None:
        return args.noise_angle
    if args.sigma_max is not None:
        return math.degrees(math.atan(args.sigma_max))
    return None


def model_overrides(args, dataset) -> dict:
    """Registry overrides from flags, inferring image size from the dataset."""
    num_classes = 0
    if args.conditional:
        if dataset.num_classes == 0:
            raise ConfigError(
                f"--conditional needs class labels, but dataset '{dataset.name}' has none; "
                "use a labelled dataset (cifar10, demo, .npz with labels) or drop --conditional"
            )
        num_classes = dataset.num_classes
    overrides = dict(
        image_size=args.image_size or dataset.image_size,
        latent_dim=args.latent_dim,
        num_classes=num_classes,
        noise_angle=noise_angle_from_args(args),
        norm=args.norm,
    )
    return {key: value for key, value in overrides.items() if value is not None}


def model_config_for(args, dataset) -> dict:
    """The SphereConfig dict these flags produce (built on the meta device: no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return build_model(args.model_type, **model_overrides(args, dataset)).config.to_dict()
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def loss_config_from_args(args, model) -> SphereLossConfig:
    return SphereLossConfig(
        noise_angle=model.config.noise_angle,
        small_noise_ratio=args.small_noise_ratio,
        hard_case_prob=args.hard_case_prob,
        recon_dist_weight=args.recon_dist_weight,
        recon_perc_weight=args.recon_perc_weight,
        con_dist_weight=args.con_dist_weight,
        con_perc_weight=args.con_perc_weight,
        latent_weight=args.latent_weight,
        distance=args.distance,
        label_dropout=args.label_dropout,
    )


def build_loss(
    config: SphereLossConfig,
    vgg_weights: str | None,
    device,
    convnext_weight: float = 0.0,
    convnext_weights: str | None = None,
) -> SphereLoss:
    """The objective with its perceptual network: LPIPS-VGG, plus the official ConvNeXt-S logit term when
    convnext_weight > 0; only loaded when a perceptual weight is > 0."""
    needs_perceptual = config.recon_perc_weight > 0 or config.con_perc_weight > 0
    perceptual = build_perceptual(vgg_weights, convnext_weight, convnext_weights) if needs_perceptual else None
    return SphereLoss(config, perceptual.to(device) if perceptual is not None else None)


def train_settings(args, dataset, info: DistInfo) -> TrainSettings:
    """The loop's settings from the (validated) flags; precision "auto" becomes bf16 on CUDA, fp32 on CPU."""
    steps = args.steps or max(1, len(dataset) // args.batch_size)
    precision = args.precision if args.precision != "auto" else ("bf16" if info.device.type == "cuda" else "fp32")
    return TrainSettings(
        epochs=args.epochs,
        steps_per_epoch=steps,
        global_batch=args.batch_size,
        grad_clip=args.grad_clip,
        hflip=args.hflip,
        precision=precision,
        eval_every_epochs=args.eval_frequency,
        ckpt_every_epochs=args.checkpoint_frequency,
        log_every_steps=args.log_every,
        eval_samples=args.eval_samples,
        seed=args.seed,
        stop_after_steps=args.stop_after_steps,
        fid_every_epochs=args.fid_every,
        fid_samples=args.fid_samples,
        fid_steps=list(args.fid_steps),
        inception_weights=args.inception_weights,
    )


def _train_flags(args) -> dict:
    return {key: value for key, value in vars(args).items() if key != "explicit"}


def run_config_for(args, dataset, model_config: dict) -> dict:
    """What config.json and every checkpoint store: the model config plus all training flags."""
    return {
        "dataset_name": dataset.name,
        "dataset": args.dataset,
        "image_size": model_config["image_size"],
        "model_type": args.model_type,
        "num_classes": model_config["num_classes"],
        "model": model_config,
        "train": _train_flags(args),
    }


@dataclass
class RunPlan:
    """Where this invocation trains, decided before anything is written."""

    run_dir: Path | None  # an existing run folder to continue or reuse; None = create a new one
    checkpoint: Path | None  # its checkpoint_latest.pth to resume from; None = start at step 0


def _choose_run(args, dataset, model_config: dict) -> RunPlan:
    if not args.resume:
        return RunPlan(None, None)
    run_dir = find_resumable_run(args.results_dir, dataset.name, model_config, args.init_from)
    if run_dir is None:
        return RunPlan(None, None)
    checkpoint = run_dir / LATEST_CHECKPOINT
    return RunPlan(run_dir, checkpoint if checkpoint.is_file() else None)


def plan_run(args, dataset, info: DistInfo) -> RunPlan:
    """Pick (rank 0) and share the run to continue, if any; when resuming a checkpoint, flags the user did not
    type come from its saved config (then validated again). Reads the disk, writes nothing."""
    if args.init_from is not None:
        args.init_from = str(Path(args.init_from).resolve())  # one spelling, to find the run it started
    model_config = model_config_for(args, dataset)
    plan = broadcast_object(_choose_run(args, dataset, model_config) if info.is_main else None, info)
    if plan.checkpoint is not None:
        saved = (read_run_config(plan.run_dir) or {}).get("train", {})
        for key, value in saved.items():
            if key not in args.explicit and key not in _PER_INVOCATION and hasattr(args, key):
                setattr(args, key, value)
        validate_args(args, info.world_size)
    return plan


def open_run(plan: RunPlan, results_dir: str, run_config: dict, start_step: int, info: DistInfo) -> Path:
    """Rank 0 creates the planned run folder (or tidies the one being continued: stale temp files, metrics
    logged after the checkpoint) and writes config.json; every rank gets the folder."""
    run_dir = None
    if info.is_main:
        run_dir = plan.run_dir or new_run_dir(results_dir, run_config["dataset_name"])
        clean_run_dir(run_dir)
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
        write_run_config(run_dir, run_config)
    return broadcast_object(run_dir, info)
