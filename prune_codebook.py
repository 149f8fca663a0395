"""Prune a somar codebook: count each SOM unit's best-matching hits over the run's training images, keep the units hit
at least --min_count times (renumbered in order; survivors keep their grid places) and write a new codebook run.

    python prune_codebook.py --checkpoint results/<codebook run> --min_count 2 [--output results/<new run>]

The new run holds the pruned EMA codebook (model and ema alike) and its config with the new level sizes; it cannot
resume training. Its weights hash differs from its parent's, so a prior trained on the parent is refused on it:
train the prior again on the pruned run (--codebook). QAR's prune_codebook.py, for every level at once.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model_from_checkpoint
from engine.cli import check_device, resolve_checkpoint
from engine.data import DatasetError, build_dataset
from engine.families import model_from_config
from engine.runs import dataset_options, write_run_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a somar_codebook_* run folder or checkpoint file")
    parser.add_argument("--min_count", type=int, required=True, help="keep units with at least this many hits")
    parser.add_argument("--output", default=None, help="the new run folder (default: <run>_pruned<N> beside it)")
    parser.add_argument("--dataset", default=None, help="images to count hits on (default: the run's training data)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results_dir", default="results", help="where a missing --checkpoint is looked for")
    return parser.parse_args(argv)


def load_codebook(path: Path) -> tuple[torch.nn.Module, dict]:
    """(the codebook model with its EMA weights, the run config); CheckpointError for any other model."""
    model, run_config = load_model_from_checkpoint(path)
    if run_config["model"].get("family") != "somar" or run_config["model"].get("kind") != "codebook":
        raise CheckpointError(f"'{path}' holds no somar codebook (a somar_codebook_* run); pass one")
    return model, run_config


@torch.no_grad()
def count_hits(model, data, batch_size: int, device) -> list[torch.Tensor]:
    """Each level's BMU hit count per unit (K_level,) over every image of data."""
    counts = [torch.zeros(size, dtype=torch.long, device=device) for size in model.vocab_sizes]
    for batch in DataLoader(data, batch_size=batch_size):
        for count, tokens in zip(counts, model.tokenize(batch[0].to(device))):
            count += torch.bincount(tokens.flatten(), minlength=len(count))
    return counts


def pruned_model(model, counts: list[torch.Tensor], min_count: int) -> tuple[torch.nn.Module, list[int]]:
    """A new codebook model holding only the kept units of every level, and each level's kept count."""
    pruned = copy.deepcopy(model)
    for level, count in zip(pruned.levels, counts):
        level.prune(min_count, count)
    config = model.config.to_dict()
    config["level_sizes"] = [int(level.codes.shape[0]) for level in pruned.levels]
    rebuilt = model_from_config(config)
    rebuilt.load_state_dict(pruned.state_dict())
    return rebuilt, config["level_sizes"]


def output_dir(args: argparse.Namespace, checkpoint: Path) -> Path:
    run = checkpoint.parent.parent
    out = Path(args.output) if args.output else run.parent / f"{run.name}_pruned{args.min_count}"
    if (out / "checkpoints" / "checkpoint_latest.pth").exists():
        raise CheckpointError(f"'{out}' already holds a checkpoint; pass another --output")
    return out


def write_pruned(out: Path, model, run_config: dict, ckpt: dict, source: Path, min_count: int) -> Path:
    """The new run folder: config.json and checkpoints/checkpoint_latest.pth (weights only: not resumable)."""
    config = {**run_config, "model": model.config.to_dict(), "pruned_from": str(source), "min_count": min_count}
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_run_config(out, config)
    state = {key: value.cpu() for key, value in model.state_dict().items()}
    path = out / "checkpoints" / "checkpoint_latest.pth"
    atomic_save({"model": state, "ema": state, "config": config, "step": ckpt["step"], "epoch": ckpt["epoch"]}, path)
    return path


def main(args: argparse.Namespace) -> Path:
    try:
        if args.min_count < 1:
            raise ValueError(f"--min_count must be >= 1, got {args.min_count}")
        device = check_device(args.device)
        checkpoint = resolve_checkpoint(args.checkpoint, args.results_dir)
        model, run_config = load_codebook(checkpoint)
        model.to(device)
        train = run_config.get("train", {})
        name = args.dataset or train.get("dataset") or run_config["dataset"]
        root, options = train.get("data_root", "data"), dataset_options(train)
        data = build_dataset(name, model.config.image_size, train=True, hflip=False, root=root, **options)
        out = output_dir(args, checkpoint)
        before = list(model.vocab_sizes)
        pruned, after = pruned_model(model, count_hits(model, data, args.batch_size, device), args.min_count)
        path = write_pruned(out, pruned, run_config, load_checkpoint(checkpoint), checkpoint, args.min_count)
    except (CheckpointError, DatasetError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps({"units_before": before, "units_after": after, "checkpoint": str(path)}))
    return path


if __name__ == "__main__":
    main(parse_args())
