"""Models: every registry entry builds with the right shapes; sphere projection; sampling semantics."""

import math

import pytest
import torch

from models import MODELS, SphereConfig, build_model, model_from_config
from models.layers import apply_rope, rope_angles_2d, sphere_project
from tests.helpers import perturb

SMALL = ["vit_tiny", "convnet_tiny"]


@pytest.mark.parametrize("name", sorted(MODELS))
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
    x = torch.rand(3, 3, image_size, image_size) * 2 - 1
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
