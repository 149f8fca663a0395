"""A run's metrics.jsonl as curves: the Pillow line charts refreshed at every epoch end (a tokenizer run's codebook
usage, images/codebook_usage.png; a diffusion run's loss per timestep bin by epoch, images/timestep_loss.png), and the
series, panels and smoothing behind the matplotlib curves sheet (engine/plot.py: images/curves.png, python -m
engine.plot)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from .globe import AXIS_COLOUR, GRID_COLOUR, TEXT_COLOUR, font
from .runs import read_jsonl

MARGIN = (34, 18, 10, 28)  # left (value labels), top (caption), right, bottom (step labels and legend)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")
USAGE_SERIES = {  # metrics.jsonl key -> legend
    "usage": "codes used in a batch",
    "codebook_usage": "codes used over the epoch",
}

Series = tuple[list[float], list[float]]  # x values (steps), y values


def read_series(path: Path, key: str) -> Series:
    """(steps, values) of every metrics.jsonl line holding `key` (unreadable lines are skipped)."""
    records = [record for record in read_jsonl(path) if key in record and "step" in record]
    return [float(record["step"]) for record in records], [float(record[key]) for record in records]


def plot_position(x: float, y: float, x_range: tuple[float, float], y_range: tuple[float, float], size) -> tuple:
    """Pixel position of (x, y) in a width x height plot area placed at MARGIN (y grows upwards)."""
    (x0, x1), (y0, y1), (width, height) = x_range, y_range, size
    left, top = MARGIN[:2]
    return left + (x - x0) / max(x1 - x0, 1e-12) * width, top + (1 - (y - y0) / max(y1 - y0, 1e-12)) * height


def line_chart(
    series: dict[str, Series], caption: str, y_range=(0.0, 1.0), size=(480, 180), x_label: str = "step"
) -> Image.Image:
    """Each named series as a line with dots on a white chart with a y grid every quarter, x labels and a
    legend; x runs from 0 to the last x of any series."""
    left, top, right, bottom = MARGIN
    width, height = size
    canvas = Image.new("RGB", (left + width + right, top + height + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 3), caption, fill=TEXT_COLOUR, font=font())
    x_range = (0.0, max([max(xs) for xs, _ in series.values() if xs] + [1.0]))
    for quarter in range(5):
        value = y_range[0] + quarter / 4 * (y_range[1] - y_range[0])
        _, y = plot_position(0, value, x_range, y_range, size)
        draw.line([(left, y), (left + width, y)], fill=AXIS_COLOUR if quarter == 0 else GRID_COLOUR)
        draw.text((left - 3, y), f"{value:g}", fill=TEXT_COLOUR, font=font(), anchor="rm")
    draw.text((left, top + height + 2), "0", fill=TEXT_COLOUR, font=font())
    end_label = f"{x_label} {x_range[1]:.0f}"
    draw.text((left + width, top + height + 2), end_label, fill=TEXT_COLOUR, font=font(), anchor="ra")
    legend_x = left + 40
    for colour, (name, (xs, ys)) in zip(COLOURS, series.items()):
        points = [plot_position(x, y, x_range, y_range, size) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.rectangle([legend_x, top + height + 17, legend_x + 8, top + height + 25], fill=colour)
        draw.text((legend_x + 12, top + height + 15), name, fill=TEXT_COLOUR, font=font())
        legend_x += 20 + int(draw.textlength(name, font=font()))
    return canvas


def write_usage_chart(metrics_path: Path, out_path: Path) -> Path | None:
    """images/codebook_usage.png from a run's metrics.jsonl: the fraction of codes used in each logged batch and
    over each epoch; None (nothing written) when the run logs neither."""
    series = {name: read_series(metrics_path, key) for key, name in USAGE_SERIES.items()}
    series = {name: points for name, points in series.items() if points[0]}
    if not series:
        return None
    line_chart(series, "codebook usage (fraction of the codes)").save(out_path)
    return out_path


def epoch_bin_means(path: Path) -> dict[int, list[float | None]]:
    """{epoch: [mean of t_bin_k over that epoch's logged steps, None where never logged]} of a metrics.jsonl."""
    sums: dict[int, dict[int, list[float]]] = {}
    for record in read_jsonl(path):
        for key, value in record.items():
            if key.startswith("t_bin_") and "epoch" in record:
                sums.setdefault(int(record["epoch"]), {}).setdefault(int(key[6:]), []).append(float(value))
    bins = 1 + max((k for per_epoch in sums.values() for k in per_epoch), default=-1)
    return {e: [sum(v) / len(v) if (v := b.get(k)) else None for k in range(bins)] for e, b in sorted(sums.items())}


def write_timestep_chart(metrics_path: Path, out_path: Path) -> Path | None:
    """images/timestep_loss.png: the diffusion loss per timestep bin (x: bin k covers t in (k T/n, (k+1) T/n])
    for the first, middle and last epochs; None (nothing written) when the run logs no t_bin_k."""
    means = epoch_bin_means(metrics_path)
    if not means:
        return None
    epochs = list(means)
    shown = sorted({epochs[round(i * (len(epochs) - 1) / (len(COLOURS) - 1))] for i in range(len(COLOURS))})
    series = {}
    for epoch in shown:
        points = [(k + 1.0, v) for k, v in enumerate(means[epoch]) if v is not None]
        series[f"epoch {epoch}"] = ([x for x, _ in points], [y for _, y in points])
    top = max(y for _, ys in series.values() for y in ys)
    y_max = max(0.4, math.ceil(top / 0.4) * 0.4)  # grid quarters on multiples of 0.1
    chart = line_chart(series, "diffusion loss per timestep bin (1 = smallest t)", (0.0, y_max), x_label="bin")
    chart.save(out_path)
    return out_path


# ---- the curves sheet's data (drawn by engine/plot.py) ------------------------------------------------------------
NOT_PLOTTED = ("step", "epoch", "fid_samples")  # the x axis and bookkeeping; t_bin_k have their own chart
AUTO_WINDOW_FRACTION = 0.02  # auto smoothing: the EMA's time constant is 2% of a series' points, at any run length


@dataclass
class Curve:
    """One metrics.jsonl key of one run: the steps and values of the lines holding it (NaN/Inf kept). `dense`
    curves come from the per-step log lines (noisy batch means: drawn faint with a smoothing line), the others from
    evaluations and epoch statistics (each point already a mean: drawn as markers)."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    dense: bool = True


@dataclass
class Panel:
    """One plot of the sheet: its title, the keys drawn in it (one line style each), whether its y axis may turn
    logarithmic (losses, gradient norms and FIDs that span more than a decade) and whether its per-step values are
    noisy enough to smooth (not the learning rate or peak memory, which are exact: an EMA would only shift them)."""

    title: str
    keys: list[str]
    may_log: bool = True
    smooth: bool = True


def read_records(path: Path) -> list[dict]:
    """The metrics.jsonl records with a step, in order; unreadable lines (a torn last line) are skipped."""
    return [record for record in read_jsonl(path) if isinstance(record.get("step"), int | float)]


def plotted_value(key: str, value) -> bool:
    """A number (not a flag, not bookkeeping, not a timestep bin) worth a curve."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and key not in NOT_PLOTTED and not key.startswith("t_bin_")


def run_curves(records: list[dict]) -> dict[str, Curve]:
    """{key: Curve} in order of first appearance; a key is dense when it comes from per-step lines (they log
    `loss`). A key whose every value is 0 (a loss term switched off by a zero weight) is left out."""
    curves: dict[str, Curve] = {}
    for record in records:
        for key, value in record.items():
            if plotted_value(key, value):
                curve = curves.setdefault(key, Curve(dense="loss" in record))
                curve.steps.append(float(record["step"]))
                curve.values.append(float(value))
    return {key: curve for key, curve in curves.items() if any(value != 0 for value in curve.values)}


def panels_for(keys: list[str], sparse: set[str]) -> list[Panel]:
    """The sheet's panels for these keys (first-appearance order; `sparse`: those not from per-step lines): the
    total loss and each other per-step term, the learning rate (its groups when named), gradient norm, throughput,
    memory, reconstruction PSNR, the quick FIDs of every step count together, then the other evaluations and epoch
    statistics (e.g. codebook_usage)."""
    fixed = {
        "grad_norm": Panel("gradient norm (before clipping)", ["grad_norm"]),
        "img_per_s": Panel("throughput (images/s)", ["img_per_s"], may_log=False),
        "peak_mem_mb": Panel("peak memory (MiB)", ["peak_mem_mb"], may_log=False, smooth=False),
        "recon_psnr": Panel("reconstruction PSNR (dB, EMA weights)", ["recon_psnr"], may_log=False),
    }
    lr_groups = [key for key in keys if key.startswith("lr_")]
    fids = sorted((key for key in keys if key.startswith("fid_")), key=fid_steps)
    rest = [key for key in keys if key not in {"lr", *lr_groups, *fids, *fixed}]
    panels = [Panel("loss (total)" if key == "loss" else key, [key]) for key in rest if key not in sparse]
    if "lr" in keys or lr_groups:
        panels.append(Panel("learning rate", lr_groups or ["lr"], may_log=False, smooth=False))
    panels += [panel for key, panel in fixed.items() if key in keys]
    panels += [Panel("quick FID", fids)] if fids else []
    return panels + [Panel(key, [key]) for key in rest if key in sparse]


def fid_steps(key: str) -> int:
    """The step count of a fid_<N>step key (0 when it has none)."""
    digits = key.removeprefix("fid_").removesuffix("step")
    return int(digits) if digits.isdigit() else 0


def series_label(key: str) -> str:
    """A line's name inside a panel of several keys: 'encoder' for lr_encoder, '2 steps' for fid_2step."""
    if key.startswith("lr_"):
        return key.removeprefix("lr_")
    if key.startswith("fid_") and fid_steps(key):
        count = fid_steps(key)
        return f"{count} step{'s' if count > 1 else ''}"
    return key


def select_keys(keys: list[str], patterns: list[str] | None) -> list[str]:
    """The keys matching any of the shell-style patterns (all keys when there are none); ValueError naming a
    pattern that matches nothing."""
    if not patterns:
        return keys
    for pattern in patterns:
        if not fnmatch.filter(keys, pattern):
            raise ValueError(f"--keys {pattern}: no run logs a matching key; logged keys: {', '.join(keys)}")
    return [key for key in keys if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)]


def auto_smoothing(count: int) -> float:
    """EMA weight whose time constant 1/(1-w) is AUTO_WINDOW_FRACTION of `count` points (0: no smoothing for
    short series), so a curve looks equally smooth whatever the run's length."""
    window = AUTO_WINDOW_FRACTION * count
    return 1.0 - 1.0 / window if window > 1 else 0.0


def ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_i = w s_(i-1) + (1-w) x_i from s_0 = 0,
    divided by 1 - w^i so the first points are not pulled towards 0. Non-finite values are skipped (NaN out)."""
    smoothed, state, finite = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(math.nan)
            continue
        state, finite = weight * state + (1 - weight) * value, finite + 1
        smoothed.append(state / (1 - weight**finite))
    return smoothed
