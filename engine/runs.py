"""Run folders (results/<dataset>_<YYYYmmdd_HHMMSS>/), finding a run to resume, rank-0 logging, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from .checkpoint import atomic_write, remove_stale_temp_files
from .families import with_family

RUN_SUBDIRS = ("checkpoints", "images")
LATEST_CHECKPOINT = Path("checkpoints") / "checkpoint_latest.pth"
# training flags that say how the data is read (engine.data.build_dataset's keywords of the same names)
DATA_FLAGS = ("signal_norm", "data_column", "error_column", "label_column", "data_shape", "data_kind")


def dataset_options(train_flags: dict) -> dict:
    """build_dataset's data keywords from training flags (vars(args) or a run config's "train" section): the
    scripts read a run's data as it was trained on. Flags absent (runs from before them) or None keep defaults."""
    return {name: train_flags[name] for name in DATA_FLAGS if train_flags.get(name) is not None}


def new_run_dir(results_dir: str | Path, dataset_name: str) -> Path:
    """Create results/<dataset>_<timestamp>/ with its sub-folders (a suffix avoids same-second clashes)."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    run_dir, index = Path(results_dir) / f"{dataset_name}_{stamp}", 1
    while run_dir.exists():
        index += 1
        run_dir = Path(results_dir) / f"{dataset_name}_{stamp}_{index}"
    for sub in RUN_SUBDIRS:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def read_run_config(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _same_run(saved: dict | None, dataset_name: str, model_config: dict, init_from: str | None) -> bool:
    if not saved or saved.get("dataset_name") != dataset_name or not isinstance(saved.get("model"), dict):
        return False
    if with_family(saved["model"]) != with_family(model_config):  # runs saved before families lack the key
        return False
    return init_from is None or saved.get("train", {}).get("init_from") == init_from


def find_resumable_run(
    results_dir: str | Path, dataset_name: str, model_config: dict, init_from: str | None = None
) -> Path | None:
    """Latest run of this dataset and model config (and started --init_from that file, when given) that has a
    checkpoint; failing that, the latest such folder killed before its first checkpoint, to be reused."""
    runs = sorted(Path(results_dir).glob(f"{dataset_name}_*"), key=lambda p: p.name, reverse=True)
    matching = [run for run in runs if _same_run(read_run_config(run), dataset_name, model_config, init_from)]
    with_checkpoint = [run for run in matching if (run / LATEST_CHECKPOINT).is_file()]
    return (with_checkpoint or matching or [None])[0]


def write_run_config(run_dir: Path, config: dict) -> None:
    text = json.dumps(config, indent=2, sort_keys=True)
    atomic_write(run_dir / "config.json", lambda file: file.write(text.encode()))


def clean_run_dir(run_dir: Path) -> None:
    """Remove temp files a killed run left behind (atomic_write's, and the config.json.tmp of older versions)."""
    remove_stale_temp_files(run_dir)
    remove_stale_temp_files(run_dir / "checkpoints")
    (run_dir / "config.json.tmp").unlink(missing_ok=True)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only metrics.jsonl lines up to `last_step`: a run killed after its last checkpoint logged steps
    that the resumed run logs again (and maybe a torn last line)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and _step_of(line) <= last_step]
    if len(kept) != len(lines):
        atomic_write(path, lambda file: file.write("".join(kept).encode()))


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (metrics.jsonl, eval.jsonl), in order; [] when it is missing.
    Unreadable lines (a torn last line, one another process is still appending) are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _step_of(line: str) -> float:
    """The record's step; infinity for a line that is no record (it is then dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def setup_logger(run_dir: Path | None, is_main: bool) -> logging.Logger:
    """Logger writing to stdout and run_dir/log.txt on rank 0; silent elsewhere."""
    logger = logging.getLogger("sphere")
    logger.handlers.clear()
    logger.propagate = False
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return logger
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only)."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
