"""The vqvae model (models/vqvae.py): registry sizes, config, tokens, reconstruction, tiling, multi-scale decoding,
per-image alignment, token maps, and SVQVAE weights (a file written in SVQVAE's key layout, run by an independent
functional forward of that layout) through the loader and convert_svqvae.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import convert_svqvae
from engine.checkpoint import load_model_from_checkpoint
from engine.families import model_from_config
from models import MODELS
from models.vqvae import VQVAE, VQVAE_MODELS, VQVAEConfig, blend_tiles, code_colors, svqvae_state_dict

MICRO = dict(
    image_size=16, width=8, channel_mults=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=32, codebook_dim=4,
    norm_groups=4,
)  # fmt: skip


def micro(**overrides) -> VQVAE:
    """A 2x-downsampling model with a codebook initialised from one training batch, in eval mode."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(**{**MICRO, **overrides}))
    model.train()(torch.rand(4, 3, 16, 16) * 2 - 1)
    return model.eval()


def images(count: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- registry and config ------------------------------------------------------------------------------


def test_sizes_build_with_their_parameter_counts():
    counts = {}
    for name in ("vqvae_tiny", "vqvae_small", "vqvae_base"):
        with torch.device("meta"):
            model = VQVAE_MODELS[name]()
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < counts["vqvae_tiny"] < 1.5e6
    assert counts["vqvae_tiny"] < counts["vqvae_small"] < counts["vqvae_base"]
    assert 60e6 < counts["vqvae_base"] < 80e6  # LlamaGen VQ-16: ~72M
    assert MODELS["vqvae"] is VQVAE_MODELS["vqvae_base"]
    factors = {name: VQVAE_MODELS[name](image_size=64).config.downsample_factor for name in ("vqvae_tiny",)}
    assert factors == {"vqvae_tiny": 4}


def test_tiny_forward_shapes_and_gradients():
    model = VQVAE_MODELS["vqvae_tiny"]().train()
    x = images(1, 32)
    out, aux = model(x)
    assert out.shape == x.shape and aux["indices"].shape == (1, 8, 8) and aux["indices"].dtype == torch.long
    (out.square().mean() + aux["vq"] + aux["commit"] + aux["entropy"]).backward()
    assert model.encoder.conv_in.weight.grad is not None and model.quantizer.embedding.weight.grad is not None
    assert model.last_layer() is model.decoder.conv_out.weight


def test_config_round_trip_and_rejections():
    config = VQVAEConfig(**MICRO, quantizer="fsq", fsq_levels=(4, 3))
    assert (config.codebook_size, config.codebook_dim) == (12, 2)
    assert VQVAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown VQ-VAE config keys"):
        VQVAEConfig.from_dict({**config.to_dict(), "noise_angle": 0.1})
    with pytest.raises(ValueError, match="not a VQ-VAE config"):
        VQVAEConfig.from_dict({**config.to_dict(), "family": "psvae"})
    with pytest.raises(ValueError, match="unconditional"):
        VQVAEConfig(**MICRO, num_classes=10)
    with pytest.raises(ValueError, match="norm_groups"):
        VQVAEConfig(**{**MICRO, "norm_groups": 3})


def test_builder_overrides():
    assert VQVAE_MODELS["vqvae_tiny"](latent_dim=16, norm="group").config.codebook_dim == 16
    with pytest.raises(ValueError, match="GroupNorm"):
        VQVAE_MODELS["vqvae_tiny"](norm="batch")
    with pytest.raises(ValueError, match="len\\(fsq_levels\\)"):
        VQVAE_MODELS["vqvae_tiny"](quantizer="fsq", latent_dim=8)
    with pytest.raises(ValueError, match="take no setting"):
        VQVAE_MODELS["vqvae_tiny"](noise_angle=0.1)


@pytest.mark.parametrize("settings", [{}, {"ema_decay": 0.9}, {"quantizer": "fsq"}])
def test_parameter_groups_hold_every_parameter_once(settings):
    model = VQVAE(VQVAEConfig(**MICRO, **settings))
    grouped = [p for params in model.parameter_groups().values() for p in params]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert set(model.parameter_groups()) == {"encoder", "decoder", "codebook"}


# ---- tokens and reconstruction -----------------------------------------------------------------------


def test_encode_decode_indices_round_trip():
    model, x = micro(), images()
    tokens = model.encode(x)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long
    torch.testing.assert_close(model.decode_indices(tokens), model.reconstruct(x))
    torch.testing.assert_close(model.quantizer.codes(tokens).norm(dim=1), torch.ones(2, 8, 8))  # unit codes


def test_reconstruct_prefix_property_and_interface():
    model, x = micro(), images()
    three = model.reconstruct(x, steps=3, return_all=True)
    two = model.reconstruct(x, steps=2, return_all=True)
    assert len(three) == 3 and all(torch.equal(a, b) for a, b in zip(two, three))
    assert three[0].min() >= -1 and three[0].max() <= 1
    assert model.can_sample is False and "prior" in model.cannot_sample_reason
    with pytest.raises(ValueError, match="unconditional"):
        model.reconstruct(x, labels=torch.zeros(2, dtype=torch.long))


def test_reconstruction_never_changes_the_model_even_in_training_mode():
    model = micro().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reconstruct(images(seed=5), steps=2)
    model.reconstruct_tiled(images(1, 32, seed=6), 16, 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_color_statistics_average_per_image_means_and_stds():
    model = VQVAE(VQVAEConfig(**MICRO)).train()
    x = images(3)
    model(x)
    torch.testing.assert_close(model.color_mean, x.mean((2, 3)).mean(0))
    torch.testing.assert_close(model.color_std, x.std((2, 3), unbiased=False).mean(0))
    assert model.color_images.item() == 3


def test_align_is_per_image():
    model = micro()
    model.color_mean.fill_(0.1)
    model.color_std.fill_(0.4)
    x = images(1) * 0.3 + 0.2
    mates = torch.cat([x, -torch.ones(1, 3, 16, 16), images(1, seed=9)])  # very different batch mates
    alone = model.reconstruct(x, align=True)
    assert torch.allclose(alone, model.reconstruct(mates, align=True)[:1], atol=1e-5)
    assert not torch.allclose(alone, model.reconstruct(x))  # alignment does change the input the model sees
    assert torch.allclose(
        model.reconstruct_tiled(x, 8, 4, align=True), model.reconstruct_tiled(mates, 8, 4, align=True)[:1], atol=1e-5
    )


def test_token_map_colours_codes_by_principal_components():
    model = micro()
    tokens = model.encode(images())
    picture = model.token_map(tokens)
    assert picture.shape == (2, 3, 8, 8) and picture.abs().max() <= 1 + 1e-6
    codes = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.01, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    colors = code_colors(codes)
    assert (colors[0] - colors[1]).norm() < 0.1 < (colors[0] - colors[2]).norm()


# ---- tiling and multi-scale ---------------------------------------------------------------------------


class IdentityQuantizer(nn.Module):
    """Leaves latents continuous: tiling tests of the blending alone."""

    def forward(self, z):
        return z, torch.zeros(z.shape[0], *z.shape[2:], dtype=torch.long), {}


def blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur with zero padding: a stand-in with a conv net's darkened tile borders."""
    return F.conv2d(x, torch.ones(x.shape[1], 1, 3, 3) / 9, padding=1, groups=x.shape[1])


def stand_in(local_blur: bool) -> VQVAE:
    """A model whose encoder/decoder are pooling/upsampling (optionally with border-darkening blurs)."""
    model = VQVAE(VQVAEConfig(**{**MICRO, "codebook_dim": 3})).eval()
    model.quantizer = IdentityQuantizer()
    step = blur if local_blur else (lambda x: x)
    model.encode_latent = lambda x: F.avg_pool2d(step(x), 2)
    model.decode = lambda z: step(F.interpolate(z, scale_factor=2, mode="bilinear"))
    return model


def test_one_tile_is_the_untiled_result_exactly():
    model, x = micro(), images(2, 16)
    assert torch.equal(model.reconstruct_tiled(x, 16, 8), model.reconstruct(x))


def test_images_smaller_than_a_tile_and_odd_sizes_work():
    model = micro()
    small = images(1, 12)
    assert torch.equal(model.reconstruct_tiled(small, 16, 8), model.reconstruct(small))
    odd = torch.rand(1, 3, 37, 23) * 2 - 1  # not a multiple of the factor: replicate padding, then cropped
    out = model.reconstruct_tiled(odd, 16, 8)
    assert out.shape == odd.shape and torch.isfinite(out).all() and out.abs().max() <= 1


def test_blending_weights_are_a_partition_of_unity_with_full_border_weight():
    x = torch.rand(1, 2, 37, 50)
    for tile, overlap in ((16, 8), (16, 0), (10, 6), (64, 8)):
        torch.testing.assert_close(blend_tiles(x, tile, overlap, lambda t: t, 1, 2), x)
        pooled = blend_tiles(x[..., :36, :50], tile - tile % 2, overlap, lambda t: F.avg_pool2d(t, 2), 0.5, 2)
        torch.testing.assert_close(pooled, F.avg_pool2d(x[..., :36, :50], 2))


def test_constant_image_stays_constant_at_the_border():
    model, flat = stand_in(local_blur=False), torch.full((1, 3, 48, 40), 0.3)
    out = model.reconstruct_tiled(flat, 16, 8)
    torch.testing.assert_close(out, flat)  # no dark border: single-tile pixels keep weight 1
    for scale in (0.5, 2.0):
        size = (round(24 * scale) * 2, round(20 * scale) * 2)
        torch.testing.assert_close(model.decode_multiscale(flat, scale, 16, 8), torch.full((1, 3, *size), 0.3))


def seam_roughness(model: VQVAE, overlap: int) -> float:
    """Largest local difference of a smooth gradient's tiled reconstruction relative to its median (away from the
    image border, where even the untiled stand-in darkens)."""
    ramp = torch.linspace(-0.8, 0.8, 64)
    out = model.reconstruct_tiled((ramp[None, :] + 0.2 * ramp[:, None]).expand(1, 3, 64, 64).clone(), 16, overlap)
    steps = (out[..., 1:] - out[..., :-1])[..., 6:-6, 6:-6].abs()
    return float(steps.max() / steps.median())


def test_smooth_gradient_stays_smooth_across_tile_boundaries():
    model = stand_in(local_blur=True)
    assert seam_roughness(model, overlap=8) < 2.0
    assert seam_roughness(model, overlap=0) > 3.0  # hard seams without blending: the measure sees them


def test_multiscale_output_sizes():
    model, x = micro(), images(1, 16)
    assert model.decode_multiscale(x, 2.0).shape[-2:] == (32, 32)
    assert model.decode_multiscale(x, 0.5).shape[-2:] == (8, 8)
    assert model.decode_multiscale(images(1, 32), 1.5, tile_size=16, overlap=8).shape[-2:] == (48, 48)
    assert torch.equal(model.decode_multiscale(x, 1.0), model.reconstruct(x))
    with pytest.raises(ValueError, match="multiples"):
        model.reconstruct_tiled(x, 15, 8)
    with pytest.raises(ValueError, match="overlap"):
        model.reconstruct_tiled(x, 16, 16)


# ---- SVQVAE weights -----------------------------------------------------------------------------------

SVQVAE_SETTINGS = dict(
    codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], z_channels=8, ch=32,
    num_res_blocks=1, image_size=16,
)  # fmt: skip
TO_SVQVAE = (  # our key fragment -> SVQVAE's, written out independently of the loader's rules
    ("quantizer.", "quantize."), (".levels.", ".conv_blocks."), (".blocks.", ".res."), (".attns.", ".attn."),
    (".mid.block_1.", ".mid.0."), (".mid.attn_1.", ".mid.1."), (".mid.block_2.", ".mid.2."),
    (".shortcut.", ".nin_shortcut."), (".proj.", ".proj_out."),
)  # fmt: skip


def svqvae_file_state() -> dict:
    """A random state dict in SVQVAE's key layout for SVQVAE_SETTINGS (as ScalableVQVAE.state_dict() names it)."""
    torch.manual_seed(3)
    ours = VQVAE(VQVAEConfig(image_size=16, width=32, channel_mults=(1, 2), num_res_blocks=1, z_channels=8,
                            codebook_size=16, codebook_dim=4, norm_groups=32)).state_dict()  # fmt: skip
    state = svqvae_layout({k: torch.randn_like(v) * 0.2 for k, v in ours.items() if v.is_floating_point()})
    state["quantize.codebook_used"] = torch.zeros(65536)
    return state


def svqvae_layout(state: dict) -> dict:
    """Rename our parameter keys into SVQVAE's layout; our own buffers are not in its files."""
    ours_only = ("color_", "quantizer.counts", "quantizer.usage_ema")
    out = {}
    for key, value in state.items():
        if key.startswith(ours_only):
            continue
        for old, new in TO_SVQVAE:
            key = key.replace(old, new)
        out[key] = value
    return out


def reference_block(state: dict, prefix: str, h: torch.Tensor) -> torch.Tensor:
    """LlamaGen ResnetBlock from SVQVAE keys."""

    def conv(name, x, pad=1):
        return F.conv2d(x, state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"], padding=pad)

    def norm(name, x):
        return F.group_norm(x, 32, state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"], eps=1e-6)

    out = conv("conv2", F.silu(norm("norm2", conv("conv1", F.silu(norm("norm1", h))))))
    skip = conv("nin_shortcut", h, 0) if f"{prefix}nin_shortcut.weight" in state else h
    return skip + out


def reference_attention(state: dict, prefix: str, h: torch.Tensor) -> torch.Tensor:
    """LlamaGen AttnBlock from SVQVAE keys (bmm form)."""
    b, c, height, width = h.shape
    x = F.group_norm(h, 32, state[f"{prefix}norm.weight"], state[f"{prefix}norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(x, state[f"{prefix}{n}.weight"], state[f"{prefix}{n}.bias"]).reshape(b, c, -1) for n in "qkv")
    weights = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width)
    return h + F.conv2d(out, state[f"{prefix}proj_out.weight"], state[f"{prefix}proj_out.bias"])


def reference_svqvae(state: dict, x01: torch.Tensor) -> torch.Tensor:
    """SVQVAE's eval forward (encoder, l2 VQ, decoder; two levels, one block each) on [0, 1] images, unclamped."""

    def c(name, h, pad=1, stride=1):
        return F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=pad, stride=stride)

    def tail(prefix, h):
        return c(
            f"{prefix}.conv_out",
            F.silu(F.group_norm(h, 32, state[f"{prefix}.norm_out.weight"], state[f"{prefix}.norm_out.bias"], eps=1e-6)),
        )

    def mid(prefix, h):
        h = reference_block(state, f"{prefix}.mid.0.", h)
        return reference_block(state, f"{prefix}.mid.2.", reference_attention(state, f"{prefix}.mid.1.", h))

    h = reference_block(state, "encoder.conv_blocks.0.res.0.", c("encoder.conv_in", x01))
    h = c("encoder.conv_blocks.0.downsample.conv", F.pad(h, (0, 1, 0, 1)), pad=0, stride=2)
    h = reference_attention(
        state, "encoder.conv_blocks.1.attn.0.", reference_block(state, "encoder.conv_blocks.1.res.0.", h)
    )
    z = c("quant_conv", tail("encoder", mid("encoder", h)), pad=0)
    z = F.normalize(z, dim=1).permute(0, 2, 3, 1)
    codes = F.normalize(state["quantize.embedding.weight"], dim=1)
    z_q = codes[torch.cdist(z.reshape(-1, z.shape[-1]), codes).argmin(1)].view(z.shape).permute(0, 3, 1, 2)
    h = mid("decoder", c("decoder.conv_in", c("post_quant_conv", z_q, pad=0)))
    for j in range(2):
        h = reference_attention(
            state, f"decoder.conv_blocks.0.attn.{j}.", reference_block(state, f"decoder.conv_blocks.0.res.{j}.", h)
        )
    h = c("decoder.conv_blocks.0.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    for j in range(2):
        h = reference_block(state, f"decoder.conv_blocks.1.res.{j}.", h)
    return tail("decoder", h)


def test_svqvae_weights_give_svqvae_outputs():
    state = svqvae_file_state()
    config, ours = svqvae_state_dict(state, SVQVAE_SETTINGS)
    assert config.input_range == "zero_one" and config.downsample_factor == 2
    model = VQVAE(config).eval()
    model.load_state_dict(ours, strict=True)
    x = images(2, 16)
    with torch.no_grad():
        expected = reference_svqvae(state, (x + 1) / 2)  # SVQVAE works on [0, 1]
        out = model.decode(model.quantize(model.encode_latent(x))[0])
    torch.testing.assert_close(out, 2 * expected - 1, atol=1e-4, rtol=1e-4)
    assert bool(model.quantizer.initialized) and (model.quantizer.usage_ema > model.config.dead_code_threshold).all()


def test_svqvae_bad_keys_settings_and_shapes_are_one_line_errors():
    state = svqvae_file_state()
    for broken, match in (
        ({**state, "encoder.extra.weight": torch.zeros(1)}, "unknown keys"),
        ({k: v for k, v in state.items() if k != "decoder.conv_out.bias"}, "missing"),
        ({**state, "quant_conv.weight": torch.zeros(5, 32, 1, 1)}, "shapes"),
    ):
        with pytest.raises(ValueError, match=match) as error:
            svqvae_state_dict(broken, SVQVAE_SETTINGS)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown SVQVAE settings"):
        svqvae_state_dict(state, {**SVQVAE_SETTINGS, "codebook_dims": 8})
    with pytest.raises(ValueError, match="decoder_ch_mult"):
        svqvae_state_dict(state, {**SVQVAE_SETTINGS, "decoder_ch_mult": [1, 1]})


def test_convert_svqvae_writes_a_checkpoint_the_scripts_rebuild(tmp_path):
    weights, settings = tmp_path / "svqvae.safetensors", tmp_path / "args.json"
    save_file(svqvae_file_state(), str(weights))
    settings.write_text(json.dumps(SVQVAE_SETTINGS))
    output = convert_svqvae.main(
        convert_svqvae.parse_args(
            ["--weights", str(weights), "--settings", str(settings), "--output", str(tmp_path / "c.pth")]
        )
    )
    model, run_config = load_model_from_checkpoint(output)
    assert isinstance(model, VQVAE) and run_config["model"]["input_range"] == "zero_one"
    assert isinstance(model_from_config(run_config["model"]), VQVAE)
    x = images(1, 16)
    config, ours = svqvae_state_dict(svqvae_file_state(), SVQVAE_SETTINGS)
    direct = VQVAE(config).eval()
    direct.load_state_dict(ours)
    assert torch.equal(model.reconstruct(x), direct.reconstruct(x))
    settings.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a mapping"):
        convert_svqvae.main(
            convert_svqvae.parse_args(
                ["--weights", str(weights), "--settings", str(settings), "--output", str(tmp_path / "d.pth")]
            )
        )
