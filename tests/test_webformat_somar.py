"""The somar family in the sphere-web format: every kind (autoencoder, codebook over a somar, vqvae or ldm autoencoder,
prior over a somar codebook or a vqvae's tokens) written in every mode and read back against the PyTorch model, the
fp16 policy (SOM codes and grids, the autoencoder's edges, the prior's heads), the SOM statistics written reset, and
the index.json fields the page reads."""

from __future__ import annotations

import json

import pytest
import torch

from engine.web_somar import SOMAR_WEB, somar_edge_layers
from engine.webformat import MODES, WebFormatError, export_model, load_model_from_web_weights, read_raw, write_index
from models import build_model

REL_L2 = {"fp32": 1e-6, "fp16": 5e-3, "q8": 6e-2, "q4": 0.6}
AE = dict(image_size=16, ae_width=16, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8)  # 8x8x4 map
LEVELS = dict(level_patches=(0, 2), level_sizes=(4, 16))  # 1 coarse token, 16 fine tokens of 16 values on a 4x4 SOM
PRIOR = dict(prior_width=16, prior_depth=1, prior_heads=2)
VQVAE = dict(image_size=16, width=16, channel_mults=(1, 2), codebook_size=32)
LDM_AE = dict(image_size=16, ae_width=16, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and SOM codes (a fitted map's statistics too, which the file must not carry)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
        for name, buffer in model.named_buffers():
            if name.endswith(".codes"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.5)
            elif name.endswith((".counts", ".steps_done", ".vectors_seen")):
                buffer.fill_(70000)  # beyond fp16: written reset, so every mode still exports
            elif name.endswith(".initialized"):
                buffer.fill_(True)
    return model.eval()


def stage_one(family: str, seed: int) -> torch.nn.Module:
    stages = {"somar": ("somar_ae_tiny", AE), "vqvae": ("vqvae_tiny", VQVAE), "ldm": ("ldm_ae_tiny", LDM_AE)}
    name, settings = stages[family]
    return perturbed(build_model(name, **settings), seed)


def build(kind: str, family: str = "somar", seed: int = 0) -> torch.nn.Module:
    """A perturbed tiny model of a kind; `family`: the codebook's autoencoder (codebook) or "vqvae" tokens (prior)."""
    if kind == "autoencoder":
        return stage_one("somar", seed)
    if kind == "prior" and family == "vqvae":
        tokenizer = stage_one("vqvae", seed + 1)
        model = build_model("somar_prior_tiny", **AE, **PRIOR, codebook=tokenizer.config.to_dict())
        model.codebook.net.load_state_dict(tokenizer.state_dict())
        return perturbed(model, seed)
    if kind == "prior":
        return perturbed(build_model("somar_prior_tiny", **AE, **LEVELS, **PRIOR), seed)
    ae = stage_one(family, seed + 1)
    settings = {**AE, **LEVELS}
    if family != "somar":
        settings |= dict(autoencoder=ae.config.to_dict(), autoencoder_family=family)
    model = build_model("somar_codebook_tiny", **settings)
    model.autoencoder.net.load_state_dict(ae.state_dict())
    return perturbed(model, seed)


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@torch.no_grad()
def outputs(model: torch.nn.Module, through_tokens: bool = False) -> torch.Tensor:
    """What a file must reproduce: the autoencoder's round trip, or the decode of fixed tokens (what the page paints)
    and the frozen autoencoder's continuous round trip; through_tokens: the reconstruction through the codebook
    (BMUs: a rounding may flip one, so only fp32 files compare it)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    if model.config.kind == "autoencoder":
        return model.reconstruct(x).flatten()
    codebook = model.codebook if model.config.kind == "prior" else model
    tokens = torch.randint(0, codebook.vocab_sizes[-1], (2, codebook.segment_lengths[-1]), generator=gen)
    if through_tokens:
        return model.reconstruct(x).flatten()
    if hasattr(codebook, "autoencoder"):
        round_trip = codebook.autoencoder.decode(codebook.autoencoder.encode(x))
    else:  # a vqvae tokenizer: its own continuous round trip
        round_trip = codebook.net.decode(codebook.net.encode_latent(x))
    return torch.cat([codebook.decode_tokens(tokens).flatten(), round_trip.flatten()])


CASES = [("autoencoder", "somar"), ("codebook", "somar"), ("codebook", "vqvae"), ("codebook", "ldm")]
CASES += [("prior", "somar"), ("prior", "vqvae")]


@pytest.mark.parametrize(("kind", "family"), CASES)
@pytest.mark.parametrize("mode", MODES)
def test_every_kind_and_mode_round_trips(tmp_path, kind, family, mode):
    model = build(kind, family)
    path = tmp_path / f"model_{mode}.safetensors"
    export_model(model, path, mode)
    loaded = load_model_from_web_weights(path)
    assert type(loaded) is type(model) and loaded.config.to_dict() == model.config.to_dict()
    assert relative_l2(outputs(loaded), outputs(model)) <= REL_L2[mode]
    if mode == "fp32" and kind != "autoencoder":
        assert relative_l2(outputs(loaded, True), outputs(model, True)) <= REL_L2[mode]


def test_q4_keeps_som_codes_edges_and_heads_fp16_and_resets_statistics(tmp_path):
    model = build("prior")
    export_model(model, tmp_path / "m.safetensors", "q4")
    metadata, tensors = read_raw(tmp_path / "m.safetensors")
    quantized = json.loads(metadata["quantization"])
    assert quantized, "the autoencoder's and the prior's large weights are quantized"
    ae = "codebook.autoencoder.net."
    for name in (
        "codebook.levels.1.codes",
        "codebook.levels.1.grid",
        f"{ae}encoder.conv_in.weight",
        f"{ae}encoder.conv_out.weight",
        f"{ae}decoder.conv_in.weight",
        f"{ae}decoder.conv_out.weight",
        "prior.heads.1.weight",
    ):
        assert name not in quantized and tensors[name].dtype == torch.float16, name
    codes = model.codebook.levels[1].codes
    assert torch.equal(tensors["codebook.levels.1.codes"].float(), codes.half().float())  # never quantized
    assert torch.equal(tensors["codebook.levels.1.grid"].float(), model.codebook.levels[1].grid.float())
    for name in ("steps_done", "counts", "vectors_seen", "error_sums"):
        assert not tensors[f"codebook.levels.0.{name}"].any(), name
    assert tensors["codebook.levels.0.initialized"].item() == 1


def test_a_vqvae_autoencoders_latent_side_is_an_edge():
    config = build("codebook", "vqvae").config.to_dict()
    edges = somar_edge_layers(config)
    latent_side = {"autoencoder.net.quant_conv", "autoencoder.net.post_quant_conv"}
    assert latent_side | {"autoencoder.net.encoder.conv_in", "autoencoder.net.decoder.conv_out"} <= edges
    prior = build("prior", "vqvae").config.to_dict()
    assert {"codebook.net.encoder.conv_in", "codebook.net.post_quant_conv", "prior.heads.0"} <= somar_edge_layers(prior)


def test_index_entries_carry_the_codebook_grid_and_latent_shape(tmp_path):
    for name, kind, family in (("ae", "autoencoder", "somar"), ("cb", "codebook", "somar"), ("cbl", "codebook", "ldm")):
        (tmp_path / name).mkdir()
        export_model(build(kind, family), tmp_path / name / "model_fp16.safetensors", "fp16")
    for name, family in (("pr", "somar"), ("prv", "vqvae")):
        (tmp_path / name).mkdir()
        export_model(build("prior", family), tmp_path / name / "model_q8.safetensors", "q8")
    entries = {entry["name"]: entry for entry in write_index(tmp_path)}
    assert all(entry["family"] == "somar" for entry in entries.values())
    assert entries["ae"]["kind"] == "autoencoder"
    assert entries["ae"]["latent_shape"] == [4, 8, 8] and entries["ae"]["downsample_factor"] == 2
    for name in ("cb", "pr"):
        page_needs = {
            "kind": "codebook" if name == "cb" else "prior",
            "autoencoder_family": "somar",
            "latent_shape": [4, 8, 8],
            "downsample_factor": 2,
            "level_patches": [0, 2],
            "level_sizes": [4, 16],
            "token_grids": [[1, 1], [4, 4]],
            "som_topology": "2d",
        }
        assert {key: entries[name].get(key) for key in page_needs} == page_needs
    assert entries["cbl"]["autoencoder_family"] == "ldm"
    assert {key: entries["prv"].get(key) for key in ("codebook_family", "codebook_size", "token_grid")} == {
        "codebook_family": "vqvae",
        "codebook_size": 32,
        "token_grid": [8, 8],
    }


def test_unknown_kind_is_refused_in_one_line():
    reason = SOMAR_WEB.unsupported({"kind": "video"})
    assert reason and "\n" not in reason and "video" in reason
    from engine.webformat import config_of

    config = {**build("codebook").config.to_dict(), "kind": "video"}
    with pytest.raises(WebFormatError, match="kind 'video'"):
        config_of({"config": json.dumps(config)}, "f")


def test_a_codebook_checkpoint_exports_with_its_frozen_autoencoder(tmp_path):
    import export_weights

    model = build("codebook", "ldm")
    model.config.autoencoder_sha256 = "ab" * 32
    config = {"model": model.config.to_dict()}
    ckpt = {"model": model.state_dict(), "ema": None, "config": config, "step": 1, "epoch": 0}
    torch.save(ckpt, tmp_path / "checkpoint_latest.pth")
    out = tmp_path / "web" / "somar"
    argv = ["--checkpoint", str(tmp_path / "checkpoint_latest.pth"), "--output_dir", str(out), "--mode", "q8"]
    export_weights.main(export_weights.parse_args([*argv, "--no-ema", "--index_root", str(tmp_path / "web")]))
    loaded = load_model_from_web_weights(out / "model_q8.safetensors")
    assert loaded.config.autoencoder == model.config.autoencoder and loaded.config.autoencoder_sha256 == "ab" * 32
    assert torch.equal(loaded.levels[1].grid, model.levels[1].grid)
    assert relative_l2(outputs(loaded), outputs(model)) <= REL_L2["q8"]
    (entry,) = json.loads((tmp_path / "web" / "index.json").read_text())
    assert (entry["name"], entry["kind"], entry["autoencoder_family"]) == ("somar", "codebook", "ldm")
