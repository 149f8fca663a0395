"""engine/threads.py: the --threads flag, the free-core count auto picks, and torch's thread settings."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from engine import threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser()
    threads.add_threads_flag(result)
    return result


def test_flag_default_auto_and_rejects_negative():
    assert parser().parse_args([]).threads == 0
    assert parser().parse_args(["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser().parse_args(["--threads", "-1"])


@pytest.mark.parametrize(
    ("cores", "busy", "free"),
    [(2, 0.0, 2), (2, 0.2, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 3.5, 1), (8, 2.1, 6), (1, 0.0, 1)],
)
def test_free_cores(cores, busy, free):
    assert threads.free_cores(cores, busy) == free


def test_busy_cores_from_proc_stat(monkeypatch):
    readings = iter([[100, 0, 0, 300, 0, 0, 0, 0], [130, 0, 10, 360, 0, 0, 0, 0]])  # 40 busy of 100 ticks
    monkeypatch.setattr(threads, "cpu_times", lambda: next(readings))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert threads.busy_cores(0.0) == pytest.approx(1.6)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cores(0.5) >= 0.6  # the spinner alone keeps one core busy
    finally:
        spinner.kill()
        spinner.wait()


def test_configure_threads_explicit(restore_threads):
    assert threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1


def test_auto_honours_omp_num_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "busy_cores", lambda: pytest.fail("OMP_NUM_THREADS set: nothing to measure"))
    assert threads.configure_threads(0) == 1


def test_auto_takes_free_cores(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.9)  # another process holds one core
    assert threads.configure_threads(0) == 1
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.05)
    assert threads.configure_threads(0) == 2
    assert torch.get_num_threads() == 2
