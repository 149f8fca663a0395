"""The training loop: resumable batches, one optimisation step, periodic renders and checkpoints, signals."""

from __future__ import annotations

import contextlib
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .checkpoint import atomic_save, capture_rng_state, load_model_state, restore_rng_state
from .distributed import DistInfo, any_rank, barrier
from .images import render_eval_images
from .optim import EMA


class ResumableBatchSampler(Sampler):
    """Per-epoch permutation seeded by (seed, epoch), cut into global batches and sharded over ranks; can
    start mid-epoch so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, size: int, global_batch: int, steps_per_epoch: int, seed: int, rank: int, world: int):
        self.size, self.global_batch, self.steps = size, global_batch, steps_per_epoch
        self.seed, self.rank, self.local_batch = seed, rank, global_batch // world
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _epoch_order(self) -> torch.Tensor:
        needed = self.steps * self.global_batch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perms = [torch.randperm(self.size, generator=generator) for _ in range(math.ceil(needed / self.size))]
        return torch.cat(perms)[:needed]

    def __iter__(self):
        order = self._epoch_order().view(self.steps, self.global_batch)
        begin = self.rank * self.local_batch
        for step in range(self.start_step, self.steps):
            yield order[step, begin : begin + self.local_batch].tolist()

    def __len__(self) -> int:
        return self.steps - self.start_step


@dataclass
class TrainState:
    """Counters saved in checkpoints."""

    step: int = 0
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0


@dataclass
class TrainSettings:
    epochs: int
    steps_per_epoch: int
    global_batch: int
    grad_clip: float
    hflip: bool
    precision: str  # "bf16" or "fp32"
    eval_every_epochs: int
    ckpt_every_epochs: int
    log_every_steps: int
    eval_samples: int
    seed: int
    stop_after_steps: int | None = None
    fid_every_epochs: int = 0
    fid_samples: int = 0
    fid_steps: list[int] = field(default_factory=lambda: [1])
    inception_weights: str | None = None


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint and exits at the next step boundary."""

    def __init__(self):
        self.raised = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal kills

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (drawn from the main RNG, so resumes are exact)."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class Trainer:
    """Owns the model, its EMA, optimizer, schedule and data; `fit()` runs until the last epoch or a stop."""

    def __init__(
        self,
        model,
        train_model,
        loss_fn,
        optimizer,
        scheduler,
        ema: EMA,
        dataset,
        settings,
        info: DistInfo,
        run_dir: Path,
        run_config: dict,
        logger,
        metrics,
        num_workers: int = 0,
    ):
        self.model, self.train_model, self.loss_fn = model, train_model, loss_fn
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.dataset, self.settings, self.info = dataset, settings, info
        self.run_dir, self.run_config, self.logger, self.metrics = run_dir, run_config, logger, metrics
        self.state = TrainState()
        self.sampler = ResumableBatchSampler(
            len(dataset),
            settings.global_batch,
            settings.steps_per_epoch,
            settings.seed,
            info.rank,
            info.world_size,
        )
        # its own generator: creating an iterator must not consume the global RNG (exact resume)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=info.device.type == "cuda",
            generator=torch.Generator().manual_seed(settings.seed),
        )

    # ---- checkpoints ------------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": {},  # bf16 autocast needs no loss scaling; kept for a stable layout
            "step": self.state.step,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "rng": capture_rng_state(),
            "config": self.run_config,
        }

    def save(self, epoch_file: bool = False) -> None:
        """Rank 0 writes checkpoint_latest.pth (and checkpoint_epoch_N.pth); all ranks wait for it."""
        if self.info.is_main:
            ckpt, folder = self.checkpoint_dict(), self.run_dir / "checkpoints"
            atomic_save(ckpt, folder / "checkpoint_latest.pth")
            if epoch_file:
                atomic_save(ckpt, folder / f"checkpoint_epoch_{self.state.epoch}.pth")
        barrier(self.info)

    def restore(self, ckpt: dict, source: str) -> None:
        load_model_state(self.model, ckpt["model"], source)
        load_model_state(self.ema.model, ckpt["ema"], source)
        self.ema.updates = int(ckpt.get("ema_updates", 0))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0)))
        restore_rng_state(ckpt["rng"])

    # ---- one step ---------------------------------------------------------------------------------
    def autocast(self):
        device = self.info.device
        if self.settings.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch) -> dict[str, float]:
        images, labels = (t.to(self.info.device, non_blocking=True) for t in batch)
        if self.settings.hflip:
            images = random_hflip(images)
        with self.autocast():
            loss, logs = self.loss_fn(self.train_model, (images, labels), self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        logs["grad_norm"] = float(grad_norm)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(
                f"loss became {logs['loss']} at step {self.state.step}; lower --lr or "
                "resume from an earlier checkpoint_epoch_N.pth"
            )
        return logs

    # ---- loop -------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        settings, stopped = self.settings, False
        steps_this_run = 0
        with StopFlag() as stop:
            while self.state.epoch < settings.epochs and not stopped:
                self.sampler.set_epoch(self.state.epoch, self.state.step_in_epoch)
                bar = tqdm(
                    total=settings.steps_per_epoch,
                    initial=self.state.step_in_epoch,
                    desc=f"epoch {self.state.epoch + 1}/{settings.epochs}",
                    disable=not self.info.is_main,
                    dynamic_ncols=True,
                    leave=False,
                )
                window_start, window_images = time.perf_counter(), 0
                for batch in self.loader:
                    logs = self.train_step(batch)
                    self.state.step += 1
                    self.state.step_in_epoch += 1
                    steps_this_run += 1
                    window_images += settings.global_batch
                    if self.state.step % settings.log_every_steps == 0:
                        rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                        self.log_step(logs, rate, bar)
                        window_start, window_images = time.perf_counter(), 0
                    bar.update(1)
                    limit = settings.stop_after_steps is not None and steps_this_run >= settings.stop_after_steps
                    if any_rank(stop.raised or limit, self.info):
                        stopped = True
                        break
                bar.close()
                if self.state.step_in_epoch >= settings.steps_per_epoch:
                    self.end_epoch()
            if stopped:
                self.save()
                self.logger.info(f"stopped at step {self.state.step}; checkpoint saved, run again to resume")
        return self.state

    def log_step(self, logs: dict, images_per_second: float, bar) -> None:
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            **logs,
            "lr": self.optimizer.param_groups[1]["lr"],
            "img_per_s": images_per_second,
            "peak_mem_mb": peak_memory_mb(self.info.device),
        }
        self.metrics.write(record)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{images_per_second:.0f}")

    def end_epoch(self) -> None:
        """Epoch bookkeeping: counters, renders, FID, checkpoints."""
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        epoch, settings = self.state.epoch, self.settings
        last = epoch == settings.epochs
        self.logger.info(f"epoch {epoch}/{settings.epochs} done (step {self.state.step})")
        if self.info.is_main and (epoch % settings.eval_every_epochs == 0 or last):
            render_eval_images(
                self.ema.model,
                self.dataset,
                self.run_dir / "images",
                epoch,
                settings.eval_samples,
                self.info.device,
            )
        if settings.fid_every_epochs and (epoch % settings.fid_every_epochs == 0 or last):
            self.quick_fid(epoch)
        self.save(epoch_file=epoch % settings.ckpt_every_epochs == 0 or last)

    def quick_fid(self, epoch: int) -> None:
        if self.info.is_main:
            from .metrics import quick_fid  # Inception is only loaded when asked for

            for steps in self.settings.fid_steps:
                value = quick_fid(
                    self.ema.model,
                    self.dataset,
                    self.settings.fid_samples,
                    steps,
                    self.info.device,
                    seed=self.settings.seed,
                    inception_weights=self.settings.inception_weights,
                    cache_dir=str(self.run_dir.parent / "fid_stats"),
                )
                self.metrics.write(
                    {
                        "step": self.state.step,
                        "epoch": epoch,
                        f"fid_{steps}step": value,
                        "fid_samples": self.settings.fid_samples,
                    }
                )
                self.logger.info(f"epoch {epoch}: FID ({steps} step, {self.settings.fid_samples} samples) {value:.2f}")
        barrier(self.info)
