"""metrics.jsonl as curves (engine/curves.py): the Pillow codebook usage chart, and the series, panels and smoothing
behind the curves sheet."""

import json
import math

import pytest
from PIL import ImageColor

from engine.curves import (
    COLOURS,
    auto_smoothing,
    ema,
    line_chart,
    panels_for,
    plot_position,
    read_records,
    read_series,
    run_curves,
    select_keys,
    series_label,
    write_usage_chart,
)


def write_metrics(path, records, junk=False):
    lines = [json.dumps(record) for record in records] + (["{not json"] if junk else [])
    path.write_text("\n".join(lines) + "\n")


def test_read_series_keeps_the_lines_with_the_key_and_skips_unreadable_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, [{"step": 10, "usage": 0.25}, {"step": 20, "loss": 1.0}, {"step": 30, "usage": 0.5}], True)
    assert read_series(path, "usage") == ([10.0, 30.0], [0.25, 0.5])
    assert read_series(path, "codebook_usage") == ([], [])


def test_a_point_is_drawn_where_its_value_says(tmp_path):
    size = (200, 100)
    chart = line_chart({"a": ([0.0, 50.0, 100.0], [0.0, 1.0, 0.5])}, "caption", size=size)
    x_range, y_range = (0.0, 100.0), (0.0, 1.0)
    colour = ImageColor.getrgb(COLOURS[0])
    for x, y in ((50.0, 1.0), (100.0, 0.5)):
        px, py = plot_position(x, y, x_range, y_range, size)
        assert chart.getpixel((round(px), round(py))) == colour
    top_left = plot_position(0.0, 1.0, x_range, y_range, size)
    assert chart.getpixel((round(top_left[0]) + 5, round(top_left[1]))) != colour  # 1.0 at step 0 was not drawn


def test_the_usage_chart_needs_usage_in_the_metrics(tmp_path):
    path, out = tmp_path / "metrics.jsonl", tmp_path / "usage.png"
    write_metrics(path, [{"step": 10, "loss": 1.0}])
    assert write_usage_chart(path, out) is None and not out.exists()
    write_metrics(path, [{"step": 10, "usage": 0.3}, {"step": 20, "usage": 0.6}, {"step": 20, "codebook_usage": 0.9}])
    assert write_usage_chart(path, out) == out and out.stat().st_size > 0


def test_curves_split_per_step_lines_from_evaluations_and_drop_what_is_no_curve(tmp_path):
    path = tmp_path / "metrics.jsonl"
    step = {"epoch": 1, "loss": 1.0, "recon_perc": 0.0, "lr": 1e-4, "flag": True, "t_bin_0": 0.5}
    write_metrics(
        path,
        [
            {"step": 1, **step},
            {"step": 2, **step, "loss": math.nan},
            {"step": 2, "epoch": 1, "recon_psnr": 20.0, "recon_split": "test"},
            {"step": 2, "epoch": 1, "fid_1step": 90.0, "fid_samples": 500},
            {"epoch": 1, "loss": 3.0},  # no step: not a metrics line
        ],
        junk=True,
    )
    records = read_records(path)
    assert len(records) == 4
    curves = run_curves(records)
    assert list(curves) == ["loss", "lr", "recon_psnr", "fid_1step"]  # zero term, flag, bin, strings, bookkeeping out
    loss = curves["loss"]
    assert loss.steps == [1.0, 2.0] and loss.values[0] == 1.0 and math.isnan(loss.values[1])
    assert curves["loss"].dense and not curves["recon_psnr"].dense and not curves["fid_1step"].dense


def test_panels_group_lr_groups_and_fids_and_put_evaluations_after_the_training_terms():
    keys = ["loss", "recon", "grad_norm", "lr", "lr_encoder", "lr_decoder", "img_per_s", "peak_mem_mb"]
    keys += ["recon_psnr", "fid_4step", "fid_1step", "codebook_usage", "kl"]
    panels = panels_for(keys, sparse={"recon_psnr", "fid_4step", "fid_1step", "codebook_usage"})
    assert [panel.title for panel in panels] == [
        "loss (total)",
        "recon",
        "kl",
        "learning rate",
        "gradient norm (before clipping)",
        "throughput (images/s)",
        "peak memory (MiB)",
        "reconstruction PSNR (dB, EMA weights)",
        "quick FID",
        "codebook_usage",
    ]
    by_title = {panel.title: panel for panel in panels}
    assert by_title["learning rate"].keys == ["lr_encoder", "lr_decoder"] and not by_title["learning rate"].smooth
    assert by_title["quick FID"].keys == ["fid_1step", "fid_4step"]
    assert [series_label(key) for key in ("lr_encoder", "fid_1step", "fid_4step")] == ["encoder", "1 step", "4 steps"]
    assert panels_for(["lr"], set())[0].keys == ["lr"]


def test_the_ema_is_debiased_skips_non_finite_values_and_auto_smoothing_scales_with_length():
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    smoothed = ema([1.0, math.nan, 3.0], 0.5)
    assert smoothed[0] == 1.0 and math.isnan(smoothed[1])
    assert smoothed[2] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.25))
    assert auto_smoothing(12) == 0.0  # short runs are drawn as logged
    assert auto_smoothing(1000) == pytest.approx(0.95)  # time constant 1/(1-w) = 20 points = 2%
    assert 1 / (1 - auto_smoothing(100_000)) == pytest.approx(2000)


def test_key_patterns_select_and_a_pattern_matching_nothing_is_named():
    keys = ["loss", "recon", "fid_1step", "fid_4step"]
    assert select_keys(keys, None) == keys
    assert select_keys(keys, ["fid_*", "loss"]) == ["loss", "fid_1step", "fid_4step"]
    with pytest.raises(ValueError, match="--keys kl: no run logs a matching key; logged keys: loss, recon"):
        select_keys(keys, ["kl"])
