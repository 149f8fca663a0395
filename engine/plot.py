"""Curves sheets of training runs, drawn with matplotlib's Agg backend: a run's images/curves.png (redrawn from its
metrics.jsonl at every evaluation) and a comparison of several runs on one sheet, one colour per run:

    python -m engine.plot results/cifar10_20261130_101500 results/cifar10_20261201_093000 --out compare.png

Per-step terms (losses, lr, gradient norm, img/s, memory) are drawn faint as logged, under a debiased EMA line
(engine.curves.ema); evaluations (reconstruction PSNR, quick FIDs, epoch statistics) as markers."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .curves import Curve, Panel, auto_smoothing, ema, panels_for, read_records, run_curves, select_keys, series_label

COLUMNS = 4  # panels per row
PANEL_INCHES = (3.7, 2.45)  # width, height of one panel with its labels
HEADER_INCHES = 0.75  # title and smoothing note
LEGEND_ROW_INCHES = 0.22  # each row of a comparison's run legend, below them
DPI = 110
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
LINE_STYLES = ("-", "--", ":", "-.")
RAW_ALPHA = 0.28  # the logged values under the smoothing line
OUTLIER_QUANTILES = (0.01, 0.99)  # a long noisy series' y range ignores its 1% most extreme raw values
MAX_POINTS = 1500  # drawn per line (a panel is about 330 pixels wide): more would only cost time


@dataclass
class Run:
    """A run's curves, the name its legend shows and a one-line summary (model, dataset, last step)."""

    name: str
    curves: dict[str, Curve]
    summary: str


class PlotError(ValueError):
    """A folder or option the sheet cannot be drawn from; the message names it and the fix."""


def load_run(folder: Path, name: str | None = None) -> Run:
    """The curves of a run folder (or of a metrics.jsonl file given directly); PlotError when it has none."""
    path = folder if folder.is_file() else folder / "metrics.jsonl"
    folder = path.parent
    if not path.is_file():
        where = f"{folder} is not a folder" if not folder.is_dir() else f"{folder} has no metrics.jsonl"
        raise PlotError(f"{where}: pass a run folder (results/<dataset>_<time>/, written by training.py)")
    records = read_records(path)
    curves = run_curves(records)
    if not curves:
        raise PlotError(f"{path} has no metrics lines yet: training.py writes one every --log_every steps")
    return Run(name or folder.name, curves, run_summary(folder, records))


def run_summary(folder: Path, records: list[dict]) -> str:
    """'vit_tiny on cifar10, step 1200 (epoch 6)': from config.json when the folder has one."""
    epochs = [record["epoch"] for record in records if "epoch" in record]
    where = f"step {max(record['step'] for record in records):,}" + (f" (epoch {epochs[-1]})" if epochs else "")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return where
    return f"{config.get('model_type', '?')} on {config.get('dataset_name', '?')}, {where}"


def step_label(x: float, _position=None) -> str:
    """Tick label of a step count: 800, 1.5k, 2M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.4g}{suffix}"
    return f"{x:.4g}"


def finite_points(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the curve's finite values."""
    steps, values = np.asarray(curve.steps), np.asarray(curve.values)
    keep = np.isfinite(values)
    return steps[keep], values[keep]


def smoothing_weight(smoothing: float | None, count: int) -> float:
    """The EMA weight for a series of `count` points: the given one, or auto_smoothing when None."""
    return auto_smoothing(count) if smoothing is None else smoothing


def draw_curve(ax, curve: Curve, style: dict, smoothing: float | None) -> list[np.ndarray]:
    """One curve (`style`: its colour, ls, label, smooth): a noisy per-step one faint as logged (dots too when short)
    under its EMA, an exact one (lr) as a plain line, an evaluation as markers on a line; non-finite values as red
    crosses along the top. Returns the y values the panel's range must show."""
    steps, values = finite_points(curve)
    bad = [step for step, value in zip(curve.steps, curve.values) if not math.isfinite(value)]
    if bad:  # in the run's colour in a comparison, else red
        top = ax.get_xaxis_transform()  # x in steps, y in axes fractions
        colour = style["bad_colour"]
        ax.plot(bad, [0.96] * len(bad), "x", color=colour, ms=5, transform=top, clip_on=False, label="NaN/Inf")
    line = {"color": style["colour"], "ls": style["ls"]}
    if not curve.dense or not style["smooth"]:
        marker = {} if curve.dense else {"marker": "o", "ms": 3.5}
        kept = thinned(len(values))
        ax.plot(steps[kept], values[kept], lw=1.4, label=style["label"], **line, **marker)
        return [values]
    draw_raw(ax, steps, values, style["colour"])
    smooth = np.asarray(ema(values.tolist(), smoothing_weight(smoothing, len(values))))
    kept = thinned(len(values))
    ax.plot(steps[kept], smooth[kept], lw=1.6, label=style["label"], **line)
    if len(values) < 20:
        return [values, smooth]
    return [np.quantile(values, OUTLIER_QUANTILES), smooth]


def thinned(count: int) -> np.ndarray:
    """Indices of at most MAX_POINTS evenly spread points (the first and last among them) of a `count`-point line
    that is smooth at the scale of a pixel (an EMA, the learning rate): drawing more only costs time."""
    return np.unique(np.linspace(0, count - 1, min(count, MAX_POINTS)).round().astype(int))


def draw_raw(ax, steps: np.ndarray, values: np.ndarray, colour: str) -> None:
    """The logged values, faint: a line (dots too for a short run, whose points the EMA line may hide); past
    MAX_POINTS, the band between each of MAX_POINTS bins' lowest and highest value (what the line would fill)."""
    if len(values) <= MAX_POINTS:
        ax.plot(steps, values, color=colour, alpha=RAW_ALPHA, lw=0.8)
        if len(values) <= 60:
            ax.plot(steps, values, ".", color=colour, alpha=0.6, ms=4)
        return
    starts = np.unique(np.linspace(0, len(values), MAX_POINTS, endpoint=False).astype(int))
    low, high = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
    ax.fill_between(steps[starts], low, high, color=colour, alpha=RAW_ALPHA, lw=0)


def value_labels(values: list[float]) -> list[str]:
    """Tick labels of a linear axis with the fewest digits that still give every tick its exact value, and no
    offset text elsewhere: 0.25, 4200, 12.6945; 1.25e-3 style for values below 1e-3 or from 1e5."""
    finite = [value for value in values if math.isfinite(value)]
    spacing = min((abs(b - a) for a, b in zip(finite, finite[1:]) if b != a), default=1.0)
    plain = all(value == 0 or 1e-3 <= abs(value) < 1e5 for value in finite)
    for digits in range(10):
        labels = [f"{value:.{digits}f}" if plain else f"{value:.{digits}e}" for value in values]
        if all(abs(float(label) - value) < 1e-3 * spacing for label, value in zip(labels, values)):
            break
    return labels if plain else ["0" if value == 0 else compact(label) for label, value in zip(labels, values)]


def compact(text: str) -> str:
    """'1.50e-05' -> '1.5e-5'."""
    mantissa, exponent = text.split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}"


def tick_formatter():
    """A matplotlib Formatter drawing value_labels (a log axis's ticks each alone: 0.05, 2e-10)."""
    from matplotlib.ticker import Formatter

    class ValueFormatter(Formatter):
        def format_ticks(self, values):
            if self.axis is not None and self.axis.get_scale() == "log":
                return [self(value) for value in values]
            return value_labels(list(values))

        def __call__(self, value, position=None):
            return f"{value:g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else compact(f"{value:.1e}")

    return ValueFormatter()


def set_y_range(ax, panel: Panel, shown: list[np.ndarray]) -> None:
    """Range over what the curves asked to show, padded; logarithmic when the panel may be and the values are
    positive and span more than a decade."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

    values = np.concatenate([np.ravel(v) for v in shown]) if shown else np.zeros(0)
    values = values[np.isfinite(values)]
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    if panel.may_log and low > 0 and high / low > 10:
        ax.set_yscale("log")
        subs = (1.0, 2.0, 5.0) if high / low < 100 else (1.0,)  # ticks at 1-2-5 within two decades, else decades
        ax.yaxis.set_major_locator(LogLocator(subs=subs, numticks=6))
        ax.yaxis.set_minor_locator(NullLocator())  # the 1-2-5 majors are enough; minor ticks cost time
        ax.set_ylim(low / 1.25, high * 1.25)
        return
    pad = 0.06 * (high - low) or 0.1 * abs(high) or 1.0
    ax.set_ylim(low - pad, high + pad)
    ax.yaxis.set_major_locator(MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]))


def draw_panel(ax, panel: Panel, runs: list[Run], smoothing: float | None, x_max: float) -> None:
    """A panel's curves: colours by run in a comparison, by key within a panel of one run; styles by key."""
    shown, compare, labelled = [], len(runs) > 1, set()
    for run_index, run in enumerate(runs):
        for key_index, key in enumerate(panel.keys):
            if key not in run.curves:
                continue
            style = {
                "colour": COLOURS[(run_index if compare else key_index) % len(COLOURS)],
                "ls": LINE_STYLES[key_index % len(LINE_STYLES)] if compare else "-",
                "label": series_label(key) if len(panel.keys) > 1 and key not in labelled else None,
                "smooth": panel.smooth,
                "bad_colour": COLOURS[run_index % len(COLOURS)] if compare else "#d62728",
            }
            labelled.add(key)
            shown += draw_curve(ax, run.curves[key], style, smoothing)
    set_y_range(ax, panel, shown)
    ax.set_xlim(0, x_max * 1.02)
    decorate(ax, panel, compare)


def decorate(ax, panel: Panel, compare: bool) -> None:
    """Title, step axis, light grid, no top/right frame; the key legend of a panel of several keys."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.set_xlabel("step", fontsize=8, labelpad=1)
    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(step_label))
    ax.yaxis.set_major_formatter(tick_formatter())
    ax.tick_params(labelsize=8, length=3)
    ax.grid(True, color="#e6e6e6", lw=0.7)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles))  # one NaN/Inf entry however many curves had some
        if compare:  # the key's line style, in grey: colours are the runs'
            unique = {name: recoloured(line) for name, line in unique.items()}
        ax.legend(unique.values(), unique.keys(), fontsize=7, frameon=False, handlelength=2.6 if compare else 1.8)


def recoloured(line):
    """A grey legend handle with the line style and marker of `line`."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="#555555", ls=line.get_linestyle(), marker=line.get_marker(), lw=1.4)


def smoothing_note(smoothing: float | None) -> str:
    """The sheet's second line: what is faint, what is the line."""
    how = (
        "weight auto: time constant 2% of the points"
        if smoothing is None
        else (f"weight {smoothing:g}" if smoothing else "off")
    )
    return f"faint: logged values; line: debiased EMA ({how}); markers: evaluations"


def sheet_panels(runs: list[Run], keys: list[str] | None) -> list[Panel]:
    """The panels of the union of the runs' keys (first-appearance order), filtered by --keys patterns."""
    merged = {}
    for run in runs:
        merged.update({key: curve for key, curve in run.curves.items() if key not in merged})
    chosen = select_keys(list(merged), keys)
    return panels_for(chosen, {key for key in chosen if not merged[key].dense})


def draw_sheet(runs: list[Run], smoothing: float | None = None, keys: list[str] | None = None):
    """A matplotlib Figure (Agg canvas) with one panel per metric group, COLUMNS per row; `smoothing` None = auto."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = sheet_panels(runs, keys)
    columns = min(COLUMNS, max(2, len(panels)))
    rows = math.ceil(len(panels) / columns)
    width = columns * PANEL_INCHES[0]
    legend_columns = run_legend_columns(runs, width)
    header = HEADER_INCHES + (LEGEND_ROW_INCHES * math.ceil(len(runs) / legend_columns) + 0.15 if len(runs) > 1 else 0)
    height = rows * PANEL_INCHES[1] + header
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(rows, columns, index + 1) for index in range(len(panels))]  # none for empty cells
    margins = {"left": 0.75 / width, "right": 1 - 0.15 / width, "bottom": 0.45 / height, "top": 1 - header / height}
    figure.subplots_adjust(**margins, wspace=0.3, hspace=0.6)
    x_max = max(max(curve.steps) for run in runs for curve in run.curves.values())
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, runs, smoothing, max(x_max, 1.0))
    write_header(figure, runs, smoothing, legend_columns)
    return figure


def run_legend_columns(runs: list[Run], width: float) -> int:
    """Columns of a comparison's run legend that fit the sheet's width (about 0.07 inch a character)."""
    longest = max(len(f"{run.name} ({run.summary})") for run in runs)
    return max(1, min(len(runs), int((width - 0.5) / (0.07 * longest + 0.6))))


def write_header(figure, runs: list[Run], smoothing: float | None, legend_columns: int) -> None:
    """Title (the run and its summary, or the number of runs), the smoothing note, a comparison's run legend."""
    from matplotlib.lines import Line2D

    height = figure.get_figheight()
    title = f"{runs[0].name}  |  {runs[0].summary}" if len(runs) == 1 else f"{len(runs)} runs"
    figure.text(0.5 / figure.get_figwidth(), 1 - 0.12 / height, title, fontsize=12, weight="bold", va="top")
    note = smoothing_note(smoothing)
    figure.text(0.5 / figure.get_figwidth(), 1 - 0.42 / height, note, fontsize=8.5, color="#555555", va="top")
    if len(runs) > 1:
        handles = [Line2D([], [], color=COLOURS[i % len(COLOURS)], lw=2) for i in range(len(runs))]
        labels = [f"{run.name} ({run.summary})" for run in runs]
        figure.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(0.4 / figure.get_figwidth(), 1 - 0.62 / height),
            ncol=legend_columns,
            fontsize=8.5,
            frameon=False,
            handlelength=2,
        )


def write_curves(run_dir: Path, out_path: Path | None = None) -> Path | None:
    """images/curves.png of a run from its metrics.jsonl (auto smoothing); None (nothing written) before the first
    metrics line."""
    try:
        run = load_run(run_dir)
    except PlotError:
        return None
    out_path = out_path or run_dir / "images" / "curves.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    draw_sheet([run]).savefig(out_path)
    return out_path


def smoothing_value(text: str) -> float | None:
    """--smoothing: 'auto' (None) or an EMA weight in [0, 1)."""
    if text == "auto":
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not 0 <= weight < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: pass auto or an EMA weight in [0, 1) (0: no smoothing)")
    return weight


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engine.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders (or their metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="the picture (.png, .pdf, .svg)")
    parser.add_argument(
        "--keys", nargs="+", default=None, help="metrics to draw, shell patterns (e.g. loss 'fid_*' lr); default all"
    )
    parser.add_argument(
        "--smoothing",
        type=smoothing_value,
        default=None,
        help="EMA weight in [0, 1) of the smoothing line (TensorBoard's convention; 0: off); default auto: a time "
        "constant of 2%% of each series' points",
    )
    return parser.parse_args(argv)


def run_names(folders: list[Path]) -> list[str]:
    """Each run's legend name: its folder name, or its path as given when two runs share a folder name."""
    names = [(path.parent if path.is_file() else path).name for path in folders]
    clash = len(set(names)) < len(names)
    return [str(path) if clash else name for path, name in zip(folders, names)]


def main(args: argparse.Namespace) -> Path:
    """Draw the sheet of args.runs to args.out; one-line errors for folders without metrics."""
    try:
        runs = [load_run(folder, name) for folder, name in zip(args.runs, run_names(args.runs))]
        figure = draw_sheet(runs, args.smoothing, args.keys)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.out)
    except (PlotError, ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {args.out}", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main(parse_args())
