"""ONNX export (engine/onnx_export.py): onnxruntime runs the files to PyTorch's outputs for the sphere and psvae
families, conditional or not, at any batch size from one file (the vqvae, ldm and somar families:
tests/test_onnx_families.py)."""

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import export_weights
from engine import onnx_export
from engine.checkpoint import atomic_save
from engine.onnx_export import ONNX_FILES, ONNX_RECORD, OnnxExportError, OnnxFileError, describe_onnx, export_onnx
from engine.webformat import load_model_from_web_weights, read_web_weights, write_index
from models import build_model
from tests.helpers import perturb

TOLERANCE = 1e-4  # float32 through a different op order; a wrong op is off by O(1)
# name -> (registry name, overrides); tiny 16 px models with one block per stack so that each export is quick
MODELS = {
    "vit_cond": ("vit_tiny", dict(image_size=16, num_classes=10, depth=1)),
    "psvae_vit_cond": (
        "psvae_tiny",
        dict(
            image_size=16,
            z_dim=8,
            backbone="vit",
            vit_width=32,
            vit_depth=1,
            heads=2,
            channel_mults=(1, 2),
            num_classes=10,
        ),
    ),
}
BY_SCRIPT = "convnet_by_export_weights"
RUN = "faces_20250101_000000"  # the unconditional conv case, exported by export_weights.py


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The folder export_weights.py (ONNX on by default) and --index_root wrote for a convnet checkpoint whose
    EMA differs from its raw weights: site/index.json, site/faces/; the run is in site/../results."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("export_weights")
    model = perturb(build_model("convnet_tiny", image_size=16, channel_mults=(1, 2), depth=1), scale=0.2)
    run_dir = write_checkpoint(root / "results", model)
    argv = ["--checkpoint", str(run_dir), "--output_dir", str(root / "site" / "faces"), "--mode", "fp32"]
    export_weights.main(export_weights.parse_args([*argv, "--index_root", str(root / "site")]))
    return root / "site"


@pytest.fixture(scope="module", params=[*sorted(MODELS), BY_SCRIPT])
def exported(request, tmp_path_factory):
    """(model with perturbed weights, its folder, export_onnx's answer), exported once per module."""
    if request.param == BY_SCRIPT:
        folder = request.getfixturevalue("site") / "faces"
        return load_model_from_web_weights(folder / "model_fp32.safetensors"), folder, describe_onnx(folder)
    torch.manual_seed(0)
    registry_name, overrides = MODELS[request.param]
    model = perturb(build_model(registry_name, **overrides), scale=0.2).eval()
    folder = tmp_path_factory.mktemp(request.param)
    return model, folder, export_onnx(model, folder)


def session(folder, network: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(folder / ONNX_FILES[network]), options, providers=["CPUExecutionProvider"])


def inputs_of(model, network: str, batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    if network == "decoder":
        shape = tuple(model.latent_shape) if hasattr(model, "latent_shape") else (config.z_dim,)
        v = torch.randn(batch, *shape, generator=gen)
        inputs = {"v": v * (v[0].numel() ** 0.5) / v.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))}
        if config.family == "psvae":
            inputs["v"] = v / v.norm(dim=1, keepdim=True)
    else:
        inputs = {
            "x": torch.rand(batch, config.in_channels, config.image_size, config.image_size, generator=gen) * 2 - 1
        }
    if config.num_classes:
        inputs["labels"] = torch.randint(0, config.num_classes + 1, (batch,), generator=gen)  # the null class too
    return inputs


@torch.no_grad()
def reference(model, network: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = inputs.get("labels")
    if network == "decoder":
        return model.decode(inputs["v"], labels)
    z = model.encode(inputs["x"], labels)
    return z[0] if isinstance(z, tuple) else z  # psvae: mu


def test_export_writes_both_networks_and_describes_them(exported):
    model, folder, described = exported
    assert set(described) == {"decoder", "encoder"}
    for network, entry in described.items():
        path = folder / entry["file"]
        assert entry["file"] == ONNX_FILES[network] and entry["bytes"] == path.stat().st_size
        assert len(entry["sha256"]) == 64
    assert not list(folder.glob("*.tmp")), "atomic writes leave no temp files"
    assert describe_onnx(folder) == described, "the record written with the files lists them as they are"


@pytest.mark.parametrize("network", ["decoder", "encoder"])
def test_graph_io_names_and_dynamic_batch(exported, network):
    model, folder, _ = exported
    graph = session(folder, network)
    names = [i.name for i in graph.get_inputs()]
    first = "v" if network == "decoder" else "x"
    assert names == ([first, "labels"] if model.config.num_classes else [first])
    assert [o.name for o in graph.get_outputs()] == ["x" if network == "decoder" else "z"]
    assert all(isinstance(i.shape[0], str) for i in graph.get_inputs()), "the batch axis must be symbolic"
    if model.config.num_classes:
        assert graph.get_inputs()[1].type == "tensor(int64)"


@pytest.mark.parametrize("network", ["decoder", "encoder"])
def test_onnxruntime_matches_pytorch_at_batch_1_and_3(exported, network):
    model, folder, _ = exported
    graph = session(folder, network)
    for batch in (1, 3):
        inputs = inputs_of(model, network, batch, seed=batch)
        expected = reference(model, network, inputs)
        got = graph.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        assert got.shape == tuple(expected.shape) and got.dtype == np.float32
        assert expected.abs().max() > 0.05, "perturbed weights must give a non-trivial output"
        np.testing.assert_allclose(got, expected.numpy(), atol=TOLERANCE, rtol=0)


def test_labels_change_the_conditional_output(exported):
    """The labels input is wired into the graph (a constant null class would also pass the parity test at
    labels = null); an unconditional graph has no labels input at all."""
    model, folder, _ = exported
    graph = session(folder, "decoder")
    if not model.config.num_classes:
        assert [node.name for node in graph.get_inputs()] == ["v"]
        return
    inputs = {name: t.numpy() for name, t in inputs_of(model, "decoder", 2, seed=5).items()}
    first = graph.run(None, {**inputs, "labels": np.array([0, 1])})[0]
    second = graph.run(None, {**inputs, "labels": np.array([2, model.config.num_classes])})[0]
    assert np.abs(first - second).max() > 1e-3


def test_signal_psvae_gets_no_files(tmp_path):
    model = build_model("psvae_tiny", backbone="conv1d", signal_length=32, in_channels=2, z_dim=3)
    assert export_onnx(model, tmp_path) is None
    assert not list(tmp_path.iterdir())


def write_checkpoint(results, model) -> Path:
    """A run folder in the documented layout whose EMA differs from the raw weights (EMA = raw + noise)."""
    run_dir = results / RUN
    (run_dir / "checkpoints").mkdir(parents=True)
    config = {"dataset": "faces", "dataset_name": "faces", "model": model.config.to_dict()}
    (run_dir / "config.json").write_text(json.dumps(config))
    ema = perturb(copy.deepcopy(model), scale=0.2, seed=1).state_dict()
    ckpt = {"model": model.state_dict(), "ema": ema, "config": config, "step": 3, "epoch": 1}
    atomic_save(ckpt, run_dir / "checkpoints" / "checkpoint_latest.pth")
    return run_dir


def test_export_weights_indexes_the_onnx_files_of_the_ema(site):
    """The files hold the EMA weights (the `exported` parity tests run them against the fp32 web file, which
    test_export.py checks is the EMA); index.json names them relative to itself, with the web file's config."""
    (entry,) = json.loads((site / "index.json").read_text())
    onnx = entry["onnx"]
    assert set(onnx) == {"decoder", "encoder", "config"}
    assert onnx["config"] == read_web_weights(site / "faces" / "model_fp32.safetensors")[0]
    for network in ("decoder", "encoder"):
        path = site / onnx[network]["file"]  # relative to index.json, as the modes' files
        assert onnx[network]["file"] == f"faces/{ONNX_FILES[network]}"
        assert onnx[network]["bytes"] == path.stat().st_size
        assert onnx[network]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    checkpoint = torch.load(site.parent / "results" / RUN / "checkpoints" / "checkpoint_latest.pth")
    ema = load_model_from_web_weights(site / "faces" / "model_fp32.safetensors").state_dict()
    assert all(torch.equal(ema[k], v.float()) for k, v in checkpoint["ema"].items())
    assert not all(torch.equal(ema[k], v.float()) for k, v in checkpoint["model"].items())


def test_no_onnx_removes_the_files_of_an_earlier_export(site, tmp_path, capsys):
    out_dir = tmp_path / "faces"
    shutil.copytree(site / "faces", out_dir)
    argv = ["--checkpoint", str(site.parent / "results" / RUN), "--output_dir", str(out_dir), "--mode", "q8"]
    export_weights.main(export_weights.parse_args([*argv, "--no-onnx"]))
    assert not list(out_dir.glob("*.onnx")), "ONNX files of other weights must not stay beside the new ones"
    assert not (out_dir / ONNX_RECORD).exists()
    assert "onnx:" not in capsys.readouterr().out


def test_decoder_only_export(tmp_path):
    model = perturb(build_model("psvae_tiny", image_size=16, z_dim=8, decoder="upsample", channel_mults=(1, 2)))
    described = export_onnx(model.train(), tmp_path, networks=("decoder",))
    assert set(described) == {"decoder"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ONNX_FILES["decoder"], ONNX_RECORD])
    assert model.training, "export_onnx puts the model back in the mode it was given"
    assert describe_onnx(tmp_path) == described
    model.eval()
    inputs = inputs_of(model, "decoder", 3, seed=0)
    got = session(tmp_path, "decoder").run(None, {"v": inputs["v"].numpy()})[0]
    np.testing.assert_allclose(got, reference(model, "decoder", inputs).numpy(), atol=TOLERANCE, rtol=0)


def test_exporter_failure_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    def broken(model, network):
        raise RuntimeError("unsupported operator aten::frobnicate\n<200 lines of exporter trace>")

    monkeypatch.setattr(onnx_export, "onnx_bytes", broken)
    with pytest.raises(OnnxExportError, match=r"ONNX export of the decoder failed \(unsupported operator") as caught:
        export_onnx(build_model("convnet_tiny", image_size=16), tmp_path)
    assert "\n" not in str(caught.value) and "--no-onnx" in str(caught.value)
    assert not list(tmp_path.iterdir()), "nothing is written when an export fails"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "is truncated or changed"),
        (lambda path: path.write_bytes(path.read_bytes()[:-1] + b"\x00"), "is corrupt"),
        (lambda path: path.unlink(), "is missing"),
    ],
)
def test_a_damaged_onnx_file_is_named_and_left_out_of_the_index(site, tmp_path, damage, words):
    """A copy cut short (or changed) after the export: the index keeps the model for WebGPU, without `onnx`."""
    shutil.copytree(site, tmp_path / "site")
    damage(tmp_path / "site" / "faces" / ONNX_FILES["encoder"])
    with pytest.raises(OnnxFileError, match=f"model_encoder.onnx' {words}.*re-export"):
        describe_onnx(tmp_path / "site" / "faces")
    with pytest.warns(UserWarning, match=f"leaves out the ONNX files of 'faces'.*{words}"):
        (entry,) = write_index(tmp_path / "site")
    assert "onnx" not in entry and set(entry["modes"]) == {"fp32"}
