"""somar models: every kind builds from the registry and round-trips its config, the autoencoder's map is bounded and
its loss trains it, bad settings are one-line ValueErrors."""

from __future__ import annotations

import pytest
import torch

from losses.somar import SOMARAutoencoderLoss, SOMARLossConfig
from models import MODELS, build_model
from models.somar import SOMAR_MODELS, SOMARAutoencoder, SOMARConfig

TINY_AE = dict(image_size=16, ae_width=8, ae_groups=4)


def tiny_autoencoder() -> SOMARAutoencoder:
    torch.manual_seed(0)
    return build_model("somar_ae_tiny", **TINY_AE)


@pytest.mark.parametrize("name", sorted(SOMAR_MODELS))
def test_every_somar_name_builds_on_meta_and_round_trips_its_config(name):
    assert name in MODELS
    with torch.device("meta"):
        model = build_model(name)
    config = model.config.to_dict()
    assert SOMARConfig.from_dict(config) == model.config and config["family"] == "somar"
    with pytest.raises(ValueError, match="unknown somar config keys"):
        SOMARConfig.from_dict({**config, "bogus": 1})


def test_the_autoencoder_map_is_bounded_and_decodes_to_the_image_shape():
    model = tiny_autoencoder()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    latent = model.encode(x)
    assert latent.shape == (2, 4, 4, 4) and latent.abs().max() <= 1
    assert model(x).shape == x.shape
    recon = model.reconstruct(x, steps=3, return_all=True)
    assert len(recon) == 3 and all(r.abs().max() <= 1 for r in recon)
    assert torch.equal(recon[0], model.reconstruct(x))  # steps are prefixes
    assert not model.can_sample and model.default_eval_steps == (1,)


def test_the_autoencoder_loss_is_finite_and_a_few_steps_lower_it():
    model = tiny_autoencoder()
    loss_fn = SOMARAutoencoderLoss(SOMARLossConfig())
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(15):
        loss, logs = loss_fn(model, (x, torch.zeros(8, dtype=torch.long)), step)
        first = first if first is not None else logs["rec"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(logs) == {"loss", "rec"} and logs["rec"] < first


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(kind="autoencoder", num_classes=3), "unconditional"),
        (dict(kind="autoencoder", image_size=18), "not a multiple"),
        (dict(kind="codebook", level_patches=(0, 3)), "do not divide"),
        (dict(kind="codebook", level_patches=(0, 2), level_sizes=(8,)), "one entry per level"),
        (dict(kind="codebook", autoencoder_family="sphere"), "autoencoder_family"),
        (dict(kind="autoencoder", ae_width="16"), "must be a int"),
        (dict(family="ldm"), "not a somar config"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, words):
    with pytest.raises(ValueError, match=words) as error:
        SOMARConfig(**settings)
    assert "\n" not in str(error.value)
