"""torchrun / DDP set-up: gloo on CPU, nccl on GPU; rank helpers."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class DeviceError(RuntimeError):
    """--device names a device this machine does not have (or no device at all)."""


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _wants_cuda(device_flag: str) -> bool:
    """Whether --device asks for CUDA; DeviceError for a value that is no device or a GPU this machine lacks."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device_flag):
        raise DeviceError(f"--device {device_flag} is not a device; use auto, cpu, cuda or cuda:N")
    use_cuda = torch.cuda.is_available() if device_flag == "auto" else device_flag.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DeviceError(f"--device {device_flag} was requested but no CUDA device is available; use --device cpu")
    return use_cuda


def setup_distributed(device_flag: str = "auto") -> DistInfo:
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); init the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = _wants_cuda(device_flag)
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device_flag: str = "auto") -> Iterator[DistInfo]:
    """setup_distributed for the length of a `with` block; the process group is destroyed on any exit."""
    info = setup_distributed(device_flag)
    try:
        yield info
    finally:
        cleanup_distributed()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if the flag is set on any rank (so that all ranks stop together: a signal, a non-finite loss)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value of a picklable object on every rank."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's value of a picklable object, in rank order (all ranks get the list)."""
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
