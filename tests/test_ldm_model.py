"""The ldm family's models (models/ldm.py): registry sizes and parameter counts, the config (round trips, JSON types,
refusals), state-dict names, the KL autoencoder's posterior, the frozen autoencoder inside LatentDiffusion, the latent
scale, sampling (per-image generators, guidance, return_all) and PixelDiffusion."""

from __future__ import annotations

import json

import pytest
import torch

from models import MODELS
from models.ldm import (
    LDM_MODELS,
    KLAutoencoder,
    LatentDiffusion,
    LDMConfig,
    MultiHeadAttnBlock,
    PixelDiffusion,
    UNet,
    build_ldm,
    diagonal_gaussian_kl,
    timestep_embedding,
)
from tests.helpers import perturb

MICRO_AE = dict(image_size=16, ae_width=8, ae_mults=(1, 2), ae_res_blocks=1, latent_channels=2, ae_groups=4)
MICRO_UNET = dict(
    unet_width=16, unet_mults=(1, 2), unet_res_blocks=1, unet_attn_levels=(1,), unet_groups=4, unet_heads=2,
    timesteps=100,
)  # fmt: skip
KINDS = {"autoencoder": KLAutoencoder, "latent": LatentDiffusion, "pixel": PixelDiffusion}


def micro(kind: str = "latent", **overrides):
    """A few-thousand-parameter model of the kind, perturbed so that zero-initialised outputs are not trivial."""
    torch.manual_seed(0)
    settings = MICRO_AE if kind == "autoencoder" else {**MICRO_AE, **MICRO_UNET}
    if kind == "pixel":
        settings = {key: value for key, value in settings.items() if not key.startswith(("ae_", "latent_"))}
    return perturb(build_ldm(LDMConfig(kind=kind, **{**settings, **overrides}))).eval()


def images(count: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


# ---- registry, sizes, config ----------------------------------------------------------------------------


def test_every_size_builds_its_kind_with_its_parameter_count(capsys):
    counts = {}
    for name, builder in LDM_MODELS.items():
        with torch.device("meta"):
            model = builder()
        assert MODELS[name] is builder and isinstance(model, KINDS[model.config.kind])
        counts[name] = sum(p.numel() for p in model.parameters())
        groups = model.parameter_groups()  # every parameter exactly once
        assert sorted(id(p) for ps in groups.values() for p in ps) == sorted(id(p) for p in model.parameters())
    with capsys.disabled():
        print("\nldm parameter counts:", {name: f"{count / 1e6:.2f}M" for name, count in counts.items()})
    assert MODELS["ldm"] is LDM_MODELS["ldm_base"]
    assert counts["ldm_ae_tiny"] < counts["ldm_ae_small"] and counts["ddpm_tiny"] < counts["ddpm_small"]
    assert counts["ldm_tiny"] < counts["ldm_small"] < counts["ldm_base"]
    assert 0.5e6 < counts["ldm_ae_tiny"] < 2e6 and 0.5e6 < counts["ddpm_tiny"] < 2e6
    assert 2e6 < counts["ldm_tiny"] - counts["ldm_ae_tiny"] < 5e6  # the tiny UNet


@pytest.mark.parametrize("name", ["ldm_ae_tiny", "ldm_tiny", "ddpm_tiny"])
def test_tiny_sizes_run_a_forward(name):
    torch.manual_seed(0)
    model, x = LDM_MODELS[name]().eval(), images(4, 32)
    shape = (4, *getattr(model, "diffusion_shape", (3, 32, 32)))
    inputs = (x,) if name == "ldm_ae_tiny" else (torch.randn(shape), torch.tensor([1, 10, 500, 1000]))
    with torch.no_grad():
        out = model(*inputs)
    if name == "ldm_ae_tiny":
        assert out[0].shape == x.shape and out[1].shape == out[2].shape == (4, 4, 8, 8)
    else:
        assert out.shape == shape and shape[1:] == ((4, 8, 8) if name == "ldm_tiny" else (3, 32, 32))


def test_config_round_trips_through_json_with_a_saved_autoencoder():
    ae = LDMConfig(kind="autoencoder", **MICRO_AE)
    config = LDMConfig(
        kind="latent", **{**MICRO_AE, **MICRO_UNET}, num_classes=3, autoencoder=ae.to_dict(),
        autoencoder_sha256="ab" * 32, latent_scale=0.7, beta_schedule="cosine", prediction="v", eta=0.5,
    )  # fmt: skip
    for original in (ae, config, micro("pixel").config):
        data = json.loads(json.dumps(original.to_dict()))
        assert LDMConfig.from_dict(data) == original and LDMConfig.from_dict(data).to_dict() == data
    assert config.autoencoder_config() == ae


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bogus": 1}, "unknown ldm config keys"),
        ({"family": "vqvae"}, "not an ldm config"),
        ({"timesteps": "1000"}, "must be a int"),  # a JSON string is never cast
        ({"num_classes": False}, "must be a int"),  # nor a bool read as a number
        ({"eta": "0.0"}, "must be a int or float"),
        ({"unet_mults": [1, "2"]}, "unet_mults"),
        ({"kind": "video"}, "unknown kind"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"prediction": "x0"}, "unknown prediction"),
        ({"unet_attn_levels": [2]}, "not level indices"),
        ({"unet_heads": 3}, "unet_heads"),
        ({"unet_groups": 5}, "groups 5"),
        ({"image_size": 18}, "not a multiple"),
    ],
)
def test_config_refuses_bad_settings(change, match):
    data = micro().config.to_dict()
    with pytest.raises(ValueError, match=match):
        LDMConfig.from_dict({**data, **change})


def test_autoencoder_configs_refuse_labels_and_stage_2_fields():
    with pytest.raises(ValueError, match="unconditional"):
        LDMConfig(kind="autoencoder", num_classes=10)
    with pytest.raises(ValueError, match="stage-2"):
        LDMConfig(kind="autoencoder", latent_scale=0.5)
    with pytest.raises(ValueError, match="no autoencoder"):
        LDMConfig(kind="pixel", autoencoder=LDMConfig(kind="autoencoder").to_dict())


def test_builders_take_the_common_overrides():
    with torch.device("meta"):
        assert LDM_MODELS["ldm_ae_tiny"](latent_dim=8, norm="group").config.latent_channels == 8
        assert LDM_MODELS["ldm_tiny"](image_size=64, num_classes=10).config.diffusion_size == 16
        assert LDM_MODELS["ddpm_tiny"](in_channels=1, image_size=None).diffusion_shape == (1, 32, 32)
    for overrides, match in (
        (dict(norm="batch"), "GroupNorm"),
        (dict(noise_angle=80.0), "no setting"),
        (dict(kind="pixel"), "no setting"),
    ):
        with pytest.raises(ValueError, match=match):
            LDM_MODELS["ldm_tiny"](**overrides)
    with pytest.raises(ValueError, match="latent_dim"):
        LDM_MODELS["ddpm_tiny"](latent_dim=4)


def test_state_dict_names_follow_the_contract():
    keys = set(micro(num_classes=3).state_dict())
    for key in (
        "latent_scale", "autoencoder.encoder.conv_in.weight", "autoencoder.encoder.levels.0.blocks.0.norm1.weight",
        "autoencoder.encoder.levels.0.downsample.conv.weight", "autoencoder.encoder.mid.attn_1.q.weight",
        "autoencoder.encoder.norm_out.weight", "autoencoder.decoder.levels.0.upsample.conv.weight",
        "autoencoder.decoder.levels.1.blocks.1.conv2.weight", "autoencoder.decoder.conv_out.weight",
        "unet.time_embed.0.weight", "unet.time_embed.2.weight", "unet.label_embed.weight", "unet.conv_in.weight",
        "unet.down.0.blocks.0.emb.weight", "unet.down.0.downsample.conv.weight", "unet.down.1.attns.0.proj.weight",
        "unet.mid.block_1.emb.weight", "unet.mid.attn_1.k.weight", "unet.mid.block_2.conv2.weight",
        "unet.up.1.blocks.1.shortcut.weight",
        "unet.up.1.attns.1.v.weight",
        "unet.up.1.upsample.conv.weight", "unet.up.0.blocks.0.norm1.weight", "unet.norm_out.weight",
        "unet.conv_out.weight",
    ):  # fmt: skip
        assert key in keys, key
    assert not any(key.startswith("unet.up.0.upsample") or "down.1.downsample" in key for key in keys)
    model = micro(num_classes=3)
    assert model.unet.label_embed.weight.shape == (4, 64)  # num_classes + 1 rows (the null class), 4·width
    assert model.autoencoder.encoder.conv_out.out_channels == 4  # (mean, logvar) of 2 latent channels


def test_untrained_unet_predicts_zero():
    unet = UNet(LDMConfig(kind="pixel", image_size=16, **MICRO_UNET), 3)
    assert not unet(torch.randn(2, 3, 16, 16), torch.tensor([1, 50])).any()


# ---- KL autoencoder -------------------------------------------------------------------------------------


def test_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(diagonal_gaussian_kl(mean, logvar), expected)


def test_autoencoder_posterior_sampling_reconstruction_and_capabilities():
    model, x = micro("autoencoder"), images(3)
    out, mean, logvar = model(x, generator=generators([1, 2, 3]))
    assert out.shape == x.shape and mean.shape == (3, 2, 8, 8)
    torch.testing.assert_close(model(x[1:2], generator=generators([2]))[0], out[1:2], atol=1e-5, rtol=1e-5)
    again = model(x, generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(again, model(x, generator=torch.Generator().manual_seed(5))[0]) and not torch.equal(again, out)
    recon = model.reconstruct(x)
    torch.testing.assert_close(recon, model.decode(mean).clamp(-1, 1))
    assert len(model.reconstruct(x, steps=2, return_all=True)) == 2 and recon.abs().max() <= 1
    assert model.last_layer() is model.decoder.conv_out.weight
    assert not model.can_sample and "stage-2" in model.cannot_sample_reason and model.default_eval_steps == (1,)
    with pytest.raises(ValueError, match="unconditional"):
        model.reconstruct(x, labels=torch.zeros(3, dtype=torch.long))


def test_logvar_is_clamped():
    model = micro("autoencoder")
    with torch.no_grad():
        model.encoder.conv_out.bias[2:].fill_(1e3)  # the logvar half
    assert model.encode(images())[1].max() == 20.0
    with torch.no_grad():
        model.encoder.conv_out.bias[2:].fill_(-1e3)
    assert model.encode(images())[1].min() == -30.0


# ---- latent diffusion -----------------------------------------------------------------------------------


def test_the_autoencoder_stays_frozen_and_in_eval_mode():
    model = micro().train()
    assert model.unet.training and not any(m.training for m in model.autoencoder.modules())
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    assert all(p.requires_grad for p in model.unet.parameters())
    mean, std = model.latents(images())
    t = torch.tensor([3, 70])
    model(mean + std * torch.randn_like(std), t).square().mean().backward()
    assert all(p.grad is None for p in model.autoencoder.parameters())
    assert any(p.grad is not None for p in model.unet.parameters())
    assert set(model.parameter_groups()) == {"unet", "autoencoder"}


def test_latent_scale_gives_unit_std_and_is_saved():
    model, x = micro(), images(8)
    assert model.latent_scale.item() == 1.0 and model.config.latent_scale is None
    scale = model.fit_latent_scale(x, generator=generators(range(8)))
    assert model.latent_scale.item() == pytest.approx(scale) and model.config.latent_scale == scale
    mean, std = model.latents(x)
    noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators(range(8))])
    assert (mean + std * noise).std().item() == pytest.approx(1.0, abs=1e-5)
    mean_raw, logvar_raw = model.autoencoder.encode(x)
    torch.testing.assert_close(mean, mean_raw * scale)
    rebuilt = build_ldm(LDMConfig.from_dict(model.config.to_dict()))
    assert rebuilt.latent_scale.item() == pytest.approx(scale)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.decode_latents(mean), model.autoencoder.decode(mean_raw).clamp(-1, 1))


def test_a_saved_autoencoder_config_sets_the_latent_shape_and_takes_its_weights():
    ae = micro("autoencoder", latent_channels=3, ae_mults=(1, 2, 2))
    model = build_ldm(LDMConfig(kind="latent", **{**MICRO_AE, **MICRO_UNET}, autoencoder=ae.config.to_dict()))
    assert model.diffusion_shape == (3, 4, 4) and model.unet.conv_in.in_channels == 3
    model.autoencoder.load_state_dict(ae.state_dict())
    x = images()
    torch.testing.assert_close(model.reconstruct(x), ae.reconstruct(x))


@pytest.mark.parametrize("kind", ["latent", "pixel"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_do_not_depend_on_their_batch(kind, sampler):
    model = micro(kind)
    batch = model.sample(3, steps=4, generator=generators([1, 2, 3]), sampler=sampler, eta=1.0)
    assert batch.shape == (3, 3, 16, 16) and batch.abs().max() <= 1
    torch.testing.assert_close(
        model.sample(1, steps=4, generator=generators([2]), sampler=sampler, eta=1.0), batch[1:2]
    )
    assert not torch.allclose(batch[0], batch[1])


def test_ddim_sampling_is_deterministic_and_return_all_ends_with_the_sample():
    model = micro()
    first = model.sample(2, steps=5, generator=generators([4, 5]))
    outputs = model.sample(2, steps=5, generator=generators([4, 5]), return_all=True)
    assert len(outputs) == 5 and torch.equal(outputs[-1], first)
    assert not torch.equal(model.sample(2, steps=3, generator=generators([4, 5])), first)  # not a prefix


def test_guidance_at_1_equals_the_conditional_output():
    model, labels = micro(num_classes=3), torch.tensor([0, 2])
    conditional = model.sample(2, steps=3, generator=generators([6, 7]), labels=labels)
    two_pass = model.sample(2, steps=3, generator=generators([6, 7]), labels=labels, cfg=1.0 + 1e-9)
    torch.testing.assert_close(two_pass, conditional, atol=1e-5, rtol=1e-5)
    guided = model.sample(2, steps=3, generator=generators([6, 7]), labels=labels, cfg=4.0)
    assert not torch.allclose(guided, conditional)
    null = model.sample(2, steps=3, generator=generators([6, 7]))  # labels None on a conditional model: null class
    torch.testing.assert_close(
        null, model.sample(2, steps=3, generator=generators([6, 7]), labels=torch.tensor([3, 3]))
    )
    with pytest.raises(ValueError, match="unconditional"):
        micro().sample(2, steps=2, labels=labels)


def test_diffusion_capabilities_and_pixel_reconstruction_refused():
    latent, pixel = micro(), micro("pixel")
    for model in (latent, pixel):
        assert model.can_sample and not model.steps_are_prefix and model.default_eval_steps == (10, 50)
        with pytest.raises(ValueError, match="sampler"):
            model.sample(1, steps=2, sampler="euler")
    assert latent.can_reconstruct and not pixel.can_reconstruct
    assert latent.reconstruct(images()).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot reconstruct"):
        pixel.reconstruct(images())
    assert set(pixel.parameter_groups()) == {"unet"}


# ---- UNet pieces ----------------------------------------------------------------------------------------


def test_multi_head_attention_matches_a_direct_computation():
    torch.manual_seed(3)
    block = perturb(MultiHeadAttnBlock(8, groups=4, heads=2), scale=0.3)
    x = torch.randn(2, 8, 3, 3)
    h = block.norm(x)
    q, k, v = (conv(h).view(2, 2, 4, 9) for conv in (block.q, block.k, block.v))  # (B, heads, C/heads, N)
    weights = torch.softmax(torch.einsum("bhcn,bhcm->bhnm", q, k) / 2.0, dim=-1)  # 1/sqrt(C/heads)
    expected = x + block.proj(torch.einsum("bhnm,bhcm->bhcn", weights, v).reshape(2, 8, 3, 3))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    features = timestep_embedding(torch.tensor([0, 7]), 8)
    omega = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(features[1], torch.cat([(7 * omega).cos(), (7 * omega).sin()]))
    assert torch.equal(features[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_the_unet_uses_time_and_labels_and_every_parameter_learns():
    model = micro(num_classes=3).train()
    x, labels = torch.randn(2, *model.diffusion_shape), torch.tensor([0, 3])
    out = model(x, torch.tensor([5, 5]), labels)
    assert not torch.allclose(out, model(x, torch.tensor([90, 90]), labels))
    assert not torch.allclose(out, model(x, torch.tensor([5, 5]), torch.tensor([1, 2])))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters())
