"""evaluate.py end to end on a tiny trained checkpoint: table, eval.jsonl, --out, PNGs, --ref, reconstruction,
run folders, the device check, the run's own VGG weights and nonsense flags. Metric values are checked in
test_metrics.py; here the FID Inception is the real one when SPHERE_INCEPTION_WEIGHTS is set, else random."""

import json
import math
from pathlib import Path

import pytest
import torch

import evaluate
import training
from engine.checkpoint import atomic_save, load_checkpoint


@pytest.fixture(scope="module")
def inception_weights(inception_weights_file) -> Path:
    return Path(inception_weights_file)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A class-conditional vit_tiny after one training step, weights perturbed so samples are not constant."""
    results = tmp_path_factory.mktemp("results")
    flags = [
        "--preset",
        "paper",
        "--dataset",
        "demo",
        "--image_size",
        "16",
        "--model_type",
        "vit_tiny",
        "--conditional",
    ]
    flags += ["--batch_size", "8", "--epochs", "1", "--steps", "1", "--num_workers", "0", "--eval_samples", "2"]
    flags += ["--recon_perc_weight", "0", "--con_perc_weight", "0", "--results_dir", str(results), "--device", "cpu"]
    flags += ["--no-curves"]  # the curves picture is tested in test_plot.py; here it would only cost time
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


@pytest.fixture
def run_evaluate(inception_weights, vgg_weights_file):
    """evaluate.main on a checkpoint with CPU, test weights and a reference cache under tmp_path."""

    def run(checkpoint: Path, tmp_path: Path, *flags: str, vgg: bool = True) -> list[dict]:
        common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--inception_weights", str(inception_weights)]
        common += ["--ref_cache_dir", str(tmp_path / "fid_stats"), "--num_ref", "8"]
        common += ["--vgg_weights", vgg_weights_file] if vgg else []
        return evaluate.main(evaluate.parse_args([*common, *flags]))

    return run


def by_key(records: list[dict]) -> dict[tuple, dict]:
    return {(r["evaluation"], r["steps"], r["cfg"], r["metric"]): r for r in records}


def test_generation_table_jsonl_out_and_images(run_evaluate, checkpoint, tmp_path, capsys):
    out, images = tmp_path / "out.json", tmp_path / "png"
    # 5 samples in batches of 4 (Inception features cost ~0.2 s an image on one core): more than the 3 neighbours
    # precision/recall need, and two batches
    flags = ["--steps", "1", "2", "--cfg", "1", "2", "--num_samples", "5", "--batch_size", "4"]
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
            assert len(list((images / f"steps{steps}_cfg{cfg:g}").glob("*.png"))) == 5
    record = records[0]
    assert record["checkpoint"] == str(checkpoint) and record["dataset"] == "demo" and record["num_samples"] == 5
    assert record["reference"].endswith("fid_stats_demo_16.npz") and "time" in record
    lines = (checkpoint.parent.parent / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines[-len(records) :]] == records
    assert json.loads(out.read_text()) == records

    # per-image seeds: another batch size gives the same samples, so the same FID against the same --ref
    reference = tmp_path / "fid_stats" / "fid_stats_demo_16.npz"
    again = run_evaluate(
        checkpoint, tmp_path, "--steps", "2", "--cfg", "2", "--num_samples", "5", "--batch_size", "3",
        "--ref", str(reference),
    )  # fmt: skip
    assert by_key(again)["generation", 2, 2.0, "fid"]["value"] == pytest.approx(
        found["generation", 2, 2.0, "fid"]["value"],
        rel=1e-4,  # batched float round-off only
    )
    assert by_key(again)["generation", 2, 2.0, "fid"]["value"] != found["generation", 2, 1.0, "fid"]["value"]


def test_reconstruction_metrics(run_evaluate, checkpoint, tmp_path):
    flags = ["--reconstruction", "--no-generation", "--steps", "2", "--num_recon", "5", "--batch_size", "3"]
    records = run_evaluate(checkpoint, tmp_path, *flags)
    found = by_key(records)
    image_metrics = ("rfid", "psnr", "ssim", "lpips")  # a sphere model has no codebook: no usage, no perplexity
    assert len(records) == 2 * len(image_metrics)  # 1 step (no noise) and 2 steps
    for steps in (1, 2):
        values = {metric: found["reconstruction", steps, None, metric]["value"] for metric in image_metrics}
        assert all(math.isfinite(value) for value in values.values()), values
        assert values["rfid"] > 0 and 0 < values["psnr"] < 100 and -1 < values["ssim"] < 1 and values["lpips"] > 0
    assert all(r["num_samples"] == 5 and r["split"] == "test" for r in records)


def test_bad_inputs_exit_with_one_line(run_evaluate, checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not an npz")
    with pytest.raises(SystemExit, match="error: cannot read reference statistics"):
        run_evaluate(checkpoint, tmp_path, "--ref", str(corrupt), "--num_samples", "4")
    with pytest.raises(SystemExit, match="does not exist"):
        run_evaluate(tmp_path / "missing.pth", tmp_path, "--num_samples", "4")
    with pytest.raises(SystemExit, match="Inception weights file .* does not exist"):
        evaluate.main(evaluate.parse_args(["--checkpoint", str(checkpoint), "--inception_weights", "nope.pth"]))


def test_cuda_missing_is_named_before_loading(checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^error: CUDA is not available; use --device cpu$"):
        evaluate.main(evaluate.parse_args(["--checkpoint", str(checkpoint), "--device", "cuda"]))


@pytest.fixture
def lpips_calls(monkeypatch, lpips_model) -> list:
    """The vgg_weights argument of every build_lpips call evaluate.py makes (the model returned is the session's)."""
    calls = []

    def spy(vgg_weights=None):
        calls.append(vgg_weights)
        return lpips_model

    monkeypatch.setattr(evaluate, "build_lpips", spy)
    return calls


def with_recorded_vgg(checkpoint: Path, tmp_path: Path, vgg_weights: str) -> Path:
    """A copy of the run's checkpoint whose config records `--vgg_weights vgg_weights` (as training.py saves it)."""
    state = load_checkpoint(checkpoint)
    state["config"]["train"]["vgg_weights"] = vgg_weights
    copy = tmp_path / "run" / "checkpoints" / "checkpoint_latest.pth"
    atomic_save(state, copy)
    return copy


def test_lpips_uses_the_runs_vgg(run_evaluate, checkpoint, tmp_path, monkeypatch, lpips_calls, vgg_weights_file):
    monkeypatch.delenv("SPHERE_VGG_WEIGHTS", raising=False)
    flags = ["--reconstruction", "--no-generation", "--steps", "1", "--num_recon", "2", "--batch_size", "2"]
    recorded = with_recorded_vgg(checkpoint, tmp_path, vgg_weights_file)
    records = run_evaluate(recorded.parent.parent, tmp_path, *flags, vgg=False)  # --checkpoint may be a run folder
    assert {record["checkpoint"] for record in records} == {str(recorded)}
    missing = with_recorded_vgg(checkpoint, tmp_path, str(tmp_path / "moved_away.pth"))
    run_evaluate(missing, tmp_path, *flags, vgg=False)  # a recorded file that is gone: torchvision's default
    run_evaluate(recorded, tmp_path, *flags, "--vgg_weights", str(tmp_path / "flag.pth"), vgg=False)
    monkeypatch.setenv("SPHERE_VGG_WEIGHTS", str(tmp_path / "env.pth"))
    run_evaluate(recorded, tmp_path, *flags, vgg=False)  # build_lpips reads the variable itself
    assert lpips_calls == [vgg_weights_file, None, str(tmp_path / "flag.pth"), None]


@pytest.mark.parametrize(
    "flags",
    [
        ["--num_samples", "1"],
        ["--num_recon", "0"],
        ["--num_ref", "1"],
        ["--cfg", "-0.5"],
        ["--cfg_mode", "nowhere"],
        ["--recon_noise_angle", "90"],
        ["--seed", "-1"],
    ],
)
def test_nonsense_flag_values_are_rejected_by_the_parser(capsys, flags):
    with pytest.raises(SystemExit) as caught:
        evaluate.parse_args(flags)
    assert caught.value.code == 2 and f"argument {flags[0]}" in capsys.readouterr().err


def test_unusable_output_paths_fail_before_any_work(checkpoint, tmp_path):
    (tmp_path / "a_file").write_text("x")
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--inception_weights", str(tmp_path / "none.pth")]
    for flags, words in (
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(tmp_path / "a_file" / "out.json")], "is a file"),
        (["--save_images", str(tmp_path / "a_file")], "is a file"),
    ):
        with pytest.raises(SystemExit, match=words):  # checked before the (missing) Inception weights
            evaluate.main(evaluate.parse_args([*common, *flags]))


def test_cfg_mode_defaults_to_combo():
    assert evaluate.parse_args([]).cfg_mode == "combo"
