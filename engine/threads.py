"""How many CPU threads torch uses: `--threads N`, where 0 (auto) takes the cores that are free now.

Why auto is not torch's default (one thread per core): torch's OpenMP pool waits at a barrier after every parallel
op. When another process runs on one of our cores, the thread that shares it is descheduled for a whole time slice
while its partner waits, op after op; on a 2-core machine a tiny model's train step then ran 5-30x slower with 2
threads than with 1 (README, Threads). So auto counts the cores this process may use (its CPU affinity) minus those
other processes keep busy, measured over a short window of /proc/stat (the 1-minute load average elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time

import torch

from engine.cli import int_in_range

SAMPLE_SECONDS = 0.1  # the window over which other processes' CPU use is measured
BUSY_SLACK = 0.25  # a core counts as taken above this much use (background daemons stay below it)


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int_in_range(0),
        default=0,
        help="CPU threads for torch; 0 (default): OMP_NUM_THREADS if set, else the cores no other process is using now",
    )


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores kept busy by other processes: all CPUs' non-idle time over `seconds` (we sleep meanwhile); the
    1-minute load average where there is no /proc/stat."""
    try:
        before = cpu_times()
        time.sleep(seconds)
        after = cpu_times()
    except OSError:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    elapsed = [b - a for a, b in zip(before, after)]
    total, idle = sum(elapsed), elapsed[3] + elapsed[4]  # idle + iowait
    return 0.0 if total <= 0 else (total - idle) / total * (os.cpu_count() or 1)


def cpu_times() -> list[int]:
    """The machine-wide `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal (ticks)."""
    with open("/proc/stat") as file:
        return [int(field) for field in file.readline().split()[1:9]]


def free_cores(cores: int, busy: float) -> int:
    """Cores left for us: a core that others use more than BUSY_SLACK of counts as taken; at least 1."""
    return max(1, min(cores, cores - math.ceil(busy - BUSY_SLACK)))


def auto_threads() -> int:
    """OMP_NUM_THREADS when the user set it (a positive integer), else the cores free now."""
    with contextlib.suppress(KeyError, ValueError):
        requested = int(os.environ["OMP_NUM_THREADS"])
        if requested > 0:
            return requested
    return free_cores(usable_cores(), busy_cores())


def configure_threads(n: int) -> int:
    """Set torch's intra-op threads to n (0: auto_threads()) and its inter-op threads to match; returns the count.

    The inter-op pool can be sized only before its first use, so a later call leaves it as it is."""
    threads = n if n > 0 else auto_threads()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # "cannot set number of interop threads after parallel work has started"
        torch.set_num_interop_threads(threads)
    return threads
