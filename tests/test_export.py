"""export_weights.py and batch_export.py end to end in tmp_path, from real training.py checkpoints and from
checkpoints written in the documented layout (model, ema, config, step, epoch)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

import batch_export
import export_weights
import training
from engine.checkpoint import atomic_save
from engine.webformat import MODES, load_model_from_web_weights, read_web_weights
from models import build_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step vit_tiny run on the bundled demo images (no perceptual loss: no VGG needed)."""
    results = tmp_path_factory.mktemp("results")
    training.main(
        training.parse_args(
            ["--preset", "paper", "--dataset", "demo", "--model_type", "vit_tiny", "--image_size", "16",
             "--epochs", "1",
             "--steps", "2", "--batch_size", "4", "--recon_perc_weight", "0", "--con_perc_weight", "0",
             "--results_dir", str(results), "--eval-frequency", "100", "--fid-every", "0", "--device", "cpu",
             "--num_workers", "0", "--no-curves"]
        )
    )  # fmt: skip
    (run_dir,) = results.iterdir()
    return run_dir


def write_run(results, name: str, dataset: str, model) -> None:
    """A run folder in the documented layout with a hand-made checkpoint (EMA = raw weights + 1)."""
    run_dir = results / name
    (run_dir / "checkpoints").mkdir(parents=True)
    config = {"dataset": dataset, "dataset_name": dataset, "model": model.config.to_dict()}
    (run_dir / "config.json").write_text(json.dumps(config))
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {"model": model.state_dict(), "ema": ema, "config": config, "step": 3, "epoch": 1}
    atomic_save(ckpt, run_dir / "checkpoints" / "checkpoint_latest.pth")


def decoded(model, seed: int = 0) -> torch.Tensor:
    latents = model.project(torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        return model.decode(latents)


def test_export_weights_main_matches_checkpoint(trained_run, tmp_path):
    checkpoint = trained_run / "checkpoints" / "checkpoint_latest.pth"
    out_dir = tmp_path / "models" / trained_run.name
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--output_dir",
        str(out_dir),
        "--mode",
        "fp32",
        "--mode",
        "q4",
        "--no-onnx",
    ]
    argv += ["--index_root", str(tmp_path / "models")]
    summaries = export_weights.main(export_weights.parse_args(argv))
    assert [s["mode"] for s in summaries] == ["fp32", "q4"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["model_fp32.safetensors", "model_q4.safetensors"]

    ckpt = torch.load(checkpoint, weights_only=True)
    _, state, metadata = read_web_weights(out_dir / "model_fp32.safetensors")
    assert all(torch.equal(state[k], v.float()) for k, v in ckpt["ema"].items())  # EMA weights by default
    assert json.loads(metadata["source"])["ema"] is True
    reference = build_model("vit_tiny", image_size=16)
    reference.load_state_dict(ckpt["ema"])
    exported = load_model_from_web_weights(out_dir / "model_fp32.safetensors")
    assert torch.allclose(decoded(exported), decoded(reference.eval()), atol=1e-6)

    index = json.loads((tmp_path / "models" / "index.json").read_text())
    assert [entry["name"] for entry in index] == [trained_run.name]
    assert set(index[0]["modes"]) == {"fp32", "q4"}


def test_export_weights_no_ema_and_default_modes(tmp_path):
    results = tmp_path / "results"
    model = build_model("convnet_tiny", image_size=16, norm="batch")
    write_run(results, "faces_20250101_000000", "faces", model)
    out_dir = tmp_path / "out" / "faces"
    argv = ["--results_dir", str(results), "--output_dir", str(out_dir), "--no-ema", "--no-onnx"]
    export_weights.main(export_weights.parse_args(argv))  # --checkpoint defaults to the latest run
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"model_{m}.safetensors" for m in MODES)
    assert not (tmp_path / "out" / "index.json").exists()
    exported = load_model_from_web_weights(out_dir / "model_fp32.safetensors")  # raw weights, BN folded
    assert torch.allclose(decoded(exported), decoded(model.eval()), atol=1e-5)


def test_export_weights_missing_checkpoint_is_a_clear_error(tmp_path):
    argv = ["--checkpoint", str(tmp_path / "nope.pth"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="error: checkpoint .* does not exist"):
        export_weights.main(export_weights.parse_args(argv))
    assert not (tmp_path / "out").exists()  # nothing created for a failed export


def test_export_weights_never_writes_outside_output_dir(tmp_path):
    """The bug: the parent's index.json (here the user's own file) was replaced by every export."""
    results = tmp_path / "results"
    write_run(results, "faces_20250101_000000", "faces", build_model("convnet_tiny", image_size=16))
    parent = tmp_path / "site"
    parent.mkdir()
    (parent / "index.json").write_text('{"mine": true}\n')
    argv = ["--results_dir", str(results), "--output_dir", str(parent / "faces"), "--mode", "q8", "--no-onnx"]
    export_weights.main(export_weights.parse_args(argv))
    assert (parent / "index.json").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in parent.iterdir()) == ["faces", "index.json"]
    with pytest.raises(SystemExit, match="--index_root .* must be the folder that holds --output_dir"):
        export_weights.main(export_weights.parse_args([*argv, "--index_root", str(tmp_path)]))
    assert (parent / "index.json").read_text() == '{"mine": true}\n'


def test_export_weights_takes_a_run_folder(tmp_path):
    results = tmp_path / "results"
    model = build_model("convnet_tiny", image_size=16)
    write_run(results, "faces_20250101_000000", "faces", model)
    for given in (results / "faces_20250101_000000", results / "faces_20250101_000000" / "checkpoints"):
        out_dir = tmp_path / "out" / given.name
        argv = ["--checkpoint", str(given), "--output_dir", str(out_dir), "--mode", "fp32", "--no-ema", "--no-onnx"]
        (summary,) = export_weights.main(export_weights.parse_args(argv))
        exported = load_model_from_web_weights(summary["path"])
        assert torch.allclose(decoded(exported), decoded(model.eval()), atol=1e-5)
    (results / "empty_run").mkdir()
    argv = ["--checkpoint", str(results / "empty_run"), "--output_dir", str(tmp_path / "never")]
    with pytest.raises(SystemExit, match="has no checkpoints/checkpoint_latest.pth"):
        export_weights.main(export_weights.parse_args(argv))


def test_exported_files_are_readable_by_others(tmp_path):
    """A static web server runs as another user: files must not keep mkstemp's 0600 (fixed in atomic_write)."""
    results = tmp_path / "results"
    write_run(results, "faces_20250101_000000", "faces", build_model("convnet_tiny", image_size=16))
    argv = [
        "--results_dir",
        str(results),
        "--output_dir",
        str(tmp_path / "site" / "faces"),
        "--mode",
        "q4",
        "--no-onnx",
    ]
    (summary,) = export_weights.main(export_weights.parse_args([*argv, "--index_root", str(tmp_path / "site")]))
    for path in (summary["path"], tmp_path / "site" / "index.json"):
        mode = stat.S_IMODE(Path(path).stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path} has mode {oct(mode)}"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--group_size", "0"], "argument --group_size"),
        (["--group_size", "100000"], "argument --group_size"),
        (["--mode", "q3"], "argument --mode"),
    ],
)
def test_export_weights_rejects_nonsense_flags(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit):
        export_weights.parse_args(["--output_dir", str(tmp_path), *flags])
    assert words in capsys.readouterr().err


def test_export_weights_output_dir_that_is_a_file(tmp_path):
    results = tmp_path / "results"
    write_run(results, "faces_20250101_000000", "faces", build_model("convnet_tiny", image_size=16))
    (tmp_path / "taken").write_text("a file")
    argv = ["--results_dir", str(results), "--output_dir", str(tmp_path / "taken" / "faces")]
    with pytest.raises(SystemExit, match="cannot create --output_dir .* is a file") as caught:
        export_weights.main(export_weights.parse_args(argv))
    assert "\n" not in str(caught.value)


def test_batch_export_latest_run_per_dataset(trained_run, tmp_path):
    results = trained_run.parent
    write_run(results, "faces_20250101_000000", "faces", build_model("convnet_tiny", image_size=16))
    write_run(results, "faces_20240101_000000", "faces", build_model("convnet_tiny", image_size=16))  # older
    output_root = tmp_path / "models"
    argv = [
        "--results_dir",
        str(results),
        "--output_root",
        str(output_root),
        "--mode",
        "fp16",
        "--mode",
        "q8",
        "--no-onnx",
    ]
    entries = batch_export.main(batch_export.parse_args(argv))

    assert sorted(e["name"] for e in entries) == sorted([trained_run.name, "faces_20250101_000000"])
    assert json.loads((output_root / "index.json").read_text()) == entries
    faces = next(e for e in entries if e["dataset"] == "faces")
    assert faces["backbone"] == "convnet" and faces["image_size"] == 16 and faces["num_classes"] == 0
    assert faces["latent_dim"] == 512 and faces["latent_shape"] == [32, 4, 4]
    assert faces["param_count"] == sum(p.numel() for p in build_model("convnet_tiny", image_size=16).parameters())
    for mode, info in faces["modes"].items():
        assert info["file"] == f"faces_20250101_000000/model_{mode}.safetensors"
        assert (output_root / info["file"]).stat().st_size == info["bytes"]
    demo = next(e for e in entries if e["dataset"] == "demo")
    assert demo["backbone"] == "vit" and demo["latent_shape"] == [64, 8] and set(demo["modes"]) == {"fp16", "q8"}


def test_batch_export_explicit_checkpoint_file(tmp_path):
    results = tmp_path / "results"
    write_run(results, "cifar10_20250101_000000", "cifar10", build_model("vit_tiny", image_size=16))
    checkpoint = results / "cifar10_20250101_000000" / "checkpoints" / "checkpoint_latest.pth"
    argv = [str(checkpoint), "--output_root", str(tmp_path / "models"), "--mode", "q4", "--no-onnx"]
    (entry,) = batch_export.main(batch_export.parse_args(argv))
    assert entry["name"] == "cifar10_20250101_000000" and entry["modes"]["q4"]["bytes"] > 0


def test_batch_export_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no runs") as caught:
        batch_export.main(batch_export.parse_args(["--results_dir", str(tmp_path), "--output_root", str(tmp_path)]))
    message = str(caught.value)
    assert "--checkpoint" not in message and "pass run folders or checkpoint files as arguments" in message


def test_batch_export_missing_run_is_a_clear_error(tmp_path):
    argv = [str(tmp_path / "no_such_run.pth"), "--output_root", str(tmp_path / "models")]
    with pytest.raises(SystemExit, match="does not exist"):
        batch_export.main(batch_export.parse_args(argv))
    assert not (tmp_path / "models").exists()


def test_sampling_py_reads_an_exported_file(trained_run, tmp_path):
    import sampling

    out = tmp_path / "web"
    export_weights.main(export_weights.parse_args(
        ["--checkpoint", str(trained_run / "checkpoints" / "checkpoint_latest.pth"), "--output_dir", str(out),
         "--mode", "q8", "--no-onnx"]))  # fmt: skip
    (weights,) = out.glob("*q8*.safetensors")
    common = ["--num_samples", "3", "--steps", "2", "--dest_folder", str(tmp_path / "samples"), "--device", "cpu"]
    (from_file,) = sampling.main(sampling.parse_args(["--weights", str(weights), *common]))
    assert from_file.is_file() and from_file.parent == tmp_path / "samples" / out.name / "model_q8"
