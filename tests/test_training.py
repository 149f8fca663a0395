"""training.py and sampling.py end to end: run folder, checkpoints, exact resume, signals, DDP, bad inputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sampling
import training
from engine.checkpoint import load_checkpoint
from tests.conftest import CIFAR_SUBSET, needs_cifar_subset

REPO = Path(__file__).resolve().parents[1]


def tiny_flags(results: Path, *extra: str, lpips: bool = False) -> list[str]:
    """Smallest real run on the plain flag defaults (the paper preset, whatever the machine); LPIPS off unless asked
    (it dominates CPU time and is covered by the first test), ConvNeXt-S off (no weights in the tests), no curves
    picture (matplotlib costs more than such a run's training; test_plot.py draws it)."""
    perceptual = [] if lpips else ["--recon_perc_weight", "0", "--con_perc_weight", "0"]
    return [
        *perceptual,
        "--no-curves",
        "--preset",
        "paper",
        "--convnext_weight",
        "0",
        "--dataset",
        "demo",
        "--image_size",
        "16",
        "--model_type",
        "vit_tiny",
        "--batch_size",
        "8",
        "--epochs",
        "2",
        "--steps",
        "3",
        "--num_workers",
        "0",
        "--results_dir",
        str(results),
        "--eval_samples",
        "4",
        "--log_every",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


def run_training(*flags: str) -> Path:
    return training.main(training.parse_args(list(flags)))


def test_training_writes_run_folder(tmp_path):
    run_dir = run_training(*tiny_flags(tmp_path / "results", "--checkpoint-frequency", "1", lpips=True))
    assert run_dir.parent == tmp_path / "results" and run_dir.name.startswith("demo_")
    for name in [
        "config.json",
        "log.txt",
        "metrics.jsonl",
        "checkpoints/checkpoint_latest.pth",
        "checkpoints/checkpoint_epoch_1.pth",
        "checkpoints/checkpoint_epoch_2.pth",
        "images/epoch_0002_recon.png",
        "images/epoch_0002_samples_4step.png",
    ]:
        assert (run_dir / name).is_file(), name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert [r["epoch"] for r in records] == [1, 1, 1, 2, 2, 2]  # 1-based, like the log and epoch_0001_*.png
    assert [(r["epoch"], r["recon_split"]) for r in lines if "recon_psnr" in r] == [(2, "all")]  # the last render
    assert {
        "loss",
        "recon_dist",
        "recon_perc",
        "con_dist",
        "con_perc",
        "latent",
        "lr",
        "grad_norm",
        "img_per_s",
        "peak_mem_mb",
    } <= set(records[0])
    ckpt = torch.load(run_dir / "checkpoints/checkpoint_latest.pth", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "grad_scaler", "step", "epoch", "rng", "config"} <= set(ckpt)
    assert ckpt["step"] == 6 and ckpt["epoch"] == 2
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in ckpt["model"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["image_size"] == 16 and config["model"]["latent_dim"] == 512  # inferred
    assert config["model"]["noise_angle"] == 80.0
    assert config["train"]["distance"] == "smooth_l1" and config["train"]["convnext_weight"] == 0  # paper defaults
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temp files


def state_of(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")


def test_stop_and_resume_equals_straight_training(tmp_path):
    straight = run_training(*tiny_flags(tmp_path / "a"))
    first = run_training(*tiny_flags(tmp_path / "b", "--stop_after_steps", "4"))  # stops mid epoch 2
    assert state_of(first)["step"] == 4 and state_of(first)["step_in_epoch"] == 1
    resumed = run_training(*tiny_flags(tmp_path / "b"))
    assert resumed == first  # same run folder continued
    a, b = state_of(straight), state_of(resumed)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    exp_avg = lambda s: [v["exp_avg"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))
    assert a["scheduler"] == b["scheduler"]


def test_resume_keeps_saved_flags_and_new_architecture_starts_new_run(tmp_path):
    results = tmp_path / "results"
    first = run_training(*tiny_flags(results, "--epochs", "1", "--lr", "3e-4"))
    again = run_training(*tiny_flags(results, "--epochs", "2"))  # --lr not typed: keep 3e-4
    assert again == first
    config = json.loads((first / "config.json").read_text())
    assert config["train"]["lr"] == 3e-4 and config["train"]["epochs"] == 2
    assert state_of(first)["epoch"] == 2
    other = run_training(*[f if f != "vit_tiny" else "convnet_tiny" for f in tiny_flags(results, "--epochs", "1")])
    assert other != first and state_of(other)["config"]["model"]["backbone"] == "convnet"
    fresh = run_training(*tiny_flags(results, "--epochs", "1", "--no-resume"))
    assert fresh not in (first, other)


def test_sigterm_saves_checkpoint_and_exits(tmp_path, monkeypatch):
    from engine.trainer import Trainer

    original, calls = Trainer.train_step, []

    def step_then_signal(self, batch):
        logs = original(self, batch)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    run_dir = run_training(*tiny_flags(tmp_path / "results"))
    assert len(calls) == 2
    assert state_of(run_dir)["step"] == 2


def test_conditional_training_and_guided_sampling(tmp_path):
    run_dir = run_training(
        *tiny_flags(tmp_path / "results", "--conditional", "--model_type", "convnet_tiny", "--epochs", "1")
    )
    assert state_of(run_dir)["config"]["model"]["num_classes"] == 10
    ckpt = str(run_dir / "checkpoints" / "checkpoint_latest.pth")
    paths = sampling.main(
        sampling.parse_args(
            [
                "--checkpoint",
                ckpt,
                "--num_samples",
                "4",
                "--steps",
                "2",
                "--cfg",
                "2.0",
                "--class",
                "3",
                "--dest_folder",
                str(tmp_path / "samples"),
                "--device",
                "cpu",
            ]
        )
    )
    assert paths[0].name == "samples_2step_seed0.png" and paths[0].is_file()


def test_sampling_grids_inputs_and_seeds(tmp_path):
    results = tmp_path / "results"
    run_dir = run_training(*tiny_flags(results, "--epochs", "1"))
    out = tmp_path / "samples"
    common = ["--results_dir", str(results), "--dest_folder", str(out), "--device", "cpu"]
    paths = sampling.main(sampling.parse_args(common + ["--num_samples", "6", "--batch_size", "4"]))
    assert [p.name for p in paths] == [f"samples_{s}step_seed0.png" for s in (1, 2, 4)]
    assert all(p.parent == out / run_dir.name / "checkpoint_latest" for p in paths)
    grid_a = Image.open(paths[2]).copy()
    paths_b = sampling.main(sampling.parse_args(common + ["--num_samples", "6", "--batch_size", "5", "--overwrite"]))
    assert np.array_equal(np.asarray(Image.open(paths_b[2])), np.asarray(grid_a))  # batch size does not matter
    photo = tmp_path / "wide.png"
    Image.new("RGB", (48, 24), (200, 30, 30)).save(photo)
    strip = sampling.main(sampling.parse_args(common + ["--input", str(photo)]))[0]
    assert strip.name == "recon_wide.png" and Image.open(strip).size == (
        2 + 5 * 18,
        2 + 18,
    )  # input + 4 steps


def test_ddp_two_gloo_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "training.py"),
        *tiny_flags(tmp_path / "results", "--epochs", "1"),
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    ckpt = state_of(run_dir)
    assert ckpt["step"] == 3 and ckpt["config"]["train"]["batch_size"] == 8
    assert "global batch 8" in (run_dir / "log.txt").read_text()


def test_bad_inputs_give_clear_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no (readable )?image"):
        run_training(*tiny_flags(tmp_path / "r", "--dataset", str(empty)))
    with pytest.raises(SystemExit, match="--conditional needs class labels"):
        Image.new("RGB", (16, 16)).save(empty / "one.png")
        run_training(*tiny_flags(tmp_path / "r", "--dataset", str(empty), "--conditional"))
    with pytest.raises(SystemExit):  # argparse rejects nonsense values
        training.parse_args(["--batch_size", "0"])
    with pytest.raises(SystemExit):
        training.parse_args(["--model_type", "resnet"])
    args = lambda ckpt: sampling.parse_args(["--checkpoint", str(ckpt), "--dest_folder", str(tmp_path)])  # noqa
    with pytest.raises(SystemExit, match="does not exist"):
        sampling.main(args(tmp_path / "missing.pth"))
    with pytest.raises(SystemExit, match="no checkpoints under"):
        sampling.main(sampling.parse_args(["--results_dir", str(tmp_path / "nothing")]))
    run_dir = run_training(*tiny_flags(tmp_path / "results", "--epochs", "1"))
    good = run_dir / "checkpoints" / "checkpoint_latest.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(SystemExit, match="unreadable or truncated"):
        sampling.main(args(truncated))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(SystemExit, match="not a training.py checkpoint"):
        sampling.main(args(foreign))
    other = load_checkpoint(good)
    other["config"]["model"]["width"] = 128  # weights of one model, config of another
    mismatched = tmp_path / "mismatched.pth"
    torch.save(other, mismatched)
    with pytest.raises(SystemExit, match="does not match this model"):
        sampling.main(args(mismatched))
    with pytest.raises(SystemExit, match="need a class-conditional model"):
        sampling.main(sampling.parse_args(["--checkpoint", str(good), "--cfg", "2", "--dest_folder", str(tmp_path)]))


@needs_cifar_subset
def test_quick_fid_during_training(tmp_path):
    """--fid-every logs a finite FID to metrics.jsonl; reference statistics are cached under results_dir."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(np.load(CIFAR_SUBSET)["images"][:12]):
        Image.fromarray(image).save(folder / f"{index}.png")
    flags = tiny_flags(tmp_path / "results", "--dataset", str(folder), "--epochs", "1", "--batch_size", "4")
    run_dir = run_training(*flags, "--fid-every", "1", "--fid-samples", "4", "--fid-steps", "1", "2")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fids = {key: r[key] for r in records for key in r if key.startswith("fid_") and key.endswith("step")}
    assert set(fids) == {"fid_1step", "fid_2step"} and all(value > 0 for value in fids.values())
    assert list((tmp_path / "results" / "fid_stats").glob("*.npz"))


def test_resumable_batch_sampler_shards_reshuffles_and_resumes():
    from engine.trainer import ResumableBatchSampler

    def batches(rank, world, epoch=0, start=0, size=1000, steps=5):
        sampler = ResumableBatchSampler(size, global_batch=100, steps_per_epoch=steps, seed=3, rank=rank, world=world)
        sampler.set_epoch(epoch, start)
        return list(sampler)

    whole = batches(0, 1)
    assert len(whole) == 5 and all(len(b) == 100 for b in whole)
    assert len({i for b in whole for i in b}) == 500  # no repeats inside an epoch
    assert batches(0, 1) == whole and batches(0, 1, epoch=1) != whole
    halves = [batches(r, 2) for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*halves)):
        assert len(a) == len(b) == 50 and not set(a) & set(b) and sorted(a + b) == sorted(whole[step])
    assert batches(0, 1, start=3) == whole[3:]  # mid-epoch resume sees exactly the remaining batches
    tiny = batches(0, 1, size=7, steps=2)  # fewer images than one batch: permutations are chained
    assert all(len(b) == 100 and set(b) <= set(range(7)) for b in tiny)


def test_no_flags_without_a_gpu_is_the_quickstart_and_typed_flags_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = training.parse_args([])
    assert args.preset == "quickstart"
    assert (args.dataset, args.model_type, args.image_size, args.batch_size) == ("fashion", "convnet_tiny", 16, 32)
    assert args.recon_perc_weight == args.con_perc_weight == args.convnext_weight == 0  # nothing to download
    typed = training.parse_args(["--lr", "0.01", "--dataset", "demo"])
    assert (typed.lr, typed.dataset, typed.model_type) == (0.01, "demo", "convnet_tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    paper = training.parse_args([])
    assert paper.preset == "paper" and training.parse_args(["--device", "cpu"]).preset == "quickstart"
    assert (paper.dataset, paper.model_type, paper.batch_size, paper.lr, paper.epochs) == (
        "cifar10",
        "vit",
        256,
        1e-4,
        5000,
    )
    assert (paper.distance, paper.convnext_weight, paper.recon_perc_weight) == ("smooth_l1", 0.1, 1.0)


def test_quickstart_reconstructs_held_out_images(tmp_path):
    """The renders reconstruct the test split where the dataset has one, and log their PSNR."""
    from engine.data import build_dataset

    flags = ["--preset", "quickstart", "--epochs", "1", "--steps", "4", "--eval_samples", "4"]
    run_dir = run_training(*flags, "--results_dir", str(tmp_path / "results"), "--device", "cpu")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (psnr,) = [r for r in records if "recon_psnr" in r]
    assert psnr["recon_split"] == "test" and psnr["epoch"] == 1 and 0 < psnr["recon_psnr"] < 100
    grid = np.asarray(Image.open(run_dir / "images" / "epoch_0001_recon.png").convert("L"), dtype=np.float32)
    held_out = build_dataset("fashion", 16, train=False, hflip=False)[0][0][0].numpy()  # (16, 16) in [-1, 1]
    training_image = build_dataset("fashion", 16, train=True, hflip=False)[0][0][0].numpy()
    first = grid[2:18, 2:18] / 127.5 - 1  # save_grid pads by 2 px
    assert np.abs(first - held_out).max() < 0.02 and np.abs(first - training_image).max() > 0.1
