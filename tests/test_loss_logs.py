"""Every objective's logs are 0-dim detached float32 tensors on the batch's device, read back by the trainer only
when it logs: the loss call itself never reads a tensor back to the host."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from losses import (
    DiffusionLoss,
    DiffusionLossConfig,
    LDMAELossConfig,
    LDMAutoencoderLoss,
    PSVAELoss,
    PSVAELossConfig,
    SOMARAutoencoderLoss,
    SOMARCodebookLoss,
    SOMARLossConfig,
    SOMARPriorLoss,
    SphereLoss,
    SphereLossConfig,
    VQVAELoss,
    VQVAELossConfig,
)
from models import build_model
from tests.helpers import perturb

HOST_READS = ("item", "tolist", "__float__", "__int__", "numpy")
TINY_SOMAR = dict(image_size=16, ae_width=8, ae_groups=4, level_sizes=(4, 16), som_steps=5)


@contextlib.contextmanager
def no_host_reads():
    """Tensor.item / tolist / float() / int() / numpy raise: the code inside must not read a value back."""

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside the loss: a host sync per step on a GPU")

        return read

    with contextlib.ExitStack() as stack:
        for name in HOST_READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse(name)))
        yield


def images(count: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def case(name: str, lpips_model, gan: bool = False):
    """(model, loss, batch) of one objective at a tiny size; gan: the patch-GAN on from step 0."""
    x, labels = images(), torch.tensor([0, 1])
    disc = dict(disc_weight=0.5, disc_layers=2, disc_width=8) if gan else dict(disc_weight=0.0)
    torch.manual_seed(0)
    if name == "sphere":
        return perturb(build_model("vit_tiny", image_size=16)), SphereLoss(SphereLossConfig(), lpips_model), (x, None)
    if name == "psvae":
        config = PSVAELossConfig(perceptual_weight=0.5, beta_schedule="linear", beta_warmup_steps=10)
        return perturb(build_model("psvae_tiny", image_size=16)), PSVAELoss(config, lpips_model), (x, None)
    if name == "vqvae":
        model = build_model("vqvae_tiny", image_size=16, codebook_size=32)
        return model, VQVAELoss(VQVAELossConfig(perceptual_weight=0.5, **disc), lpips_model), (x, None)
    if name == "ldm_ae":
        model = build_model("ldm_ae_tiny", image_size=16, ae_width=16)
        return model, LDMAutoencoderLoss(LDMAELossConfig(**disc), lpips_model), (x, None)
    if name == "ddpm":
        return build_model("ddpm_tiny", image_size=16, num_classes=2), DiffusionLoss(DiffusionLossConfig()), (x, labels)
    if name == "somar_ae":
        model = build_model("somar_ae_tiny", image_size=16, ae_width=8, ae_groups=4)
        return model, SOMARAutoencoderLoss(SOMARLossConfig(perceptual_weight=0.5), lpips_model), (x, None)
    if name == "somar_prior":
        model = build_model("somar_prior_tiny", **TINY_SOMAR, prior_width=16, prior_depth=1, prior_heads=2)
        return model, SOMARPriorLoss(SOMARLossConfig()), (x, labels)
    model = build_model("somar_codebook_tiny", **TINY_SOMAR)
    return model, SOMARCodebookLoss(), (x, None)


ALL = ["sphere", "psvae", "vqvae", "ldm_ae", "ddpm", "somar_ae", "somar_prior", "somar_codebook"]


def check_logs(logs: dict, loss: torch.Tensor) -> None:
    assert logs, "no logs"
    for name, value in logs.items():
        assert isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, not a tensor"
        assert value.shape == () and value.dtype == torch.float32 and not value.requires_grad, name
        assert value.device == loss.device, name
    torch.testing.assert_close(logs["loss"], loss.detach().float())
    assert all(torch.isfinite(value) for value in logs.values())


@pytest.mark.parametrize("name", ALL)
def test_logs_are_detached_scalar_tensors(name, lpips_model):
    model, loss_fn, batch = case(name, lpips_model)
    loss, logs = loss_fn(model, batch, 3)
    check_logs(logs, loss)
    if name == "psvae":
        assert logs["beta"].item() == pytest.approx(3e-4)  # the schedule's beta at step 3, as a tensor too
    stacked = torch.stack(list(logs.values()))  # what the trainer sums on the device between log steps
    assert stacked.shape == (len(logs),)


@pytest.mark.parametrize("name", ["vqvae", "ldm_ae"])
def test_gan_logs_are_tensors_before_and_after_the_start(name, lpips_model):
    model, loss_fn, batch = case(name, lpips_model, gan=True)
    loss_fn.gan.settings = type(loss_fn.gan.settings)(**{**vars(loss_fn.gan.settings), "start": 1})
    loss, logs = loss_fn(model, batch, 0)
    check_logs(logs, loss)
    assert logs["disc_factor"].item() == 0.0 and "d_loss" not in logs
    loss, logs = loss_fn(model, batch, 1)
    check_logs(logs, loss)
    assert logs["disc_factor"].item() == 1.0 and {"g_loss", "d_loss", "disc_weight_adaptive"} <= set(logs)


# the vqvae's quantiser checks bool(initialized) each step and the SOM fit reads its errors back (models/*): those
# reads are the models', so those two run outside this check; the GAN's Adam reads its CPU step counter.
@pytest.mark.parametrize("name", ["sphere", "psvae", "ldm_ae", "ddpm", "somar_ae", "somar_prior"])
def test_the_loss_call_reads_nothing_back_to_the_host(name, lpips_model):
    model, loss_fn, batch = case(name, lpips_model)
    with no_host_reads():
        loss, logs = loss_fn(model, batch, 3)
    check_logs(logs, loss)


def test_no_host_reads_catches_a_read():
    with pytest.raises(AssertionError, match="Tensor.tolist"), no_host_reads():
        torch.ones(2).tolist()
    with pytest.raises(AssertionError, match="Tensor.__float__"), no_host_reads():
        float(torch.ones(()))
