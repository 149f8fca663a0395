"""Line charts of a run's metrics.jsonl, drawn with Pillow alone, refreshed at every epoch end: the codebook usage
picture of a tokenizer run (images/codebook_usage.png) and a diffusion run's loss per timestep bin by epoch
(images/timestep_loss.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from .globe import AXIS_COLOUR, GRID_COLOUR, TEXT_COLOUR, font

MARGIN = (34, 18, 10, 28)  # left (value labels), top (caption), right, bottom (step labels and legend)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")
USAGE_SERIES = {  # metrics.jsonl key -> legend
    "usage": "codes used in a batch",
    "codebook_usage": "codes used over the epoch",
}

Series = tuple[list[float], list[float]]  # x values (steps), y values


def read_series(path: Path, key: str) -> Series:
    """(steps, values) of every metrics.jsonl line holding `key` (unreadable lines are skipped)."""
    steps, values = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if key in record and "step" in record:
            steps.append(float(record["step"]))
            values.append(float(record[key]))
    return steps, values


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
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
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
