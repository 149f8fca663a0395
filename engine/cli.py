"""What the sampling, evaluation and export scripts share to check their inputs before any work: flag types,
the device, a checkpoint given as a file or a run folder, and output files that must not be overwritten."""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .checkpoint import CheckpointError, find_latest_checkpoint
from .families import family_name_of
from .hub import cached_repo_name, is_hub_path, resolve_hub_checkpoint
from .runs import LATEST_CHECKPOINT

LATEST = LATEST_CHECKPOINT  # results/<run>/checkpoints/checkpoint_latest.pth
DEVICE_TYPES = ("cpu", "cuda", "mps")
MAX_SEED = 2**32 - 1  # per-image seeds are seed * 1_000_003 + index and must fit a 64-bit generator seed


class InputError(ValueError):
    """A flag value that cannot work; the message names the flag and the fix on one line."""


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (a guidance scale)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def top_p_float(text: str) -> float:
    """argparse type: a nucleus-sampling mass in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability mass in (0, 1], got {text}")
    return value


def angle_degrees(text: str) -> float:
    """argparse type: a noise angle in degrees, 0 <= angle < 90 (tan(90°) is infinite noise)."""
    value = float(text)
    if not 0 <= value < 90:
        raise argparse.ArgumentTypeError(f"must be an angle in degrees, 0 <= angle < 90, got {text}")
    return value


positive_int = int_in_range(1)
seed_int = int_in_range(0, MAX_SEED)


def check_device(name: str) -> torch.device:
    """The torch.device for --device, after checking that this machine has it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device '{name}'; use cpu, cuda, cuda:N or mps") from None
    if device.type not in DEVICE_TYPES:
        raise InputError(f"--device {name} is not supported here; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS is not available; use --device cpu")
    return device


def resolve_checkpoint(checkpoint: str | Path | None, results_dir: str | Path = "results") -> Path:
    """--checkpoint as a file: a file as given, a run folder (or its checkpoints/) -> its checkpoint_latest.pth,
    None -> the newest run's under results_dir, hf://OWNER/NAME[@REV][/FILE] -> its copy in the Hugging Face cache
    (engine/hub.py). A missing file is left for load_checkpoint to report."""
    if checkpoint is None:
        return find_latest_checkpoint(results_dir)
    if is_hub_path(checkpoint):
        return resolve_hub_checkpoint(checkpoint)
    path = Path(checkpoint)
    if not path.is_dir():
        return path
    for candidate in (path / LATEST, path / LATEST.name):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"folder '{path}' has no {LATEST.as_posix()}; pass a run folder (results/<run>) or a checkpoint file"
    )


def source_folder_name(path: Path) -> str:
    """Name of what a weight file belongs to: the run of results/<run>/checkpoints/x.pth, OWNER--NAME of a file
    from the Hub's cache, else its folder."""
    if repo := cached_repo_name(path):
        return repo
    path = path.resolve()
    return path.parent.parent.name if path.parent.name == LATEST.parts[0] else path.parent.name


def check_output_dir(path: str | Path, flag: str) -> Path:
    """An output folder that exists or can be created (writers create it): fails before any work, and
    creates nothing, so a run that fails later leaves no empty folder behind."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" ends the walk
    if not existing.is_dir():
        raise InputError(f"cannot create {flag} '{path}': '{existing}' is a file; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot create {flag} '{path}': '{existing}' is not writable")
    return path


def refuse_overwrite(paths: Iterable[Path], overwrite: bool) -> None:
    """An InputError naming the first path that already exists, unless overwrite."""
    existing = next((path for path in paths if path.exists()), None)
    if existing is not None and not overwrite:
        raise InputError(f"'{existing}' already exists; pass --overwrite to replace it")


def model_options(model: torch.nn.Module, method: str, given: dict[str, tuple[str, object]]) -> dict:
    """{keyword: value} for model.<method>() of the flags given ({flag: (keyword, value)}; None = not given);
    InputError for a flag whose keyword the method does not take (e.g. a sphere-only noise angle)."""
    accepted = inspect.signature(getattr(model, method)).parameters
    options = {}
    for flag, (keyword, value) in given.items():
        if value is None:
            continue
        if keyword not in accepted:
            raise InputError(
                f"{flag} does not apply to {family_name_of(model)} models "
                f"({type(model).__name__}.{method}() takes no {keyword}); drop it"
            )
        options[keyword] = value
    return options
