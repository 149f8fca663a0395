"""benchmarks/bench_train.py: FLOPs per image, the bf16 peak table behind MFU, and its rows on CPU."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from tests.test_psvae_runs import REPO, benchmark

bench_train = benchmark("bench_train")


def test_flops_of_a_linear_training_step():
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(3, 8, requires_grad=True)
    # forward x W^T: 2*8*5 per row; backward: the gradients of x and of W, as many again each
    assert bench_train.flops_per_image(lambda: layer(x).sum().backward(), batch_size=3) == 6 * 8 * 5


def test_flops_count_cpu_attention():
    q = torch.randn(2, 3, 8, 4, requires_grad=True)
    flops = bench_train.flops_per_image(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward(), 1)
    assert flops == sdpa_flop_count(q.shape, q.shape, q.shape) + sdpa_backward_flop_count(*[q.shape] * 4)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.5),
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_table(name, peak):
    assert bench_train.peak_tflops(name) == peak


def test_unknown_gpu_says_why_there_is_no_mfu():
    note = bench_train.peak_note("NVIDIA GeForce GTX 1080", gpu=True, peak=None)
    assert "not in PEAK_BF16_TFLOPS" in note


def test_cpu_rows_have_flops_and_no_mfu(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    argv = ["--models", "vit_tiny", "--image_size", "16", "--batch_size", "2", "--iters", "1", "--warmup", "0"]
    (row,) = bench_train.main(bench_train.parse_args([*argv, "--no-perceptual", "--threads", "1", "--out", str(out)]))
    assert row["gflop_per_img"] > 0 and row["tflop_s"] > 0 and row["mfu"] is None and row["threads"] == 1
    assert json.loads(out.read_text())["gflop_per_img"] == row["gflop_per_img"]
    assert "MFU: n/a on CPU" in capsys.readouterr().out


def test_gpu_check_smoke_writes_numbers_and_grids(tmp_path):
    """benchmarks/gpu_check.sh --smoke: the lent-GPU script's every step, on CPU in seconds (CPU time)."""
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=images, labels=np.arange(16) % 10)
    env = os.environ | {"SPHERE_CIFAR_SUBSET": str(tmp_path / "cifar.npz"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    script = REPO / "benchmarks" / "gpu_check.sh"
    done = subprocess.run([str(script), "--smoke", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in (out / "bench_train.jsonl").read_text().splitlines()]
    assert row["model"] == "vit_tiny" and row["gflop_per_img"] > 0
    grids = sorted(path.name for path in (out / "samples").rglob("*.png"))
    assert grids == ["samples_1step_seed0.png", "samples_4step_seed0.png"]
    summary = (out / "summary.txt").read_text()
    assert "vit_tiny" in summary and "finished at epoch 1" in summary
    assert not list(out.rglob("*.pth"))  # checkpoints deleted: $OUT brings back numbers and images only


def test_gpu_check_refuses_an_unknown_option(tmp_path):
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr


def test_a_gpu_row_prints_its_mfu(capsys):
    peak = bench_train.peak_tflops("NVIDIA H200")
    row = {"model": "vit_base", "params_m": 86.0, "train_img_s": 900.0, "gflop_per_img": 450.0, "peak_gib": 20.5}
    bench_train.print_row(row | {"tflop_s": 405.0, "mfu": 405.0 / peak, "sample_img_s": 5000.0})
    line = capsys.readouterr().out
    assert "40.9%" in line and line.split()[0] == "vit_base"
