"""The curves sheet (engine/plot.py): a run's images/curves.png and python -m engine.plot comparing runs."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
from matplotlib.colors import to_hex
from PIL import Image

from engine import plot, trainer
from engine.plot import COLOURS, draw_sheet, load_run, value_labels, write_curves


def fake_run(folder, steps=40, lr_peak=1e-3, nan_at=None, config=True):
    """A run folder whose metrics.jsonl looks like training.py's: per-step lines (two lr groups), a PSNR and two
    quick FIDs per 'epoch' of 10 steps; optionally a NaN loss and a config.json."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        loss = math.nan if step == nan_at else 1 / step
        lr = lr_peak * min(1, step / 5)
        lines.append({"step": step, "epoch": 1 + (step - 1) // 10, "loss": loss, "recon": 0.5 / step, "zero": 0.0})
        lines[-1] |= {"lr": lr, "lr_encoder": lr / 10, "lr_decoder": lr, "grad_norm": 1.0, "img_per_s": 100.0}
        if step % 10 == 0:
            lines.append({"step": step, "epoch": step // 10, "recon_psnr": 20 + step / 10, "recon_split": "test"})
            lines += [{"step": step, "fid_1step": 300 / step, "fid_samples": 50}, {"step": step, "fid_2step": 9.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "vit_tiny", "dataset_name": "demo"}))
    return folder


def panel_titles(figure) -> list[str]:
    return [ax.get_title(loc="left") for ax in figure.axes if ax.get_visible()]


def line_colours(ax) -> set[str]:
    return {to_hex(line.get_color()) for line in ax.get_lines()}


def test_a_run_sheet_has_a_panel_per_metric_group_and_marks_non_finite_values(tmp_path):
    run = load_run(fake_run(tmp_path / "demo_1", nan_at=7))
    assert run.name == "demo_1" and run.summary == "vit_tiny on demo, step 40 (epoch 4)"
    figure = draw_sheet([run])
    assert panel_titles(figure) == [
        "loss (total)",
        "recon",  # the all-zero term has no panel
        "learning rate",
        "gradient norm (before clipping)",
        "throughput (images/s)",
        "reconstruction PSNR (dB, EMA weights)",
        "quick FID",
    ]
    loss_panel = figure.axes[0]
    crosses = [line for line in loss_panel.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [7]
    assert loss_panel.get_yscale() == "log"  # positive and spanning more than a decade
    lr_panel = figure.axes[2]
    assert lr_panel.get_yscale() == "linear" and [t.get_text() for t in lr_panel.get_legend().get_texts()] == [
        "encoder",
        "decoder",
    ]
    assert line_colours(lr_panel) == {COLOURS[0], COLOURS[1]}  # one run: colours tell the keys apart


def test_the_command_draws_runs_in_one_colour_each_with_their_names(tmp_path):
    first = fake_run(tmp_path / "a" / "demo_1")
    second = fake_run(tmp_path / "b" / "demo_1", steps=30, lr_peak=2e-3, config=False)  # same folder name
    out = tmp_path / "sheets" / "compare.png"
    assert plot.main(plot.parse_args([str(first), str(second / "metrics.jsonl"), "--out", str(out)])) == out
    with Image.open(out) as picture:
        assert picture.size[0] == round(plot.COLUMNS * plot.PANEL_INCHES[0] * plot.DPI)
    figure = draw_sheet([load_run(first, "first"), load_run(second, "second")], smoothing=0.5, keys=["loss", "lr*"])
    assert panel_titles(figure) == ["loss (total)", "learning rate"]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["first (vit_tiny on demo, step 40 (epoch 4))", "second (step 30 (epoch 3))"]
    for ax in figure.axes[:2]:
        assert line_colours(ax) == {COLOURS[0], COLOURS[1]}  # runs: colours; keys: line styles
    assert {line.get_linestyle() for line in figure.axes[1].get_lines()} == {"-", "--"}
    assert plot.run_names([first, second / "metrics.jsonl"]) == [str(first), str(second / "metrics.jsonl")]


def test_bad_runs_and_options_get_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=f"error: {empty} has no metrics.jsonl: pass a run folder"):
        plot.main(plot.parse_args([str(empty)]))
    with pytest.raises(SystemExit, match="is not a folder"):
        plot.main(plot.parse_args([str(tmp_path / "missing")]))
    (empty / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "loss": 0.0}\n{"torn')
    with pytest.raises(SystemExit, match="has no metrics lines yet"):
        plot.main(plot.parse_args([str(empty)]))
    run = fake_run(tmp_path / "run")
    with pytest.raises(SystemExit, match="--keys kl: no run logs a matching key"):
        plot.main(plot.parse_args([str(run), "--keys", "kl", "--out", str(tmp_path / "x.png")]))
    with pytest.raises(SystemExit):
        plot.parse_args([str(run), "--smoothing", "1"])
    assert "pass auto or an EMA weight in [0, 1)" in capsys.readouterr().err


def test_the_run_picture_survives_short_runs_missing_keys_and_non_finite_values(tmp_path):
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    assert write_curves(run) is None and not (run / "images" / "curves.png").exists()  # nothing logged yet
    lines = [{"step": 1, "loss": math.inf, "epoch": 1}, {"step": 2, "loss": 0.5}, {"step": 2, "recon_psnr": math.nan}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "lo')
    path = write_curves(run)
    assert path == run / "images" / "curves.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[1] > 200


def test_tick_labels_carry_the_decimals_their_spacing_needs():
    assert value_labels([12.6942, 12.6944, 12.6946]) == ["12.6942", "12.6944", "12.6946"]
    assert value_labels([0, 5e-7, 1e-6, 1.5e-6]) == ["0", "5e-7", "1e-6", "1.5e-6"]
    assert value_labels([4120.0, 4140.0]) == ["4120", "4140"]
    assert value_labels([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1.25e-3]) == ["2.5e-4", "5e-4", "7.5e-4", "1e-3", "1.25e-3"]


def test_a_picture_that_cannot_be_drawn_is_a_warning_not_a_stop(tmp_path, monkeypatch, caplog):
    def no_fonts(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(trainer, "write_curves", no_fonts)
    holder = SimpleNamespace(run_dir=tmp_path, logger=logging.getLogger("test_plot"))
    with caplog.at_level(logging.WARNING, logger="test_plot"):
        trainer.Trainer.draw_curves(holder)
    assert caplog.messages == ["images/curves.png not drawn (RuntimeError: no fonts); training goes on"]
