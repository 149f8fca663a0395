"""Turning training flags into a run: model/loss settings, run folder choice, resume, saved config."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models import build_model

from .distributed import DistInfo, broadcast_object
from .families import cannot_sample_reason, family_of_model, takes_signals
from .flags import ConfigError, Rule, check_rules, probability_rule
from .hub import is_hub_path, resolve_hub_checkpoint
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
_PER_INVOCATION = {
    *("explicit", "resume", "stop_after_steps", "device", "num_workers", "results_dir", "config"),
    *("compile", "data_on_device", "threads"),  # how fast it runs here, not what it trains
}
MAX_EVAL_SAMPLES = 256  # render grids are one batch through the model; more would only risk running out of memory


# One rule per numeric flag every family has; a family adds rules for its own flags (Family.flag_rules).
COMMON_RULES: list[Rule] = [
    ("--lr", lambda v: 0 < v <= 1, "must be in (0, 1]; the paper uses 1e-4 at batch 256"),
    ("--min_lr", lambda v: 0 <= v <= 1, "must be in [0, 1] and at most --lr; the paper decays to 1e-6"),
    ("--warmup_steps", lambda v: v >= 0, "must be >= 0 (0 = no warm-up)"),
    ("--beta1", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.9"),
    ("--beta2", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.95"),
    ("--weight_decay", lambda v: 0 <= v < math.inf, "must be >= 0; the paper uses 0"),
    ("--grad_clip", lambda v: 0 < v < math.inf, "must be > 0; the paper clips at 1.0"),
    ("--ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1); the paper uses 0.9997"),
    probability_rule("--label_dropout", 0.1),
    ("--num_workers", lambda v: v >= 0, "must be >= 0 (0 loads data in the main process)"),
    ("--eval_samples", lambda v: 1 <= v <= MAX_EVAL_SAMPLES, f"must be in [1, {MAX_EVAL_SAMPLES}] (one render batch)"),
    ("--fid-every", lambda v: v >= 0, "must be >= 0 epochs (0 = no FID during training)"),
    ("--seed", lambda v: v >= 0, "must be >= 0"),
]


def validate_args(args, world_size: int) -> None:
    """ConfigError for the first flag that cannot train; reads the disk, writes nothing."""
    check_rules(args, [*COMMON_RULES, *family_of_model(args.model_type).flag_rules])
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


def check_dataset(args, dataset) -> None:
    """ConfigError for a dataset the model's family cannot train on (e.g. signals for an image model)."""
    family_of_model(args.model_type).check_dataset(args, dataset)


def check_capabilities(args, model) -> None:
    """ConfigError for a flag the model's capabilities cannot honour (before anything is written)."""
    reason = cannot_sample_reason(model)
    if args.fid_every and reason:
        raise ConfigError(f"--fid-every needs samples, but {reason}; drop --fid-every")
    if args.fid_every and takes_signals(model):
        raise ConfigError("--fid-every measures images (Inception), but this model encodes 1-D signals; drop it")


def num_classes_for(args, dataset) -> int:
    """The dataset's class count for --conditional (0 otherwise); a dataset without labels cannot be."""
    if not args.conditional:
        return 0
    if dataset.num_classes == 0:
        raise ConfigError(
            f"--conditional needs class labels, but dataset '{dataset.name}' has none; "
            "use a labelled dataset (cifar10, demo, .npz with labels) or drop --conditional"
        )
    return dataset.num_classes


def model_overrides(args, dataset) -> dict:
    """Registry overrides from the common flags (image size and channels from the dataset) and the family's."""
    overrides = dict(
        image_size=args.image_size or dataset.image_size,
        in_channels=getattr(dataset, "in_channels", 3),
        latent_dim=args.latent_dim,
        num_classes=num_classes_for(args, dataset),
        norm=args.norm,
        **family_of_model(args.model_type).model_overrides(args, dataset),
    )
    return {key: value for key, value in overrides.items() if value is not None}


def model_config_for(args, dataset) -> dict:
    """The model config dict these flags produce (built on the meta device: no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return build_model(args.model_type, **model_overrides(args, dataset)).config.to_dict()
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def build_loss(args, model, device: torch.device):
    """The objective of the model's family, called as loss(model, batch, step) -> (loss, logs)."""
    return family_of_model(args.model_type).build_loss(args, model, device)


def lr_multipliers(args) -> dict[str, float]:
    """Parameter group name -> lr multiplier, from the family's flags (sphere: --encoder_lr_mult)."""
    return family_of_model(args.model_type).lr_multipliers(args)


def train_settings(args, dataset, info: DistInfo) -> TrainSettings:
    """The loop's settings from the (validated) flags; precision "auto" becomes bf16 on CUDA, fp32 on CPU, and
    --compile (None) is on on CUDA, off on the CPU."""
    steps = args.steps or max(1, len(dataset) // args.batch_size)
    on_cuda = info.device.type == "cuda"
    precision = args.precision if args.precision != "auto" else ("bf16" if on_cuda else "fp32")
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
        compile=on_cuda if args.compile is None else args.compile,
        data_on_device=args.data_on_device,
        curves=args.curves,
        tensorboard=args.tensorboard,
    )


def _train_flags(args) -> dict:
    """Every flag that shaped the run (the other families' flags were dropped while parsing)."""
    return {key: value for key, value in vars(args).items() if key not in ("explicit", "config")}


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
        "config_files": list(args.config or []),  # what --config read (their values are in "train")
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
    if args.init_from is not None and is_hub_path(args.init_from):
        args.init_from = str(resolve_hub_checkpoint(args.init_from))  # its copy in the Hugging Face cache
    elif args.init_from is not None:
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
