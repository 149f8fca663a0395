"""The ldm family in the sphere-web format: the three kinds (autoencoder, latent, pixel) written in every mode and read
back against the PyTorch model, the fp16 policy (norms, time embedding, edge layers), index.json fields,
class-conditional UNets (label table, sampler defaults) and files written before the sampler keys existed."""

from __future__ import annotations

import json

import pytest
import torch

from engine.web_ldm import LDM_WEB
from engine.webformat import MODES, WebFormatError, export_model, load_model_from_web_weights, read_raw, write_index
from models.ldm import LDM_MODELS

REL_L2 = {"fp32": 1e-6, "fp16": 5e-3, "q8": 6e-2, "q4": 0.6}
AE = dict(image_size=16, ae_width=16, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8)
UNET = dict(unet_width=16, unet_mults=(1, 2), unet_res_blocks=1, unet_attn_levels=(1,), unet_groups=8, unet_heads=2)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def build(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A perturbed tiny model of a kind; overrides go to a UNet kind's config (num_classes, sampler, eta...)."""
    if kind == "autoencoder":
        return perturbed(LDM_MODELS["ldm_ae_tiny"](**AE), seed)
    if kind == "pixel":
        return perturbed(LDM_MODELS["ddpm_tiny"](image_size=16, **UNET, **overrides), seed)
    ae = build("autoencoder", seed + 1)
    model = LDM_MODELS["ldm_tiny"](**AE, **UNET, autoencoder=ae.config.to_dict(), latent_scale=0.8, **overrides)
    perturbed(model.unet, seed)
    model.autoencoder.load_state_dict(ae.state_dict())
    return model.eval()


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    """What a file must reproduce: the AE round trip and decode, or one UNet pass (and the latents' decode); a
    conditional UNet's pass takes a class and the null class."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if model.config.kind == "autoencoder":
            x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
            z = torch.randn(2, 4, 8, 8, generator=gen)
            return torch.cat([model.reconstruct(x).flatten(), model.decode(z).flatten()])
        x = torch.randn(2, *model.diffusion_shape, generator=gen)
        labels = torch.tensor([3, model.config.num_classes]) if model.config.num_classes else None
        out = model(x, torch.tensor([999, 17]), labels).flatten()
        if model.config.kind == "latent":
            out = torch.cat([out, model.decode_latents(x).flatten()])
        return out


@pytest.mark.parametrize("kind", ["autoencoder", "latent", "pixel"])
@pytest.mark.parametrize("mode", MODES)
def test_every_kind_and_mode_round_trips(tmp_path, kind, mode):
    model = build(kind)
    path = tmp_path / f"model_{mode}.safetensors"
    export_model(model, path, mode)
    loaded = load_model_from_web_weights(path)
    assert type(loaded) is type(model) and loaded.config.to_dict() == model.config.to_dict()
    assert relative_l2(outputs(loaded), outputs(model)) <= REL_L2[mode]


def test_q4_keeps_norms_time_embedding_and_edges_fp16(tmp_path):
    model = build("latent")
    export_model(model, tmp_path / "m.safetensors", "q4")
    metadata, tensors = read_raw(tmp_path / "m.safetensors")
    quantized = json.loads(metadata["quantization"])
    assert quantized, "the UNet's large convs are quantized"
    for name in (
        "unet.time_embed.0.weight",
        "unet.time_embed.2.weight",
        "unet.conv_in.weight",
        "unet.conv_out.weight",
        "unet.mid.block_1.norm2.weight",
        "autoencoder.decoder.conv_out.weight",
        "autoencoder.decoder.conv_in.weight",
        "latent_scale",
    ):
        assert name not in quantized and tensors[name].dtype == torch.float16, name
    assert metadata["config"] and json.loads(metadata["config"])["latent_scale"] == 0.8


def test_latent_scale_and_schedule_reach_the_index(tmp_path):
    for name, kind in (("ae", "autoencoder"), ("ldm", "latent"), ("ddpm", "pixel")):
        (tmp_path / name).mkdir()
        export_model(build(kind), tmp_path / name / "model_fp16.safetensors", "fp16")
    entries = {entry["name"]: entry for entry in write_index(tmp_path)}
    assert entries["ae"]["kind"] == "autoencoder" and entries["ae"]["latent_shape"] == [4, 8, 8]
    assert entries["ldm"]["latent_scale"] == 0.8 and entries["ldm"]["downsample_factor"] == 2
    assert entries["ddpm"]["latent_shape"] == [3, 16, 16] and entries["ddpm"]["timesteps"] == 1000
    assert all(entry["family"] == "ldm" for entry in entries.values())


def test_unknown_kind_is_refused_in_one_line():
    reason = LDM_WEB.unsupported({"kind": "video"})
    assert reason and "\n" not in reason and "video" in reason
    with pytest.raises(WebFormatError, match="kind 'video'"):
        from engine.webformat import config_of

        config = {**build("pixel").config.to_dict(), "kind": "video"}
        config_of({"config": json.dumps(config)}, "f")


def test_a_stage2_checkpoint_exports_with_its_frozen_autoencoder(tmp_path):
    import export_weights

    model = build("latent")
    model.config.autoencoder_sha256 = "ab" * 32
    ckpt = {
        "model": model.state_dict(),
        "ema": None,
        "config": {"model": model.config.to_dict()},
        "step": 1,
        "epoch": 0,
    }
    torch.save(ckpt, tmp_path / "checkpoint_latest.pth")
    out = tmp_path / "web" / "ldm"
    argv = ["--checkpoint", str(tmp_path / "checkpoint_latest.pth"), "--output_dir", str(out), "--mode", "q8"]
    export_weights.main(export_weights.parse_args([*argv, "--no-ema", "--index_root", str(tmp_path / "web")]))
    loaded = load_model_from_web_weights(out / "model_q8.safetensors")
    assert loaded.config.autoencoder == model.config.autoencoder and loaded.config.autoencoder_sha256 == "ab" * 32
    assert abs(float(loaded.latent_scale) - 0.8) < 1e-3  # the buffer is F16 outside fp32 files; the config is exact
    assert loaded.config.latent_scale == 0.8 and not any(p.requires_grad for p in loaded.autoencoder.parameters())
    assert relative_l2(outputs(loaded), outputs(model)) <= REL_L2["q8"]


def without_config_keys(path, keys: tuple[str, ...]) -> None:
    """Rewrite a web file's header without `keys` in its config, as files written before they existed (the data
    section and its hash are kept byte for byte)."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    config = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps({k: v for k, v in config.items() if k not in keys})
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-(8 + len(text)) % 8)  # the data section starts at a multiple of 8 (docs/web_format.md §1)
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + raw[8 + header_len :])


@pytest.mark.parametrize("kind", ["latent", "pixel"])
def test_a_conditional_model_exports_its_label_table_and_sampler_defaults(tmp_path, kind):
    model = build(kind, num_classes=10, sampler="ddpm", eta=0.5)
    perturbed(model.unet.label_embed, 4)  # rows that differ from each other, so a wrong class shows
    (tmp_path / "cond").mkdir()
    path = tmp_path / "cond" / "model_q8.safetensors"
    export_model(model, path, "q8")
    metadata, tensors = read_raw(path)
    assert "unet.label_embed.weight" not in json.loads(metadata["quantization"])  # an embedding stays fp16
    assert tensors["unet.label_embed.weight"].shape == (11, 4 * UNET["unet_width"])  # the last row: the null class
    loaded = load_model_from_web_weights(path)
    assert (loaded.config.num_classes, loaded.config.sampler, loaded.config.eta) == (10, "ddpm", 0.5)
    assert relative_l2(outputs(loaded), outputs(model)) <= REL_L2["q8"]
    (entry,) = write_index(tmp_path)
    page_needs = {
        "kind": kind,
        "num_classes": 10,
        "sampler": "ddpm",
        "eta": 0.5,
        "timesteps": 1000,
        "prediction": "eps",
    }
    assert {key: entry.get(key) for key in page_needs} == page_needs


def test_a_file_without_sampler_keys_reads_as_ddim_eta_zero(tmp_path):
    (tmp_path / "old").mkdir()
    path = tmp_path / "old" / "model_fp16.safetensors"
    export_model(build("pixel", sampler="ddpm", eta=0.3), path, "fp16")
    without_config_keys(path, ("sampler", "eta"))
    loaded = load_model_from_web_weights(path)
    assert (loaded.config.sampler, loaded.config.eta) == ("ddim", 0.0)
    (entry,) = write_index(tmp_path)
    assert (entry["sampler"], entry["eta"]) == ("ddim", 0.0)
    assert "sampler" not in LDM_WEB.required_config_keys and "eta" not in LDM_WEB.required_config_keys
