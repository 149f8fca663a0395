"""benchmarks/bench_train.py: FLOPs per image, the bf16 peak table behind MFU, and its rows on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from tests.test_psvae_runs import benchmark

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
