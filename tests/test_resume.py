"""Resuming: RNG states that were not loaded onto the CPU, one random stream per DDP rank, reused run folders."""

import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.checkpoint import capture_rng_state, restore_rank_rng_state, restore_rng_state
from engine.distributed import DistInfo, gather_objects
from tests.test_training import run_training, state_of, tiny_flags


class OffCpuTensor(torch.Tensor):
    """Stands in for a CUDA tensor on a CPU-only machine: reading its properties and moving it to the CPU work,
    everything else (.numpy(), arithmetic...) is refused, as it would be for a tensor on a GPU."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[1] if len(args) > 1 else kwargs.get("device")
        to_cpu = name == "cpu" or (name == "to" and str(target) == "cpu")
        if not (to_cpu or name == "__get__"):
            raise RuntimeError(f"{name}() needs a CPU tensor; call .cpu() first")
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        return result.as_subclass(torch.Tensor) if to_cpu else result


def off_cpu(value):
    """`value` with every tensor inside it (dicts, lists) turned into an OffCpuTensor."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(OffCpuTensor)
    if isinstance(value, dict):
        return {key: off_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [off_cpu(item) for item in value]
    return value


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_restore_rng_state_accepts_states_off_the_cpu():
    state = capture_rng_state()
    expected = draws()
    restore_rng_state(off_cpu(state))
    assert draws() == expected


def test_resume_restores_rng_states_loaded_off_the_cpu(tmp_path, monkeypatch):
    """training.py's resume path still resumes exactly when the RNG states emulate a GPU placement."""
    import training

    def load_rng_off_cpu(*args, **kwargs):
        ckpt = real_load(*args, **kwargs)
        return {**ckpt, "rng": off_cpu(ckpt["rng"])}

    straight = run_training(*tiny_flags(tmp_path / "a"))
    first = run_training(*tiny_flags(tmp_path / "b", "--stop_after_steps", "4"))
    real_load = training.load_checkpoint
    monkeypatch.setattr(training, "load_checkpoint", load_rng_off_cpu)
    resumed = run_training(*tiny_flags(tmp_path / "b"))
    assert resumed == first
    a, b = state_of(straight), state_of(resumed)
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])


def test_world_size_change_reseeds_each_rank_deterministically():
    states = [capture_rng_state(), capture_rng_state()]  # saved by 2 processes
    outcomes = {}
    for rank, world in [(0, 1), (0, 1), (1, 3)]:
        warning = restore_rank_rng_state(states, rank, world, seed=7, step=12)
        assert "2 process(es)" in warning and f"has {world}" in warning
        outcomes.setdefault((rank, world), []).append(draws())
    assert outcomes[(0, 1)][0] == outcomes[(0, 1)][1]  # reproducible
    assert outcomes[(0, 1)][0] != outcomes[(1, 3)][0]  # distinct per rank
    assert restore_rank_rng_state(states[0], 0, 1, seed=7, step=12) is None  # a single (older) state restores


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def _draws_after_restore(rank: int, world: int, folder: Path) -> None:
    """Save this rank's draws before and after a restart that restores the gathered RNG states."""
    dist.init_process_group("gloo", rank=rank, world_size=world)
    states = gather_objects(capture_rng_state(), DistInfo(rank=rank, world_size=world))  # what a checkpoint stores
    before = torch.rand(4)
    torch.manual_seed(0)  # a restart: every rank starts from the same seed
    warning = restore_rank_rng_state(states, rank, world, seed=0, step=0)
    torch.save({"before": before, "after": torch.rand(4), "warning": warning}, folder / f"rank{rank}.pt")
    dist.destroy_process_group()


def _ddp_worker(rank: int, world: int, folder: str, ports: list[int]) -> None:
    """One rank: the RNG round trip, then three 2-process runs (straight through, stopped after 2 steps,
    resumed). One spawn for all: starting Python processes is what costs time here."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(ports[0])  # a fresh rendezvous for each process group
    torch.manual_seed(100 + rank)
    _draws_after_restore(rank, world, Path(folder))
    runs = [("straight", []), ("resumed", ["--stop_after_steps", "2"]), ("resumed", [])]
    for port, (results, extra) in zip(ports[1:], runs):
        os.environ["MASTER_PORT"] = str(port)
        run_training(*tiny_flags(Path(folder) / results, "--epochs", "1", *extra))


def test_ddp_resume_gives_each_rank_its_own_random_stream(tmp_path):
    """2 gloo processes: each rank restores its own RNG state (the ranks draw different noise after a restart),
    and stop + resume gives the same weights as straight through."""
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), free_ports(4)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    for result in (rank0, rank1):
        assert result["warning"] is None and torch.equal(result["before"], result["after"])
    assert not torch.equal(rank0["after"], rank1["after"])  # two random streams, not one
    (straight,), (resumed,) = ((tmp_path / name).iterdir() for name in ("straight", "resumed"))
    a, b = state_of(straight), state_of(resumed)
    assert a["step"] == b["step"] == 3
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    exp_avg = lambda s: [v["exp_avg"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))
    assert not torch.equal(b["rng"][0]["torch"], b["rng"][1]["torch"])  # the checkpoint holds both ranks' states


def test_resume_reuses_a_folder_killed_before_its_first_checkpoint(tmp_path, monkeypatch):
    """A run killed before its first checkpoint (here: during step 2) is continued in the same folder from step 0,
    its stale temp files removed and the metrics it logged dropped; 5 kills still make one folder."""
    from engine.trainer import Trainer

    class Killed(Exception):
        """Nothing catches it: as abrupt as kill -9 for what is on disk."""

    results = tmp_path / "results"
    real_step = Trainer.train_step

    def killed_at_step_2(self, batch):
        if self.state.step == 1:
            raise Killed
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", killed_at_step_2)
    for _ in range(5):
        with pytest.raises(Killed):
            run_training(*tiny_flags(results))
    (run_dir,) = results.iterdir()
    assert (run_dir / "config.json").is_file() and not (run_dir / "checkpoints" / "checkpoint_latest.pth").exists()
    stale = [run_dir / "checkpoints" / ".checkpoint_latest.pth.x1y2z3.tmp", run_dir / "config.json.tmp"]
    for path in stale:
        path.write_bytes(b"")  # a kill between creating and renaming a temp file
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert run_training(*tiny_flags(results)) == run_dir
    assert state_of(run_dir)["step"] == 6 and not any(path.exists() for path in stale)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]  # step lines, not the render's recon_psnr
    assert steps == list(range(1, 7))  # step 1 of the killed runs is not repeated
