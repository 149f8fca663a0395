"""Line charts of a run's metrics.jsonl, drawn with Pillow alone: the codebook usage picture of a tokenizer run
(images/codebook_usage.png, refreshed at every epoch end)."""

from __future__ import annotations

import json
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


def line_chart(series: dict[str, Series], caption: str, y_range=(0.0, 1.0), size=(480, 180)) -> Image.Image:
    """Each named series as a line with dots on a white chart with a y grid every quarter, step labels and a
    legend; x runs from 0 to the last step of any series."""
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
    draw.text((left + width, top + height + 2), f"step {x_range[1]:.0f}", fill=TEXT_COLOUR, font=font(), anchor="ra")
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
