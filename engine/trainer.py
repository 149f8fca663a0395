"""The training loop: resumable batches, one optimisation step, periodic renders and checkpoints, signals."""

from __future__ import annotations

import contextlib
import errno
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

from .checkpoint import CheckpointError, atomic_save, capture_rng_state, load_model_state, restore_rank_rng_state
from .curves import write_timestep_chart, write_usage_chart
from .distributed import DistInfo, any_rank, barrier, broadcast_object, gather_objects
from .globe import end_of_training_globe
from .images import render_eval_images, render_verdict
from .optim import EMA


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that cannot be written); the message says what
    was kept and what to do."""


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


def lr_logs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr`: the largest group's rate (the sphere decoder's; its encoder runs at a fraction of it), plus
    `lr_<group>` for each named group when there are several."""
    groups = optimizer.param_groups
    logs = {"lr": max(group["lr"] for group in groups)}
    if len(groups) > 1:
        logs.update({f"lr_{group['name']}": group["lr"] for group in groups if "name" in group})
    return logs


def loss_state(loss_fn) -> dict | None:
    """The loss's own state (a discriminator and its optimizer) when it has a state_dict hook, else None."""
    state_dict = getattr(loss_fn, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def epoch_stats(model: nn.Module, loss_fn=None) -> dict[str, float]:
    """Statistics a model and its loss gather over an epoch, then reset: each one's `epoch_stats()`
    ({name: float}) when it has one (the diffusion loss's per-timestep-bin means), else the model's quantizer's
    usage_stats() as codebook_usage / codebook_perplexity; {} when there are none. They are identical on every rank
    (the quantizer sums its counts over ranks as it counts; the loss sums over ranks when asked)."""
    loss_hook = getattr(loss_fn, "epoch_stats", None)
    stats = {name: float(value) for name, value in loss_hook().items()} if callable(loss_hook) else {}
    return stats | model_epoch_stats(model)


def model_epoch_stats(model: nn.Module) -> dict[str, float]:
    """The model's own epoch statistics, or its quantizer's usage; {} for a model with neither."""
    hook = getattr(model, "epoch_stats", None)
    if callable(hook):
        return {name: float(value) for name, value in hook().items()}
    quantizer = getattr(model, "quantizer", None)
    if not callable(getattr(quantizer, "usage_stats", None)):
        return {}
    stats = quantizer.usage_stats(reset=True)
    return {"codebook_usage": float(stats["usage"]), "codebook_perplexity": float(stats["perplexity"])}


def epoch_summary(history: dict[str, list[float]]) -> str:
    """'loss 0.0312 | recon 0.0301 | kappa_max 80.1 ...': the mean of each logged term over the steps this process
    trained in the epoch (the largest value for *_max terms)."""
    parts = []
    for name, values in history.items():
        value = max(values) if name.endswith("_max") else sum(values) / len(values)
        parts.append(f"{name} {value:.4g}")
    return " | ".join(parts)


def write_failure(path: Path, error: OSError) -> str:
    """One-line TrainingError message for a checkpoint that could not be written."""
    kept = "the previous checkpoint is kept; run again to resume from it"
    if error.errno == errno.ENOSPC:
        return f"disk full while writing {path}; free space on that disk (or move --results_dir), {kept}"
    return f"cannot write {path} ({error.strerror or error}); fix the folder or its disk, {kept}"


def first_non_finite(*modules: nn.Module) -> str | None:
    """Name of the first floating-point tensor holding NaN/Inf in the modules' state dicts; None if all finite."""
    tensors = {f"{i}.{name}": t for i, m in enumerate(modules) for name, t in m.state_dict().items()}
    floats = {name: t for name, t in tensors.items() if t.is_floating_point()}
    if torch.stack([torch.isfinite(t).all() for t in floats.values()]).all():  # one device sync, not one per tensor
        return None
    return next(name for name, t in floats.items() if not torch.isfinite(t).all())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def random_hflip(images: torch.Tensor, *alike: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip each image left-right with probability 1/2 (drawn from the main RNG, so resumes are exact); tensors
    `alike` (per-value error arrays of the images' shape) get the same flips."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    mask = flip.view(-1, *([1] * (images.ndim - 1)))
    return tuple(torch.where(mask, tensor.flip(-1), tensor) for tensor in (images, *alike))


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
        eval_dataset=None,
        train_items=None,
    ):
        self.model, self.train_model, self.loss_fn = model, train_model, loss_fn
        self.gradient_free = bool(getattr(loss_fn, "gradient_free", False))  # a stage fitted without gradients
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.dataset, self.settings, self.info = dataset, settings, info
        self.eval_dataset = dataset if eval_dataset is None else eval_dataset  # reconstructions: held out if any
        self.run_dir, self.run_config, self.logger, self.metrics = run_dir, run_config, logger, metrics
        self.state = TrainState()
        self.history: dict[str, list[float]] = {}  # the epoch's logged terms, step by step, for its log line
        self.last_checkpoint: tuple[Path, int] | None = None  # (file, step) of the last checkpoint written or loaded
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
            dataset if train_items is None else train_items,  # e.g. cached latents of the dataset's items
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=info.device.type == "cuda",
            generator=torch.Generator().manual_seed(settings.seed),
        )

    # ---- checkpoints ------------------------------------------------------------------------------
    def checkpoint_dict(self, rng_states: list[dict]) -> dict:
        """The plain checkpoint dict; rng_states holds every rank's RNG state, in rank order; "loss" holds the
        loss's own state when it keeps one."""
        ckpt = {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": {},  # bf16 autocast needs no loss scaling; kept for a stable layout
            "step": self.state.step,
            "epoch": self.state.epoch,
            "step_in_epoch": self.state.step_in_epoch,
            "rng": rng_states,
            "config": self.run_config,
        }
        state = loss_state(self.loss_fn)
        if state is not None:
            ckpt["loss"] = state
        return ckpt

    def save(self, epoch_file: bool = False) -> None:
        """Rank 0 writes checkpoint_latest.pth (and checkpoint_epoch_N.pth) with every rank's RNG state; a
        failed write stops every rank with one message. Non-finite weights are never written."""
        bad = first_non_finite(self.model, self.ema.model)  # identical on every rank: DDP keeps weights in sync
        if bad is not None:
            raise self.non_finite_error(f"weight {bad} holds NaN/Inf after step {self.state.step}")
        rng_states = gather_objects(capture_rng_state(self.info.device), self.info)
        failure = self.write_checkpoints(rng_states, epoch_file) if self.info.is_main else None
        failure = broadcast_object(failure, self.info)
        if failure is not None:
            raise TrainingError(failure)
        self.last_checkpoint = (self.run_dir / "checkpoints" / "checkpoint_latest.pth", self.state.step)

    def write_checkpoints(self, rng_states: list[dict], epoch_file: bool) -> str | None:
        """Rank 0's atomic writes; the failure message, or None when every file was written."""
        ckpt, folder = self.checkpoint_dict(rng_states), self.run_dir / "checkpoints"
        names = ["checkpoint_latest.pth"] + ([f"checkpoint_epoch_{self.state.epoch}.pth"] if epoch_file else [])
        for name in names:
            try:
                atomic_save(ckpt, folder / name)
            except OSError as error:
                return write_failure(folder / name, error)
        return None

    def restore(self, ckpt: dict, source: str) -> str | None:
        """Continue from a checkpoint (loaded on the CPU); returns a warning for the log when this rank's RNG
        state could not be restored exactly (the number of processes changed)."""
        load_model_state(self.model, ckpt["model"], source)
        load_model_state(self.ema.model, ckpt["ema"], source)
        self.ema.updates = int(ckpt.get("ema_updates", 0))
        self.optimizer.load_state_dict(ckpt["optimizer"])  # moves the state onto the parameters' device
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.restore_loss(ckpt, source)
        self.state = TrainState(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0)))
        self.last_checkpoint = (Path(source), self.state.step)
        info = self.info
        return restore_rank_rng_state(
            ckpt.get("rng"), info.rank, info.world_size, self.settings.seed, self.state.step, info.device
        )

    def restore_loss(self, ckpt: dict, source: str) -> None:
        """The loss's own state (when it has one) as it was saved: a resumed GAN continues its discriminator."""
        if loss_state(self.loss_fn) is None:
            return
        if ckpt.get("loss") is None and getattr(self.loss_fn, "state_optional", False):
            return  # a loss whose state is bookkeeping (e.g. timestep bins) resumes an older checkpoint afresh
        if ckpt.get("loss") is None:
            raise CheckpointError(
                f"checkpoint '{source}' has no loss state, which this loss keeps (e.g. a discriminator); "
                "pass --no-resume to start a new run"
            )
        self.loss_fn.load_state_dict(ckpt["loss"])

    def non_finite_error(self, what: str) -> TrainingError:
        """The one-line stop message: what went wrong, that nothing was saved, the last good checkpoint."""
        if self.last_checkpoint is None:
            kept = "no checkpoint was written yet; lower --lr (or raise --warmup_steps) and start again"
        else:
            path, step = self.last_checkpoint
            kept = f"the last good checkpoint is {path} (step {step}); lower --lr and run again to resume from it"
        return TrainingError(f"{what}; training stopped and these weights were not saved; {kept}")

    # ---- one step ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        device = self.info.device
        if self.settings.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, batch) -> tuple[torch.Tensor, ...]:
        """(x, labels) or (x, labels, sigma) on the device; 4-D image batches flipped, sigma like x."""
        images, labels, *rest = (t.to(self.info.device, non_blocking=True) for t in batch)
        if self.settings.hflip and images.ndim == 4:
            images, *rest = random_hflip(images, *rest)
        return (images, labels, *rest)

    def check_loss(self, loss: torch.Tensor) -> None:
        """Stop every rank (DDP's backward would hang otherwise) when any rank's loss is not finite."""
        value, where = float(loss.detach()), f"at step {self.state.step + 1} (epoch {self.state.epoch + 1})"
        if any_rank(not math.isfinite(value), self.info):
            what = f"the loss is {value}" if not math.isfinite(value) else "another rank's loss is not finite"
            raise self.non_finite_error(f"{what} {where}")

    def train_step(self, batch) -> dict[str, float]:
        """One update; a non-finite loss or gradient norm stops training before it reaches the weights or EMA."""
        batch = self.prepare(batch)
        if self.gradient_free:
            return self.gradient_free_step(batch)
        with self.autocast():
            loss, logs = self.loss_fn(self.train_model, batch, self.state.step)
        self.check_loss(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip))
        if not math.isfinite(grad_norm):  # the same on every rank: DDP averaged the gradients
            where = f"at step {self.state.step + 1} (epoch {self.state.epoch + 1})"
            raise self.non_finite_error(f"the gradient norm is {grad_norm} {where}")
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        logs["grad_norm"] = grad_norm
        return logs

    def gradient_free_step(self, batch) -> dict[str, float]:
        """A loss marked gradient_free fits its stage itself (e.g. a SOM) inside the call: no backward; the
        optimizer step (nothing has a gradient), schedule and EMA keep the bookkeeping of a normal step."""
        with torch.no_grad(), self.autocast():
            loss, logs = self.loss_fn(self.train_model, batch, self.state.step)
        self.check_loss(loss)
        self.optimizer.step()  # a no-op without gradients; keeps the scheduler's step order valid
        self.scheduler.step()
        self.ema.update(self.model)
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
                    for name, value in logs.items():
                        self.history.setdefault(name, []).append(float(value))
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
            "epoch": self.state.epoch + 1,  # the epoch being trained, 1-based like the log and image names
            **logs,
            **lr_logs(self.optimizer),
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
        summary, self.history = epoch_summary(self.history), {}
        stats = epoch_stats(self.model, self.loss_fn)
        summary = " | ".join([part for part in (summary, *(f"{k} {v:.4g}" for k, v in stats.items())) if part])
        done = f"epoch {epoch}/{settings.epochs} done (step {self.state.step})"
        self.logger.info(done + (summary and f": {summary}"))
        if stats:
            self.metrics.write({"step": self.state.step, "epoch": epoch, **stats})
        self.chart_usage()  # draws nothing for a run that logs neither usage nor timestep bins
        if self.info.is_main and (epoch % settings.eval_every_epochs == 0 or last):
            self.render(epoch)
        if self.info.is_main and last:
            self.render_globe(epoch)
        if settings.fid_every_epochs and (epoch % settings.fid_every_epochs == 0 or last):
            self.quick_fid(epoch)
        self.save(epoch_file=epoch % settings.ckpt_every_epochs == 0 or last)

    def chart_usage(self) -> None:
        """images/codebook_usage.png and timestep_loss.png, redrawn from metrics.jsonl at each epoch end of a run that
        logs codebook usage or per-timestep-bin losses."""
        if self.info.is_main and self.metrics.path is not None and self.metrics.path.is_file():  # nothing logged yet
            images = self.run_dir / "images"
            images.mkdir(exist_ok=True)
            write_usage_chart(self.metrics.path, images / "codebook_usage.png")
            write_timestep_chart(self.metrics.path, images / "timestep_loss.png")

    def render(self, epoch: int) -> None:
        """Sample grids and reconstructions of the EMA model; the reconstructions' PSNR goes to the log."""
        dataset, count = self.eval_dataset, self.settings.eval_samples
        value = render_eval_images(self.ema.model, dataset, self.run_dir / "images", epoch, count, self.info.device)
        split = getattr(dataset, "split", "all")
        self.render_verdict(epoch)
        if value is None:
            self.logger.info(f"epoch {epoch}: samples rendered (EMA; this model cannot reconstruct)")
            return
        images = f"{min(count, len(dataset))} {'held-out' if split == 'test' else 'training'} images"
        self.logger.info(f"epoch {epoch}: reconstruction PSNR {value:.2f} dB on {images} (EMA, 1 step)")
        self.metrics.write({"step": self.state.step, "epoch": epoch, "recon_psnr": value, "recon_split": split})

    def render_verdict(self, epoch: int) -> None:
        """For a loss with a patch discriminator that has started: epoch_N_verdict.png and its mean verdicts."""
        verdict = getattr(self.loss_fn, "verdict", None)
        if not callable(verdict) or not getattr(self.ema.model, "can_reconstruct", True):
            return
        judge = lambda x: verdict(x, self.state.step)  # noqa: E731
        means = render_verdict(
            self.ema.model, judge, self.eval_dataset, self.run_dir / "images", epoch, self.info.device
        )
        if means is not None:
            self.logger.info(
                f"epoch {epoch}: discriminator P(real) {means[0]:.2f} on images, {means[1]:.2f} on EMA "
                "reconstructions (epoch_N_verdict.png)"
            )

    def render_globe(self, epoch: int) -> None:
        """At the end of training, for a model whose latent is a point of S^2: the globe atlas and latent maps."""
        paths = end_of_training_globe(self.ema.model, self.eval_dataset, self.run_dir / "images", epoch)
        if paths:
            self.logger.info(f"globe atlas and latent maps (EMA): {', '.join(str(path) for path in paths)}")

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
