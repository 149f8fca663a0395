"""training.py --tensorboard (engine/tensorboard.py): event files read back with TensorBoard's own reader, and the
message when the package is missing."""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine.tensorboard import MISSING, TensorBoardLog
from tests.test_training import run_training, tiny_flags


def test_a_run_writes_every_metrics_line_and_its_eval_pictures_as_events(tmp_path):
    flags = tiny_flags(tmp_path / "results", "--epochs", "1", "--steps", "2", "--tensorboard", "--curves")
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


def test_without_the_package_training_says_so_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    flags = tiny_flags(tmp_path / "results", "--epochs", "1", "--steps", "1", "--tensorboard", "--no-curves")
    run_dir = run_training(*flags)
    log = (run_dir / "log.txt").read_text()
    assert log.count(MISSING) == 1 and "pip install tensorboard" in MISSING and "finished at epoch 1" in log
    assert not (run_dir / "tensorboard").exists()
    assert (run_dir / "images" / "epoch_0001_recon.png").is_file() and not (run_dir / "images" / "curves.png").exists()


def test_a_resumed_log_hides_what_its_killed_predecessor_logged_after_the_checkpoint(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    killed = TensorBoardLog(tmp_path, SummaryWriter)
    for step in (1, 2, 3, 4):  # the checkpoint was taken at step 2
        killed.scalars({"step": step, "epoch": 1, "loss": float(step), "recon_split": "test", "flag": True})
    killed.close()
    resumed = TensorBoardLog(tmp_path, SummaryWriter)
    for step in (3, 4):
        resumed.scalars({"step": step, "epoch": 1, "loss": 10.0 * step})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "epoch"}
    assert [(event.step, event.value) for event in events.Scalars("loss")] == [(1, 1), (2, 2), (3, 30), (4, 40)]
