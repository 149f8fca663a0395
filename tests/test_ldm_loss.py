"""The ldm objectives on hand-built cases with stand-in models: KL values, the KL scale, hinge signs, the shared
patch-GAN resuming exactly, the diffusion target (eps and v), t covering 1..T, label dropout to the null class, the
timestep-bin logs, and bad settings refused."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from losses.gan import hinge_d_loss, hinge_g_loss
from losses.ldm import (
    DiffusionLoss,
    DiffusionLossConfig,
    LDMAELossConfig,
    LDMAutoencoderLoss,
    drop_labels,
    kl_divergence,
    noised,
    sample_timesteps,
    target_of,
    timestep_bin_logs,
)


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class StandInAE(nn.Module):
    """The loss's view of a KLAutoencoder: forward(x) -> (raw x_hat, mean, logvar), last_layer()."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 3, padding=1)
        self.decoder = nn.Conv2d(4, 3, 3, padding=1)

    def last_layer(self) -> torch.Tensor:
        return self.decoder.weight

    def forward(self, x):
        mean, logvar = self.encoder(x).chunk(2, 1)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        return self.decoder(z), mean, logvar


def test_kl_is_zero_at_the_prior_and_matches_the_closed_form():
    zeros = torch.zeros(2, 4, 3, 3)
    assert kl_divergence(zeros, zeros).tolist() == [0.0, 0.0]
    mean, logvar = torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), math.log(4.0))
    expected = 2 * 0.5 * (4 + 4 - 1 - math.log(4))
    assert kl_divergence(mean, logvar).item() == pytest.approx(expected)


def test_the_ae_loss_is_rec_plus_weighted_kl_per_image_value():
    model = StandInAE()
    x = images()
    config = LDMAELossConfig(recon="l1", perceptual_weight=0, kl_weight=0.5, disc_weight=0)
    torch.manual_seed(0)
    loss, logs = LDMAutoencoderLoss(config)(model, (x, None), 0)
    torch.manual_seed(0)
    x_hat, mean, logvar = model(x)
    rec = ((x_hat - x) / 2).abs().mean()
    kl = kl_divergence(mean, logvar).mean() / (3 * 16 * 16)
    assert logs["rec"] == pytest.approx(rec.item(), rel=1e-5) and logs["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx((rec + 0.5 * kl).item(), rel=1e-5)


def test_hinge_signs_reward_confident_right_verdicts():
    real, fake = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -2.0)
    assert hinge_d_loss(real, fake).item() == 0  # confident and right: no discriminator loss
    assert hinge_d_loss(fake, real).item() == pytest.approx(3.0)  # confident and wrong
    assert hinge_g_loss(real).item() < hinge_g_loss(fake).item()  # the generator gains when D calls x_hat real


def train_ae(model, loss_fn, optimizer, start: int, count: int) -> list[float]:
    values = []
    for step in range(start, start + count):
        torch.manual_seed(100 + step)  # the posterior sample of step s
        loss, _ = loss_fn(model, (images(4, 16, seed=step), None), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    return values


def fresh_ae(seed: int = 0):
    torch.manual_seed(seed)
    model = StandInAE()
    config = LDMAELossConfig(perceptual_weight=0, disc_weight=0.8, disc_start=1, disc_layers=2, disc_width=8)
    return model, LDMAutoencoderLoss(config), torch.optim.Adam(model.parameters(), lr=1e-2)


def test_the_ae_gan_starts_at_disc_start_and_resumes_exactly():
    model, loss_fn, optimizer = fresh_ae()
    straight = train_ae(model, loss_fn, optimizer, 0, 5)
    model, loss_fn, optimizer = fresh_ae()
    first = train_ae(model, loss_fn, optimizer, 0, 2)
    state = {"model": model.state_dict(), "opt": optimizer.state_dict(), "loss": loss_fn.state_dict()}
    model, loss_fn, optimizer = fresh_ae(seed=1)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["opt"])
    loss_fn.load_state_dict(state["loss"])
    assert first + train_ae(model, loss_fn, optimizer, 2, 3) == straight
    _, logs = loss_fn(model, (images(), None), 0)
    assert logs["disc_factor"] == 0 and "g_loss" not in logs
    _, logs = loss_fn(model, (images(), None), 1)
    assert logs["disc_factor"] == 1 and math.isfinite(logs["g_loss"]) and math.isfinite(logs["d_loss"])


# ---------------------------------------------------------------------------------------------------------
# Diffusion


class StandInUNet(nn.Module):
    """Records its inputs; predicts a fixed tensor (zeros by default)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x_t, t, labels):
        self.calls.append((x_t.clone(), t.clone(), None if labels is None else labels.clone()))
        return torch.zeros_like(x_t) + self.weight


def stand_in_diffusion(timesteps: int = 10, prediction: str = "eps", num_classes: int = 0):
    """A pixel model's view: config, schedule.alphas_bar (T + 1, index 0 = 1), unet."""
    model = nn.Module()
    model.unet = StandInUNet()
    betas = torch.linspace(0.1, 0.5, timesteps)
    model.schedule = SimpleNamespace(alphas_bar=torch.cat([torch.ones(1), torch.cumprod(1 - betas, 0)]))
    model.config = SimpleNamespace(kind="pixel", timesteps=timesteps, prediction=prediction, num_classes=num_classes)
    return model


def test_the_eps_loss_of_a_zero_prediction_is_the_noise_power_and_x_t_is_the_forward_process():
    model = stand_in_diffusion()
    x0 = images(64)
    torch.manual_seed(0)
    loss, logs = DiffusionLoss(DiffusionLossConfig())(model, (x0,), 0)
    torch.manual_seed(0)
    t = sample_timesteps(64, 10, x0.device)
    noise = torch.randn_like(x0)
    x_t, seen_t, _ = model.unet.calls[0]
    assert torch.equal(seen_t, t)
    abar = model.schedule.alphas_bar[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-5) and logs["mse"] == logs["loss"]


def test_v_target_and_noised_endpoints():
    x0, noise = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 3.0)
    alphas_bar = torch.tensor([1.0, 0.25])
    t = torch.tensor([0, 1])
    assert noised(x0, t, noise, alphas_bar)[0].unique().item() == 1.0  # t = 0: the clean image
    assert noised(x0, t, noise, alphas_bar)[1].unique().item() == pytest.approx(0.5 + math.sqrt(0.75) * 3)
    v = target_of(x0, t, noise, alphas_bar, "v")
    assert v[0].unique().item() == pytest.approx(3.0) and v[1].unique().item() == pytest.approx(1.5 - math.sqrt(0.75))
    assert torch.equal(target_of(x0, t, noise, alphas_bar, "eps"), noise)


def test_training_timesteps_cover_1_to_T_and_never_0():
    t = sample_timesteps(20_000, 50, torch.device("cpu"))
    assert t.min().item() == 1 and t.max().item() == 50 and len(t.unique()) == 50


def test_label_dropout_uses_the_null_class():
    labels = torch.arange(10).repeat(100)
    torch.manual_seed(0)
    dropped = drop_labels(labels, 10, 0.2)
    null = (dropped == 10).float().mean().item()
    assert 0.15 < null < 0.25 and torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert drop_labels(labels, 0, 0.5) is None and drop_labels(None, 10, 0.5) is None
    model = stand_in_diffusion(num_classes=10)
    DiffusionLoss(DiffusionLossConfig(label_dropout=1.0))(model, (images(4), torch.tensor([1, 2, 3, 4])), 0)
    assert model.unet.calls[0][2].tolist() == [10, 10, 10, 10]


def test_timestep_bins_average_the_samples_of_each_bin():
    per_sample = torch.tensor([1.0, 3.0, 10.0, 5.0])
    t = torch.tensor([1, 10, 100, 51])
    logs = timestep_bin_logs(per_sample, t, 100, 10)
    assert logs == {"t_bin_0": 2.0, "t_bin_5": 5.0, "t_bin_9": 10.0}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown recon"):
        LDMAELossConfig(recon="mse")
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        LDMAELossConfig(kl_weight=-1)
    with pytest.raises(ValueError, match="disc_start must be >= 0"):
        LDMAELossConfig(disc_start=-1)
    with pytest.raises(ValueError, match="no LPIPS module"):
        LDMAutoencoderLoss(LDMAELossConfig(perceptual_weight=1.0))
    with pytest.raises(ValueError, match="label_dropout"):
        DiffusionLossConfig(label_dropout=2)
    with pytest.raises(ValueError, match="no discriminator state"):
        LDMAutoencoderLoss(LDMAELossConfig(perceptual_weight=0)).load_state_dict({})
