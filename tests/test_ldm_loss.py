"""The ldm objectives on hand-built cases with stand-in models: KL values, the KL scale, hinge signs, the shared
patch-GAN resuming exactly, the diffusion target (eps and v), t covering 1..T, label dropout to the null class, the
timestep-bin logs, and bad settings refused."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from engine.images import verdict_overlay
from losses.gan import hinge_d_loss, hinge_g_loss
from losses.ldm import (
    DiffusionLoss,
    DiffusionLossConfig,
    LDMAELossConfig,
    LDMAutoencoderLoss,
    TimestepBins,
    diffusion_input,
    drop_labels,
    kl_divergence,
)
from models.diffusion import Schedule


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


def test_the_discriminator_verdict_waits_for_disc_start_and_tints_real_green_and_fake_red():
    _, loss_fn, _ = fresh_ae()  # disc_start 1
    x = images(2, 16)
    assert loss_fn.verdict(x, 0) is None and loss_fn.verdict(x, 1) is None  # step index 1 not trained yet
    verdict = loss_fn.verdict(x, 2)
    assert verdict.shape == (2, 1, 2, 2) and ((verdict > 0) & (verdict < 1)).all()
    grey = torch.zeros(1, 3, 4, 4)
    real, fake = verdict_overlay(grey, torch.ones(1, 1, 2, 2)), verdict_overlay(grey, torch.zeros(1, 1, 2, 2))
    assert (real[:, 1] > real[:, 0]).all() and (fake[:, 0] > fake[:, 1]).all() and real.abs().max() <= 1
    half = verdict_overlay(grey, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
    assert (half[0, 1, :2, :2] > 0).all() and (half[0, 0, :2, 2:] > 0).all()  # each patch colours its own pixels
    assert LDMAutoencoderLoss(LDMAELossConfig(perceptual_weight=0, disc_weight=0)).verdict(x, 10) is None


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
    """A pixel model's view: config, a schedule, unet."""
    model = nn.Module()
    model.unet = StandInUNet()
    model.schedule = Schedule(timesteps, "linear", 0.1, 0.5)
    model.config = SimpleNamespace(kind="pixel", timesteps=timesteps, prediction=prediction, num_classes=num_classes)
    return model


def test_the_eps_loss_of_a_zero_prediction_is_the_noise_power_and_x_t_is_the_forward_process():
    model = stand_in_diffusion()
    x0 = images(64)
    torch.manual_seed(0)
    loss, logs = DiffusionLoss(DiffusionLossConfig(), 10)(model, (x0,), 0)
    torch.manual_seed(0)
    t = torch.randint(1, 11, (64,))
    noise = torch.randn_like(x0)
    x_t, seen_t, _ = model.unet.calls[0]
    assert torch.equal(seen_t, t) and t.min() >= 1
    abar = model.schedule.alphas_bar[t].view(-1, 1, 1, 1).float()
    assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-5) and logs["mse"] == logs["loss"]


def test_the_v_loss_regresses_v():
    model = stand_in_diffusion(prediction="v")
    x0 = images(64)
    torch.manual_seed(0)
    loss, _ = DiffusionLoss(DiffusionLossConfig(), 10)(model, (x0,), 0)
    torch.manual_seed(0)
    t = torch.randint(1, 11, (64,))
    noise = torch.randn_like(x0)
    abar = model.schedule.alphas_bar[t].view(-1, 1, 1, 1).float()
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert loss.item() == pytest.approx(v.pow(2).mean().item(), rel=1e-5)


class StandInLatent(nn.Module):
    """A latent model's view for diffusion_input: config.kind, latents(x) -> (mean, std)."""

    config = SimpleNamespace(kind="latent")

    def latents(self, x):
        return x[:, :1], x[:, 1:2].abs()


def test_cached_posteriors_give_the_same_latents_as_encoding_and_pick_a_flip_per_item():
    core, x = StandInLatent(), images(256, size=4)
    torch.manual_seed(0)
    fresh = diffusion_input(core, (x,))
    mean, std = core.latents(x)
    mirrored = torch.stack([mean.flip(-1) + 100, std], 1)  # an unmistakable "flipped" posterior
    cached = torch.stack([torch.stack([mean, std], 1), mirrored], 1)  # (B, F=2, 2, c, h, w)
    torch.manual_seed(0)
    drawn = diffusion_input(core, (torch.stack([torch.stack([mean, std], 1)], 1),))  # F = 1
    assert torch.allclose(drawn, fresh)  # one flip: exactly the on-the-fly draw
    picked = diffusion_input(core, (cached,)).flatten(1).mean(1) > 50
    assert 0.35 < picked.float().mean().item() < 0.65  # a fair coin per item


def test_timestep_bins_average_every_sample_of_every_step_and_resume():
    bins = TimestepBins(100, 10)
    bins.add(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([1, 10, 100]))
    resumed = TimestepBins(100, 10)
    resumed.load_state_dict(bins.state_dict())
    resumed.add(torch.tensor([5.0, 4.0]), torch.tensor([51, 5]))
    assert resumed.take() == {"t_bin_0": 8 / 3, "t_bin_5": 5.0, "t_bin_9": 10.0}
    assert resumed.take() == {}  # taking resets
    with pytest.raises(ValueError, match="timestep bins"):
        TimestepBins(100, 5).load_state_dict(bins.state_dict())


def test_the_diffusion_loss_gathers_its_bins_for_the_epoch():
    model, loss_fn = stand_in_diffusion(), DiffusionLoss(DiffusionLossConfig(timestep_bins=2), 10)
    for _ in range(3):
        loss_fn(model, (images(8),), 0)
    stats = loss_fn.epoch_stats()
    assert set(stats) == {"t_bin_0", "t_bin_1"} and int(loss_fn.bins.counts.sum()) == 0
    assert loss_fn.state_optional and set(loss_fn.state_dict()) == {"timestep_bins"}


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
