"""Checkpoints: atomic writes, safe loading with clear errors, RNG state capture, model rebuild."""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .families import FamilyError, model_from_config, with_family

REQUIRED_KEYS = ("model", "config", "step", "epoch")
RESUME_KEYS = ("model", "ema", "optimizer", "scheduler")  # what continuing a run needs beyond REQUIRED_KEYS
TEMP_GLOB = ".*.tmp"  # atomic_write's temp files: .<name>.<random>.tmp
PUSHED_WEIGHTS, PUSHED_CONFIG = "model.safetensors", "config.json"  # what training.py --push_to_hub uploads


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours."""


def current_umask() -> int:
    """The process umask (Python can only read it by setting it, so set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """write(file) into a temp file in the same folder, fsync, then rename over `path` (never a half file).

    The file gets the mode a plain open() would (0644 under umask 022), not mkstemp's 0600, so that exported
    web files stay readable by a static web server's user."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
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


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the atomic_write temp files that a killed process left in `folder`."""
    for path in folder.glob(TEMP_GLOB):
        path.unlink(missing_ok=True)


def hub_cache_repo(path: Path) -> Path | None:
    """The models--OWNER--NAME folder of a file in the Hugging Face cache (.../snapshots/<commit>/...), else None."""
    repo = next((parent for parent in Path(path).parents if parent.name.startswith("models--")), None)
    return repo if repo is not None and "snapshots" in Path(path).parts else None


def hub_cache_hint(path: Path) -> str:
    """The fix for a bad file: for one in the Hugging Face cache (snapshots/<commit>/...), deleting its download."""
    repo = hub_cache_repo(path)
    if repo is None:
        return "use another checkpoint (e.g. checkpoint_epoch_N.pth of the same run)"
    return f"delete its download from the Hugging Face cache ({repo}) and run again to fetch it anew"


def load_pushed_checkpoint(path: Path, map_location="cpu") -> dict:
    """The checkpoint dict of the model.safetensors (EMA weights; step and epoch in its metadata) and config.json
    (the run's) that training.py --push_to_hub uploads; no optimizer state, so it samples but does not resume."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0][:120]
        raise CheckpointError(f"'{path}' is unreadable or truncated ({reason}); {hub_cache_hint(path)}") from None
    if metadata.get("weights") not in ("ema", "model") or "step" not in metadata:
        raise CheckpointError(
            f"'{path}' is a safetensors file but not the model.safetensors of training.py --push_to_hub (no step or "
            "weights in its metadata); pass a web file to sampling.py --weights, or a checkpoint_*.pth"
        )
    try:
        config = json.loads(path.with_name(PUSHED_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"'{path.with_name(PUSHED_CONFIG)}' beside '{path.name}' is missing or unreadable "
            f"({error.__class__.__name__}); it holds the run's config: {hub_cache_hint(path)}"
        ) from None
    step, epoch = int(metadata["step"]), int(metadata.get("epoch", 0))
    return {"model": state, "ema": None, "config": config, "step": step, "epoch": epoch, "weights": metadata["weights"]}


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with weights_only=True; one-line CheckpointError for missing, truncated or foreign files. A
    model.safetensors beside a config.json (training.py --push_to_hub's files) loads as a weights-only checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist; pass --checkpoint with a file under "
            "results/<run>/checkpoints/ or train one with training.py"
        )
    if path.suffix == ".safetensors":
        return load_pushed_checkpoint(path, map_location)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable or truncated ({error.__class__.__name__}); {hub_cache_hint(path)}"
        ) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a training.py checkpoint (missing {missing}); pass a checkpoint written by training.py"
        )
    return ckpt


def require_resumable(ckpt: dict, source: str | Path) -> None:
    """CheckpointError naming what a checkpoint lacks to continue training (e.g. one stripped to weights)."""
    missing = [key for key in RESUME_KEYS if ckpt.get(key) is None]
    if missing:
        raise CheckpointError(
            f"checkpoint '{source}' cannot be resumed: it has no {', '.join(missing)} state; to fine-tune its "
            f"weights in a new run pass --init_from {source} (fresh optimizer and schedule), or pass --no-resume"
        )


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every architecture setting that differs between two model configs."""
    saved, current = with_family(saved), with_family(current)
    keys = sorted(set(saved) | set(current))
    return [f"{key}: {saved.get(key)} -> {current.get(key)}" for key in keys if saved.get(key) != current.get(key)]


def load_weights(path: str | Path) -> tuple[dict, dict | None, dict | None]:
    """(model state, EMA state or None, model config or None) of a training.py checkpoint, including one
    stripped to weights, or of a bare state_dict; for --init_from."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--init_from '{path}' is not a file; pass a checkpoint_*.pth to start from")
    if path.suffix == ".safetensors":  # training.py --push_to_hub's files (hf://OWNER/NAME)
        ckpt = load_pushed_checkpoint(path, "cpu")
        return ckpt["model"], ckpt["ema"], (ckpt.get("config") or {}).get("model")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"--init_from '{path}' is unreadable or not a checkpoint ({error.__class__.__name__}); "
            "pass a checkpoint_*.pth written by training.py or a saved state_dict"
        ) from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt["model"], ckpt.get("ema"), (ckpt.get("config") or {}).get("model")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(value, torch.Tensor) for value in ckpt.values()):
        return ckpt, None, None
    raise CheckpointError(
        f"--init_from '{path}' holds no model weights (neither a 'model' entry nor a state_dict); "
        "pass a checkpoint_*.pth written by training.py"
    )


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


def load_model_from_checkpoint(
    path: str | Path, use_ema: bool = True, map_location="cpu"
) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, run config dict) rebuilt from the checkpoint's saved config; EMA weights default."""
    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    if "model" not in config:
        raise CheckpointError(f"checkpoint '{path}' has no model config; it was not written by training.py")
    try:
        model = model_from_config(config["model"])
    except FamilyError as error:
        raise CheckpointError(f"checkpoint '{path}' holds a model of an {error}") from None
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


def capture_rng_state(device: torch.device | None = None) -> dict:
    """This process's Python, NumPy and torch RNG states as plain types/tensors (weights_only-loadable); on a
    GPU also the state of this process's own device (not every visible GPU: each rank saves its own)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_cuda_state(state, device: torch.device | None) -> None:
    if state is None or device is None or torch.device(device).type != "cuda":
        return
    device = torch.device(device)
    if isinstance(state, (list, tuple)):  # older checkpoints held every visible GPU's state
        index = device.index or 0
        if index >= len(state):
            return
        state = state[index]
    torch.cuda.set_rng_state(state.to("cpu").to(torch.uint8), device)


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Inverse of capture_rng_state. The states are moved to the CPU first and cast to the dtypes the setters
    need: a checkpoint loaded with a GPU map_location holds them on that GPU."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.to("cpu").numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].to("cpu").to(torch.uint8))
    _restore_cuda_state(state.get("cuda"), device)


def reseed_rng(seed: int, rank: int, step: int) -> None:
    """Seed Python, NumPy and torch (every device) from (seed, rank, step): distinct per rank, reproducible."""
    value = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def restore_rank_rng_state(saved, rank: int, world_size: int, seed: int, step: int, device=None) -> str | None:
    """Restore this rank's own saved RNG state. `saved` is a list with one state per rank (a single dict in
    older checkpoints). When the number of processes changed, or there is none, reseed from (seed, rank, step)
    instead and return a warning for the log; None when the states were restored exactly."""
    states = [saved] if isinstance(saved, dict) else list(saved or [])
    if len(states) == world_size:
        restore_rng_state(states[rank], device)
        return None
    reseed_rng(seed, rank, step)
    return (
        f"the checkpoint holds RNG states of {len(states)} process(es) and this run has {world_size}: each rank "
        "was reseeded from (seed, rank, step), so the run continues correctly but not bit-identically"
    )
