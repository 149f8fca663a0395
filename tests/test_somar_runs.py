"""somar runs end to end on the demo data at 16 px: a tiny autoencoder, SOM codebooks on its frozen maps and a prior
over their tokens (the prior's held-out token NLL falls below log K), each later stage holding the earlier one's
weights and hash; stage mismatches refused in one line; each stage resumes exactly; pruning renumbers units and a
prior trained on the parent is refused on the pruned codebook; vqvae and ldm autoencoders serve as stage 1, a vqvae
as the prior's tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import prune_codebook
import sampling
import training
from engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from engine.family_ldm import state_sha256
from engine.family_somar import load_stage
from engine.images import per_image_generators
from models import build_model
from tests.test_export import write_run

AE = ("--model_type", "somar_ae_tiny", "--ae_width", "16", "--lr", "2e-3")
CODEBOOK = ("--model_type", "somar_codebook_tiny", "--level_sizes", "16", "64", "--som_steps", "20")
PRIOR = ("--model_type", "somar_prior_tiny", "--prior_width", "32", "--prior_depth", "2", "--lr", "3e-3")


def flags(results: Path, *extra: str, epochs: int = 2, steps: int = 10) -> list[str]:
    """A somar run on the demo data at 16 px; no preset."""
    return [
        *("--preset", "none", "--dataset", "demo", "--image_size", "16", "--num_workers", "0", "--device", "cpu"),
        *("--batch_size", "16", "--epochs", str(epochs), "--steps", str(steps), "--warmup_steps", "2"),
        *("--results_dir", str(results), "--eval_samples", "4", "--log_every", "1", "--eval-frequency", str(epochs)),
        *("--no-curves", *extra),
    ]


def train(*argv: str) -> Path:
    return training.main(training.parse_args(list(argv)))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def latest(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    return train(*flags(tmp_path_factory.mktemp("ae"), *AE))


@pytest.fixture(scope="module")
def codebook_run(tmp_path_factory, ae_run) -> Path:
    return train(*flags(tmp_path_factory.mktemp("codebook"), *CODEBOOK, "--autoencoder", str(ae_run)))


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory, codebook_run) -> Path:
    results = tmp_path_factory.mktemp("prior")
    return train(*flags(results, *PRIOR, "--codebook", str(codebook_run), "--conditional", steps=30))


def test_the_autoencoder_learns(ae_run):
    rec = [record["rec"] for record in records(ae_run) if "rec" in record]
    assert len(rec) == 20 and sum(rec[-5:]) < 0.8 * sum(rec[:5]), rec
    assert (ae_run / "images" / "epoch_0002_recon.png").is_file()


def test_the_codebook_is_fitted_without_gradients_and_holds_the_frozen_autoencoder(codebook_run, ae_run):
    ckpt = latest(codebook_run)
    model = ckpt["config"]["model"]
    _, ae_config, sha = load_stage("autoencoder", str(ae_run))
    assert model["autoencoder_sha256"] == sha and model["autoencoder"] == ae_config
    assert model["autoencoder_family"] == "somar"
    stored = {k[len("autoencoder.net.") :]: v for k, v in ckpt["ema"].items() if k.startswith("autoencoder.net.")}
    assert state_sha256(stored) == sha  # the stage-1 EMA weights, untouched by the SOM fit
    assert all(not group["params"] for group in ckpt["optimizer"]["param_groups"])
    assert int(ckpt["ema"]["levels.1.steps_done"]) == 20
    epochs = [record for record in records(codebook_run) if "level1_usage" in record]
    assert [record["epoch"] for record in epochs] == [1, 2]
    assert all(0 < r["level0_usage"] <= 1 and r["level1_quantization_error"] > 0 for r in epochs)
    assert 0 <= epochs[-1]["level1_topographic_error"] < 0.5
    names = {path.name for path in (codebook_run / "images").iterdir()}
    assert {"epoch_0002_atlas_level0.png", "epoch_0002_atlas_level1.png", "epoch_0002_recon.png"} <= names


def test_the_prior_learns_below_log_k_and_holds_the_codebook(prior_run, codebook_run):
    uniform = (math.log(16) + 16 * math.log(64)) / 17  # mean NLL per token of a uniform prior over each level's units
    nll = [record["heldout_token_nll"] for record in records(prior_run) if "heldout_token_nll" in record]
    assert len(nll) == 2 and nll[-1] < uniform - 0.05, (nll, uniform)
    ckpt = latest(prior_run)
    _, codebook_config, sha = load_stage("codebook", str(codebook_run))
    assert ckpt["config"]["model"]["codebook_sha256"] == sha and ckpt["config"]["model"]["codebook"] == codebook_config
    stored = {k[len("codebook.") :]: v for k, v in ckpt["ema"].items() if k.startswith("codebook.")}
    assert state_sha256(stored) == sha
    assert (prior_run / "images" / "epoch_0002_samples_1step.png").is_file()


def test_prior_samples_are_per_image_and_take_the_prior_options(prior_run, tmp_path):
    model, _ = load_model_from_checkpoint(prior_run / "checkpoints" / "checkpoint_latest.pth")
    labels = torch.tensor([0, 1, 2])
    batch = model.sample(3, generator=per_image_generators(5, 0, 3, "cpu"), labels=labels, cfg=2.0)
    alone = model.sample(1, generator=per_image_generators(5, 1, 1, "cpu"), labels=labels[1:2], cfg=2.0)
    assert batch.shape == (3, 3, 16, 16) and batch.abs().max() <= 1
    assert torch.allclose(batch[1], alone[0], atol=1e-5)  # the same tokens; the decoder is batch-size exact to float
    greedy = model.sample(2, labels=labels[:2], top_k=1)
    assert torch.equal(greedy, model.sample(2, labels=labels[:2], temperature=0.0))
    assert model.sample(2, labels=labels[:2], beam=2).shape == (2, 3, 16, 16)
    assert len(model.sample(2, steps=2, return_all=True, generator=per_image_generators(0, 0, 2, "cpu"))) == 2
    assert model.token_nll(batch, labels).shape == (3,)
    argv = ["--checkpoint", str(prior_run), "--dest_folder", str(tmp_path / "out"), "--device", "cpu"]
    paths = sampling.main(sampling.parse_args([*argv, "--num_samples", "4"]))
    assert paths and all(path.is_file() for path in paths)


def test_sampling_script_passes_the_prior_options(prior_run, ae_run, tmp_path):
    def grid(folder: str, *extra: str) -> torch.Tensor:
        argv = ["--checkpoint", str(prior_run), "--dest_folder", str(tmp_path / folder), "--device", "cpu"]
        (path,) = sampling.main(sampling.parse_args([*argv, "--num_samples", "3", *extra]))
        return torch.from_numpy(np.asarray(Image.open(path)).copy())

    assert torch.equal(grid("top1", "--top_k", "1", "--seed", "1"), grid("greedy", "--temperature", "0"))
    assert grid("beam", "--beam", "2").shape == grid("nucleus", "--top_p", "0.9", "--temperature", "0.8").shape
    argv = ["--checkpoint", str(ae_run), "--dest_folder", str(tmp_path / "ae"), "--device", "cpu", "--beam", "2"]
    with pytest.raises(SystemExit, match="--beam sets how samples are drawn, but .*; drop it"):
        sampling.main(sampling.parse_args(argv))
    with pytest.raises(SystemExit):
        sampling.parse_args(["--top_p", "1.5"])


@pytest.mark.parametrize(
    "stage, words",
    [
        ("codebook_with_ae_run", "holds a somar autoencoder, not a somar_codebook or vqvae run"),
        ("autoencoder_with_codebook_run", "holds a somar codebook, not a somar_ae, vqvae or ldm_ae run"),
        ("prior_without_codebook", "pass --codebook RUN_OR_CHECKPOINT"),
        ("som_flag_on_autoencoder", "--som_steps is for a stage-2 SOM codebook"),
        ("conditional_codebook", "--conditional: a somar codebook is unconditional"),
    ],
)
def test_stage_mistakes_are_one_line_errors(stage, words, ae_run, codebook_run, tmp_path):
    argv = {
        "codebook_with_ae_run": (*PRIOR, "--codebook", str(ae_run)),
        "autoencoder_with_codebook_run": (*CODEBOOK, "--autoencoder", str(codebook_run)),
        "prior_without_codebook": PRIOR,
        "som_flag_on_autoencoder": (*AE, "--som_steps", "5"),
        "conditional_codebook": (*CODEBOOK, "--autoencoder", str(ae_run), "--conditional"),
    }[stage]
    with pytest.raises(SystemExit) as error:
        train(*flags(tmp_path / "results", *argv))
    assert words in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_pruning_renumbers_units_and_a_prior_of_the_parent_is_refused(codebook_run, prior_run, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["--checkpoint", str(codebook_run), "--min_count", "40", "--output", str(out)]
    prune_codebook.main(prune_codebook.parse_args(argv))
    summary = json.loads(capsys.readouterr().out)
    assert summary["units_before"] == [16, 64] and summary["units_after"][1] < 64
    pruned, config = load_model_from_checkpoint(out / "checkpoints" / "checkpoint_latest.pth")
    assert list(pruned.vocab_sizes) == config["model"]["level_sizes"] == summary["units_after"]
    parent, _ = load_model_from_checkpoint(codebook_run / "checkpoints" / "checkpoint_latest.pth")
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    tokens = pruned.tokenize(images)
    assert all(int(t.max()) < k for t, k in zip(tokens, pruned.vocab_sizes))
    same = (pruned.levels[1].codes[:, None] == parent.levels[1].codes[None]).all(-1)  # (K_new, K_old)
    assert same.any(1).all() and torch.equal(pruned.levels[1].grid, parent.levels[1].grid[same.int().argmax(1)])
    ours = load_stage("codebook", str(out))[2]
    theirs = latest(prior_run)["config"]["model"]["codebook_sha256"]
    assert ours != theirs
    resume = flags(prior_run.parent, *PRIOR, "--codebook", str(out), "--conditional", steps=30)
    with pytest.raises(SystemExit, match=f"sha256 {theirs}.*sha256 {ours}"):
        train(*resume)
    weights = str(prior_run / "checkpoints" / "checkpoint_latest.pth")
    init = flags(tmp_path / "init", *PRIOR, "--codebook", str(out), "--conditional", "--init_from", weights)
    with pytest.raises(SystemExit, match=f"sha256 {theirs}.*sha256 {ours}"):
        train(*init)


@pytest.mark.parametrize("stage", ["autoencoder", "codebook", "prior"])
def test_each_stage_resumes_exactly(stage, ae_run, codebook_run, tmp_path):
    argv = {
        "autoencoder": AE,
        "codebook": (*CODEBOOK, "--autoencoder", str(ae_run)),
        "prior": (*PRIOR, "--codebook", str(codebook_run), "--conditional"),
    }[stage]
    straight = train(*flags(tmp_path / "a", *argv, steps=3))
    first = train(*flags(tmp_path / "b", *argv, "--stop_after_steps", "4", steps=3))
    assert latest(first)["step"] == 4
    resumed = train(*flags(tmp_path / "b", *argv, steps=3))
    assert resumed == first
    a, b = latest(straight), latest(resumed)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_vqvae_and_ldm_autoencoders_serve_as_stage_one_and_a_vqvae_as_the_tokenizer(tmp_path):
    torch.manual_seed(0)
    vqvae = build_model("vqvae_tiny", image_size=16, width=16, z_channels=8, codebook_size=32, kmeans_init=False)
    ldm_ae = build_model("ldm_ae_tiny", image_size=16, ae_width=16)
    write_run(tmp_path / "stages", "demo_20250101_000000", "demo", vqvae)
    write_run(tmp_path / "stages", "demo_20250101_000001", "demo", ldm_ae)
    vq_run, ldm_run = (tmp_path / "stages" / f"demo_20250101_00000{i}" for i in (0, 1))
    for run, family, channels in ((vq_run, "vqvae", 8), (ldm_run, "ldm", 4)):
        extra = ("--autoencoder", str(run), "--level_sizes", "4", "16")
        codebook = train(*flags(tmp_path / family, *CODEBOOK[:2], *extra, epochs=1, steps=2))
        config = latest(codebook)["config"]["model"]
        assert config["autoencoder_family"] == family
        model, _ = load_model_from_checkpoint(codebook / "checkpoints" / "checkpoint_latest.pth")
        assert model.levels[1].codes.shape == (16, channels * 4)  # 2x2 patches of the 4x4 map
    prior = train(*flags(tmp_path / "vq_prior", *PRIOR, "--codebook", str(vq_run), epochs=1, steps=2))
    model, _ = load_model_from_checkpoint(prior / "checkpoints" / "checkpoint_latest.pth")
    assert model.prior.settings.vocab_sizes == (32,) and model.prior.settings.segment_lengths == (16,)
    assert model.sample(2, generator=per_image_generators(0, 0, 2, "cpu")).shape == (2, 3, 16, 16)


def test_evaluate_measures_the_prior_samples_and_the_codebook_reconstructions(
    prior_run, codebook_run, tmp_path, inception_weights_file
):
    common = ["--device", "cpu", "--inception_weights", inception_weights_file, "--batch_size", "4"]
    reference = ["--num_ref", "4", "--ref_cache_dir", str(tmp_path)]  # 4: more than precision/recall's 3 neighbours
    argv = ["--checkpoint", str(prior_run), *common, *reference, "--num_samples", "4"]
    records = evaluate.main(evaluate.parse_args(argv))
    assert [r["steps"] for r in records if r["metric"] == "fid"] == [1]
    argv = ["--checkpoint", str(codebook_run), *common, "--num_recon", "4", "--reconstruction"]
    values = {r["metric"] for r in evaluate.main(evaluate.parse_args(argv)) if r["evaluation"] == "reconstruction"}
    assert {"psnr", "ssim", "rfid"} <= values
