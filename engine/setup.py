"""Turning training flags into a run: model/loss settings, run folder choice, resume, saved config."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from losses import SphereLoss, SphereLossConfig, build_lpips
from models import build_model

from .distributed import DistInfo, broadcast_object
from .runs import find_resumable_run, new_run_dir, read_run_config, write_run_config
from .trainer import TrainSettings

# Flags that describe where/how this invocation runs, never taken from a resumed run's saved config.
_PER_INVOCATION = {"explicit", "resume", "stop_after_steps", "device", "num_workers", "results_dir"}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
            raise SystemExit(
                f"error: --conditional needs class labels, but dataset '{dataset.name}' has none; "
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
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


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


def build_loss(config: SphereLossConfig, vgg_weights: str | None, device) -> SphereLoss:
    """The objective with its LPIPS network (only loaded when a perceptual weight is > 0)."""
    needs_lpips = config.recon_perc_weight > 0 or config.con_perc_weight > 0
    perceptual = build_lpips(vgg_weights).to(device) if needs_lpips else None
    return SphereLoss(config, perceptual)


def train_settings(args, dataset, info: DistInfo) -> TrainSettings:
    if args.batch_size % info.world_size != 0:
        raise SystemExit(
            f"error: --batch_size {args.batch_size} is not divisible by the {info.world_size} "
            "processes; pick a multiple of the number of GPUs"
        )
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


def _choose_run(args, dataset, model_config: dict) -> tuple[Path, Path | None]:
    if args.resume:
        run_dir = find_resumable_run(args.results_dir, dataset.name, model_config)
        if run_dir is not None:
            return run_dir, run_dir / "checkpoints" / "checkpoint_latest.pth"
    return new_run_dir(args.results_dir, dataset.name), None


def prepare_run(args, dataset, info: DistInfo):
    """Pick (rank 0) and share the run folder; on resume, flags the user did not type come from the saved
    config. Returns (run_dir, checkpoint to resume or None, effective args, run config)."""
    model_config = model_config_for(args, dataset)
    choice = _choose_run(args, dataset, model_config) if info.is_main else None
    run_dir, resume_from = broadcast_object(choice, info)
    if resume_from is not None:
        saved = (read_run_config(run_dir) or {}).get("train", {})
        for key, value in saved.items():
            if key not in args.explicit and key not in _PER_INVOCATION and hasattr(args, key):
                setattr(args, key, value)
    run_config = run_config_for(args, dataset, model_config)
    if info.is_main:
        write_run_config(run_dir, run_config)
    return run_dir, resume_from, args, run_config
