"""ONNX export of the vqvae, ldm and somar families (engine/onnx_export.py, each family's OnnxExport): onnxruntime
runs every network to PyTorch's outputs at batch 1 and 3 from one file (tokens exactly), the graphs have the
contract's inputs and outputs, model_tensors.bin reads back as a sphere-web file holding exactly the named tensors,
and a damaged file is refused. Each network is exported once per module, from the smallest tiny configs."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from engine.onnx_export import (
    ONNX_FILES,
    OnnxFileError,
    describe_onnx,
    export_onnx,
    networks_of,
    onnx_export_of,
    unsupported_reason,
)
from engine.webformat import export_model, read_raw, read_web_weights, write_index
from models import build_model

TOLERANCE = 1e-5  # float32 through another op order, relative to the output's scale (at least 1)
# one level (no resampling) and attention only in the mid block: the exporter's time grows with the op count
AE = dict(image_size=16, ae_width=16, ae_mults=(1,), ae_res_blocks=1, latent_channels=4, ae_groups=8)  # 16x16x4 map
UNET = dict(unet_width=16, unet_mults=(1,), unet_res_blocks=1, unet_attn_levels=(), unet_groups=8, unet_heads=2)
VQVAE = dict(image_size=16, width=16, channel_mults=(1,), attn_at_lowest=False, codebook_size=32)  # 16x16 tokens
LEVELS = dict(level_patches=(0, 4), level_sizes=(4, 16))
PRIOR = dict(prior_width=16, prior_depth=1, prior_heads=2)
# graph inputs and outputs per model, as the page's CPU path reads them (docs/web_format.md §8)
GRAPHS = {
    "vqvae": {"encoder": (["x"], "tokens"), "decoder": (["tokens"], "x")},
    "ldm_latent": {"encoder": (["x"], "mean"), "decoder": (["z"], "x"), "unet": (["x", "t", "labels"], "out")},
    "somar_codebook_vqvae": {"encoder": (["x"], "maps"), "decoder": (["maps"], "x")},
}
TENSORS = {
    "vqvae": ["quantizer.embedding.weight"],
    "ldm_latent": ["latent_scale"],
    "somar_codebook_vqvae": ["levels.1.codes", "levels.1.grid"],
}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights (the UNet's zero-initialised head gives 0 otherwise) and SOM codes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        for name, buffer in model.named_buffers():
            if name.endswith(".codes"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator))
    return model.eval()


def build(name: str) -> torch.nn.Module:
    """A perturbed tiny model of each case of GRAPHS (and the kinds only checked in PyTorch)."""
    torch.manual_seed(0)
    vqvae = build_model("vqvae_tiny", **VQVAE)
    builders = {
        "vqvae": lambda: vqvae,
        "ldm_autoencoder": lambda: build_model("ldm_ae_tiny", **AE),
        "ldm_latent": lambda: build_model("ldm_tiny", **AE, **UNET, num_classes=3, latent_scale=0.8),
        "ldm_pixel": lambda: build_model("ddpm_tiny", image_size=16, **UNET, prediction="v"),
        "somar_autoencoder": lambda: build_model("somar_ae_tiny", **AE),
        "somar_codebook_vqvae": lambda: build_model(
            "somar_codebook_tiny", **AE, **LEVELS, autoencoder=vqvae.config.to_dict(), autoencoder_family="vqvae"
        ),
        "somar_prior": lambda: build_model("somar_prior_tiny", **AE, **LEVELS, **PRIOR),
    }
    return perturbed(builders[name]())


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def exported(request, tmp_path_factory):
    """(name, model, folder, export_onnx's answer), exported once per module."""
    model = build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, model, folder, export_onnx(model, folder)


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inputs_of(model, network: str, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs of a network at any batch size: images, tokens, latents or maps, timesteps over the whole schedule,
    classes with the null class."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {name: tuple(t.shape[1:]) for name, t in networks_of(model)[network].example(1).items()}
    config = model.config

    def noisy(shape):  # x_t of the UNet, a latent z or a map
        return torch.randn((batch, *shape), generator=gen)

    draw = {
        "x": lambda shape: noisy(shape) if network == "unet" else torch.rand((batch, *shape), generator=gen) * 2 - 1,
        "tokens": lambda shape: torch.randint(0, getattr(config, "codebook_size", 1), (batch, *shape), generator=gen),
        "t": lambda shape: torch.randint(0, getattr(config, "timesteps", 1), (batch,), generator=gen),
        "labels": lambda shape: torch.randint(0, config.num_classes + 1, (batch,), generator=gen),
        "z": noisy,
        "maps": noisy,
    }
    return {name: draw[name](shape) for name, shape in shapes.items()}


@torch.no_grad()
def reference(name: str, model, network: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the page computes, from the models' own methods (not the declared functions)."""
    if name == "vqvae":
        return model.encode(inputs["x"]) if network == "encoder" else model.decode_indices(inputs["tokens"])
    if network == "unet":
        return model(inputs["x"], inputs["t"], inputs.get("labels"))  # DiffusionModel.forward: the UNet's output
    if name == "ldm_latent":
        ae = model.autoencoder
        return ae.encode(inputs["x"])[0] if network == "encoder" else ae.decode(inputs["z"]).clamp(-1, 1)
    frozen = model.autoencoder  # somar codebook: FrozenMap
    if network == "encoder":
        return F.normalize(frozen.net.encode_latent(inputs["x"]), dim=1)  # a cosine vqvae: unit vectors per position
    return frozen.net.decode(inputs["maps"]).clamp(-1, 1)


def test_export_writes_the_declared_files_and_describes_them(exported):
    name, model, folder, described = exported
    assert list(described) == [*GRAPHS[name], *(["tensors"] if TENSORS[name] else [])]
    for key, entry in described.items():
        assert entry["file"] == ONNX_FILES[key] and entry["bytes"] == (folder / entry["file"]).stat().st_size
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(ONNX_FILES[k] for k in described), "model_onnx.json"])
    assert describe_onnx(folder) == described


def test_graph_inputs_outputs_and_dtypes(exported):
    name, model, folder, described = exported
    for network, (inputs, output) in GRAPHS[name].items():
        graph = session(folder / described[network]["file"])
        assert [i.name for i in graph.get_inputs()] == inputs
        assert [o.name for o in graph.get_outputs()] == [output]
        integers = {"tokens", "t", "labels"}
        for node in [*graph.get_inputs(), *graph.get_outputs()]:
            assert node.type == ("tensor(int64)" if node.name in integers else "tensor(float)"), node.name
            assert node.shape[0] == "batch", "the batch axis must be symbolic"


def test_onnxruntime_matches_pytorch_at_batch_1_and_3(exported):
    name, model, folder, described = exported
    for network in GRAPHS[name]:
        graph = session(folder / described[network]["file"])
        for batch in (1, 3):
            inputs = inputs_of(model, network, batch, seed=batch)
            expected = reference(name, model, network, inputs)
            got = graph.run(None, {key: tensor.numpy() for key, tensor in inputs.items()})[0]
            assert got.shape == tuple(expected.shape)
            if output_is_tokens := expected.dtype == torch.int64:
                np.testing.assert_array_equal(got, expected.numpy())
                assert len(np.unique(got)) > 1, "perturbed weights must use several codes"
                continue
            assert not output_is_tokens and expected.abs().max() > 0.05, "perturbed weights: a non-trivial output"
            scale = max(1.0, expected.abs().max().item())
            np.testing.assert_allclose(got, expected.numpy(), atol=TOLERANCE * scale, rtol=0, err_msg=network)


def test_pixel_ldm_declares_an_unconditional_unet_alone():
    """A pixel model's one network (not exported here: the latent model's UNet is the same network with labels)."""
    model = build("ldm_pixel")
    declared = networks_of(model)
    assert list(declared) == ["unet"] and onnx_export_of(model).tensors(model) == ()
    example = declared["unet"].example(3)
    assert list(example) == ["x", "t"] and example["x"].shape == (3, 3, 16, 16) and example["t"].dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(declared["unet"].fn(model, *example.values()), model(example["x"], example["t"]))


def test_unet_inputs_are_wired(exported):
    """t (and labels) change the UNet's output: constants in their place would also pass the parity test."""
    name, model, folder, described = exported
    if "unet" not in described:
        return
    graph = session(folder / described["unet"]["file"])
    inputs = {key: t.numpy() for key, t in inputs_of(model, "unet", 2, seed=7).items()}
    first = graph.run(None, {**inputs, "t": np.array([10, 10])})[0]
    assert np.abs(first - graph.run(None, {**inputs, "t": np.array([900, 900])})[0]).max() > 1e-3
    if "labels" in inputs:
        other = graph.run(None, {**inputs, "t": np.array([10, 10]), "labels": np.array([0, 3])})[0]
        swapped = graph.run(None, {**inputs, "t": np.array([10, 10]), "labels": np.array([3, 0])})[0]
        assert np.abs(other - swapped).max() > 1e-3


def test_tensors_file_reads_back_as_a_web_file_of_exactly_the_named_tensors(exported):
    name, model, folder, described = exported
    if not TENSORS[name]:
        assert "tensors" not in described
        return
    path = folder / described["tensors"]["file"]
    metadata, tensors = read_raw(path)
    assert metadata["format"] == "sphere-web" and metadata["mode"] == "fp32"
    assert sorted(tensors) == sorted(TENSORS[name])
    state = model.state_dict()
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[key].float()), key
    config, _, _ = read_web_weights(path)  # the config checks every web file gets
    assert config == model.config.to_dict()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-4]), "is truncated or changed"),
        (lambda path: path.write_bytes(path.read_bytes()[:-1] + b"\x01"), "is corrupt"),
    ],
)
def test_a_damaged_tensors_file_is_refused(exported, tmp_path, damage, words):
    name, _, folder, described = exported
    if "tensors" not in described:
        return
    shutil.copytree(folder, tmp_path / name)
    damage(tmp_path / name / ONNX_FILES["tensors"])
    with pytest.raises(OnnxFileError, match=f"model_tensors.bin' {words}"):
        describe_onnx(tmp_path / name)


def test_index_carries_every_file_and_the_config(exported, tmp_path):
    """index.json's `onnx` object names each file relative to itself, with the web file's config."""
    name, model, folder, described = exported
    shutil.copytree(folder, tmp_path / name)
    export_model(model, tmp_path / name / "model_fp32.safetensors", "fp32")
    (entry,) = write_index(tmp_path)
    assert set(entry["onnx"]) == {*described, "config"} and entry["onnx"]["config"] == model.config.to_dict()
    assert all(entry["onnx"][key]["file"] == f"{name}/{ONNX_FILES[key]}" for key in described)


@pytest.mark.parametrize(
    ("name", "networks", "tensors"),
    [
        ("ldm_autoencoder", ["encoder", "decoder"], []),
        ("somar_autoencoder", ["encoder", "decoder"], []),
        ("somar_prior", ["encoder", "decoder"], ["codebook.levels.1.codes", "codebook.levels.1.grid"]),
    ],
)
def test_other_kinds_declare_the_contract_networks(name, networks, tensors):
    """The kinds not exported above: the declared networks compute what the page does (the exporter is the same)."""
    model = build(name)
    declared = networks_of(model)
    assert list(declared) == networks and list(onnx_export_of(model).tensors(model)) == tensors
    assert all(key in model.state_dict() for key in tensors)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        maps = declared["encoder"].fn(model, x)
        if name == "ldm_autoencoder":
            expected, images = model.encode(x)[0], model.decode(maps).clamp(-1, 1)
        else:  # the somar autoencoder's tanh map, itself or as a prior's codebook's
            net = model.codebook.autoencoder.net if name == "somar_prior" else model
            expected, images = torch.tanh(net.encoder(x)), net.decoder(maps).clamp(-1, 1)
        assert torch.equal(maps, expected)
        assert torch.equal(declared["decoder"].fn(model, maps), images)


@pytest.mark.parametrize(
    ("case", "words"), [("fsq", "quantizer 'fsq' have no web export"), ("prior", "prior over a vqvae's tokens")]
)
def test_models_the_page_does_not_show_get_no_files(case, words, tmp_path, caplog):
    if case == "fsq":
        model = build_model("vqvae_tiny", image_size=16, width=16, channel_mults=(1, 2), quantizer="fsq")
    else:
        tokenizer = build_model("vqvae_tiny", **VQVAE)
        model = build_model("somar_prior_tiny", **AE, **PRIOR, codebook=tokenizer.config.to_dict())
    assert words in unsupported_reason(model)
    assert export_onnx(model, tmp_path) is None
    assert export_onnx(model, tmp_path) is None
    assert not list(tmp_path.iterdir())
    assert sum(words in record.message for record in caplog.records) <= 1, "the reason is logged once"


def test_asking_for_a_network_the_model_lacks_names_those_it_has(tmp_path):
    with pytest.raises(ValueError, match=r"no ONNX network \['unet'\]; it has encoder, decoder"):
        export_onnx(build("vqvae"), tmp_path, networks=("unet",))
    assert not list(tmp_path.iterdir())
