"""The vqvae family in the sphere-web format: every mode written and read back, the rebuilt tokenizer against the
PyTorch one, the codebook never quantized, training statistics written reset, FSQ refused in one line, index.json."""

from __future__ import annotations

import json

import pytest
import torch

from engine.webformat import MODES, WebFormatError, export_model, load_model_from_web_weights, read_raw, write_index
from models import build_model

# Tolerances as tests/test_webformat.py (relative L2 of images / latents against the PyTorch model).
FP32_MAX_ABS = 1e-5
REL_L2 = {"fp32": 1e-6, "fp16": 5e-3, "q8": 6e-2, "q4": 0.6}
TINY = dict(image_size=16, width=16, channel_mults=(1, 2), codebook_size=64)
CODEBOOK = "quantizer.embedding.weight"


def perturbed_vqvae(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model("vqvae_tiny", **{**TINY, **overrides})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def tokenizer():
    model = perturbed_vqvae()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    tokens = torch.randint(0, 64, (3, 8, 8), generator=gen)
    with torch.no_grad():
        return model, images, tokens, model.decode_indices(tokens), model.encode_latent(images), model.encode(images)


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_matches_pytorch_vqvae(tokenizer, mode, tmp_path):
    model, images, tokens, ref_images, ref_latent, ref_tokens = tokenizer
    path = tmp_path / f"model_{mode}.safetensors"
    export_model(model, path, mode)
    loaded = load_model_from_web_weights(path)
    with torch.no_grad():
        decoded, latent, encoded = loaded.decode_indices(tokens), loaded.encode_latent(images), loaded.encode(images)
    if mode == "fp32":
        assert (decoded - ref_images).abs().max() <= FP32_MAX_ABS
        assert torch.equal(encoded, ref_tokens)
    assert relative_l2(decoded, ref_images) <= REL_L2[mode]
    assert relative_l2(latent, ref_latent) <= REL_L2[mode]
    assert ref_images.abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_codebook_is_never_quantized(tokenizer, mode, tmp_path):
    model = tokenizer[0]
    path = tmp_path / f"model_{mode}.safetensors"
    export_model(model, path, mode)
    metadata, tensors = read_raw(path)
    quantized = json.loads(metadata["quantization"])
    assert CODEBOOK not in quantized
    assert tensors[CODEBOOK].dtype == (torch.float32 if mode == "fp32" else torch.float16)
    stored = model.state_dict()[CODEBOOK]
    assert torch.equal(tensors[CODEBOOK].float(), stored if mode == "fp32" else stored.half().float())
    assert tensors["encoder.levels.0.blocks.0.norm1.weight"].dtype == tensors[CODEBOOK].dtype  # GroupNorm: small
    if mode in ("q8", "q4"):
        assert quantized and not {"encoder.conv_in.weight", "decoder.conv_out.weight"} & set(quantized)


def test_quantizer_statistics_are_written_reset(tmp_path):
    model = perturbed_vqvae()
    model.quantizer.counts.fill_(1e6)  # a mid-epoch count beyond fp16's range
    export_model(model, tmp_path / "model_fp16.safetensors", "fp16")
    _, tensors = read_raw(tmp_path / "model_fp16.safetensors")
    assert tensors["quantizer.counts"].abs().max() == 0
    assert load_model_from_web_weights(tmp_path / "model_fp16.safetensors").quantizer.initialized


def test_fsq_export_is_one_line_error(tmp_path):
    model = build_model("vqvae_tiny", image_size=16, width=16, channel_mults=(1, 2), quantizer="fsq").eval()
    with pytest.raises(WebFormatError, match="quantizer 'fsq' have no web export yet") as error:
        export_model(model, tmp_path / "model_fp32.safetensors", "fp32")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model_fp32.safetensors").exists()


def test_index_entry_has_the_codebook_fields(tokenizer, tmp_path):
    export_model(tokenizer[0], tmp_path / "tok" / "model_q8.safetensors", "q8")
    (entry,) = write_index(tmp_path)
    assert entry["family"] == "vqvae"
    assert {k: entry[k] for k in ("codebook_size", "codebook_dim", "downsample_factor", "token_grid", "quantizer")} == {
        "codebook_size": 64,
        "codebook_dim": 8,
        "downsample_factor": 2,
        "token_grid": [8, 8],
        "quantizer": "vq",
    }
