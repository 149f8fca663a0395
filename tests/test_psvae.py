"""The Power-Spherical VAE family: model (models/psvae.py) and objective (losses/psvae.py), CPU-sized."""

import math
from types import SimpleNamespace

import pytest
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data import build_dataset
from losses.psvae import PSVAELoss, PSVAELossConfig, beta_at, truncated_normal_nll
from models.psvae import PSVAE, PSVAE_MODELS, PSVAEConfig
from tests.helpers import perturb

VARIANTS = {  # overrides for each backbone / decoder / posterior, small enough for the CPU
    "conv": dict(image_size=16),
    "vit": dict(image_size=16, backbone="vit"),
    "upsample": dict(image_size=16, decoder="upsample"),
    "conv1d": dict(backbone="conv1d", signal_length=64, in_channels=2),
    "vmf": dict(image_size=16, posterior="vmf", latent_dim=5),
}


def tiny(variant: str = "conv", **overrides) -> PSVAE:
    torch.manual_seed(0)
    return perturb(PSVAE_MODELS["psvae_tiny"](**{**VARIANTS[variant], **overrides}))


def data_for(model: PSVAE, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *model.config.data_shape), generator=generator) * 2 - 1


# ---------------------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("name", sorted(PSVAE_MODELS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_registry_entry_builds_on_the_meta_device(name, variant):
    with torch.device("meta"):
        model = PSVAE_MODELS[name](**VARIANTS[variant])
    assert model.config.family == "psvae" and next(model.parameters()).is_meta
    assert PSVAEConfig.from_dict(model.config.to_dict()) == model.config


def test_tiny_size_and_defaults():
    model = PSVAE_MODELS["psvae_tiny"]()
    assert 0.3e6 <= sum(p.numel() for p in model.parameters()) <= 0.6e6
    assert model.config.z_dim == 3 and model.config.image_size == 32 and model.config.kappa_min == 1.0
    assert PSVAE_MODELS["psvae"] is PSVAE_MODELS["psvae_base"]
    assert (PSVAE.can_sample, PSVAE.steps_are_prefix, PSVAE.default_eval_steps) == (True, True, (1,))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_unit_means_and_output_range(variant, batch):
    model = tiny(variant)
    x = data_for(model, batch)
    mu, kappa = model.encode(x)
    assert mu.shape == (batch, model.config.z_dim) and kappa.shape == (batch,)  # (B,), never 0-d
    assert torch.allclose(mu.norm(dim=-1), torch.ones(batch), atol=1e-5) and (kappa >= 1.0).all()
    out = model(x)
    assert out["x_hat"].shape == x.shape and torch.allclose(out["z"].norm(dim=-1), torch.ones(batch), atol=1e-5)
    samples = model.sample(batch, generator=torch.Generator().manual_seed(0))
    assert samples.shape == x.shape and torch.isfinite(samples).all()
    if variant != "conv1d":
        assert samples.abs().max() <= 1.0 and model.reconstruct(x).abs().max() <= 1.0


def test_signal_decoder_output_is_linear_not_tanh():
    model = tiny("conv1d")
    with torch.no_grad():
        model.decoder.out.bias.fill_(3.0)  # beyond tanh's range
    assert model.decode(F.normalize(torch.randn(2, 3), dim=-1)).min() > 1.5


def test_config_round_trip_and_rejections():
    config = tiny("vit", kappa_max=50.0, fixed_kappa=None).config
    assert PSVAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown Power-Spherical VAE config keys"):
        PSVAEConfig.from_dict({**config.to_dict(), "noise_angle": 80.0})
    with pytest.raises(ValueError, match="not a Power-Spherical VAE config"):
        PSVAEConfig.from_dict({**config.to_dict(), "family": "sphere"})
    with pytest.raises(ValueError, match="take no setting \\['noise_angle'\\]"):
        PSVAE_MODELS["psvae_tiny"](noise_angle=80.0)
    with pytest.raises(ValueError, match="not both"):
        PSVAE_MODELS["psvae_tiny"](latent_dim=8, z_dim=8)
    assert PSVAE_MODELS["psvae_tiny"](latent_dim=16, image_size=16).config.z_dim == 16


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(decoder="upsample", seed_size=5), "cannot reach image_size 32"),
        (dict(image_size=36), "not a multiple of the conv stride 8"),
        (dict(backbone="vit", vit_width=40, heads=4), "multiple of 4"),
        (dict(backbone="mlp"), "unknown backbone"),
        (dict(posterior="gaussian"), "unknown posterior"),
        (dict(fixed_kappa=0.0), "fixed_kappa must be > 0"),
        (dict(kappa_max=5.0), "kappa_init 10.0 must be in"),
        (dict(latent_dim=1), "z_dim must be >= 2"),
    ],
)
def test_settings_that_do_not_fit_are_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        PSVAE_MODELS["psvae_tiny"](**settings)


def test_upsampling_decoder_reaches_the_image_size_from_its_seed():
    model = PSVAE_MODELS["psvae_tiny"](image_size=32, decoder="upsample", seed_size=2)
    assert model.decode(F.normalize(torch.randn(2, 3), dim=-1)).shape == (2, 3, 32, 32)


def test_fixed_kappa_is_exactly_the_given_value():
    """Spherinator's fixed_scale gives softplus(K) + 1 (2.31 for K = 1); ours is K, with no kappa parameters."""
    model = tiny(fixed_kappa=1.0)
    _, kappa = model.encode(data_for(model, 4))
    assert torch.equal(kappa, torch.ones(4)) and model.encoder.head.kappa is None


def test_kappa_starts_at_kappa_init_and_respects_its_bounds():
    model = PSVAE_MODELS["psvae_tiny"](image_size=16, kappa_init=7.0, kappa_min=0.5, kappa_max=100.0)
    x = data_for(model, 5)
    assert torch.allclose(model.encode(x)[1], torch.full((5,), 7.0), rtol=1e-5)
    with torch.no_grad():
        model.encoder.head.kappa.bias.fill_(1e4)
        assert torch.equal(model.encode(x)[1], torch.full((5,), 100.0))  # clamped at kappa_max
        model.encoder.head.kappa.bias.fill_(-1e4)
        assert torch.equal(model.encode(x)[1], torch.full((5,), 0.5))  # softplus -> 0: kappa_min


def test_deterministic_variant_is_a_spherical_autoencoder():
    model = tiny(deterministic=True)
    x = data_for(model, 3)
    out = model(x)
    assert torch.equal(out["z"], out["mu"]) and torch.equal(model.kl(out["mu"], out["kappa"]), torch.zeros(3))
    assert model.encoder.head.kappa is None and torch.isinf(out["kappa"]).all()
    loss, logs = PSVAELoss(PSVAELossConfig(beta=1.0))(model, (x, None), 0)
    assert logs["kl"] == 0.0 and "kappa_mean" not in logs and math.isclose(loss.item(), logs["recon"], rel_tol=1e-6)


@pytest.mark.parametrize("variant", ["conv", "conv1d", "vmf"])
def test_per_image_generators_make_samples_batch_independent_and_steps_nest(variant):
    model = tiny(variant).eval()
    alone = model.sample(1, steps=2, generator=[torch.Generator().manual_seed(5)], return_all=True)
    batch = model.sample(3, steps=2, generator=[torch.Generator().manual_seed(s) for s in (1, 5, 9)], return_all=True)
    # only float reduction order differs with the batch size (~1e-6), which the encode -> decode cycle amplifies
    assert torch.allclose(alone[0][0], batch[0][1], atol=1e-5) and torch.allclose(alone[1][0], batch[1][1], atol=1e-4)
    runs = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0), return_all=True)
    shorter = model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert len(runs) == 3 and torch.equal(runs[1], shorter)


def test_reconstruct_uses_the_mean_and_cycles_nest():
    model = tiny().eval()
    x = data_for(model, 2)
    first = model.decode(model.encode(x)[0])
    steps = model.reconstruct(x, steps=3, return_all=True)
    assert torch.allclose(steps[0], first.clamp(-1, 1)) and torch.equal(steps[1], model.reconstruct(x, steps=2))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.reconstruct(x, steps=0)


def test_conditional_model_with_guidance():
    model = tiny(num_classes=4).eval()
    labels = torch.tensor([0, 3])
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    guided = model.sample(2, steps=2, generator=generators, labels=labels, cfg=3.0)
    assert guided.shape == (2, 3, 16, 16) and guided.abs().max() <= 1
    null = model.sample(2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])  # labels None: null class
    plain = model.sample(2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], labels=labels)
    assert not torch.allclose(null, plain)
    with pytest.raises(ValueError, match="unconditional"):
        tiny().sample(2, labels=labels)


def test_parameter_groups_partition_the_model():
    model = tiny(num_classes=3)
    groups = model.parameter_groups()
    assert set(groups) == {"encoder", "decoder"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


def test_posterior_is_float32_under_a_bfloat16_autocast():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(data_for(model, 2))
        kl = model.kl(out["mu"], out["kappa"])
    assert out["z"].dtype == out["kappa"].dtype == kl.dtype == torch.float32 and torch.isfinite(kl).all()


# ---------------------------------------------------------------------------------------------------------
# Loss


SIGMA_FORMS = ["gaussian_nll", "truncated_nll", "gaussian_kl"]


@pytest.mark.parametrize("recon", ["mse", "l1", *SIGMA_FORMS])
@pytest.mark.parametrize("variant", ["conv", "conv1d", "vmf", "vit"])
def test_loss_is_finite_and_gradients_reach_encoder_and_decoder(recon, variant):
    model = tiny(variant)
    x = data_for(model, 3)
    sigma = torch.full_like(x, 0.1)
    loss_fn = PSVAELoss(PSVAELossConfig(recon=recon, beta=0.1))
    loss, logs = loss_fn(model, (x, torch.zeros(3, dtype=torch.long), sigma), step=0)
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in logs.values())
    assert set(logs) == {"loss", "recon", "kl", "kappa_mean", "kappa_max", "beta"}
    for name, group in model.parameter_groups().items():
        assert sum(p.grad.abs().sum() for p in group if p.grad is not None) > 0, name
    assert model.encoder.head.kappa.weight.grad.abs().sum() > 0  # the KL reaches kappa


def test_each_recon_form_against_a_hand_computation():
    x, x_hat = torch.tensor([[-1.0, 0.0, 0.5, 1.0]]), torch.tensor([[-0.5, 0.2, 0.5, 0.0]])
    sigma = torch.tensor([[0.2, 0.1, 0.4, 0.2]])  # in the [-1, 1] units of x
    x01, x_hat01, sigma01 = (x + 1) / 2, (x_hat + 1) / 2, sigma / 2  # the data scale of images
    expected = {
        "mse": (x_hat01 - x01) ** 2,
        "l1": (x_hat01 - x01).abs(),
        "gaussian_kl": (x_hat01 - x01) ** 2 / (2 * sigma01**2),
        "gaussian_nll": -torch.distributions.Normal(x_hat01, sigma01).log_prob(x01),
    }
    for recon, value in expected.items():
        loss_fn = PSVAELoss(PSVAELossConfig(recon=recon))
        image = lambda t: t.view(1, 1, 2, 2)  # noqa: E731
        got = loss_fn.recon_per_value(image(x_hat), image(x), image(sigma01) if recon in SIGMA_FORMS else None)
        assert torch.allclose(got.view(1, 4), value, atol=1e-6), recon


def test_truncated_normal_matches_scipy_including_tails():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, generator=generator, dtype=torch.float64)
    loc = torch.rand(200, generator=generator, dtype=torch.float64) * 3 - 1  # reconstructions in [-1, 2]
    sigma = torch.rand(200, generator=generator, dtype=torch.float64) * 0.3 + 0.01
    loc[:3], sigma[:3] = torch.tensor([-12.0, 14.0, 0.5]), torch.tensor([0.1, 0.1, 1e3])  # far tails, a flat one
    ours = truncated_normal_nll(x, loc, sigma, 0.0, 1.0)
    a, b = (0 - loc) / sigma, (1 - loc) / sigma
    theirs = -scipy.stats.truncnorm.logpdf(x.numpy(), a.numpy(), b.numpy(), loc=loc.numpy(), scale=sigma.numpy())
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, torch.from_numpy(theirs), rtol=1e-6, atol=1e-6)
    outside = truncated_normal_nll(torch.tensor([-0.2, 1.3]), torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2]), 0, 1)
    inside = truncated_normal_nll(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2]), 0, 1)
    assert torch.equal(outside, inside)  # observations past a bound are clamped onto it, not a constant 1e-5


@pytest.mark.parametrize("recon", SIGMA_FORMS)
def test_sigma_missing_or_not_positive_is_a_clear_error(recon):
    model, loss_fn = tiny(), PSVAELoss(PSVAELossConfig(recon=recon))
    x = data_for(model, 2)
    with pytest.raises(ValueError, match="needs per-value errors sigma"):
        loss_fn(model, (x, None), 0)
    bad = torch.full_like(x, 0.1)
    bad[0, 0, 0, 0] = 0.0  # one zero is enough (Spherinator checked .any())
    with pytest.raises(ValueError, match="must be > 0"):
        loss_fn(model, (x, None, bad), 0)
    with pytest.raises(ValueError, match="one error per value"):
        loss_fn(model, (x, None, torch.ones(2, 1)), 0)


class _ShiftModel(nn.Module):
    """Stand-in model whose reconstruction is x + 0.2 (a fixed per-pixel error) and whose KL is 1 per sample."""

    config = SimpleNamespace(num_classes=0, deterministic=False)

    def forward(self, x, labels=None):
        mu = F.normalize(torch.ones(x.shape[0], 3), dim=-1)
        return {"mu": mu, "kappa": torch.full((x.shape[0],), 5.0), "z": mu, "x_hat": x + 0.2}

    def kl(self, mu, kappa):
        return torch.ones(mu.shape[0])


@pytest.mark.parametrize("recon", ["mse", "l1", *SIGMA_FORMS])
def test_loss_scale_does_not_depend_on_image_size(recon):
    loss_fn = PSVAELoss(PSVAELossConfig(recon=recon, beta=0.01))
    values = []
    for size in (16, 32):
        x = F.interpolate(torch.linspace(-0.8, 0.6, 3 * 64).view(1, 3, 8, 8), size=size, mode="nearest")
        values.append(loss_fn(_ShiftModel(), (x, None, torch.full_like(x, 0.1)), 0)[0].item())
    assert math.isclose(values[0], values[1], rel_tol=1e-5), values


def test_beta_schedules():
    constant = PSVAELossConfig(beta=0.5)
    assert beta_at(constant, 0) == beta_at(constant, 10**6) == 0.5
    linear = PSVAELossConfig(beta=1.0, beta_schedule="linear", beta_warmup_steps=100, beta_start=0.2)
    assert [beta_at(linear, s) for s in (0, 50, 100, 500)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    cyclic = PSVAELossConfig(
        beta=1.0, beta_schedule="cyclic", beta_warmup_steps=50, beta_cycle_steps=100, beta_cycles=2
    )
    assert [beta_at(cyclic, s) for s in (0, 25, 50, 99, 100, 125, 199, 200, 225)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    )
    forever = PSVAELossConfig(beta=1.0, beta_schedule="cyclic", beta_warmup_steps=50, beta_cycle_steps=100)
    assert beta_at(forever, 1025) == pytest.approx(0.5)
    _, logs = PSVAELoss(linear)(tiny(), (data_for(tiny(), 2), None), 50)
    assert logs["beta"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="cyclic beta needs"):
        PSVAELossConfig(beta_schedule="cyclic", beta_warmup_steps=10)
    with pytest.raises(ValueError, match="unknown recon"):
        PSVAELossConfig(recon="bce")


def test_perceptual_term(lpips_model):
    model = tiny()
    x = data_for(model, 2)
    loss_fn = PSVAELoss(PSVAELossConfig(perceptual_weight=0.5), lpips_model)
    loss, logs = loss_fn(model, (x, None), 0)
    loss.backward()
    assert math.isfinite(logs["perceptual"]) and logs["perceptual"] >= 0
    expected = logs["recon"] + logs["beta"] * logs["kl"] + 0.5 * logs["perceptual"]
    assert math.isclose(logs["loss"], expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="no LPIPS module"):
        PSVAELoss(PSVAELossConfig(perceptual_weight=0.5))
    with pytest.raises(ValueError, match="LPIPS needs RGB images"):
        loss_fn(tiny("conv1d"), (data_for(tiny("conv1d"), 2), None), 0)


# ---------------------------------------------------------------------------------------------------------
# It trains


def _train(model: PSVAE, loss_fn: PSVAELoss, batches, steps: int, lr: float = 2e-3) -> list[float]:
    """A plain AdamW loop; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = loss_fn(model, batches(step), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _falls(losses: list[float], epoch: int = 4, ratio: float = 0.8) -> bool:
    """The mean loss of the last epoch (the same batches as the first) is below ratio x that of the first."""
    return sum(losses[-epoch:]) < ratio * sum(losses[:epoch])


def test_tiny_psvae_trains_on_demo_images():
    """64 demo images at 16 px, 4 batches of 16 per epoch, 15 epochs (measured: first epoch 0.073, last 0.049)."""
    dataset = build_dataset("demo", 16, hflip=False)
    images = torch.stack([dataset[i][0] for i in range(64)])
    torch.manual_seed(0)
    model = PSVAE_MODELS["psvae_tiny"](image_size=16)
    before = F.mse_loss(model.reconstruct(images), images).item()
    losses = _train(model, PSVAELoss(PSVAELossConfig()), lambda step: (images[step % 4 * 16 :][:16], None), 60)
    assert _falls(losses), losses
    assert F.mse_loss(model.reconstruct(images), images).item() < 0.7 * before


def sinusoid_mixtures(count: int, length: int, noise: float, seed: int = 0) -> torch.Tensor:
    """(count, 1, length): two sinusoids of random frequency, phase and amplitude each, plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, length)
    freq = torch.randint(1, 6, (count, 2, 1), generator=generator).float()
    phase = torch.rand(count, 2, 1, generator=generator) * 2 * math.pi
    amp = torch.rand(count, 2, 1, generator=generator)
    clean = (amp * torch.sin(2 * math.pi * freq * t + phase)).sum(1, keepdim=True)
    return clean + noise * torch.randn(clean.shape, generator=generator)


def test_tiny_signal_model_trains_on_noisy_sinusoid_mixtures():
    """(1, 64) signals with their noise level as per-value sigma, through the (x, labels, sigma) batch form; d = 8
    starts at kappa 50 so that z carries information from the start (measured: first epoch 99, last 46)."""
    signals = sinusoid_mixtures(64, 64, noise=0.05)
    sigma = torch.full_like(signals, 0.05)
    torch.manual_seed(0)
    model = PSVAE_MODELS["psvae_tiny"](
        backbone="conv1d", signal_length=64, in_channels=1, latent_dim=8, kappa_init=50.0
    )
    loss_fn = PSVAELoss(PSVAELossConfig(recon="gaussian_kl", beta=1.0))
    losses = _train(model, loss_fn, lambda step: (signals[step % 4 * 16 :][:16], None, sigma[step % 4 * 16 :][:16]), 60)
    assert _falls(losses, ratio=0.7), losses
