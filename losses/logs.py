"""Loss logs without a host sync: every value a 0-dim detached tensor on the loss's device (the trainer turns them
into floats only when it logs)."""

from __future__ import annotations

import torch


def detached_logs(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"loss", *terms} as 0-dim detached float32 tensors, in that order."""
    return {name: value.detach().float() for name, value in {"loss": loss, **terms}.items()}


def constant_log(value: float, like: torch.Tensor) -> torch.Tensor:
    """A host number (a schedule's beta, a 0/1 flag) as a 0-dim float32 tensor on like's device, written by a fill
    kernel rather than copied from the host."""
    return torch.full((), value, dtype=torch.float32, device=like.device)
