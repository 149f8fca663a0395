"""evaluate.py end to end on a tiny trained checkpoint: table, eval.jsonl, --out, PNGs, --ref, reconstruction."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

import evaluate
import training
from engine.checkpoint import atomic_save, load_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = Path(
    os.environ.get("SPHERE_INCEPTION_WEIGHTS") or SHARED / "weights" / "pt_inception-2015-12-05-fid-pool3.pth"
)
VGG_WEIGHTS = Path(os.environ.get("SPHERE_VGG_WEIGHTS") or SHARED / "weights" / "vgg16_features_hed.pth")

pytestmark = pytest.mark.skipif(
    not (WEIGHTS.is_file() and VGG_WEIGHTS.is_file()), reason=f"needs {WEIGHTS} and {VGG_WEIGHTS}"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A class-conditional vit_tiny after one training step, weights perturbed so samples are not constant."""
    results = tmp_path_factory.mktemp("results")
    flags = ["--dataset", "demo", "--image_size", "16", "--model_type", "vit_tiny", "--conditional"]
    flags += ["--batch_size", "8", "--epochs", "1", "--steps", "1", "--num_workers", "0", "--eval_samples", "2"]
    flags += ["--recon_perc_weight", "0", "--con_perc_weight", "0", "--results_dir", str(results), "--device", "cpu"]
    run_dir = training.main(training.parse_args(flags))
    path = run_dir / "checkpoints" / "checkpoint_latest.pth"
    state = load_checkpoint(path)
    generator = torch.Generator().manual_seed(0)
    for key in ("model", "ema"):  # zero-initialised heads would make every sample the same image
        for name, tensor in state[key].items():
            if tensor.is_floating_point():
                state[key][name] = tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
    atomic_save(state, path)
    return path


def run_evaluate(checkpoint: Path, tmp_path: Path, *flags: str) -> list[dict]:
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--inception_weights", str(WEIGHTS)]
    common += ["--ref_cache_dir", str(tmp_path / "fid_stats"), "--num_ref", "16", "--vgg_weights", str(VGG_WEIGHTS)]
    return evaluate.main(evaluate.parse_args([*common, *flags]))


def by_key(records: list[dict]) -> dict[tuple, dict]:
    return {(r["evaluation"], r["steps"], r["cfg"], r["metric"]): r for r in records}


def test_generation_table_jsonl_out_and_images(checkpoint, tmp_path, capsys):
    out, images = tmp_path / "out.json", tmp_path / "png"
    flags = ["--steps", "1", "2", "--cfg", "1", "2", "--num_samples", "10", "--batch_size", "8"]
    records = run_evaluate(checkpoint, tmp_path, *flags, "--out", str(out), "--save_images", str(images))
    table = capsys.readouterr().out
    assert "fid" in table.splitlines()[0] and "is: n/a (Inception classifier head is all zeros" in table
    found = by_key(records)
    assert len(records) == 2 * 2 * len(evaluate.GENERATION_METRICS)
    for steps in (1, 2):
        for cfg in (1.0, 2.0):
            for metric in ("fid", "kid", "kid_std", "precision", "recall"):
                assert math.isfinite(found["generation", steps, cfg, metric]["value"]), (steps, cfg, metric)
            assert found["generation", steps, cfg, "fid"]["value"] > 0
            assert found["generation", steps, cfg, "is"]["value"] is None
            assert "all zeros" in found["generation", steps, cfg, "is"]["reason"]
            assert len(list((images / f"steps{steps}_cfg{cfg:g}").glob("*.png"))) == 10
    record = records[0]
    assert record["checkpoint"] == str(checkpoint) and record["dataset"] == "demo" and record["num_samples"] == 10
    assert record["reference"].endswith("fid_stats_demo_16.npz") and "time" in record
    lines = (checkpoint.parent.parent / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines[-len(records) :]] == records
    assert json.loads(out.read_text()) == records

    # per-image seeds: another batch size gives the same samples, so the same FID against the same --ref
    reference = tmp_path / "fid_stats" / "fid_stats_demo_16.npz"
    again = run_evaluate(
        checkpoint, tmp_path, "--steps", "2", "--cfg", "2", "--num_samples", "10", "--batch_size", "5",
        "--ref", str(reference),
    )  # fmt: skip
    assert by_key(again)["generation", 2, 2.0, "fid"]["value"] == pytest.approx(
        found["generation", 2, 2.0, "fid"]["value"],
        rel=1e-4,  # batched float round-off only
    )
    assert by_key(again)["generation", 2, 2.0, "fid"]["value"] != found["generation", 2, 1.0, "fid"]["value"]


def test_reconstruction_metrics(checkpoint, tmp_path):
    flags = ["--reconstruction", "--no-generation", "--steps", "2", "--num_recon", "10", "--batch_size", "8"]
    records = run_evaluate(checkpoint, tmp_path, *flags)
    found = by_key(records)
    assert len(records) == 2 * len(evaluate.RECONSTRUCTION_METRICS)  # 1 step (no noise) and 2 steps
    for steps in (1, 2):
        values = {
            metric: found["reconstruction", steps, None, metric]["value"] for metric in evaluate.RECONSTRUCTION_METRICS
        }
        assert all(math.isfinite(value) for value in values.values()), values
        assert values["rfid"] > 0 and 0 < values["psnr"] < 100 and -1 < values["ssim"] < 1 and values["lpips"] > 0
    assert all(r["num_samples"] == 10 and r["split"] == "test" for r in records)


def test_bad_inputs_exit_with_one_line(checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not an npz")
    with pytest.raises(SystemExit, match="error: cannot read reference statistics"):
        run_evaluate(checkpoint, tmp_path, "--ref", str(corrupt), "--num_samples", "4")
    with pytest.raises(SystemExit, match="does not exist"):
        run_evaluate(tmp_path / "missing.pth", tmp_path, "--num_samples", "4")
    with pytest.raises(SystemExit, match="Inception weights file .* does not exist"):
        evaluate.main(evaluate.parse_args(["--checkpoint", str(checkpoint), "--inception_weights", "nope.pth"]))
