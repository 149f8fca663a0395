"""sphere-web weight format (engine/webformat.py, docs/web_format.md): quantization, round trips per mode,
BatchNorm folding, safetensors compatibility, file sizes and the reader's rejections."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import safetensors
import safetensors.torch
import torch

from engine.webformat import (
    MODES,
    WebFormatError,
    dequantize_groups,
    export_model,
    load_model_from_web_weights,
    quantize_groups,
    read_raw,
    read_web_weights,
    write_index,
)
from models import build_model

# Per-mode tolerances against the PyTorch model on the same inputs (tiny 16 px models, weights + N(0, 0.02)).
# fp32 is exact up to BatchNorm folding (measured max |diff| <= 1.1e-8). Measured worst cases over 3 seeds:
# fp16 max |diff| 1.8e-3; relative L2 error of decoder images / encoder latents: fp16 1.3e-3, q8 2.3e-2,
# q4 0.40 (GroupNorm convnet: random conv stacks amplify 4-bit noise; vit q4 <= 0.13). Bounds ~2-4x above.
FP32_MAX_ABS = 1e-5
FP16_MAX_ABS = 1e-2
REL_L2 = {"fp32": 1e-6, "fp16": 5e-3, "q8": 6e-2, "q4": 0.6}

MODEL_CASES = {
    "vit": ("vit_tiny", {}),
    "vit_cond": ("vit_tiny", {"num_classes": 3}),
    "convnet": ("convnet_tiny", {}),
    "convnet_batchnorm_cond": ("convnet_tiny", {"norm": "batch", "num_classes": 3}),
}


def perturbed_model(name: str, image_size: int = 16, seed: int = 0, **overrides):
    """A model with non-trivial weights everywhere (output heads start at zero) and, for BatchNorm, running
    statistics gathered by a few train-mode forwards; returned in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, image_size=image_size, **overrides)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        if overrides.get("norm") == "batch":
            model.train()
            for _ in range(3):
                model.encode(torch.randn(8, 3, image_size, image_size) * 2 + 0.5)
                model.decode(model.project(torch.randn(8, *model.latent_shape)) * 1.5)
    return model.eval()


def model_inputs(model, seed: int = 1):
    """(images, points on the sphere, labels or None) shared by the reference and the exported model."""
    gen = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    images = torch.rand(4, 3, size, size, generator=gen) * 2 - 1
    latents = model.project(torch.randn(4, *model.latent_shape, generator=gen))
    labels = torch.tensor([0, 1, 2, 3]) if model.config.num_classes else None
    return images, latents, labels


def outputs(model, images, latents, labels):
    with torch.no_grad():
        return model.decode(latents, labels), model.encode(images, labels)


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module", params=sorted(MODEL_CASES))
def reference(request):
    name, overrides = MODEL_CASES[request.param]
    model = perturbed_model(name, **overrides)
    inputs = model_inputs(model)
    return model, inputs, outputs(model, *inputs)


@pytest.fixture(scope="module")
def batchnorm_model():
    return perturbed_model("convnet_tiny", norm="batch", num_classes=3)


# ---- quantization helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("cols", [32, 45, 7])
def test_quantize_round_trip_error_within_half_step(bits, cols):
    torch.manual_seed(0)
    weight = torch.randn(5, cols)
    packed, scales = quantize_groups(weight, bits, group_size=16)
    assert scales.dtype == torch.float16 and scales.shape == (5, math.ceil(cols / 16))
    assert packed.shape == ((5, cols) if bits == 8 else (5, math.ceil(cols / 2)))
    restored = dequantize_groups(packed, scales, bits, cols, group_size=16)
    step = scales.float().repeat_interleave(16, dim=1)[:, :cols]
    assert torch.all((restored - weight).abs() <= step * 0.5 + 1e-6)


def test_q4_nibble_order_low_nibble_is_even_column():
    weight = torch.tensor([[7.0, -7.0, 0.0, 1.0, 2.0]])  # one group, scale = 1
    packed, scales = quantize_groups(weight, 4, group_size=32)
    assert scales.float().tolist() == [[1.0]]
    # (q + 8): 15, 1 | 8, 9 | 10, pad 0  -> bytes low | high << 4
    assert packed.tolist() == [[15 | 1 << 4, 8 | 9 << 4, 10]]


def test_q8_values_and_short_last_group():
    weight = torch.cat([torch.full((1, 32), 0.5), torch.tensor([[2.54, -1.0]])], dim=1)  # groups of 32 and 2
    packed, scales = quantize_groups(weight, 8, group_size=32)
    assert torch.allclose(scales.float(), torch.tensor([[0.5 / 127, 2.54 / 127]]), rtol=1e-3)
    assert packed[0, :32].eq(127).all() and packed[0, 32:].tolist() == [127, -50]


def test_zero_groups_give_zero_scale_and_no_nan():
    weight = torch.zeros(3, 40)
    weight[1, 35] = 1e-9  # underflows the fp16 scale: treated as zero
    for bits in (8, 4):
        packed, scales = quantize_groups(weight, bits, group_size=32)
        restored = dequantize_groups(packed, scales, bits, 40, group_size=32)
        assert torch.isfinite(restored).all() and restored.abs().max() == 0


# ---- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_matches_pytorch_model(reference, mode, tmp_path):
    model, inputs, (ref_images, ref_latents) = reference
    path = tmp_path / f"model_{mode}.safetensors"
    summary = export_model(model, path, mode)
    assert summary["bytes"] == path.stat().st_size
    loaded = load_model_from_web_weights(path)
    assert not loaded.training
    images, latents = outputs(loaded, *inputs)
    if mode == "fp32":
        assert (images - ref_images).abs().max() <= FP32_MAX_ABS
        assert (latents - ref_latents).abs().max() <= FP32_MAX_ABS
    if mode == "fp16":
        assert (images - ref_images).abs().max() <= FP16_MAX_ABS
    assert relative_l2(images, ref_images) <= REL_L2[mode]
    assert relative_l2(latents, ref_latents) <= REL_L2[mode]
    assert ref_images.abs().max() > 1e-2  # the comparison is not trivially between zeros


def test_quantized_modes_are_not_lossless(reference, tmp_path):
    """A test that would pass with q4 == fp32 cannot catch a broken quantizer."""
    model, inputs, (ref_images, _) = reference
    export_model(model, tmp_path / "q4.safetensors", "q4")
    images, _ = outputs(load_model_from_web_weights(tmp_path / "q4.safetensors"), *inputs)
    assert relative_l2(images, ref_images) > 1e-4


def test_state_dict_is_complete_and_float32(batchnorm_model, tmp_path):
    model = batchnorm_model
    export_model(model, tmp_path / "m.safetensors", "q8")
    config, state, metadata = read_web_weights(tmp_path / "m.safetensors")
    assert config == model.config.to_dict()
    assert set(state) == set(model.state_dict())
    assert all(t.dtype == torch.float32 for k, t in state.items() if not k.endswith("num_batches_tracked"))
    assert metadata["mode"] == "q8" and metadata["group_size"] == "32"


def test_batchnorm_is_folded(batchnorm_model, tmp_path):
    model = batchnorm_model
    export_model(model, tmp_path / "m.safetensors", "fp32")
    metadata, tensors = read_raw(tmp_path / "m.safetensors")
    assert metadata["bn_folded"] == "true"
    assert not any(".norm1." in name or ".norm2." in name for name in tensors)
    assert not any("running_" in name or "num_batches" in name for name in tensors)
    assert {"decoder.out_norm.weight", "decoder.out_norm.bias"} <= set(tensors)
    norm = model.decoder.out_norm  # stored as the affine y = x * weight + bias
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(tensors["decoder.out_norm.weight"], scale, atol=1e-6)
    assert torch.allclose(tensors["decoder.out_norm.bias"], norm.bias - norm.running_mean * scale, atol=1e-6)


def test_precision_policy_keeps_small_and_edge_tensors_fp16(tmp_path):
    model = perturbed_model("vit_tiny")
    export_model(model, tmp_path / "m.safetensors", "q4")
    metadata, tensors = read_raw(tmp_path / "m.safetensors")
    quantized = json.loads(metadata["quantization"])
    assert "decoder.blocks.0.attn.qkv.weight" in quantized
    assert tensors["decoder.blocks.0.attn.qkv.weight.q4"].dtype == torch.uint8
    for kept in (
        "encoder.patch_embed.weight",
        "decoder.head_out.weight",
        "decoder.blocks.0.attn.qkv.bias",
        "decoder.blocks.0.norm1.weight",
        "decoder.mixer.blocks.0.token_scale",
    ):
        assert kept not in quantized and tensors[kept].dtype == torch.float16


def test_sampling_from_an_exported_file(tmp_path):
    model = perturbed_model("vit_tiny", num_classes=3)
    export_model(model, tmp_path / "m.safetensors", "q8", source={"checkpoint": "x.pth", "ema": True})
    loaded = load_model_from_web_weights(tmp_path / "m.safetensors")
    images = loaded.sample(2, steps=2, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 2]))
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def test_fp16_overflow_is_an_error(tmp_path):
    model = perturbed_model("vit_tiny")
    with torch.no_grad():
        model.decoder.head.bias[0] = 1e6
    with pytest.raises(WebFormatError, match="fp16 range"):
        export_model(model, tmp_path / "m.safetensors", "fp16")


# ---- layout, safetensors compatibility, size ----------------------------------------------------------


def data_start_and_header(path) -> tuple[int, dict]:
    blob = path.read_bytes()
    length = int.from_bytes(blob[:8], "little")
    return 8 + length, json.loads(blob[8 : 8 + length])


@pytest.mark.parametrize("mode", MODES)
def test_file_is_valid_safetensors_with_aligned_tensors(batchnorm_model, mode, tmp_path):
    model = batchnorm_model
    path = tmp_path / "m.safetensors"
    export_model(model, path, mode)
    with safetensors.safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["format"] == "sphere-web" and metadata["version"] == "2" and metadata["mode"] == mode
    assert json.loads(metadata["config"]) == model.config.to_dict()
    assert set(safetensors.torch.load_file(str(path))) == keys
    start, header = data_start_and_header(path)
    assert start % 8 == 0
    for name, entry in header.items():
        if name != "__metadata__" and not name.startswith("__pad__."):
            assert entry["data_offsets"][0] % 4 == 0, name
    if mode == "q4":
        assert any(name.startswith("__pad__.") for name in header)  # odd-sized q4/fp16 tensors get padded


def test_q4_file_is_at_most_16_percent_of_fp32(tmp_path):
    """Measured: convnet_tiny (0.49M params, weight-dominated) q4 14.9%, q8 27.3%; convnet_small 14.4%."""
    model = build_model("convnet_tiny", image_size=16)
    sizes = {mode: export_model(model, tmp_path / f"{mode}.safetensors", mode)["bytes"] for mode in MODES}
    assert sizes["q4"] <= 0.16 * sizes["fp32"]
    assert sizes["q8"] <= 0.28 * sizes["fp32"]
    assert sizes["fp16"] <= 0.51 * sizes["fp32"]


# ---- rejections ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "model_q4.safetensors"
    export_model(perturbed_model("vit_tiny"), path, "q4")
    return path


def rewrite_header(source, target, edit) -> None:
    """Copy a file with edit(header dict) applied to its JSON header (data section unchanged)."""
    start, header = data_start_and_header(source)
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    target.write_bytes(len(text).to_bytes(8, "little") + text + source.read_bytes()[start:])


def first_tensor(header: dict) -> str:
    return next(name for name in header if name != "__metadata__")


def set_metadata(key, value):
    return lambda header: header["__metadata__"].__setitem__(key, value)


def set_entry(field, value, name=None):
    def edit(header):
        header[name or first_tensor(header)][field] = value

    return edit


def shift_out_of_range(header):
    entry = header[first_tensor(header)]
    length = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [10**9, 10**9 + length]


def overlap_second_tensor(header):
    names = [name for name in header if name != "__metadata__"]
    entry = header[names[1]]
    length = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [0, length]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (set_metadata("format", "pytorch"), ["wrong magic", "pytorch"]),
        (lambda header: header.pop("__metadata__"), ["wrong magic", "__metadata__"]),
        (set_metadata("version", "3"), ["unsupported version", "'3'"]),
        (set_metadata("version", "1"), ["unsupported version", "'1'", "re-export"]),  # v1 had no checksum
        (lambda header: header["__metadata__"].pop("data_sha256"), ["lacks 'data_sha256'", "re-export"]),
        (set_metadata("mode", "q3"), ["unknown mode"]),
        (set_entry("dtype", "BF17"), ["unknown dtype", "BF17"]),
        (shift_out_of_range, ["out of range"]),
        (overlap_second_tensor, ["overlap"]),
        (set_entry("shape", [3, 3]), ["shape/byte-length mismatch"]),
        (set_entry("data_offsets", [8, 4]), ["bad data_offsets"]),
    ],
)
def test_reader_rejects_bad_headers(good_file, tmp_path, edit, words):
    bad = tmp_path / "bad.safetensors"
    rewrite_header(good_file, bad, edit)
    with pytest.raises(WebFormatError) as error:
        read_web_weights(bad)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


@pytest.mark.parametrize(
    ("cut", "words"),
    [
        (lambda n: 4, ["truncated", "8-byte"]),
        (lambda n: 100, ["truncated", "header"]),
        (lambda n: n - 10, ["truncated", "data bytes"]),
        (lambda n: n // 2, ["truncated"]),
    ],
)
def test_reader_rejects_truncated_files(good_file, tmp_path, cut, words):
    blob = good_file.read_bytes()
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(blob[: cut(len(blob))])
    with pytest.raises(WebFormatError) as error:
        read_web_weights(bad)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_reader_rejects_other_files(good_file, tmp_path):
    garbage = tmp_path / "image.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(WebFormatError, match="wrong magic"):
        read_web_weights(garbage)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(4)}, str(plain))
    with pytest.raises(WebFormatError, match="wrong magic"):
        read_web_weights(plain)
    trailing = tmp_path / "trailing.safetensors"
    trailing.write_bytes(good_file.read_bytes() + bytes(8))
    with pytest.raises(WebFormatError, match="trailing bytes"):
        read_web_weights(trailing)
    with pytest.raises(WebFormatError, match="cannot read"):
        read_web_weights(tmp_path / "missing.safetensors")


def test_reader_rejects_inconsistent_quantization_entry(good_file, tmp_path):
    def drop_scales(header):
        quantization = json.loads(header["__metadata__"]["quantization"])
        name = next(iter(quantization))
        quantization[name]["scales"] = "no.such.tensor"
        header["__metadata__"]["quantization"] = json.dumps(quantization)

    bad = tmp_path / "bad.safetensors"
    rewrite_header(good_file, bad, drop_scales)
    with pytest.raises(WebFormatError, match="quantization entry"):
        read_web_weights(bad)


# ---- data checksum (format version 2) -------------------------------------------------------------------


def test_data_sha256_covers_every_byte_after_the_header(good_file):
    start, header = data_start_and_header(good_file)
    digest = hashlib.sha256(good_file.read_bytes()[start:]).hexdigest()
    assert header["__metadata__"]["data_sha256"] == digest and digest == digest.lower() and len(digest) == 64


@pytest.mark.parametrize("where", [0.0, 0.5, -1])
def test_flipped_data_byte_is_corrupt(good_file, tmp_path, where):
    blob = bytearray(good_file.read_bytes())
    start, _ = data_start_and_header(good_file)
    index = len(blob) - 1 if where == -1 else start + int(where * (len(blob) - start))
    blob[index] ^= 0x01
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(blob))
    with pytest.raises(WebFormatError) as error:
        read_web_weights(bad)
    assert str(error.value) == f"web weight file '{bad}' is corrupt (data checksum mismatch); re-export it"


# ---- configs this code cannot build ---------------------------------------------------------------------


def edit_config(**changes):
    def edit(header):
        config = json.loads(header["__metadata__"]["config"])
        for key, value in changes.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        header["__metadata__"]["config"] = json.dumps(config)

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (edit_config(latent_dim=1000), ["cannot build", "latent_dim 1000"]),
        (edit_config(backbone="resnet"), ["cannot build", "resnet"]),
        (edit_config(heads=5), ["cannot build"]),  # width 192 / 5 heads: an AssertionError in the layers
        (edit_config(width=-8), ["cannot build"]),
        (edit_config(colour="blue"), ["cannot build", "colour"]),
        (edit_config(image_size=None), ["config lacks", "image_size"]),
        (set_metadata("config", "[1, 2]"), ["config lacks"]),
        (set_metadata("config", "{not json"), ["not valid JSON"]),
    ],
)
def test_reader_rejects_bad_configs(good_file, tmp_path, edit, words):
    bad = tmp_path / "bad_config.safetensors"
    rewrite_header(good_file, bad, edit)
    for read in (read_web_weights, load_model_from_web_weights):
        with pytest.raises(WebFormatError) as error:
            read(bad)
        message = str(error.value)
        assert "\n" not in message and all(word in message for word in words), message


def test_group_size_out_of_range_is_an_error(tmp_path):
    model = perturbed_model("vit_tiny")
    for group_size in (0, 10**9):
        with pytest.raises(WebFormatError, match="group_size must be in 1..1024"):
            export_model(model, tmp_path / "m.safetensors", "q4", group_size=group_size)
    assert not (tmp_path / "m.safetensors").exists()


def test_index_leaves_out_unreadable_folders(good_file, tmp_path):
    good, broken = tmp_path / "good", tmp_path / "broken"
    good.mkdir()
    broken.mkdir()
    (good / "model_q4.safetensors").write_bytes(good_file.read_bytes())
    (broken / "model_q4.safetensors").write_bytes(b"\x00" * 4)
    with pytest.warns(UserWarning, match="leaves out 'broken'"):
        entries = write_index(tmp_path)
    assert [entry["name"] for entry in entries] == ["good"]
