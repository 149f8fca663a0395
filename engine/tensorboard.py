"""training.py --tensorboard: every metrics.jsonl line as TensorBoard scalars (tag = its key, x = its step) and the
evaluation pictures as images, in <run>/tensorboard through torch.utils.tensorboard (rank 0 only):

    tensorboard --logdir results"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

FOLDER = "tensorboard"  # inside the run folder
MISSING = (
    "--tensorboard: the tensorboard package is not installed (pip install tensorboard); training goes on without "
    "event files (metrics.jsonl and images/curves.png are written as always)"
)


def scalar_items(record: dict) -> dict[str, float]:
    """The numbers of a metrics line but its step (flags and strings such as recon_split are left out)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }


class TensorBoardLog:
    """A SummaryWriter opened at the first line written, with purge_step at that line's step: a resumed run hides
    the events its killed predecessor logged after the checkpoint it resumes (as metrics.jsonl is truncated)."""

    def __init__(self, folder: Path, summary_writer: type):
        self.folder, self.summary_writer = folder, summary_writer
        self.writer = None

    def open(self, step: int):
        if self.writer is None:
            self.writer = self.summary_writer(log_dir=str(self.folder), purge_step=step)
        return self.writer

    def scalars(self, record: dict) -> None:
        """Each number of a metrics.jsonl record at its step; flushed, so a killed run keeps what it logged."""
        step = int(record["step"])
        writer = self.open(step)
        for key, value in scalar_items(record).items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def images(self, images_dir: Path, epoch: int, step: int) -> list[str]:
        """The pictures one evaluation wrote (images/epoch_NNNN_*.png) as images tagged 'eval/<name>' at `step`;
        returns the tags."""
        writer, prefix, tags = self.open(step), f"epoch_{epoch:04d}_", []
        for path in sorted(images_dir.glob(f"{prefix}*.png")):
            tags.append(f"eval/{path.stem.removeprefix(prefix)}")
            with Image.open(path) as picture:
                pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
            writer.add_image(tags[-1], pixels, step, dataformats="HWC")
        writer.flush()
        return tags

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard(run_dir: Path, logger: logging.Logger) -> TensorBoardLog | None:
    """The run's TensorBoard log; None, after one warning line, when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard; ImportError without it
    except ImportError:
        logger.warning(MISSING)
        return None
    logger.info(f"TensorBoard event files: {run_dir / FOLDER} (tensorboard --logdir {run_dir.parent})")
    return TensorBoardLog(run_dir / FOLDER, SummaryWriter)
