"""training.py --config: YAML/JSON files of flag values between the preset and the typed flags, their one-line
errors, the shipped configs/ files (the presets among them), and a run's config.json as a config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training
from engine.training_flags import CONFIG_DIR
from tests.test_training import run_training, state_of, tiny_flags

QUICKSTART = dict(  # the quickstart preset as README documents it
    dataset="fashion",
    image_size=16,
    model_type="convnet_tiny",
    batch_size=32,
    epochs=6,
    steps=300,
    lr=2.4e-2,
    recon_perc_weight=0.0,
    con_perc_weight=0.0,
    convnext_weight=0.0,
    eval_frequency=1,
    checkpoint_frequency=3,
    eval_samples=64,
    num_workers=0,
)


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def parse_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        training.parse_args(argv)
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_later_files_override_earlier_ones_and_typed_flags_override_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto would be the quickstart here
    a = write(tmp_path, "a.yaml", "batch_size: 16\nlr: 1.0e-3\nepochs: 3\nhflip: false\nfid_steps: [1, 2]\n")
    b = write(tmp_path, "b.yaml", "lr: 2e-3\neval-frequency: 5\nmodel_type: convnet_tiny\n")
    args = training.parse_args(["--config", a, "--config", b, "--lr", "3e-4"])
    assert (args.batch_size, args.lr, args.epochs, args.eval_frequency, args.hflip) == (16, 3e-4, 3, 5, False)
    assert args.fid_steps == [1, 2] and args.model_type == "convnet_tiny"
    assert args.preset == "none" and args.dataset == "cifar10"  # with --config, no preset unless typed
    assert {"batch_size", "lr", "epochs", "eval_frequency", "hflip", "model_type"} <= args.explicit
    assert training.parse_args(["--config", a, "--config", b]).lr == 2e-3  # YAML's 2e-3 is text: read as float


def test_a_typed_preset_applies_below_the_files(tmp_path):
    a = write(tmp_path, "a.yaml", "batch_size: 16\n")
    args = training.parse_args(["--config", a, "--preset", "quickstart", "--epochs", "2"])
    assert args.preset == "quickstart" and (args.dataset, args.model_type) == ("fashion", "convnet_tiny")
    assert (args.batch_size, args.epochs) == (16, 2)
    assert "dataset" not in args.explicit  # preset values do not override a resumed run's saved flags
    in_file = write(tmp_path, "p.yaml", "preset: quickstart\nsteps: 7\n")
    args = training.parse_args(["--config", in_file])
    assert (args.preset, args.dataset, args.steps) == ("quickstart", "fashion", 7)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bach_size: 16\n", "has an unknown key 'bach_size'; did you mean batch_size?"),
        ("colour: blue\n", "has an unknown key 'colour'; keys are flag names"),
        ("config: other.yaml\n", "has an unknown key 'config'"),
        ("batch_size: many\n", ": batch_size: 'many' is not a valid int"),
        ("batch_size: 3.5\n", ": batch_size: 3.5 is not a valid int"),
        ("batch_size: 0\n", "batch_size: 0 is not a valid int (must be an integer >= 1, got 0)"),
        ("batch_size: null\n", "batch_size cannot be null (its default is 256)"),
        ("lr: true\n", "lr must be a single float, got True"),
        ("lr: [1, 2]\n", "lr must be a single float"),
        ("hflip: 1\n", "hflip must be true or false, got 1"),
        ("distance: l2\n", "distance: 'l2' is not one of l1, smooth_l1"),
        ("model_type: resnet\n", "model_type: 'resnet' is not one of"),
        ("dataset: 123\n", "dataset must be a single text, got 123"),
        ("fid_steps: [1, x]\n", "fid_steps: 'x' is not a valid int"),
        ("- batch_size\n", "holds a list, not a mapping of flag names to values"),
        ("batch_size: [16\n", "is not valid yaml"),
    ],
)
def test_bad_config_files_are_one_line_errors_naming_file_and_key(tmp_path, text, words):
    path = write(tmp_path, "bad.yaml", text)
    message = parse_error(["--config", path])
    assert f"config file '{path}'" in message and words in message, message


def test_missing_and_json_files(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert f"config file '{missing}' cannot be read" in parse_error(["--config", str(missing)])
    plain = write(tmp_path, "flags.json", json.dumps({"batch_size": 8, "image_size": None, "lr": 1e-05}))
    args = training.parse_args(["--config", plain])
    assert (args.batch_size, args.image_size, args.lr) == (8, None, 1e-05)
    assert "is not valid json" in parse_error(["--config", write(tmp_path, "bad.json", "{")])
    empty = write(tmp_path, "empty.yaml", "# nothing set\n")
    assert training.parse_args(["--config", empty]).batch_size == 256


def test_the_shipped_presets_are_config_files(monkeypatch):
    defaults = training.parse_args(["--preset", "none"])
    paper = training.parse_args(["--config", str(CONFIG_DIR / "sphere_cifar10.yaml")])
    assert vars(paper) | {"explicit": None, "config": None} == vars(defaults) | {"explicit": None, "config": None}
    quickstart = training.parse_args(["--config", str(CONFIG_DIR / "sphere_fashion.yaml")])
    assert {key: getattr(quickstart, key) for key in QUICKSTART} == QUICKSTART
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset = training.parse_args([])
    assert preset.preset == "quickstart" and vars(preset) | {"explicit": set()} == vars(quickstart) | {
        "explicit": set(),
        "config": None,
        "preset": "quickstart",
    }


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_parses(path):
    args = training.parse_args(["--config", str(path)])
    assert args.config == [str(path)]


def test_config_json_reproduces_the_run_and_file_values_override_a_resumed_run(tmp_path):
    results = tmp_path / "results"
    run_dir = run_training(*tiny_flags(results, "--epochs", "1", "--lr", "3e-4"))
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config_files"] == [] and "config" not in saved["train"] and "explicit" not in saved["train"]
    again = training.parse_args(["--config", str(run_dir / "config.json")])
    assert {key: value for key, value in vars(again).items() if key not in ("explicit", "config")} == saved["train"]
    assert training.main(again) == run_dir  # the same flags find the same run (finished: nothing to do)
    more = write(tmp_path, "more.yaml", "epochs: 2\nlr: 5.0e-4\n")
    resumed = run_training("--config", str(run_dir / "config.json"), "--config", more)
    assert resumed == run_dir and state_of(run_dir)["epoch"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["lr"] == 5e-4 and config["config_files"] == [str(run_dir / "config.json"), more]
