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
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .checkpoint import (
    CheckpointError,
    atomic_save,
    capture_rng_state,
    load_model_state,
    restore_rank_rng_state,
    restore_rng_state,
)
from .curves import write_timestep_chart, write_usage_chart
from .data import stack_items, stacked_bytes
from .distributed import DistInfo, any_rank, barrier, broadcast_object, gather_objects
from .globe import end_of_training_globe
from .images import render_eval_images, render_verdict
from .optim import EMA, load_optimizer_state
from .plot import write_curves
from .tensorboard import open_tensorboard

CPU_DATA_BUDGET = 2 * 2**30  # bytes of stacked items kept in host memory by default (CIFAR-10 at 32 px: 0.6 GB)


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

    def epoch_indices(self) -> torch.Tensor:
        """This rank's item indices for the rest of the epoch, one row per step: (steps - start_step, local_batch)."""
        order = self._epoch_order().view(self.steps, self.global_batch)
        begin = self.rank * self.local_batch
        return order[self.start_step :, begin : begin + self.local_batch]

    def __iter__(self):
        yield from self.epoch_indices().tolist()

    def __len__(self) -> int:
        return self.steps - self.start_step


class DeviceBatches:
    """The batches of an in-memory dataset whose items are stacked on the training device: each step indexes the
    tensors with the sampler's row (same order, resumes and DDP shards as the DataLoader), no copy from the host."""

    def __init__(self, items: tuple[torch.Tensor, ...], sampler: ResumableBatchSampler):
        self.items, self.sampler = items, sampler

    def __iter__(self):
        for row in self.sampler.epoch_indices().to(self.items[0].device):  # one copy per epoch
            yield tuple(tensor[row] for tensor in self.items)

    def __len__(self) -> int:
        return len(self.sampler)


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
    compile: bool = False  # torch.compile the forward (a failure at the first step falls back to eager)
    data_on_device: bool | None = None  # in-memory data stacked on the device; None = when it fits the budget
    curves: bool = True  # redraw images/curves.png after each evaluation (engine/plot.py)
    tensorboard: bool = False  # also write TensorBoard event files (rank 0; engine/tensorboard.py)


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


def larger(a, b):
    """max() of two logged values, floats or 0-dim tensors (NaN wins, as it should in a log)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


class LogSums:
    """Sums (the largest value for *_max terms) and counts of the logged terms over some steps. A loss logs 0-dim
    tensors: they are added where they are, on the device, and `means()` reads them all with one host sync."""

    def __init__(self):
        self.totals: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict) -> None:
        for name, value in logs.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            if name in self.totals:
                value = larger(self.totals[name], value) if name.endswith("_max") else self.totals[name] + value
            self.totals[name], self.counts[name] = value, self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """Each term's mean over the steps that logged it (the largest value for *_max terms)."""
        tensors = {name: value for name, value in self.totals.items() if isinstance(value, torch.Tensor)}
        read = dict(zip(tensors, torch.stack(list(tensors.values())).tolist())) if tensors else {}
        totals = {name: read.get(name, value) for name, value in self.totals.items()}
        return {name: v if name.endswith("_max") else v / self.counts[name] for name, v in totals.items()}


def epoch_summary(means: dict[str, float]) -> str:
    """'loss 0.0312 | recon 0.0301 | kappa_max 80.1 ...': each logged term's mean over the steps this process
    trained in the epoch (LogSums.means)."""
    return " | ".join(f"{name} {value:.4g}" for name, value in means.items())


class NonFiniteGuard:
    """A sticky flag on the device, set by the first step whose loss or gradient norm is not finite on any rank,
    with that step's number and values. The fused optimizer reads it as `found_inf` (GradScaler's protocol) and
    skips every update from then on, the EMA too; `first()` reads it where the loop syncs anyway."""

    def __init__(self, device: torch.device):
        self.found = torch.zeros((), device=device)  # float32 0/1, the layout fused AdamW reads
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.values = torch.zeros(2, device=device)  # (loss, gradient norm) of that step

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None, info: DistInfo) -> None:
        """Record step (1-based) when its loss or gradient norm is not finite here or on another rank."""
        loss = loss.detach().float()
        grad_norm = torch.zeros_like(loss) if grad_norm is None else grad_norm.detach().float()
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if info.enabled:  # on the device too: no host sync, every rank skips the same steps
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        first = (bad > 0) & (self.found == 0)
        self.step.copy_(torch.where(first, step, self.step))
        self.values.copy_(torch.where(first, torch.stack([loss, grad_norm]), self.values))
        torch.maximum(self.found, bad, out=self.found)

    def first(self) -> tuple[int, float, float] | None:
        """(step, loss, gradient norm) of the first non-finite step; None while every step was finite."""
        if not bool(self.found):  # the host sync
            return None
        loss, grad_norm = self.values.tolist()
        return int(self.step), loss, grad_norm


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


def enable_tf32() -> None:
    """fp32 matmuls and convolutions on CUDA in TF32 (tensor cores, fp32 accumulation): what bf16 autocast keeps
    in fp32 and --precision fp32 runs. The legacy flags, CUDA's only: setting torch's newer fp32_precision API
    instead makes torch.get_float32_matmul_precision() raise, and inductor calls it when it compiles."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Conv models on CUDA train in channels_last (cuDNN's fast layout): models whose 2-D convolutions hold most
    of the weights (a ViT's patch embedding does not make it one)."""
    if device.type != "cuda":
        return False
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    return 2 * conv > sum(p.numel() for p in model.parameters())


def device_data_budget(device: torch.device) -> int:
    """Bytes an in-memory dataset may take when stacked on the device: a quarter of a GPU, 2 GiB of host memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return CPU_DATA_BUDGET


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
        tensorboard = info.is_main and settings.tensorboard
        self.tensorboard = open_tensorboard(run_dir, logger) if tensorboard else None  # None: off or not installed
        self.state = TrainState()
        self.epoch_logs, self.window_logs = LogSums(), LogSums()  # the epoch's logged terms; those since the last log
        self.window_start, self.window_images = time.perf_counter(), 0  # when the window began, images trained in it
        self.last_checkpoint: tuple[Path, int] | None = None  # (file, step) of the last checkpoint written or loaded
        self.hub = None  # rank 0's engine.hub.HubPusher under --push_to_hub: pushes at each checkpoint interval
        self.guard = NonFiniteGuard(info.device)
        self.skips_on_device = bool(optimizer.defaults.get("fused"))  # fused AdamW reads found_inf on the device
        if self.skips_on_device:
            optimizer.found_inf = self.guard.found  # GradScaler's protocol: a step with found_inf = 1 is skipped
        self.channels_last = prefers_channels_last(model, info.device)
        self.eager_model = train_model  # what a failed compilation falls back to
        self.train_model = torch.compile(train_model) if settings.compile else train_model
        self.compile_pending = settings.compile  # the first step compiles (checked_step)
        self.sampler = ResumableBatchSampler(
            len(dataset),
            settings.global_batch,
            settings.steps_per_epoch,
            settings.seed,
            info.rank,
            info.world_size,
        )
        self.loader = self.batches(dataset if train_items is None else train_items, num_workers)

    def batches(self, items, num_workers: int):
        """DeviceBatches for an in-memory dataset that fits the device budget (or --data_on_device), else a
        DataLoader over the same sampler; the log says which."""
        device, wanted = self.info.device, self.settings.data_on_device
        in_memory = bool(getattr(items, "in_memory", False))
        size = stacked_bytes(items) if in_memory else 0
        if in_memory and (wanted or (wanted is None and size <= device_data_budget(device))):
            self.logger.info(f"training data: {len(items)} items stacked on {device} ({size / 2**20:.0f} MiB)")
            return DeviceBatches(stack_items(items, device), self.sampler)
        if wanted:
            self.logger.warning("--data_on_device: this dataset is read from files; loading it with a DataLoader")
        # its own generator: creating an iterator must not consume the global RNG (exact resume)
        return DataLoader(
            items,  # e.g. cached latents of the dataset's items
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(self.settings.seed),
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
        if self.hub is not None and epoch_file:  # returns at once: the upload runs in the background
            self.hub.push(self.ema.model, self.state.step, self.state.epoch)

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
        load_optimizer_state(self.optimizer, ckpt["optimizer"])  # moves the state onto the parameters' device
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
        """(x, labels) or (x, labels, sigma) on the device; 4-D image batches flipped (and channels_last for a
        conv model on CUDA), sigma like x."""
        images, labels, *rest = (t.to(self.info.device, non_blocking=True) for t in batch)
        if self.settings.hflip and images.ndim == 4:
            images, *rest = random_hflip(images, *rest)
        if self.channels_last and images.ndim == 4:
            images, *rest = (t.contiguous(memory_format=torch.channels_last) for t in (images, *rest))
        return (images, labels, *rest)

    def raise_if_non_finite(self) -> None:
        """Stop (every rank: the flag is the same on all) with the first non-finite step's message; the updates
        from that step on were skipped, so the weights and EMA are those before it. Reads the device flag."""
        first = self.guard.first()
        if first is None:
            return
        step, loss, grad_norm = first
        where = f"at step {step} (epoch {(step - 1) // self.settings.steps_per_epoch + 1})"
        if not math.isfinite(loss):
            what = f"the loss is {loss}"
        elif not math.isfinite(grad_norm):
            what = f"the gradient norm is {grad_norm}"
        else:
            what = "another rank's loss is not finite"
        raise self.non_finite_error(f"{what} {where}")

    def skip_update(self) -> torch.Tensor:
        """The guard's flag after this step's check; an optimizer that cannot skip on the device (not fused) has
        it read now, one host sync per step."""
        if not self.skips_on_device:
            self.raise_if_non_finite()
        return self.guard.found

    def train_step(self, batch) -> dict:
        """One update without a host sync; a non-finite loss or gradient norm skips it (and every later one) on
        the device, weights and EMA untouched, and the loop stops at its next sync (raise_if_non_finite)."""
        batch = self.prepare(batch)
        if self.gradient_free:
            return self.gradient_free_step(batch)
        with self.autocast():
            loss, logs = self.loss_fn(self.train_model, batch, self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.guard.update(self.state.step + 1, loss, grad_norm, self.info)
        skip = self.skip_update()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, skip)
        return {**logs, "grad_norm": grad_norm.detach()}

    def gradient_free_step(self, batch) -> dict:
        """A loss marked gradient_free fits its stage itself (e.g. a SOM) inside the call: no backward; the
        optimizer step (nothing has a gradient), schedule and EMA keep the bookkeeping of a normal step."""
        with torch.no_grad(), self.autocast():
            loss, logs = self.loss_fn(self.train_model, batch, self.state.step)
        self.guard.update(self.state.step + 1, loss, None, self.info)
        skip = self.skip_update()
        self.optimizer.step()  # a no-op without gradients; keeps the scheduler's step order valid
        self.scheduler.step()
        self.ema.update(self.model, skip)
        return logs

    def checked_step(self, batch) -> dict:
        """train_step; the first step of a compiled model compiles it: a failure there logs one line, and the step
        runs again uncompiled from the same RNG state."""
        if not self.compile_pending:
            return self.train_step(batch)
        self.compile_pending, rng = False, capture_rng_state(self.info.device)
        try:
            return self.train_step(batch)
        except TrainingError:
            raise
        except Exception as error:  # dynamo, inductor and compiler errors have no common base class
            text = " ".join(str(error).split())[:200] or type(error).__name__
            self.logger.warning(f"torch.compile failed ({text}); training uncompiled (pass --no-compile to skip it)")
            self.train_model = self.eager_model
            restore_rng_state(rng, self.info.device)
            return self.train_step(batch)

    # ---- loop -------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        settings, stopped, steps_this_run = self.settings, False, 0
        with StopFlag() as stop:
            while self.state.epoch < settings.epochs and not stopped:
                stopped, steps_this_run = self.run_epoch(stop, steps_this_run)
                self.raise_if_non_finite()  # before anything renders or saves
                if self.state.step_in_epoch >= settings.steps_per_epoch:
                    self.end_epoch()
            if stopped:
                self.save()
                self.logger.info(f"stopped at step {self.state.step}; checkpoint saved, run again to resume")
        return self.state

    def run_epoch(self, stop: StopFlag, steps_this_run: int) -> tuple[bool, int]:
        """The rest of the current epoch, or up to a stop (a signal, --stop_after_steps): (stopped, steps_this_run).
        The host waits for the device only every log_every_steps (log_step)."""
        settings = self.settings
        self.sampler.set_epoch(self.state.epoch, self.state.step_in_epoch)
        bar = tqdm(
            total=settings.steps_per_epoch,
            initial=self.state.step_in_epoch,
            desc=f"epoch {self.state.epoch + 1}/{settings.epochs}",
            disable=not self.info.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        self.window_start, self.window_images = time.perf_counter(), 0
        for batch in self.loader:
            logs = self.checked_step(batch)
            self.epoch_logs.add(logs)
            self.window_logs.add(logs)
            self.state.step, self.state.step_in_epoch = self.state.step + 1, self.state.step_in_epoch + 1
            steps_this_run, self.window_images = steps_this_run + 1, self.window_images + settings.global_batch
            log_now = self.state.step % settings.log_every_steps == 0
            if log_now:
                self.log_step(bar)
            bar.update(1)
            limit = settings.stop_after_steps is not None and steps_this_run >= settings.stop_after_steps
            if limit or self.stop_requested(stop, log_now):
                bar.close()
                return True, steps_this_run
        bar.close()
        return False, steps_this_run

    def stop_requested(self, stop: StopFlag, log_now: bool) -> bool:
        """A signal was caught (any rank's under DDP, asked only at log steps: asking is a host sync)."""
        if not self.info.enabled:
            return stop.raised
        return log_now and any_rank(stop.raised, self.info)

    def log_step(self, bar) -> None:
        """The loop's host sync: the non-finite check, then the mean of each logged term since the last log line,
        the throughput over those steps, lr and peak memory to metrics.jsonl."""
        self.raise_if_non_finite()
        logs, self.window_logs = self.window_logs.means(), LogSums()
        now = time.perf_counter()
        images_per_second = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch + 1,  # the epoch being trained, 1-based like the log and image names
            **logs,
            **lr_logs(self.optimizer),
            "img_per_s": images_per_second,
            "peak_mem_mb": peak_memory_mb(self.info.device),
        }
        self.write_metrics(record)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{images_per_second:.0f}")

    def write_metrics(self, record: dict) -> None:
        """A metrics.jsonl line, and its numbers as TensorBoard scalars with --tensorboard."""
        self.metrics.write(record)
        if self.tensorboard is not None:
            self.tensorboard.scalars(record)

    def end_epoch(self) -> None:
        """Epoch bookkeeping: counters, renders, FID, checkpoints, and the curves picture after an evaluation."""
        self.state.epoch += 1
        self.state.step_in_epoch = 0
        epoch, settings = self.state.epoch, self.settings
        last = epoch == settings.epochs
        summary, self.epoch_logs = epoch_summary(self.epoch_logs.means()), LogSums()
        stats = epoch_stats(self.model, self.loss_fn)
        summary = " | ".join([part for part in (summary, *(f"{k} {v:.4g}" for k, v in stats.items())) if part])
        done = f"epoch {epoch}/{settings.epochs} done (step {self.state.step})"
        self.logger.info(done + (summary and f": {summary}"))
        if stats:
            self.write_metrics({"step": self.state.step, "epoch": epoch, **stats})
        self.chart_usage()  # draws nothing for a run that logs neither usage nor timestep bins
        evaluate = epoch % settings.eval_every_epochs == 0 or last
        fid = bool(settings.fid_every_epochs) and (epoch % settings.fid_every_epochs == 0 or last)
        if self.info.is_main and evaluate:
            self.render(epoch)
        if self.info.is_main and last:
            self.render_globe(epoch)
        if fid:
            self.quick_fid(epoch)
        self.save(epoch_file=epoch % settings.ckpt_every_epochs == 0 or last)
        if self.info.is_main and (evaluate or fid) and settings.curves:
            self.draw_curves()
        if self.tensorboard is not None and last:
            self.tensorboard.close()

    def draw_curves(self) -> None:
        """images/curves.png redrawn from metrics.jsonl (engine/plot.py); a failure is a warning, never a stop."""
        try:
            write_curves(self.run_dir)
        except Exception as error:  # a picture must not end a run; matplotlib's errors share no narrower base
            self.logger.warning(f"images/curves.png not drawn ({type(error).__name__}: {error}); training goes on")

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
        if self.tensorboard is not None:
            self.tensorboard.images(self.run_dir / "images", epoch, self.state.step)
        if value is None:
            self.logger.info(f"epoch {epoch}: samples rendered (EMA; this model cannot reconstruct)")
            return
        images = f"{min(count, len(dataset))} {'held-out' if split == 'test' else 'training'} images"
        self.logger.info(f"epoch {epoch}: reconstruction PSNR {value:.2f} dB on {images} (EMA, 1 step)")
        self.write_metrics({"step": self.state.step, "epoch": epoch, "recon_psnr": value, "recon_split": split})

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
                self.write_metrics(
                    {
                        "step": self.state.step,
                        "epoch": epoch,
                        f"fid_{steps}step": value,
                        "fid_samples": self.settings.fid_samples,
                    }
                )
                self.logger.info(f"epoch {epoch}: FID ({steps} step, {self.settings.fid_samples} samples) {value:.2f}")
        barrier(self.info)
