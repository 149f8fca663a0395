"""Checkpoints: atomic writes, safe loading with clear errors, RNG state capture, model rebuild."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from models import model_from_config

REQUIRED_KEYS = ("model", "config", "step", "epoch")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """write(file) into a temp file in the same folder, fsync, then rename over `path` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with weights_only=True; one-line CheckpointError for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist; pass --checkpoint with a file under "
            "results/<run>/checkpoints/ or train one with training.py"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable or truncated ({error.__class__.__name__}); "
            "use another checkpoint (e.g. checkpoint_epoch_N.pth of the same run)"
        ) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a training.py checkpoint (missing {missing}); pass a checkpoint written by training.py"
        )
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict) turning a shape/key mismatch into a one-line CheckpointError."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint '{source}' does not match this model ({first}); "
            "it was trained with other architecture settings"
        ) from None


def load_model_from_checkpoint(path: str | Path, use_ema: bool = True, map_location="cpu"):
    """(model in eval mode, run config dict) rebuilt from the checkpoint's saved config; EMA weights default."""
    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    if "model" not in config:
        raise CheckpointError(f"checkpoint '{path}' has no model config; it was not written by training.py")
    try:
        model = model_from_config(config["model"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint '{path}' holds an unknown model config ({error})") from None
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    load_model_state(model, state, str(path))
    return model.eval().to(map_location), config


def find_latest_checkpoint(results_dir: str | Path = "results") -> Path:
    """checkpoint_latest.pth of the most recently modified run folder under results_dir."""
    candidates = sorted(Path(results_dir).glob("*/checkpoints/checkpoint_latest.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no checkpoints under '{results_dir}/'; train with training.py or pass --checkpoint")
    return candidates[-1]


def capture_rng_state() -> dict:
    """Python, NumPy and torch (CPU + CUDA) RNG states as plain types/tensors (weights_only-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
