"""vqvae runs end to end: a tiny tokenizer trains on the demo data (falling reconstruction loss, codebook usage
above 20 %), the epoch's codebook usage reaches the log and metrics.jsonl, the patch-GAN state resumes exactly,
sampling.py writes reconstructions, token maps, tiled and multi-scale decodings, evaluate.py adds codebook usage and
perplexity, and other families' flags and bad vqvae values are one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import evaluate
import sampling
import training
from engine.checkpoint import load_checkpoint
from engine.family_vqvae import mults_for_downsample, vqvae_overrides

# a small vqvae_tiny: 16 px (f4: 4x4 tokens), narrow, 64 codes
SMALL = ("--width", "16", "--z_channels", "16", "--codebook_size", "64", "--perceptual_weight", "0")


def vqvae_flags(results: Path, *extra: str, epochs: int = 2, steps: int = 3) -> list[str]:
    """vqvae_tiny, small, on the demo data; no preset."""
    return [
        *("--preset", "none", "--model_type", "vqvae_tiny", "--dataset", "demo", "--image_size", "16", *SMALL),
        *("--batch_size", "8", "--epochs", str(epochs), "--steps", str(steps), "--num_workers", "0"),
        *("--results_dir", str(results), "--eval_samples", "4", "--log_every", "1", "--eval-frequency", "1"),
        *("--device", "cpu", "--lr", "4e-3", "--no-curves", *extra),  # matplotlib costs more than a run: --curves once
    ]


def train(*flags: str) -> Path:
    return training.main(training.parse_args(list(flags)))


def records_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory) -> Path:
    """Two epochs of 100 steps at f2 (8x8 tokens): the loss falls about 5x and the codebook stays in use (~10 s)."""
    fast = ("--channel_mults", "1", "2", "--batch_size", "16", "--lr", "1e-2")
    return train(*vqvae_flags(tmp_path_factory.mktemp("results"), *fast, "--curves", epochs=2, steps=100))


def test_a_tiny_vqvae_learns_with_a_living_codebook(learning_run):
    steps = [r for r in records_of(learning_run) if "rec" in r]
    first, last = (sum(r["rec"] for r in part) / 10 for part in (steps[:10], steps[-10:]))
    assert last < 0.5 * first, (first, last)
    epochs = [r for r in records_of(learning_run) if "codebook_usage" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[-1]["codebook_usage"] > 0.2 and epochs[-1]["codebook_perplexity"] > 1
    lines = [line for line in (learning_run / "log.txt").read_text().splitlines() if " done (step " in line]
    for term in ("rec", "vq", "commit", "entropy", "usage", "perplexity", "codebook_usage", "codebook_perplexity"):
        assert f"| {term} " in lines[-1], lines[-1]
    names = sorted(path.name for path in (learning_run / "images").iterdir())
    renders = [f"epoch_000{e}_{kind}.png" for e in (1, 2) for kind in ("recon", "tokens")]
    assert names == ["codebook_usage.png", "curves.png", *renders]


# ---------------------------------------------------------------------------------------------------------
# The patch-GAN resumes exactly


def state_of(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")


def test_stop_and_resume_with_the_gan_on_equals_straight_training(tmp_path):
    gan = ("--disc_weight", "0.5", "--disc_start", "0", "--disc_layers", "2", "--disc_width", "8")
    straight = train(*vqvae_flags(tmp_path / "a", *gan))
    first = train(*vqvae_flags(tmp_path / "b", *gan, "--stop_after_steps", "4"))  # mid epoch 2
    assert state_of(first)["step"] == 4
    resumed = train(*vqvae_flags(tmp_path / "b", *gan))
    assert resumed == first
    a, b = state_of(straight), state_of(resumed)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for name, value in a["loss"]["discriminator"].items():
        assert torch.equal(value, b["loss"]["discriminator"][name]), f"discriminator {name} differs after resume"
    adam = lambda s: [v["exp_avg_sq"] for v in s["loss"]["optimizer"]["state"].values()]  # noqa: E731
    assert len(adam(a)) > 0 and all(torch.equal(x, y) for x, y in zip(adam(a), adam(b)))
    logged = [r for r in records_of(resumed) if "d_loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------------------
# sampling.py and evaluate.py


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    return train(*vqvae_flags(tmp_path_factory.mktemp("results")))


def sample(run_dir: Path, out: Path, *flags: str) -> list[Path]:
    argv = ["--checkpoint", str(run_dir), "--dest_folder", str(out), "--device", "cpu", "--num_samples", "4"]
    return sampling.main(sampling.parse_args([*argv, *flags]))


def test_sampling_a_vqvae_says_why_and_writes_held_out_reconstructions_and_tokens(short_run, tmp_path, capsys):
    paths = sample(short_run, tmp_path)
    assert "cannot draw samples: a VQ-VAE is a tokenizer with no prior" in capsys.readouterr().out
    assert sorted(path.name for path in paths) == ["recon_heldout_seed0.png", "tokens_heldout_seed0.png"]
    assert all(path.is_file() for path in paths)
    # --steps defaults to the model's (1 for a tokenizer): the strip is the originals over one reconstruction row
    # (16 px cells with 2 px borders), not rows for the sphere's 1, 2 and 4 steps
    strip = next(path for path in paths if path.name.startswith("recon"))
    assert Image.open(strip).height == 2 * (16 + 2) + 2


def test_sampling_tiles_and_rescales_a_large_input(short_run, tmp_path):
    ramp = torch.linspace(0, 255, 40).view(1, 40).expand(36, 40)
    pixels = torch.stack([ramp, ramp.t()[:36, :36].repeat(1, 2)[:, :40], 255 - ramp], -1).to(torch.uint8).numpy()
    image = tmp_path / "big.png"
    Image.fromarray(pixels).save(image)
    flags = ("--input", str(image), "--tile_size", "16", "--overlap", "4", "--scales", "0.5", "2", "--align")
    paths = sample(short_run, tmp_path / "out", *flags)
    sizes = {path.name: Image.open(path).size for path in paths}
    assert set(sizes) == {"recon_big.png", "recon_big_scale0.5.png", "recon_big_scale2.png", "tokens_big.png"}
    assert sizes["recon_big_scale2.png"][0] > sizes["recon_big_scale0.5.png"][0] * 3  # larger grids, larger images


def test_sampling_refuses_flags_a_vqvae_or_a_sphere_model_cannot_honour(short_run, tmp_path):
    with pytest.raises(SystemExit, match="--recon_noise_angle does not apply to vqvae models"):
        sample(short_run, tmp_path, "--recon_noise_angle", "40")
    with pytest.raises(SystemExit, match="--tile_size applies to --input images; pass --input FILE"):
        sample(short_run, tmp_path, "--tile_size", "16")


def test_evaluate_adds_codebook_usage_and_skips_generation(short_run, inception_weights_file, capsys):
    argv = ["--checkpoint", str(short_run), "--device", "cpu", "--inception_weights", inception_weights_file]
    records = evaluate.main(evaluate.parse_args([*argv, "--num_recon", "5", "--batch_size", "4", "--reconstruction"]))
    assert "note: generation metrics skipped: a vqvae model (VQVAE) cannot draw samples" in capsys.readouterr().out
    values = {r["metric"]: r["value"] for r in records if r["evaluation"] == "reconstruction"}
    assert set(values) == {"rfid", "psnr", "ssim", "lpips", "usage", "perplexity"}
    assert 0 < values["usage"] <= 1 and 1 <= values["perplexity"] <= 64


# ---------------------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--beta", "0.1"], "--beta is a psvae-family flag; vqvae_tiny is a vqvae model: remove it"),
        (["--noise_angle", "40"], "--noise_angle is a sphere-family flag; vqvae_tiny is a vqvae model: remove it"),
        (["--recon", "mse"], "--recon mse is no vqvae term: use one of l1, l2"),
        (["--codebook_ema", "1.5"], "--codebook_ema 1.5 is an EMA decay"),
        (["--fsq_levels", "8", "1"], "--fsq_levels [8, 1] must all be >= 2 levels"),
        (["--downsample", "8", "--channel_mults", "1", "2"], "--downsample 8 needs 4 --channel_mults, got 2"),
        (["--disc_weight", "0.1", "--disc_layers", "3"], "--disc_layers 3 leaves no patch at 16 px"),
        (["--conditional"], "--conditional: a vqvae is an unconditional tokenizer"),
        (["--perceptual_weight", "-1"], "--perceptual_weight -1.0 is a loss weight"),
    ],
)
def test_vqvae_mistakes_are_one_line_errors_before_any_folder(tmp_path, flags, words):
    with pytest.raises(SystemExit) as caught:
        train(*vqvae_flags(tmp_path / "r"), *flags)
    message = str(caught.value.code)
    assert message.startswith("error: ") and words in message and "\n" not in message, message
    assert not (tmp_path / "r").exists()


def test_a_vqvae_flag_on_a_sphere_model_is_refused():
    with pytest.raises(SystemExit, match="--codebook_size is a vqvae-family flag; vit_tiny is a sphere model"):
        training.parse_args(["--model_type", "vit_tiny", "--codebook_size", "64"])


def test_downsample_cuts_or_extends_the_sizes_multipliers():
    assert mults_for_downsample((1, 2, 2), 4) == (1, 2, 2)
    assert mults_for_downsample((1, 2, 2), 16) == (1, 2, 2, 2, 2)
    assert mults_for_downsample((1, 1, 2, 2, 4), 8) == (1, 1, 2, 2)
    args = training.parse_args(["--model_type", "vqvae_base", "--downsample", "8", "--codebook_ema", "0.99"])
    overrides = vqvae_overrides(args, argparse.Namespace(kind="image"))
    assert overrides["channel_mults"] == (1, 1, 2, 2) and overrides["ema_decay"] == 0.99
