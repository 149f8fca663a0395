"""Run folders (results/<dataset>_<YYYYmmdd_HHMMSS>/), finding a run to resume, rank-0 logging, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

RUN_SUBDIRS = ("checkpoints", "images")


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


def find_resumable_run(results_dir: str | Path, dataset_name: str, model_config: dict) -> Path | None:
    """Latest run of this dataset whose saved model config equals `model_config` and has a checkpoint."""
    runs = sorted(Path(results_dir).glob(f"{dataset_name}_*"), key=lambda p: p.name, reverse=True)
    for run_dir in runs:
        saved = read_run_config(run_dir)
        has_ckpt = (run_dir / "checkpoints" / "checkpoint_latest.pth").is_file()
        if saved and has_ckpt and saved.get("dataset_name") == dataset_name and saved.get("model") == model_config:
            return run_dir
    return None


def write_run_config(run_dir: Path, config: dict) -> None:
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    tmp.replace(run_dir / "config.json")


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
