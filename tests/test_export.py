"""export_weights.py and batch_export.py end to end in tmp_path, from real training.py checkpoints and from
checkpoints written in the documented layout (model, ema, config, step, epoch)."""

from __future__ import annotations

import json

import pytest
import torch

import batch_export
import export_weights
import training
from engine.checkpoint import CheckpointError, atomic_save
from engine.webformat import MODES, load_model_from_web_weights, read_web_weights
from models import build_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step vit_tiny run on the bundled demo images (no perceptual loss: no VGG needed)."""
    results = tmp_path_factory.mktemp("results")
    training.main(
        training.parse_args(
            ["--dataset", "demo", "--model_type", "vit_tiny", "--image_size", "16", "--epochs", "1",
             "--steps", "2", "--batch_size", "4", "--recon_perc_weight", "0", "--con_perc_weight", "0",
             "--results_dir", str(results), "--eval-frequency", "100", "--fid-every", "0", "--device", "cpu",
             "--num_workers", "0"]
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
    argv = ["--checkpoint", str(checkpoint), "--output_dir", str(out_dir), "--mode", "fp32", "--mode", "q4"]
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
    argv = ["--results_dir", str(results), "--output_dir", str(out_dir), "--no-ema", "--no-index"]
    export_weights.main(export_weights.parse_args(argv))  # --checkpoint defaults to the latest run
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"model_{m}.safetensors" for m in MODES)
    assert not (tmp_path / "out" / "index.json").exists()
    exported = load_model_from_web_weights(out_dir / "model_fp32.safetensors")  # raw weights, BN folded
    assert torch.allclose(decoded(exported), decoded(model.eval()), atol=1e-5)


def test_export_weights_missing_checkpoint_is_a_clear_error(tmp_path):
    argv = ["--checkpoint", str(tmp_path / "nope.pth"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(CheckpointError, match="does not exist"):
        export_weights.main(export_weights.parse_args(argv))


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
    argv = [str(checkpoint), "--output_root", str(tmp_path / "models"), "--mode", "q4"]
    (entry,) = batch_export.main(batch_export.parse_args(argv))
    assert entry["name"] == "cifar10_20250101_000000" and entry["modes"]["q4"]["bytes"] > 0


def test_batch_export_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no runs"):
        batch_export.main(batch_export.parse_args(["--results_dir", str(tmp_path), "--output_root", str(tmp_path)]))


def test_sampling_py_reads_an_exported_file(trained_run, tmp_path):
    import sampling

    out = tmp_path / "web"
    export_weights.main(export_weights.parse_args(
        ["--checkpoint", str(trained_run / "checkpoints" / "checkpoint_latest.pth"), "--output_dir", str(out),
         "--mode", "q8"]))  # fmt: skip
    (weights,) = out.glob("*q8*.safetensors")
    common = ["--num_samples", "3", "--steps", "2", "--dest_folder", str(tmp_path / "samples"), "--device", "cpu"]
    (from_file,) = sampling.main(sampling.parse_args(["--weights", str(weights), *common]))
    assert from_file.is_file() and from_file.parent.name == out.name
