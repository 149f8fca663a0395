"""ldm runs end to end: a tiny KL autoencoder and tiny UNets (latent and pixel) train on the demo data with falling
loss, the stage-2 checkpoint holds the frozen autoencoder and its hash and refuses another one, the timestep-loss
chart is drawn, a pixel model renders samples without reconstructions, sampling.py and evaluate.py run on the tiny
runs, and flags for the wrong kind of ldm model are one-line errors."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open

import evaluate
import sampling
import training
from engine import latent_cache
from engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from engine.data import build_dataset
from engine.family_ldm import load_autoencoder, state_sha256
from engine.latent_cache import CACHE_FILE, write_cache

AE = ("--model_type", "ldm_ae_tiny", "--ae_width", "16", "--perceptual_weight", "0", "--lr", "2e-2")
AE_GAN = ("--disc_layers", "2", "--disc_width", "8", "--disc_start", "20")
LATENT = ("--model_type", "ldm_tiny", "--unet_width", "32", "--unet_attn_levels", "--lr", "3e-2")
PIXEL = ("--model_type", "ddpm_tiny", "--unet_width", "16", "--unet_mults", "1", "2", "--unet_attn_levels")
PIXEL += ("--lr", "3e-2")


def flags(results: Path, *extra: str, epochs: int = 2, steps: int = 3, batch: int = 16) -> list[str]:
    """An ldm run on the demo data at 16 px; no preset."""
    return [
        *("--preset", "none", "--dataset", "demo", "--image_size", "16", "--num_workers", "0", "--device", "cpu"),
        *("--batch_size", str(batch), "--epochs", str(epochs), "--steps", str(steps), "--warmup_steps", "10"),
        *(
            "--results_dir",
            str(results),
            "--eval_samples",
            "4",
            "--log_every",
            "1",
            "--eval-frequency",
            str(epochs),
            "--no-curves",
            *extra,
        ),
    ]


def train(*argv: str) -> Path:
    return training.main(training.parse_args(list(argv)))


def records_of(run_dir: Path, key: str) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record[key] for record in map(json.loads, lines) if key in record]


def head_and_tail(values: list[float], count: int = 10) -> tuple[float, float]:
    return sum(values[:count]) / count, sum(values[-count:]) / count


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """The tiny autoencoder, 2 x 30 steps with the GAN on from step 20 (~10 s on 2 idle cores)."""
    return train(*flags(tmp_path_factory.mktemp("ae"), *AE, *AE_GAN, steps=30))


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ae_run) -> Path:
    """ldm_tiny on the autoencoder's 4x4x4 latents."""
    return train(*flags(tmp_path_factory.mktemp("latent"), *LATENT, "--autoencoder", str(ae_run), steps=60))


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory) -> Path:
    """ddpm_tiny, narrow, on 16 px pixels."""
    return train(*flags(tmp_path_factory.mktemp("pixel"), *PIXEL, steps=60))


def test_the_tiny_autoencoder_learns_and_runs_its_gan(ae_run):
    first, last = head_and_tail(records_of(ae_run, "rec"))
    assert last < 0.8 * first, (first, last)
    assert len(records_of(ae_run, "d_loss")) == 40 and all(k > 0 for k in records_of(ae_run, "kl"))
    assert (ae_run / "images" / "epoch_0002_recon.png").is_file()
    verdict = Image.open(ae_run / "images" / "epoch_0002_verdict.png")
    assert verdict.size == (2 + 8 * 18, 2 + 4 * 18)  # 8 images; originals, recons, both tinted (16 px + pad)
    assert "discriminator P(real)" in (ae_run / "log.txt").read_text()
    assert load_checkpoint(ae_run / "checkpoints" / "checkpoint_latest.pth")["loss"]["discriminator"]


def test_the_latent_unet_learns_and_its_checkpoint_holds_the_autoencoder(latent_run, ae_run):
    first, last = head_and_tail(records_of(latent_run, "mse"))
    assert last < 0.6 and last < first, (first, last)
    ckpt = load_checkpoint(latent_run / "checkpoints" / "checkpoint_latest.pth")
    model = ckpt["config"]["model"]
    _, ae_config, sha = load_autoencoder(str(ae_run))
    assert model["autoencoder_sha256"] == sha and model["autoencoder"] == ae_config
    stored = {k[len("autoencoder.") :]: v for k, v in ckpt["ema"].items() if k.startswith("autoencoder.")}
    assert state_sha256(stored) == sha  # the frozen weights are the stage-1 EMA's, untouched by training
    assert 0.1 < model["latent_scale"] < 10 and torch.equal(ckpt["model"]["latent_scale"], ckpt["ema"]["latent_scale"])
    images = sorted(path.name for path in (latent_run / "images").iterdir())
    assert {"timestep_loss.png", "epoch_0002_samples_10step.png", "epoch_0002_samples_50step.png"} <= set(images)
    epochs = [record for record in map(json.loads, (latent_run / "metrics.jsonl").read_text().splitlines())]
    bins = [record for record in epochs if "t_bin_0" in record]
    assert [record["epoch"] for record in bins] == [1, 2] and all(f"t_bin_{k}" in bins[0] for k in range(10))
    assert not any("t_bin_0" in record for record in epochs if "mse" in record)  # epoch means, not step samples


def test_the_latent_cache_holds_each_image_and_its_mirror_image_posteriors(latent_run, ae_run):
    tensors = load_file(str(latent_run / CACHE_FILE))
    with safe_open(str(latent_run / CACHE_FILE), framework="pt") as file:
        metadata = file.metadata()
    model, _ = load_model_from_checkpoint(latent_run / "checkpoints" / "checkpoint_latest.pth")
    dataset = build_dataset("demo", 16, train=True, hflip=False)
    images = torch.stack([dataset[i][0] for i in range(8)])
    mean, std = model.latents(images)
    flipped_mean, _ = model.latents(images.flip(-1))
    posteriors = tensors["posteriors"]
    assert posteriors.shape == (len(dataset), 2, 2, 4, 4, 4) and metadata["flips"] == "2"
    assert torch.allclose(posteriors[:8, 0, 0], mean, atol=1e-5) and torch.allclose(posteriors[:8, 0, 1], std)
    assert torch.allclose(posteriors[:8, 1, 0], flipped_mean, atol=1e-5)
    assert not torch.allclose(flipped_mean, mean.flip(-1), atol=1e-3)  # why the mirror images are encoded
    assert metadata["autoencoder_sha256"] == load_autoencoder(str(ae_run))[2]
    assert torch.equal(tensors["labels"], dataset.labels)


def test_the_latent_cache_is_reused_on_resume_and_rebuilt_when_its_source_changes(ae_run, tmp_path):
    run = train(*flags(tmp_path, *LATENT, "--autoencoder", str(ae_run), steps=2, epochs=1))
    cache = run / CACHE_FILE
    first = cache.stat().st_mtime_ns
    assert train(*flags(tmp_path, *LATENT, "--autoencoder", str(ae_run), steps=2, epochs=2)) == run
    assert cache.stat().st_mtime_ns == first and (run / "log.txt").read_text().count("encoding ") == 1
    tensors = load_file(str(cache))
    write_cache(cache, tensors["posteriors"] + 1, tensors["labels"], {"autoencoder_sha256": "another"})
    train(*flags(tmp_path, *LATENT, "--autoencoder", str(ae_run), steps=2, epochs=3))
    log = (run / "log.txt").read_text()
    assert "(autoencoder, scale, data or flips changed" in log
    assert torch.equal(load_file(str(cache))["posteriors"], tensors["posteriors"])
    cache.write_bytes(cache.read_bytes()[:100])  # a truncated file is rebuilt too
    train(*flags(tmp_path, *LATENT, "--autoencoder", str(ae_run), steps=2, epochs=4))
    assert torch.equal(load_file(str(cache))["posteriors"], tensors["posteriors"])


def test_a_cache_that_cannot_be_written_is_one_line_naming_the_fix(ae_run, tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(latent_cache, "write_cache", full)
    with pytest.raises(SystemExit, match="could not write the latent cache .* free space or pass --no-cache"):
        train(*flags(tmp_path, *LATENT, "--autoencoder", str(ae_run), steps=2, epochs=1))


def test_training_on_the_cache_is_training_on_the_fly_without_flips(ae_run, tmp_path):
    common = (*LATENT, "--autoencoder", str(ae_run), "--no-hflip")
    cached = train(*flags(tmp_path / "cached", *common, steps=6, epochs=1))
    fly = train(*flags(tmp_path / "fly", *common, "--no-cache", steps=6, epochs=1))
    assert not (fly / CACHE_FILE).exists() and (cached / CACHE_FILE).is_file()
    assert records_of(cached, "mse") == pytest.approx(records_of(fly, "mse"), rel=1e-4)


def test_the_pixel_unet_learns_and_renders_samples_without_reconstructions(pixel_run):
    first, last = head_and_tail(records_of(pixel_run, "mse"))
    assert last < 0.5 and last < first, (first, last)
    names = sorted(path.name for path in (pixel_run / "images").iterdir())
    assert not any("recon" in name for name in names) and "epoch_0002_samples_50step.png" in names
    assert "cannot reconstruct" in (pixel_run / "log.txt").read_text()


def test_another_autoencoder_is_refused_naming_both_hashes(latent_run, ae_run, tmp_path):
    other = train(*flags(tmp_path / "other", *AE, "--disc_weight", "0", "--seed", "1", steps=2, epochs=1))
    ours, theirs = load_autoencoder(str(other))[2], load_autoencoder(str(ae_run))[2]
    results = str(latent_run.parent)
    argv = flags(Path(results), *LATENT, "--autoencoder", str(other), steps=60)
    with pytest.raises(
        SystemExit, match=f"trained on autoencoder sha256 {theirs}, but --autoencoder has sha256 {ours}"
    ):
        train(*argv)
    init = flags(
        tmp_path / "init",
        *LATENT,
        "--autoencoder",
        str(other),
        "--init_from",
        str(latent_run / "checkpoints" / "checkpoint_latest.pth"),
        steps=2,
    )
    with pytest.raises(SystemExit, match=f"sha256 {theirs}, but --autoencoder has sha256 {ours}"):
        train(*init)


def test_kind_flags_and_a_missing_autoencoder_are_one_line_errors(ae_run, tmp_path):
    cases = [
        ((*PIXEL, "--kl_weight", "1e-5"), "--kl_weight is for a stage-1 autoencoder (ldm_ae_*); ddpm_tiny is a pixel"),
        ((*AE, "--prediction", "v"), "--prediction is for a latent diffusion model (ldm_*) or a pixel diffusion"),
        ((*PIXEL, "--autoencoder", str(ae_run)), "--autoencoder is for a latent diffusion model (ldm_*); ddpm_tiny"),
        (LATENT, "ldm_tiny is a stage-2 model: pass --autoencoder RUN_OR_CHECKPOINT"),
        ((*AE, "--conditional"), "--conditional: an ldm autoencoder is unconditional"),
        ((*AE, "--disc_layers", "3"), "--disc_layers 3 leaves no patch at 16 px"),
        ((*PIXEL, "--codebook_size", "8"), "--codebook_size is a vqvae-family flag; ddpm_tiny is a ldm model"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as error:
            train(*flags(tmp_path, *extra))
        assert message in str(error.value) and "\n" not in str(error.value), (extra, str(error.value))


# ---------------------------------------------------------------------------------------------------------
# sampling.py and evaluate.py


def sample(run_dir: Path, out: Path, *extra: str) -> list[Path]:
    argv = ["--checkpoint", str(run_dir), "--dest_folder", str(out), "--device", "cpu", "--num_samples", "4"]
    return sampling.main(sampling.parse_args([*argv, *extra]))


def test_sampling_a_diffusion_model_at_each_step_count_with_either_sampler(latent_run, tmp_path):
    paths = sample(latent_run, tmp_path, "--steps", "3", "5", "--sampler", "ddpm")
    assert sorted(path.name for path in paths) == ["samples_3step_seed0.png", "samples_5step_seed0.png"]
    assert len(sample(latent_run, tmp_path / "eta", "--steps", "4", "--eta", "1")) == 1


def test_evaluate_measures_fid_at_step_counts_and_autoencoder_reconstructions(
    latent_run, ae_run, inception_weights_file, tmp_path
):
    common = ["--device", "cpu", "--inception_weights", inception_weights_file, "--batch_size", "4"]
    reference = ["--num_ref", "4", "--ref_cache_dir", str(tmp_path)]  # 4: more than precision/recall's 3 neighbours
    argv = ["--checkpoint", str(latent_run), *common, *reference, "--num_samples", "4", "--steps", "2", "4"]
    records = evaluate.main(evaluate.parse_args(argv))
    fid = {r["steps"]: r["value"] for r in records if r["metric"] == "fid"}
    assert sorted(fid) == [2, 4] and all(value >= 0 for value in fid.values())
    argv = ["--checkpoint", str(ae_run), *common, "--num_recon", "4", "--reconstruction"]
    values = {r["metric"] for r in evaluate.main(evaluate.parse_args(argv)) if r["evaluation"] == "reconstruction"}
    assert {"psnr", "ssim", "rfid"} <= values


def test_the_training_benchmark_reports_cached_latents_and_samplers(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_train
    finally:
        sys.path.pop(0)
    argv = ["--models", "ldm_tiny", "--image_size", "16", "--batch_size", "2", "--iters", "1", "--warmup", "0"]
    (row,) = bench_train.main(bench_train.parse_args([*argv, "--no-perceptual", "--device", "cpu"]))
    assert row["cached_train_img_s"] > 0 and row["encode_img_s"] > 0
    assert sorted(row["sample_img_s_at_steps"]) == [10, 50]
    out = capsys.readouterr().out
    assert "training on cached latents" in out and "sampling at 50 steps" in out
