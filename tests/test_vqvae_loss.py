"""The vqvae objective on hand-built examples: L1/L2 values, hinge values, the adaptive GAN weight on a toy last
layer, the GAN off before disc_start, batch usage/perplexity, and the discriminator state resuming exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from losses.vqvae import (
    PatchDiscriminator,
    VQVAELoss,
    VQVAELossConfig,
    adaptive_weight,
    batch_usage,
    hinge_d_loss,
    hinge_g_loss,
    patch_grid,
)


class StandInQuantizer(nn.Module):
    codebook_size = 4


class StandIn(nn.Module):
    """The loss's view of a VQ-VAE: forward(x) -> (raw reconstruction, aux), last_layer(), quantizer.codebook_size."""

    def __init__(self, aux_scale: float = 0.1):
        super().__init__()
        self.encoder = nn.Conv2d(3, 4, 3, padding=1)
        self.decoder = nn.Conv2d(4, 3, 3, padding=1)
        self.quantizer = StandInQuantizer()
        self.aux_scale = aux_scale

    def last_layer(self) -> torch.Tensor:
        return self.decoder.weight

    def forward(self, x):
        z = self.encoder(x)
        indices = z.argmax(1)  # (B, h, w)
        aux = {"vq": self.aux_scale * z.pow(2).mean(), "commit": 0.25 * self.aux_scale * z.pow(2).mean()}
        aux.update(entropy=torch.zeros(()), indices=indices)
        return self.decoder(z), aux


class FixedOutput(nn.Module):
    """forward returns a given reconstruction and given aux terms."""

    def __init__(self, x_hat, vq=0.0, commit=0.0, entropy=0.0):
        super().__init__()
        self.x_hat, self.quantizer = x_hat, StandInQuantizer()
        self.aux = {"vq": torch.tensor(vq), "commit": torch.tensor(commit), "entropy": torch.tensor(entropy)}

    def forward(self, x):
        return self.x_hat, {**self.aux, "indices": torch.zeros(x.shape[0], 2, 2, dtype=torch.long)}


def images(count: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("recon", "expected"), [("l1", 0.25), ("l2", 0.0625)])
def test_l1_l2_are_per_value_means_on_the_zero_one_scale(recon, expected):
    x = -torch.ones(2, 3, 8, 8)  # 0 on [0, 1]
    x_hat = torch.full_like(x, -0.5)  # 0.25 on [0, 1]
    model = FixedOutput(x_hat, vq=0.5, commit=0.125, entropy=0.01)
    loss, logs = VQVAELoss(VQVAELossConfig(recon=recon, perceptual_weight=0))(model, (x, None), 0)
    assert logs["rec"] == pytest.approx(expected)
    assert loss.item() == pytest.approx(expected + 0.5 + 0.125 + 0.01)
    assert logs["vq"] == pytest.approx(0.5) and logs["commit"] == pytest.approx(0.125)


def test_hinge_losses_on_hand_built_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; fake: relu(1 - 2) = 0, relu(1 + 0.5) = 1.5 -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms():
    last = torch.tensor([1.0, -2.0], requires_grad=True)
    rec, g_loss = 3 * last.sum(), 4 * last.sum() + last.pow(2).sum()  # grads (3, 3) and (4 + 2w) = (6, 0)
    expected = math.sqrt(18) / (6 + 1e-4)
    assert adaptive_weight(rec, g_loss, last).item() == pytest.approx(expected, rel=1e-6)
    huge = adaptive_weight(rec, 0 * last.sum(), last)  # no generator gradient: clamped
    assert huge.item() == pytest.approx(1e4)


def test_batch_usage_and_perplexity_of_a_known_assignment():
    indices = torch.tensor([[[0, 0], [1, 2]]])  # p = (1/2, 1/4, 1/4, 0) over K = 4
    usage, perplexity = batch_usage(indices, 4)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert usage.item() == pytest.approx(0.75) and perplexity.item() == pytest.approx(math.exp(entropy))


def test_the_loss_logs_the_contract_terms():
    torch.manual_seed(0)
    loss_fn = VQVAELoss(VQVAELossConfig(perceptual_weight=0, disc_weight=0.5, disc_start=0, disc_layers=2))
    loss, logs = loss_fn(StandIn(), (images(), None), 0)
    for term in ("loss", "rec", "vq", "commit", "entropy", "g_loss", "d_loss", "disc_factor", "usage", "perplexity"):
        assert term in logs and math.isfinite(logs[term]), term
    assert torch.isfinite(loss)


def test_perceptual_term_is_weighted_lpips(lpips_model):
    x, x_hat = images(2), images(2, seed=1)
    loss_fn = VQVAELoss(VQVAELossConfig(recon="l1", perceptual_weight=0.5), lpips_model)
    loss, logs = loss_fn(FixedOutput(x_hat), (x, None), 0)
    expected = lpips_model(x_hat, x).mean().item()
    assert logs["perc"] == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(logs["rec"] + 0.5 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="no LPIPS module"):
        VQVAELoss(VQVAELossConfig(perceptual_weight=1.0))


def test_the_gan_is_off_before_disc_start_and_on_after():
    torch.manual_seed(0)
    model = StandIn()
    loss_fn = VQVAELoss(VQVAELossConfig(perceptual_weight=0, disc_weight=1.0, disc_start=5, disc_layers=2))
    before = copy.deepcopy(loss_fn.discriminator.state_dict())
    loss, logs = loss_fn(model, (images(), None), 4)
    assert logs["disc_factor"] == 0 and "g_loss" not in logs and "d_loss" not in logs
    assert all(torch.equal(before[k], v) for k, v in loss_fn.discriminator.state_dict().items())
    plain, _ = VQVAELoss(VQVAELossConfig(perceptual_weight=0))(model, (images(), None), 4)
    assert loss.item() == pytest.approx(plain.item())
    _, logs = loss_fn(model, (images(), None), 5)
    assert logs["disc_factor"] == 1 and "g_loss" in logs
    changed = [not torch.equal(before[k], v) for k, v in loss_fn.discriminator.state_dict().items()]
    assert any(changed)


def test_the_generator_term_does_not_touch_the_discriminator_gradients():
    torch.manual_seed(0)
    model = StandIn()
    loss_fn = VQVAELoss(VQVAELossConfig(perceptual_weight=0, disc_weight=1.0, disc_layers=2))
    loss, _ = loss_fn(model, (images(), None), 0)
    grads = [p.grad.clone() for p in loss_fn.discriminator.parameters()]
    loss.backward()
    assert model.decoder.weight.grad is not None and model.encoder.weight.grad is not None
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, loss_fn.discriminator.parameters()))


def test_patch_grid_and_discriminator_shapes():
    for size, layers in ((32, 3), (16, 2), (64, 3)):
        out = PatchDiscriminator(3, 8, layers)(torch.zeros(1, 3, size, size))
        assert out.shape[-1] == patch_grid(size, layers)
    assert patch_grid(16, 3) < 1  # too many layers for 16 px: the family refuses it


def train_steps(model, loss_fn, optimizer, start: int, count: int) -> list[float]:
    """A tiny training loop on fixed batches (step s uses batch s): the loss values."""
    values = []
    for step in range(start, start + count):
        loss, _ = loss_fn(model, (images(4, 16, seed=step), None), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    return values


def fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = StandIn()
    config = VQVAELossConfig(perceptual_weight=0, disc_weight=0.8, disc_start=0, disc_layers=2, disc_width=8)
    loss_fn = VQVAELoss(config)
    return model, loss_fn, torch.optim.Adam(model.parameters(), lr=1e-2)


def test_stop_and_resume_equals_straight_through_with_the_gan_on_from_step_0(tmp_path):
    model, loss_fn, optimizer = fresh()
    straight = train_steps(model, loss_fn, optimizer, 0, 6)
    model, loss_fn, optimizer = fresh()
    first = train_steps(model, loss_fn, optimizer, 0, 3)
    path = tmp_path / "state.pth"
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(), "loss": loss_fn.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    model, loss_fn, optimizer = fresh(seed=1)  # different initial weights: everything must come from the file
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["opt"])
    loss_fn.load_state_dict(state["loss"])
    assert first + train_steps(model, loss_fn, optimizer, 3, 3) == straight


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown recon"):
        VQVAELossConfig(recon="mse")
    with pytest.raises(ValueError, match=">= 0"):
        VQVAELossConfig(disc_weight=-1)
    with pytest.raises(ValueError, match="no discriminator state"):
        VQVAELoss(VQVAELossConfig(perceptual_weight=0, disc_weight=1.0)).load_state_dict({})
