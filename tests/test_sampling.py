"""sampling.py: one output folder per checkpoint, no silent overwrite, run folders as --checkpoint, the device
checked first, bad web weight files and nonsense flags as one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sampling
from engine.webformat import export_model
from models import build_model
from tests.helpers import perturb
from tests.test_export import write_run
from tests.test_webformat import edit_config, rewrite_header, set_metadata

RUN = "demo_20250101_000000"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with checkpoint_latest.pth and checkpoint_epoch_1.pth of a 3-class vit_tiny (16 px)."""
    results = tmp_path_factory.mktemp("results")
    write_run(results, RUN, "demo", perturb(build_model("vit_tiny", image_size=16, num_classes=3)))
    checkpoints = results / RUN / "checkpoints"
    shutil.copy(checkpoints / "checkpoint_latest.pth", checkpoints / "checkpoint_epoch_1.pth")
    return results / RUN


@pytest.fixture(scope="module")
def web_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny" / "model_q8.safetensors"
    path.parent.mkdir()
    export_model(perturb(build_model("vit_tiny", image_size=16)), path, "q8")
    return path


def run_sampling(dest: Path, *flags: str) -> list[Path]:
    common = ["--dest_folder", str(dest), "--device", "cpu", "--num_samples", "2", "--steps", "1", "2"]
    return sampling.main(sampling.parse_args([*common, *flags]))


def one_line_exit(dest: Path, *flags: str) -> str:
    """The message of a sampling.py run that must stop with a one-line error."""
    with pytest.raises(SystemExit) as caught:
        run_sampling(dest, *flags)
    message = str(caught.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_one_folder_per_checkpoint(run_dir, tmp_path):
    checkpoints = run_dir / "checkpoints"
    latest = run_sampling(tmp_path, "--checkpoint", str(checkpoints / "checkpoint_latest.pth"))
    epoch = run_sampling(tmp_path, "--checkpoint", str(checkpoints / "checkpoint_epoch_1.pth"))
    assert [p.name for p in latest] == [p.name for p in epoch] == ["samples_1step_seed0.png", "samples_2step_seed0.png"]
    assert all(p.parent == tmp_path / RUN / "checkpoint_latest" for p in latest)
    assert all(p.parent == tmp_path / RUN / "checkpoint_epoch_1" for p in epoch)


def test_existing_outputs_need_overwrite(run_dir, tmp_path):
    (first, _) = run_sampling(tmp_path, "--checkpoint", str(run_dir))
    first.write_bytes(b"the user's edited grid")
    message = one_line_exit(tmp_path, "--checkpoint", str(run_dir))
    assert f"'{first}' already exists" in message and "--overwrite" in message
    assert first.read_bytes() == b"the user's edited grid"
    run_sampling(tmp_path, "--checkpoint", str(run_dir), "--overwrite")
    assert Image.open(first).size == (2 * 18 + 2, 18 + 2)
    run_sampling(tmp_path, "--checkpoint", str(run_dir), "--seed", "1")  # another seed: other file names


def test_checkpoint_may_be_a_run_folder(run_dir, tmp_path):
    for given in (run_dir, run_dir / "checkpoints"):
        paths = run_sampling(tmp_path / given.name, "--checkpoint", str(given), "--class", "2")
        assert paths[0].parent == tmp_path / given.name / RUN / "checkpoint_latest"
    (run_dir.parent / "not_a_run").mkdir(exist_ok=True)
    message = one_line_exit(tmp_path, "--checkpoint", str(run_dir.parent / "not_a_run"))
    assert "has no checkpoints/checkpoint_latest.pth" in message
    assert not (tmp_path / "not_a_run").exists()


def test_cuda_missing_is_named_before_loading(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    common = ["--dest_folder", str(tmp_path), "--checkpoint", str(run_dir)]
    for device in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit, match=r"^error: CUDA is not available; use --device cpu$"):
            sampling.main(sampling.parse_args([*common, "--device", device]))
    with pytest.raises(SystemExit, match="unknown --device 'gpu'"):
        sampling.main(sampling.parse_args([*common, "--device", "gpu"]))
    assert not any(tmp_path.iterdir())


def test_web_file_outputs_are_named_after_folder_and_file(web_file, tmp_path):
    paths = run_sampling(tmp_path, "--weights", str(web_file))
    assert all(p.parent == tmp_path / "tiny" / "model_q8" for p in paths)


def corrupt_copies(web_file: Path, folder: Path) -> dict[str, Path]:
    """Broken variants of a good web file: truncated, random bytes, flipped data byte, invalid configs."""
    blob = web_file.read_bytes()
    files = {name: folder / f"{name}.safetensors" for name in ("truncated", "random", "flipped")}
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    files["random"].write_bytes(np.random.default_rng(0).bytes(5000))
    files["flipped"].write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    edits = {
        "latent_dim": edit_config(latent_dim=1000),
        "backbone": edit_config(backbone="resnet"),
        "heads": edit_config(heads=5),
        "missing_keys": edit_config(image_size=None, latent_dim=None),
        "version_1": set_metadata("version", "1"),
    }
    for name, edit in edits.items():
        files[name] = folder / f"{name}.safetensors"
        rewrite_header(web_file, files[name], edit)
    return files


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("truncated", "truncated"),
        ("random", "not a sphere-web file"),
        ("flipped", "is corrupt (data checksum mismatch); re-export it"),
        ("latent_dim", "cannot build"),
        ("backbone", "cannot build"),
        ("heads", "cannot build"),
        ("missing_keys", "config lacks"),
        ("version_1", "unsupported version '1'"),
    ],
)
def test_bad_web_files_are_one_line_errors(web_file, tmp_path, name, words):
    bad = corrupt_copies(web_file, tmp_path)[name]
    assert words in one_line_exit(tmp_path / "out", "--weights", str(bad))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--num_samples", "-3"],
        ["--steps", "0"],
        ["--batch_size", "0"],
        ["--cfg", "-1"],
        ["--cfg", "nan"],
        ["--cfg_mode", "everywhere"],
        ["--noise_angle", "95"],
        ["--recon_noise_angle", "90"],
        ["--seed", "-1"],
        ["--seed", str(2**40)],
    ],
)
def test_nonsense_flag_values_are_rejected_by_the_parser(capsys, flags):
    with pytest.raises(SystemExit) as caught:
        sampling.parse_args(flags)
    assert caught.value.code == 2 and f"argument {flags[0]}" in capsys.readouterr().err


def test_cfg_mode_defaults_to_combo():
    assert sampling.parse_args([]).cfg_mode == "combo"
    assert sampling.parse_args(["--cfg_mode", "combo", "--cfg", "0"]).cfg == 0.0


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(folder / "photo.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "other").mkdir()
    Image.new("RGB", (20, 20)).save(folder / "other" / "photo.png")
    (folder / "a_file").write_text("not a folder")
    return {"photo": folder / "photo.png", "broken": folder / "broken.png", "same_stem": folder / "other" / "photo.png"}


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (lambda f: ["--input", str(f["photo"].parent)], "is a folder"),
        (lambda f: ["--input", str(f["broken"])], "cannot read image"),
        (lambda f: ["--input", str(f["photo"].parent / "missing.png")], "cannot read image"),
        (lambda f: ["--input", str(f["photo"]), str(f["same_stem"])], "share a name"),
        (lambda f: ["--dest_folder", str(f["photo"].parent / "a_file" / "x")], "is a file"),
        (lambda f: ["--class", "7"], "--class must be in 0..2"),
        (lambda f: ["--class", "-1"], "--class must be in 0..2"),
    ],
)
def test_bad_inputs_are_one_line_errors(run_dir, tmp_path, flags, words):
    files = write_inputs(tmp_path / "inputs")
    checkpoint = run_dir / "checkpoints" / "checkpoint_latest.pth"
    message = one_line_exit(tmp_path / "out", "--checkpoint", str(checkpoint), *flags(files))
    assert words in message, message
    assert not (tmp_path / "out").exists()


def test_guidance_needs_a_conditional_model(web_file, tmp_path):
    assert "class-conditional" in one_line_exit(tmp_path, "--weights", str(web_file), "--cfg", "2")
