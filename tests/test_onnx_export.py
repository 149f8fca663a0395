"""ONNX export (engine/onnx_export.py): onnxruntime runs the files to PyTorch's outputs for the sphere and psvae
families, conditional or not, at any batch size from one file; other families get no files."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.onnx_export import ONNX_FILES, export_onnx
from models import build_model
from tests.helpers import perturb

TOLERANCE = 1e-4  # float32 through a different op order; a wrong op is off by O(1)
# name -> (registry name, overrides); tiny 16 px models so that each export takes seconds
MODELS = {
    "vit_cond": ("vit_tiny", dict(image_size=16, num_classes=10)),
    "convnet": ("convnet_tiny", dict(image_size=16)),
    "psvae_vit_cond": (
        "psvae_tiny",
        dict(image_size=16, z_dim=8, backbone="vit", vit_width=32, heads=2, num_classes=10),
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """(model with perturbed weights, its folder, export_onnx's answer), exported once per module."""
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
    labels = null)."""
    model, folder, _ = exported
    if not model.config.num_classes:
        pytest.skip("unconditional model")
    inputs = {name: t.numpy() for name, t in inputs_of(model, "decoder", 2, seed=5).items()}
    graph = session(folder, "decoder")
    first = graph.run(None, {**inputs, "labels": np.array([0, 1])})[0]
    second = graph.run(None, {**inputs, "labels": np.array([2, model.config.num_classes])})[0]
    assert np.abs(first - second).max() > 1e-3


def test_other_families_get_no_files(tmp_path, caplog):
    model = build_model("vqvae_tiny", image_size=16)
    assert export_onnx(model, tmp_path) is None
    assert export_onnx(model, tmp_path) is None
    assert not list(tmp_path.iterdir())
    assert sum("no ONNX files" in record.message for record in caplog.records) <= 1, "the reason is logged once"


def test_signal_psvae_gets_no_files(tmp_path):
    model = build_model("psvae_tiny", backbone="conv1d", signal_length=32, in_channels=2, z_dim=3)
    assert export_onnx(model, tmp_path) is None
    assert not list(tmp_path.iterdir())
