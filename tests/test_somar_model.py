"""somar models: every kind builds from the registry and round-trips its config, the autoencoder's map is bounded and
its loss trains it, bad settings are one-line ValueErrors."""

from __future__ import annotations

import pytest
import torch

from losses.somar import SOMARAutoencoderLoss, SOMARLossConfig, SOMARPriorLoss
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


TINY_CODEBOOK = dict(**TINY_AE, level_sizes=(4, 16), som_steps=5)


def tiny_codebook():
    torch.manual_seed(0)
    return build_model("somar_codebook_tiny", **TINY_CODEBOOK)


def test_the_codebook_tokenizes_per_level_and_decodes_its_finest_bmu_codes():
    model = tiny_codebook()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    for _ in range(3):
        model.fit_step(x)
    tokens = model.tokenize(x)
    assert [t.shape for t in tokens] == [(3, 1), (3, 4)] and model.segment_lengths == (1, 4)
    assert all(int(t.max()) < k for t, k in zip(tokens, model.vocab_sizes))
    assert torch.equal(model.reconstruct(x), model.decode_tokens(tokens))
    latent = model.autoencoder.encode(x)
    codes = model.levels[1].codes
    nearest = torch.cdist(model.level_vectors(latent)[1].flatten(0, 1), codes).argmin(1)  # BMU = nearest unit
    assert torch.equal(nearest.view(3, 4), tokens[1])
    quantised = model.level_map(1, tokens[1])  # every 2x2 patch replaced by its BMU's code
    assert quantised.shape == latent.shape and torch.equal(quantised[0, :, :2, :2].flatten(), codes[tokens[1][0, 0]])
    assert model.parameter_groups() == {"autoencoder": list(model.autoencoder.parameters())}
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.autoencoder.training and model.levels.training


def test_fitting_lowers_the_quantisation_error_and_epoch_stats_reset():
    torch.manual_seed(0)
    model = build_model("somar_codebook_tiny", **{**TINY_CODEBOOK, "som_lr_end": 0.5})  # no rate decay: fast
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    errors = [model.fit_step(x)["level1_qerr"] for _ in range(12)]  # som_steps 5, then sigma_end (k-means-like)
    assert errors[-1] < 0.9 * errors[0], errors
    stats = model.epoch_stats()
    assert {"level0_usage", "level1_perplexity", "level1_quantization_error", "level1_topographic_error"} <= set(stats)
    assert model.epoch_stats()["level1_usage"] == 0  # counted afresh


def test_the_atlas_lays_each_unit_on_its_grid():
    model = tiny_codebook()
    model.fit_step(torch.rand(8, 3, 16, 16) * 2 - 1)
    whole, patches = model.codebook_atlas(0), model.codebook_atlas(1)
    assert whole.shape == (3, 2 * 17 + 1, 2 * 17 + 1)  # 4 units on 2x2, each the whole 16 px image
    assert patches.shape == (3, 4 * 9 + 1, 4 * 9 + 1)  # 16 units on 4x4, each an 8 px patch (2x2 tokens at f4)
    assert whole.min() >= -1 and whole.max() <= 1


def test_the_prior_models_the_codebook_tokens_and_samples_images():
    torch.manual_seed(0)
    small = dict(prior_width=16, prior_depth=1, prior_heads=2, num_classes=3)
    model = build_model("somar_prior_tiny", **TINY_CODEBOOK, **small)
    assert model.prior.settings.vocab_sizes == (4, 16) and model.prior.settings.segment_lengths == (1, 4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    nll = model.token_nll(x, torch.tensor([0, 2]))
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    images = model.sample(2, labels=torch.tensor([1, 2]), cfg=1.5, top_p=0.9, temperature=0.8)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1
    groups = model.parameter_groups()
    assert set(groups) == {"prior", "codebook"} and all(p.requires_grad for p in groups["prior"])
    with pytest.raises(ValueError, match="cfg must be >= 0"):
        model.sample(1, cfg=-1)
    coarse = model.tokens(x)[:1]
    variations = model.sample(2, labels=torch.tensor([1, 2]), prefix=coarse)  # keep each image's level-0 token
    assert variations.shape == (2, 3, 16, 16)
    assert torch.equal(model.prior.generate(2, labels=torch.tensor([1, 2]), prefix=coarse)[0], coarse[0])
    loss, logs = SOMARPriorLoss(SOMARLossConfig(label_dropout=0.0), model)(model, (x, torch.tensor([0, 2])))
    expected, _ = model.prior.loss(model.tokens(x), torch.tensor([0, 2]))  # the same mean cross-entropy
    assert torch.allclose(loss, expected) and set(logs) == {"loss", "nll_seg0", "nll_seg1"}
    loss.backward()
    assert model.prior.heads[1].weight.grad is not None


def test_a_prior_config_holds_its_frozen_codebook_and_round_trips():
    codebook = SOMARConfig(kind="codebook", **TINY_CODEBOOK).to_dict()
    config = SOMARConfig(kind="prior", image_size=16, codebook=codebook, codebook_sha256="ab" * 32)
    assert SOMARConfig.from_dict(config.to_dict()) == config
    assert config.codebook_config().level_sizes == (4, 16)
    vqvae = build_model("vqvae_tiny", image_size=16, codebook_size=32).config.to_dict()
    tokens = SOMARConfig(kind="prior", image_size=16, codebook=vqvae)
    assert SOMARConfig.from_dict(tokens.to_dict()) == tokens
    with pytest.raises(ValueError, match="32 px images"):
        SOMARConfig(kind="prior", image_size=16, codebook=SOMARConfig(kind="codebook").to_dict())
