"""Optimizer, learning-rate schedule and EMA of the paper's recipe (DESIGN §3 step 6)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

FUSED_DEVICES = set(_get_fused_kernels_supported_devices())  # where fused AdamW runs (CUDA, CPU, MPS...)


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """Linear scaling: base_lr is the rate at batch 256."""
    return base_lr * global_batch / reference_batch


def trainable_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """model.parameter_groups() with frozen parameters left out; ValueError when the groups do not cover every
    trainable parameter exactly once (a parameter left out would silently never train)."""
    groups = {name: [p for p in params if p.requires_grad] for name, params in model.parameter_groups().items()}
    seen: dict[int, str] = {}
    for name, params in groups.items():
        for param in params:
            if id(param) in seen:
                raise ValueError(f"a parameter is in both optimizer groups '{seen[id(param)]}' and '{name}'")
            seen[id(param)] = name
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"{type(model).__name__}.parameter_groups() leaves out {missing[:3]}")
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    lr_multipliers: dict[str, float],
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.AdamW:
    """AdamW with one group per model.parameter_groups() entry at lr * its multiplier (1 when not given), fused (one
    kernel; it skips a step whose `found_inf` is set, on the device). A model with nothing to train (a stage fitted
    without gradients) gets empty groups: the schedule still runs."""
    groups = trainable_groups(model)
    unknown = sorted(set(lr_multipliers) - set(groups))
    if unknown:
        raise ValueError(f"lr multipliers for groups {unknown} that {type(model).__name__} does not have")
    param_groups = [
        {"params": params, "lr": lr * lr_multipliers.get(name, 1.0), "name": name} for name, params in groups.items()
    ] or [{"params": [], "lr": lr, "name": "all"}]  # torch refuses an optimizer without any group
    params = [p for group in param_groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES for p in params)  # fused skips on `found_inf`
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict, keeping how this optimizer runs its update (fused or not): the groups of a
    checkpoint from a run that could not fuse (an older CPU run) would turn fusing off, and the found_inf skip."""
    how = {key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(how)
    if how.get("fused"):  # fused kernels want their step counts on the parameters' device, as float32
        for param, param_state in optimizer.state.items():
            if "step" in param_state:
                param_state["step"] = param_state["step"].to(param.device, torch.float32)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to min_ratio at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying warmup_cosine to every group (each group keeps its lr multiplier)."""
    min_ratio = min(1.0, min_lr / lr) if lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio)
    )


class EMA:
    """Exponential moving average of the weights; decay ramps up as min(decay, (1+n)/(10+n)) so short runs
    still get a useful average. Buffers (e.g. BatchNorm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One step towards the model's weights. skip: a 0-dim 0/1 tensor on the weights' device (the optimizer's
        found_inf); when 1, the average stays as it is, decided on the device (no host sync)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params, params = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if skip is None:
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        else:  # foreach lerp takes no tensor weight: ema += (1 - skip)(1 - decay)(p - ema)
            steps = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(steps, (1 - skip) * (1 - decay))
            torch._foreach_add_(ema_params, steps)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer if skip is None else torch.where(skip > 0, ema_buffer, buffer))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
