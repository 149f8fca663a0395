"""psvae runs end to end: the data flags saved with a run and read back by every script, renders of images and
1-D signals, the globe at the end of training, the epoch's terms in log.txt, evaluate.py on images and signals,
resume exactness and kill-safety, and the training benchmark for any family."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import training
from engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from engine.data import build_dataset

REPO = Path(__file__).resolve().parents[1]


def psvae_flags(results: Path, dataset: str, *extra: str) -> list[str]:
    """A few steps of psvae_tiny (16 px for images), every epoch rendered, one log line per step; no preset (the
    quickstart's dataset and size would apply to flags left out)."""
    size = ["--image_size", "16"] if dataset in ("demo", "fashion") else []
    return [
        *("--preset", "none", "--model_type", "psvae_tiny", "--dataset", dataset, *size),
        *("--batch_size", "8", "--epochs", "2"),
        *("--steps", "3", "--num_workers", "0", "--results_dir", str(results), "--eval_samples", "4"),
        *("--log_every", "1", "--eval-frequency", "1", "--device", "cpu", "--lr", "1e-3", "--beta", "0.01"),
        *("--beta_schedule", "linear", "--beta_warmup_steps", "4", "--no-curves", *extra),  # --curves: checked below
    ]


def train(*flags: str) -> Path:
    return training.main(training.parse_args(list(flags)))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    return train(*psvae_flags(tmp_path_factory.mktemp("results"), "demo", "--curves"))


@pytest.fixture(scope="module")
def sines_run(tmp_path_factory) -> Path:
    return train(*psvae_flags(tmp_path_factory.mktemp("results"), "sines"))


def image_names(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "images").iterdir())


# ---------------------------------------------------------------------------------------------------------
# Renders, the globe and the log


def test_the_last_epoch_adds_the_globe_atlas_and_latent_maps(demo_run):
    per_epoch = [f"epoch_000{e}_{kind}.png" for e in (1, 2) for kind in ("recon", "samples_1step")]
    globe = [f"epoch_0002_{kind}.png" for kind in ("atlas", "latent_map", "latent_thumbnails")]
    assert image_names(demo_run) == sorted(["curves.png", *per_epoch, *globe])
    log = (demo_run / "log.txt").read_text()
    assert "globe atlas and latent maps (EMA): " in log


def test_each_epochs_terms_reach_the_log_and_every_steps_reach_metrics(demo_run):
    lines = [line for line in (demo_run / "log.txt").read_text().splitlines() if " done (step " in line]
    assert len(lines) == 2 and "epoch 1/2 done (step 3): loss " in lines[0]
    for term in ("recon", "kl", "kappa_mean", "kappa_max", "beta", "grad_norm"):
        assert f"| {term} " in lines[1], lines[1]
    records = [json.loads(line) for line in (demo_run / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    assert [record["beta"] for record in steps] == pytest.approx([0, 0.0025, 0.005, 0.0075, 0.01, 0.01])
    kappa_max = max(record["kappa_max"] for record in steps if record["epoch"] == 2)
    assert f"| kappa_max {kappa_max:.4g} |" in lines[1]  # the epoch's largest, not its mean


def test_a_latent_off_s2_gets_no_atlas(tmp_path):
    run_dir = train(*psvae_flags(tmp_path, "demo", "--latent_dim", "4", "--epochs", "1", "--steps", "1", "--curves"))
    assert image_names(run_dir) == ["curves.png", "epoch_0001_recon.png", "epoch_0001_samples_1step.png"]


def test_signal_runs_draw_curves_and_their_globe(sines_run):
    assert "epoch_0002_atlas.png" in image_names(sines_run) and "epoch_0002_latent_map.png" in image_names(sines_run)
    config = json.loads((sines_run / "config.json").read_text())
    assert config["model"]["backbone"] == "conv1d" and config["train"]["signal_norm"] == "absmax"


def test_fid_during_training_on_signals_is_refused(tmp_path):
    with pytest.raises(SystemExit) as caught:
        train(*psvae_flags(tmp_path / "r", "sines", "--fid-every", "1"))
    assert str(caught.value.code) == (
        "error: --fid-every measures images (Inception), but this model encodes 1-D signals; drop it"
    )
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------------
# The data flags


def write_spectra(path: Path) -> np.ndarray:
    """Parquet spectra (2 channels x 32 values per row) beside a second list column, so the data column cannot be
    guessed, an error column to ignore and string labels in a column of another name."""
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    flux = (rng.normal(5, 2, (40, 2, 32)) + np.sin(np.arange(32) / 3)).astype(np.float32)
    columns = {
        "flux": pa.array(flux.reshape(40, -1).tolist(), pa.list_(pa.float32())),
        "flux_err": pa.array(np.full((40, 64), 0.1).tolist(), pa.list_(pa.float32())),
        "mask": pa.array(np.ones((40, 64)).tolist()),
        "kind": pa.array(["star", "qso"] * 20),
        "split": pa.array([0] * 32 + [1] * 8),
    }
    parquet.write_table(pa.table(columns), path)
    return flux


DATA_FLAGS = {
    "data_column": "flux",
    "error_column": "none",
    "label_column": "kind",
    "data_shape": "2,32",
    "data_kind": "signal",
    "signal_norm": "standard",
}


def test_data_flags_are_saved_and_every_script_reads_the_data_alike(tmp_path, inception_weights_file):
    flux = write_spectra(tmp_path / "spectra.parquet")
    flags = [item for key, value in DATA_FLAGS.items() for item in (f"--{key}", value)]
    run_dir = train(*psvae_flags(tmp_path / "r", str(tmp_path / "spectra.parquet"), *flags, "--epochs", "1"))
    config = json.loads((run_dir / "config.json").read_text())
    assert {key: config["train"][key] for key in DATA_FLAGS} == DATA_FLAGS
    assert (config["model"]["in_channels"], config["model"]["signal_length"]) == (2, 32)
    argv = ["--checkpoint", str(run_dir), "--device", "cpu", "--num_recon", "8", "--no-generation"]
    records = evaluate.main(evaluate.parse_args([*argv, "--reconstruction"]))  # auto columns would find 2 lists
    data_range = next(r["data_range"] for r in records)
    assert data_range == pytest.approx(float(flux[32:].max() - flux[32:].min()), rel=1e-5)  # held out, raw units


def test_a_resumed_run_reads_its_data_with_its_saved_data_flags(tmp_path):
    straight = train(*psvae_flags(tmp_path / "a", "sines", "--signal_norm", "standard"))
    first = train(*psvae_flags(tmp_path / "b", "sines", "--signal_norm", "standard", "--stop_after_steps", "4"))
    resumed = train(*psvae_flags(tmp_path / "b", "sines"))  # --signal_norm not typed: the run's own
    assert resumed == first
    assert json.loads((resumed / "config.json").read_text())["train"]["signal_norm"] == "standard"
    assert_same_training(straight, resumed)


# ---------------------------------------------------------------------------------------------------------
# Resume exactness and kill-safety


def state_of(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")


def assert_same_training(straight: Path, resumed: Path) -> None:
    a, b = state_of(straight), state_of(resumed)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    exp_avg = lambda s: [v["exp_avg"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))
    assert a["scheduler"] == b["scheduler"]


@pytest.mark.parametrize("dataset", ["demo", "sines"])
def test_stop_and_resume_equals_straight_training(tmp_path, dataset):
    straight = train(*psvae_flags(tmp_path / "a", dataset))
    first = train(*psvae_flags(tmp_path / "b", dataset, "--stop_after_steps", "4"))  # mid epoch 2
    assert state_of(first)["step"] == 4 and state_of(first)["step_in_epoch"] == 1
    resumed = train(*psvae_flags(tmp_path / "b", dataset))
    assert resumed == first
    assert_same_training(straight, resumed)
    metrics = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4, 5, 6]  # no step logged twice


def test_sigterm_saves_a_psvae_checkpoint_and_exits(tmp_path, monkeypatch):
    from engine.trainer import Trainer

    original, calls = Trainer.train_step, []

    def step_then_signal(self, batch):
        logs = original(self, batch)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    run_dir = train(*psvae_flags(tmp_path, "sines"))
    assert len(calls) == 2 and state_of(run_dir)["step"] == 2
    assert not list(run_dir.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------------------
# evaluate.py


def test_evaluate_measures_psvae_samples_at_its_default_steps_and_reconstructions(demo_run, inception_weights_file):
    argv = ["--checkpoint", str(demo_run), "--device", "cpu", "--inception_weights", inception_weights_file]
    # 4 of each (Inception ~0.25 s an image on one core): more than the 3 neighbours precision/recall need
    argv += ["--num_samples", "4", "--num_recon", "4", "--num_ref", "4", "--batch_size", "4", "--reconstruction"]
    argv += ["--ref_cache_dir", str(demo_run.parent / "fid_stats")]
    records = evaluate.main(evaluate.parse_args(argv))
    measured = {(r["evaluation"], r["steps"], r["metric"]) for r in records if r["value"] is not None}
    assert {("generation", 1, "fid"), ("reconstruction", 1, "psnr"), ("reconstruction", 1, "rfid")} <= measured
    assert {r["steps"] for r in records} == {1}  # PSVAE.default_eval_steps, not the sphere's 1 2 4


def test_evaluate_measures_signal_reconstructions_in_the_datas_units(sines_run, capsys):
    argv = ["--checkpoint", str(sines_run), "--device", "cpu", "--num_recon", "10", "--steps", "1", "2"]
    records = evaluate.main(evaluate.parse_args(argv))
    assert "note: generation metrics (FID, KID, IS, precision/recall) measure images" in capsys.readouterr().out
    values = {(r["steps"], r["metric"]): r["value"] for r in records}
    assert set(values) == {(1, "mse"), (1, "psnr"), (2, "mse"), (2, "psnr")}
    model, _ = load_model_from_checkpoint(sines_run / "checkpoints" / "checkpoint_latest.pth")
    dataset = build_dataset("sines", train=False)
    signals = torch.stack([dataset[i][0] for i in range(10)])
    raw, recon = (dataset.normalisation.invert(s).double() for s in (signals, model.reconstruct(signals)))
    mse = (recon - raw).pow(2).flatten(1).mean(1)
    assert values[1, "mse"] == pytest.approx(mse.mean().item(), rel=1e-5)
    peak = raw.max() - raw.min()
    assert values[1, "psnr"] == pytest.approx((10 * torch.log10(peak**2 / mse)).mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The training benchmark


def benchmark(name: str):
    """A script of benchmarks/ as a module."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_the_training_benchmark_runs_models_of_every_family(capsys):
    bench_train = benchmark("bench_train")
    models = ["psvae_tiny", "convnet_tiny", "vqvae_tiny"]
    argv = ["--models", *models, "--image_size", "16", "--batch_size", "2", "--iters", "1"]
    rows = bench_train.main(bench_train.parse_args([*argv, "--warmup", "0", "--no-perceptual", "--device", "cpu"]))
    assert [row["model"] for row in rows] == models
    assert all(row["train_img_s"] > 0 for row in rows)
    assert rows[0]["sample_img_s"] > 0 and rows[1]["sample_img_s"] > 0
    assert rows[2]["sample_img_s"] is None  # a tokenizer cannot sample: its row says n/a, not 0
    out = capsys.readouterr().out
    assert "psvae_tiny" in out and "n/a (cannot sample)" in out


def test_the_export_benchmark_measures_psvae_files():
    bench_export = benchmark("bench_export")
    argv = ["--model", "psvae_tiny", "--image_size", "16", "--num_images", "4"]
    rows = bench_export.main(bench_export.parse_args(argv))
    assert [row["mode"] for row in rows] == ["fp32", "fp16", "q8", "q4"]
    assert rows[0]["psnr_decode"] == float("inf") and 20 < rows[2]["psnr_decode"] < float("inf")
