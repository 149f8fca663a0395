"""Models: every registry entry builds with the right shapes; sphere projection; sampling semantics."""

import math

import pytest
import torch

from engine.families import model_from_config
from models import SphereConfig, build_model
from models.layers import apply_rope, rope_angles_2d, sphere_project
from models.sphere import SPHERE_MODELS, guidance_scales
from tests.helpers import perturb

SMALL = ["vit_tiny", "convnet_tiny"]


@pytest.mark.parametrize("name", sorted(SPHERE_MODELS))
def test_every_registry_entry_builds_with_right_shapes(name):
    with torch.device("meta"):  # big models: shapes only, no memory
        model = build_model(name, image_size=32)
        out = model(
            torch.empty(2, 3, 32, 32),
            torch.empty(2, *model.latent_shape),
            torch.empty(2, *model.latent_shape),
        )
    assert math.prod(model.latent_shape) == model.config.latent_dim == 2048
    assert out["x_small"].shape == out["x_big"].shape == (2, 3, 32, 32)
    assert out["z"].shape == out["z_big"].shape == (2, *model.latent_shape)


@pytest.mark.parametrize("name", SMALL + ["vit_small", "convnet_small"])
@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_projection_keeps_latents_on_the_sphere(name, image_size):
    model = build_model(name, image_size=image_size)
    x = torch.rand(2, 3, image_size, image_size) * 2 - 1  # two: the norm is per image (vit_small 64 px ~3 s each)
    v = model.project(model.encode(x))
    norms = v.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(model.config.latent_dim)), rtol=1e-5)
    assert model.decode(v).shape == x.shape


def test_sphere_project_scale_invariant_and_radius():
    z = torch.randn(4, 32, 8, 8)
    assert torch.allclose(sphere_project(z), sphere_project(7.5 * z), atol=1e-5)
    assert torch.allclose(sphere_project(z).flatten(1).norm(dim=1), torch.full((4,), math.sqrt(2048.0)))


def test_decoder_heads_start_at_zero_output():
    for name in SMALL:
        model = build_model(name)
        out = model.decode(model.project(torch.randn(2, *model.latent_shape)))
        assert torch.count_nonzero(out) == 0, name  # zero-initialised output head -> tanh(0)


def test_rope_is_relative():
    """Attention scores under RoPE depend only on the offset between positions."""
    cos, sin = rope_angles_2d(4, 4, 16, theta=100.0).cos(), rope_angles_2d(4, 4, 16, theta=100.0).sin()
    q, k = torch.randn(16), torch.randn(16)
    rotated_q = apply_rope(q.expand(1, 1, 16, 16), cos, sin)[0, 0]
    rotated_k = apply_rope(k.expand(1, 1, 16, 16), cos, sin)[0, 0]
    # position (0,0)->(1,1) and (2,2)->(3,3) have the same offset
    assert torch.allclose(rotated_q[0] @ rotated_k[5], rotated_q[10] @ rotated_k[15], atol=1e-5)
    assert not torch.allclose(rotated_q[0] @ rotated_k[5], rotated_q[0] @ rotated_k[6], atol=1e-3)


def test_config_roundtrip_and_errors():
    model = build_model("convnet_tiny", image_size=16, norm="batch", num_classes=3)
    rebuilt = model_from_config(model.config.to_dict())
    assert rebuilt.config == model.config
    with pytest.raises(ValueError, match="latent_dim"):
        SphereConfig(backbone="vit", image_size=32, latent_dim=1000)
    with pytest.raises(ValueError, match="unknown"):
        SphereConfig.from_dict({**model.config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="choose one of"):
        build_model("resnet")


@pytest.mark.parametrize("name", SMALL)
def test_sampling_is_batch_size_independent_and_steps_nest(name):
    model = perturb(build_model(name, image_size=16)).eval()
    gens = lambda idx: [torch.Generator().manual_seed(1000 + i) for i in idx]  # noqa: E731
    together = model.sample(4, steps=3, generator=gens(range(4)), return_all=True)
    alone = model.sample(1, steps=3, generator=gens([2]))
    assert torch.allclose(together[2][2], alone[0], atol=1e-5)
    two_step = model.sample(4, steps=2, generator=gens(range(4)))
    assert torch.allclose(together[1], two_step, atol=1e-5)
    assert not torch.allclose(together[0], together[2])  # refinement changes the image
    assert together[0].min() >= -1 and together[0].max() <= 1


@pytest.mark.parametrize("name", SMALL)
def test_conditional_model_and_guidance(name):
    model = build_model(name, image_size=16, num_classes=3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 2])
    # adaLN-Zero: at init the label changes nothing
    assert torch.allclose(model.encode(x, labels), model.encode(x, torch.tensor([1, 1])), atol=1e-6)
    perturb(model).eval()
    assert not torch.allclose(model.encode(x, labels), model.encode(x, torch.tensor([1, 1])), atol=1e-4)
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    plain = model.sample(2, 2, generator=gen(), labels=labels)
    assert torch.allclose(plain, model.sample(2, 2, generator=gen(), labels=labels, cfg=1.0))
    guided = model.sample(2, 2, generator=gen(), labels=labels, cfg=3.0)
    assert not torch.allclose(plain, guided)
    with pytest.raises(ValueError, match="unconditional"):
        build_model(name, image_size=16).encode(x, labels)


def test_reconstruct_steps():
    model = perturb(build_model("vit_tiny", image_size=16)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    outs = model.reconstruct(x, steps=3, return_all=True)
    assert len(outs) == 3
    assert torch.allclose(outs[0], model.decode(model.project(model.encode(x))), atol=1e-6)
    assert torch.allclose(outs[1], model.decode(model.project(model.encode(outs[0]))), atol=1e-5)


def test_vit_decoder_mixes_at_width_after_the_embedding():
    """The official decoder embeds the 8 latent channels to width W, then runs the latent MLP-mixer on W."""
    model = perturb(build_model("vit_tiny", image_size=16)).eval()
    decoder, width = model.decoder, model.config.width
    assert decoder.mixer.norm.weight.shape == (width,)
    v = model.project(torch.randn(2, *model.latent_shape))
    seen = {}
    decoder.mixer.register_forward_hook(lambda module, args, out: seen.setdefault("input", args[0]))
    decoder(v)
    assert torch.allclose(seen["input"], decoder.embed(v))


def test_checkpoints_from_before_the_decoder_change_still_load():
    """A config saved without `decoder_mixer` is the old layout (mixer on the latent channels, then the embedding)."""
    old = {k: v for k, v in build_model("vit_tiny", image_size=16).config.to_dict().items() if k != "decoder_mixer"}
    model = perturb(model_from_config(old)).eval()
    assert model.config.decoder_mixer == "latent"
    assert model.decoder.mixer.norm.weight.shape == (model.config.latent_channels,)
    v = model.project(torch.randn(2, *model.latent_shape))
    decoder = model.decoder
    expected = decoder.embed(decoder.mixer(v)) + decoder.grid.pos
    seen = {}
    decoder.blocks[0].register_forward_hook(lambda module, args, out: seen.setdefault("input", args[0]))
    decoder(v)
    assert torch.allclose(seen["input"], expected)
    convnet = {k: v for k, v in build_model("convnet_tiny").config.to_dict().items() if k != "decoder_mixer"}
    assert model_from_config(convnet).config == build_model("convnet_tiny").config  # nothing changed there


def test_sizes_follow_the_official_configs():
    with torch.device("meta"):
        small = build_model("vit_small").config
        assert (small.width, small.depth, small.heads) == (512, 8, 8)
        imagenet = build_model("vit_base", image_size=256).config
        cifar = build_model("vit_base", image_size=32).config
        faces = build_model("vit_base", image_size=64).config
    assert (imagenet.patch_size, imagenet.latent_grid, imagenet.latent_channels) == (8, 32, 64)
    assert (imagenet.mixer_depth, imagenet.pixel_head, imagenet.noise_angle) == (4, "linear", 85.0)
    assert (cifar.patch_size, cifar.latent_grid, cifar.latent_channels, cifar.mixer_depth) == (2, 16, 8, 2)
    assert (faces.patch_size, faces.latent_dim, faces.mixer_depth) == (2, 4096, 4)


def test_vit_base_parameter_count_matches_the_official_model():
    """Official ViT-Base sphere encoder at 32 px: about 264M parameters class-conditional, 176M without classes."""
    with torch.device("meta"):
        conditional = sum(p.numel() for p in build_model("vit_base", num_classes=10).parameters())
        unconditional = sum(p.numel() for p in build_model("vit_base").parameters())
    assert conditional == pytest.approx(263.8e6, rel=0.02)
    assert unconditional == pytest.approx(176.4e6, rel=0.02)


def test_combo_guidance_puts_the_square_root_at_both_places():
    assert guidance_scales(4.0, "combo") == (2.0, 2.0)
    assert guidance_scales(4.0, "both") == (4.0, 4.0)
    assert guidance_scales(4.0, "latent") == (4.0, 1.0) and guidance_scales(4.0, "pixel") == (1.0, 4.0)
    with pytest.raises(ValueError, match="cfg_mode"):
        guidance_scales(2.0, "everywhere")
    with pytest.raises(ValueError, match=">= 0"):
        guidance_scales(-1.0, "combo")
    model = perturb(build_model("vit_tiny", image_size=16, num_classes=3)).eval()
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    labels = torch.tensor([0, 2])
    combo = model.sample(2, 3, generator=gen(), labels=labels, cfg=4.0)  # combo is the default
    assert torch.allclose(combo, model.sample(2, 3, generator=gen(), labels=labels, cfg=2.0, cfg_mode="both"))
    assert not torch.allclose(combo, model.sample(2, 3, generator=gen(), labels=labels, cfg=4.0, cfg_mode="both"))
