"""training.py --tensorboard (engine/tensorboard.py): event files read back with TensorBoard's own reader, and the
message when the package is missing."""

import json
import logging
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.tensorboard import MISSING, open_tensorboard
from tests.test_training import run_training, tiny_flags


def test_a_run_writes_every_metrics_line_and_its_eval_pictures_as_events(tmp_path):
    flags = tiny_flags(tmp_path / "results", "--epochs", "1", "--steps", "2", "--tensorboard")
    run_dir = run_training(*flags)
    assert (run_dir / "images" / "curves.png").is_file()  # every run draws its curves after an evaluation
    assert json.loads((run_dir / "config.json").read_text())["train"]["tensorboard"] is True
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                expected.setdefault(key, []).append((record["step"], value))
    assert {"loss", "lr", "grad_norm", "img_per_s", "recon_psnr"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)  # recon_split (a string) has none
    for key, points in expected.items():
        logged = [(event.step, event.value) for event in events.Scalars(key)]
        assert [step for step, _ in logged] == [step for step, _ in points], key
        assert [value for _, value in logged] == pytest.approx([value for _, value in points], rel=1e-6), key
    assert set(events.Tags()["images"]) == {
        "eval/recon",
        "eval/samples_1step",
        "eval/samples_2step",
        "eval/samples_4step",
    }
    recon = events.Images("eval/recon")[0]
    assert recon.step == 2 and recon.encoded_image_string.startswith(b"\x89PNG")


def test_without_the_package_training_is_told_once_and_gets_no_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    logger = logging.getLogger("test_tensorboard")
    with caplog.at_level(logging.INFO, logger=logger.name):
        assert open_tensorboard(tmp_path, logger) is None
    assert caplog.messages == [MISSING] and "pip install tensorboard" in MISSING
    assert not (tmp_path / "tensorboard").exists()
