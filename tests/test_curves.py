"""Line charts of metrics.jsonl (engine/curves.py): the codebook usage picture."""

import json

from PIL import ImageColor

from engine.curves import COLOURS, line_chart, plot_position, read_series, write_usage_chart


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
