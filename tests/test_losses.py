"""The Sphere Encoder objective: noise levels, loss terms, gradient paths, LPIPS loading."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from losses import (
    PerceptualDistance,
    PerceptualFeatures,
    PerceptualWeightsError,
    SphereLoss,
    SphereLossConfig,
    build_convnext_small,
    build_lpips,
    build_perceptual,
    hard_case_levels,
    stratified_levels,
)
from losses.perceptual import lpips_distance, lpips_features, perceptual_distance
from models import build_model
from tests.conftest import CIFAR_SUBSET, needs_cifar_subset, needs_real_vgg
from tests.helpers import perturb


@pytest.mark.parametrize("batch", [2, 3, 8, 64])
def test_stratified_levels_have_one_zero_one_one_and_fill_strata(batch):
    for seed in range(5):
        torch.manual_seed(seed)
        r = stratified_levels(batch)
        assert (r == 0).sum() == 1 and (r == 1).sum() == 1
        inner = torch.sort(r[(r > 0) & (r < 1)]).values
        assert inner.numel() == batch - 2
        for i, value in enumerate(inner):  # one value in each stratum [i/(B-2), (i+1)/(B-2))
            assert i / (batch - 2) <= value < (i + 1) / (batch - 2)


def test_stratified_levels_are_shuffled():
    torch.manual_seed(0)
    positions = {int(torch.nonzero(stratified_levels(16) == 1)) for _ in range(20)}
    assert len(positions) > 5


@pytest.mark.parametrize("angle", [80.0, 85.0, 87.0])
def test_hard_cases_stay_within_angle_bounds(angle):
    torch.manual_seed(0)
    r = torch.rand(20000)
    r[0] = 0.0
    pushed = hard_case_levels(r, angle, prob=0.1, extra_angle=5.0)
    sigma_max = math.tan(math.radians(angle))
    angles = torch.rad2deg(torch.atan(pushed * sigma_max))
    hard = pushed > 1
    assert 0.08 < hard.float().mean() < 0.12
    assert angles[hard].min() > angle - 1e-3
    assert angles[hard].max() <= min(angle + 5.0, 89.0) + 1e-3
    assert pushed[0] == 0  # the clean anchor is never pushed
    assert torch.equal(pushed[~hard], r[~hard])


def test_hard_cases_at_85_degrees_are_capped_at_89():
    """At theta_max = 85 (the default above 32 px) a cap near 90 degrees let r reach ~50, so v_big was pure noise."""
    torch.manual_seed(0)
    pushed = hard_case_levels(torch.rand(20000), 85.0, prob=0.5, extra_angle=5.0)
    assert pushed.max() <= math.tan(math.radians(89.0)) / math.tan(math.radians(85.0)) + 1e-4  # r <= 5.01


def test_v_small_keeps_the_unpushed_level():
    """Only v_big uses the hard-case r; v_small's angle stays within atan(0.5 sigma_max) (70.6 deg at 80 deg)."""
    cfg = SphereLossConfig(noise_angle=80.0, hard_case_prob=1.0, recon_perc_weight=0, con_perc_weight=0)
    torch.manual_seed(0)
    small, big = SphereLoss(cfg).draw_noise(torch.empty(64, 256, 32))
    scale_small = small.flatten(1).norm(dim=1) / math.sqrt(256 * 32)  # ||e|| ~ sqrt(L) within ~1%
    scale_big = big.flatten(1).norm(dim=1) / math.sqrt(256 * 32)
    assert scale_big.max() > 1.5 * cfg.sigma_max  # the hard cases did push v_big
    angles_small = torch.rad2deg(torch.atan(scale_small))
    assert angles_small.max() <= math.degrees(math.atan(0.5 * cfg.sigma_max)) + 0.5


def test_sigma_and_angle():
    assert SphereLossConfig(noise_angle=45.0).sigma_max == pytest.approx(1.0)
    with pytest.raises(ValueError, match="noise_angle"):
        SphereLossConfig(noise_angle=90.0)


def test_noise_directions_are_shared_and_scaled():
    cfg = SphereLossConfig(hard_case_prob=0.0, recon_perc_weight=0, con_perc_weight=0)
    loss = SphereLoss(cfg)
    torch.manual_seed(0)
    small, big = loss.draw_noise(torch.empty(16, 64, 8))
    cos = torch.nn.functional.cosine_similarity(small.flatten(1), big.flatten(1))
    nonzero = small.flatten(1).norm(dim=1) > 0
    assert torch.allclose(cos[nonzero], torch.ones_like(cos[nonzero]), atol=1e-5)
    ratio = small.flatten(1).norm(dim=1)[nonzero] / big.flatten(1).norm(dim=1)[nonzero]
    assert (ratio <= 0.5 + 1e-6).all()  # small = r * u * 0.5 * sigma_max * e with u <= 1
    big_max = big.flatten(1).norm(dim=1).max() / math.sqrt(64 * 8)
    assert big_max == pytest.approx(cfg.sigma_max, rel=0.1)  # the r = 1 sample


@pytest.mark.parametrize("name", ["vit_tiny", "convnet_tiny"])
def test_every_term_finite_and_reaches_encoder_and_decoder(name, lpips_model):
    torch.manual_seed(0)
    model = perturb(build_model(name, image_size=16))
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    terms = ["recon_dist", "recon_perc", "con_dist", "con_perc", "latent"]
    for term in terms:
        weights = {f"{t}_weight": float(t == term) for t in terms}
        loss_fn = SphereLoss(SphereLossConfig(**weights), lpips_model)
        model.zero_grad()
        loss, logs = loss_fn(model, (images, None))
        loss.backward()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in logs.values())
        enc = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
        dec = sum(p.grad.abs().sum() for p in model.decoder.parameters() if p.grad is not None)
        assert enc > 0, f"{term} sends no gradient to the encoder"
        assert dec > 0, f"{term} sends no gradient to the decoder"


def _grads(model, loss_value):
    model.zero_grad()
    loss_value.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("term", ["latent", "con_dist"])
def test_consistency_targets_are_stopped(term):
    """1 - cos(E(x_big), sg(z)) and dist(x_big, sg(x_small)): the targets get no gradient."""
    model = perturb(build_model("vit_tiny", image_size=16))
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    weights = dict(recon_dist_weight=0, recon_perc_weight=0, con_dist_weight=0, con_perc_weight=0, latent_weight=0)
    weights[f"{term}_weight"] = 1.0
    loss_fn = SphereLoss(SphereLossConfig(**weights))
    torch.manual_seed(0)
    implemented = _grads(model, loss_fn(model, (images, None))[0])

    def manual(stop_target: bool):
        torch.manual_seed(0)
        small, big = loss_fn.draw_noise(torch.empty(4, *model.latent_shape))
        out = model(images, small, big)
        if term == "latent":
            target = out["z"].detach() if stop_target else out["z"]
            cos = torch.nn.functional.cosine_similarity(out["z_big"].flatten(1), target.flatten(1))
            return _grads(model, 1 - cos.mean())
        target = out["x_small"].detach() if stop_target else out["x_small"]
        return _grads(model, loss_fn.distance(out["x_big"], target))

    assert torch.allclose(implemented, manual(stop_target=True), atol=1e-6)
    assert not torch.allclose(implemented, manual(stop_target=False), atol=1e-6)


def test_label_dropout_uses_null_class():
    loss = SphereLoss(SphereLossConfig(label_dropout=0.5, recon_perc_weight=0, con_perc_weight=0))
    torch.manual_seed(0)
    dropped = loss.drop_labels(torch.zeros(4000, dtype=torch.long), num_classes=10)
    assert 0.45 < (dropped == 10).float().mean() < 0.55
    assert set(dropped.unique().tolist()) == {0, 10}


def test_default_distance_is_the_official_smooth_l1():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)  # pixel gap 0.25 in [0, 1]
    loss = SphereLoss(SphereLossConfig(recon_perc_weight=0, con_perc_weight=0))
    assert loss.distance(a, b).item() == pytest.approx(0.5 * 0.25**2)


def test_smooth_l1_distance_differs_from_l1():
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)  # pixel gap 0.5 in [0, 1]
    l1 = SphereLoss(SphereLossConfig(distance="l1", recon_perc_weight=0, con_perc_weight=0)).distance(a, b)
    sl1 = SphereLoss(SphereLossConfig(distance="smooth_l1", recon_perc_weight=0, con_perc_weight=0)).distance(a, b)
    assert l1.item() == pytest.approx(0.5) and sl1.item() == pytest.approx(0.125)


@needs_real_vgg
@needs_cifar_subset
def test_lpips_offline_backbone_ranks_distortions(lpips_model):
    import numpy as np

    images = torch.from_numpy(np.load(CIFAR_SUBSET)["images"][:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    same = lpips_model(images, images).mean()
    noisy = lpips_model(images, (images + 0.1 * torch.randn_like(images)).clamp(-1, 1)).mean()
    other = lpips_model(images, images.roll(1, dims=0)).mean()
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < noisy < other


def test_lpips_missing_or_bad_weights_give_clear_errors(tmp_path, vgg_weights_file):
    with pytest.raises(PerceptualWeightsError, match="SPHERE_VGG_WEIGHTS"):
        build_lpips(str(tmp_path / "missing.pth"))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(vgg_weights_file).read_bytes()[:100000])
    with pytest.raises(PerceptualWeightsError, match="unreadable|cannot read"):
        build_lpips(str(truncated))
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(PerceptualWeightsError, match="not a state_dict"):
        build_lpips(str(wrong))


def _offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache: torchvision's weight downloads fail as they do offline."""
    import urllib.error

    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)


def test_lpips_without_weights_offline_fails_loudly(monkeypatch, tmp_path):
    """No file and no download: a one-line error naming both fixes (never our machines' paths), never random VGG."""
    monkeypatch.delenv("SPHERE_VGG_WEIGHTS", raising=False)
    _offline(monkeypatch, tmp_path)
    with pytest.raises(PerceptualWeightsError) as error:
        build_lpips(None)
    message = str(error.value)
    assert "--vgg_weights" in message and "SPHERE_VGG_WEIGHTS" in message and "download" in message
    assert "shared" not in message and "\n" not in message


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory):
    """A random-weight torchvision convnext_small() state_dict: the loading and loss mechanics, not real values."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("convnext") / "convnext_small_random.pth"
    torch.save(torchvision.models.convnext_small(weights=None).state_dict(), path)
    return path


def test_convnext_term_is_the_official_weighted_mean(convnext_file, lpips_model):
    """perc = (LPIPS + w MSE(ConvNeXt-S logits of 224 px resizes)) / (1 + w), with gradients to the input."""
    convnext = build_convnext_small(str(convnext_file))
    assert not convnext.training and not any(p.requires_grad for p in convnext.parameters())
    perceptual = PerceptualDistance(lpips_model, convnext, convnext_weight=0.1)
    torch.manual_seed(0)
    a = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    value = perceptual(a, b)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def logits(x):
        return convnext((F.interpolate((x + 1) / 2, size=224, mode="bilinear", antialias=True) - mean) / std)

    expected = (lpips_model(a, b).mean() + 0.1 * F.mse_loss(logits(a), logits(b))) / 1.1
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert a.grad.abs().sum() > 0
    assert PerceptualDistance(lpips_model)(a, b).item() == pytest.approx(lpips_model(a, b).mean().item())


def test_convnext_weights_errors_name_the_flag_the_variable_and_the_download(tmp_path, monkeypatch):
    monkeypatch.delenv("SPHERE_CONVNEXT_WEIGHTS", raising=False)
    with pytest.raises(PerceptualWeightsError, match="does not exist.*--convnext_weights"):
        build_convnext_small(str(tmp_path / "missing.pth"))
    wrong = tmp_path / "vgg.pth"
    torch.save({"0.weight": torch.zeros(2)}, wrong)
    with pytest.raises(PerceptualWeightsError, match="not a state_dict of ConvNeXt-S"):
        build_convnext_small(str(wrong))
    _offline(monkeypatch, tmp_path)
    with pytest.raises(PerceptualWeightsError) as error:
        build_convnext_small(None)
    message = str(error.value)
    assert "--convnext_weights" in message and "SPHERE_CONVNEXT_WEIGHTS" in message and "download" in message
    assert "--convnext_weight 0" in message


def test_perceptual_loads_convnext_only_when_weighted(monkeypatch, vgg_weights_file):
    monkeypatch.setenv("SPHERE_CONVNEXT_WEIGHTS", "/nonexistent/convnext.pth")
    assert build_perceptual(vgg_weights_file, convnext_weight=0.0).convnext is None
    with pytest.raises(PerceptualWeightsError, match="convnext"):
        build_perceptual(vgg_weights_file, convnext_weight=0.1)


# ---- perceptual features once per image ---------------------------------------------------------------------------


def _pair(batch: int = 3, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return a, (a + 0.3 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)


def test_lpips_from_features_equals_the_lpips_package_with_its_gradients(lpips_model):
    """distance(features(a), features(b)) is lpips.LPIPS.forward(a, b) per image, and so are d/da."""
    a, b = _pair()
    a_package, a_ours = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    expected = lpips_model(a_package, b).view(-1)  # (B,)
    value = lpips_distance(lpips_model, lpips_features(lpips_model, a_ours), lpips_features(lpips_model, b))
    assert value.shape == (3,) and (expected > 0).all()
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    weights = torch.tensor([1.0, -2.0, 0.5])  # a different weight per image: per-image gradients are checked
    (expected * weights).sum().backward()
    (value * weights).sum().backward()
    assert a_package.grad.abs().sum() > 0
    torch.testing.assert_close(a_ours.grad, a_package.grad, rtol=1e-5, atol=1e-8)


def test_perceptual_distance_splits_into_features_and_distance(lpips_model):
    perceptual = perceptual_distance(lpips_model)
    assert isinstance(perceptual, PerceptualDistance) and perceptual.lpips is lpips_model
    assert not perceptual.training and not lpips_model.training  # LPIPS's linear layers have dropout
    assert perceptual_distance(perceptual) is perceptual and perceptual_distance(None) is None
    a, b = _pair(seed=1)
    features = perceptual.features(a)
    assert isinstance(features, PerceptualFeatures) and features.logits is None and len(features.lpips) == 5
    torch.testing.assert_close(perceptual(a, b), lpips_model(a, b).mean(), rtol=1e-6, atol=1e-7)
    target = perceptual.target_features(b)
    assert not any(layer.requires_grad for layer in target.lpips)
    assert all(layer.grad_fn is None for layer in perceptual.features(a.requires_grad_(True)).detach().lpips)
    with pytest.raises(TypeError, match="lpips.LPIPS or a PerceptualDistance"):
        perceptual_distance(torch.nn.Identity())


class BackboneCalls:
    """Records each VGG16 pass of an LPIPS module: (batch size, whether autograd was recording)."""

    def __init__(self, lpips_model):
        self.calls: list[tuple[int, bool]] = []
        self.handle = lpips_model.net.register_forward_pre_hook(self.record)

    def record(self, module, inputs):
        self.calls.append((inputs[0].shape[0], torch.is_grad_enabled()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


SPHERE_PERCEPTUAL_WEIGHTS = [(1.0, 0.5), (1.0, 0.0), (0.0, 0.5)]  # (recon_perc_weight, con_perc_weight)


@pytest.mark.parametrize(("recon_weight", "con_weight"), SPHERE_PERCEPTUAL_WEIGHTS)
def test_sphere_loss_passes_each_image_through_vgg_once(lpips_model, recon_weight, con_weight):
    """x_small once (with a graph when recon_perc is on), x_big once, the real images once without a graph: the
    two-call form ran x_small through VGG16 twice."""
    model = perturb(build_model("vit_tiny", image_size=16))
    loss_fn = SphereLoss(SphereLossConfig(recon_perc_weight=recon_weight, con_perc_weight=con_weight), lpips_model)
    with BackboneCalls(lpips_model) as backbone:
        loss_fn(model, (torch.rand(4, 3, 16, 16) * 2 - 1, None))
    expected = {  # x_small, the real images, x_big
        (1.0, 0.5): [(4, True), (4, False), (4, True)],
        (1.0, 0.0): [(4, True), (4, False)],
        (0.0, 0.5): [(4, False), (4, True)],
    }[(recon_weight, con_weight)]
    assert backbone.calls == expected


def _two_call_sphere_loss(loss_fn: SphereLoss, lpips_model, model, images: torch.Tensor) -> torch.Tensor:
    """The objective as written before the features-once change: lpips.LPIPS(x_small, x) and
    lpips.LPIPS(x_big, sg(x_small)), the package's own forward."""
    cfg = loss_fn.config
    small, big = loss_fn.draw_noise(torch.empty(images.shape[0], *model.latent_shape))
    out = model(images, small, big)
    x_small, x_big = out["x_small"], out["x_big"]
    cosine = F.cosine_similarity(out["z_big"].flatten(1), out["z"].detach().flatten(1)).mean()
    return (
        cfg.recon_dist_weight * loss_fn.distance(x_small, images)
        + cfg.recon_perc_weight * lpips_model(x_small, images).mean()
        + cfg.con_dist_weight * loss_fn.distance(x_big, x_small.detach())
        + cfg.con_perc_weight * lpips_model(x_big, x_small.detach()).mean()
        + cfg.latent_weight * (1 - cosine)
    )


@pytest.mark.parametrize("name", ["vit_tiny", "convnet_tiny"])
@pytest.mark.parametrize(("recon_weight", "con_weight"), SPHERE_PERCEPTUAL_WEIGHTS)
def test_sphere_features_once_equals_the_two_call_loss_and_gradients(lpips_model, name, recon_weight, con_weight):
    model = perturb(build_model(name, image_size=16))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = SphereLossConfig(recon_perc_weight=recon_weight, con_perc_weight=con_weight)
    loss_fn = SphereLoss(config, lpips_model)
    torch.manual_seed(0)
    loss, logs = loss_fn(model, (images, None))
    grads = _grads(model, loss)
    torch.manual_seed(0)
    expected = _two_call_sphere_loss(loss_fn, lpips_model, model, images)
    expected_grads = _grads(model, expected)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert (logs["recon_perc"] > 0) == (recon_weight > 0) and (logs["con_perc"] > 0) == (con_weight > 0)
    assert expected_grads.abs().sum() > 0
    torch.testing.assert_close(grads, expected_grads, rtol=1e-5, atol=1e-7)


def test_sphere_consistency_target_features_get_no_gradient(lpips_model):
    """con_perc alone reaches x_small only through x_big (the target's features are detached): its gradient
    differs from one where the target is not stopped."""
    model = perturb(build_model("vit_tiny", image_size=16))
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    terms = ("recon_dist", "recon_perc", "con_dist", "latent")
    config = SphereLossConfig(con_perc_weight=1.0, **{f"{term}_weight": 0.0 for term in terms})
    loss_fn = SphereLoss(config, lpips_model)
    torch.manual_seed(0)
    implemented = _grads(model, loss_fn(model, (images, None))[0])
    torch.manual_seed(0)
    small, big = loss_fn.draw_noise(torch.empty(4, *model.latent_shape))
    out = model(images, small, big)
    assert torch.allclose(implemented, _grads(model, lpips_model(out["x_big"], out["x_small"].detach()).mean()))
    torch.manual_seed(0)
    out = model(images, *loss_fn.draw_noise(torch.empty(4, *model.latent_shape)))
    not_stopped = _grads(model, lpips_model(out["x_big"], out["x_small"]).mean())
    assert not torch.allclose(implemented, not_stopped)


def test_convnext_features_once_equal_the_pairwise_form(convnext_file, lpips_model):
    """With the ConvNeXt-S term, distance() per image averages to forward's (LPIPS + w MSE(logits)) / (1 + w)."""
    perceptual = PerceptualDistance(lpips_model, build_convnext_small(str(convnext_file)), convnext_weight=0.1)
    a, b = _pair(batch=2)
    features_a = perceptual.features(a)
    assert features_a.logits.shape == (2, 1000)
    per_image = perceptual.distance(features_a, perceptual.target_features(b))
    expected = (lpips_model(a, b).mean() + 0.1 * F.mse_loss(perceptual.logits(a), perceptual.logits(b))) / 1.1
    assert per_image.shape == (2,)
    torch.testing.assert_close(per_image.mean(), expected, rtol=1e-5, atol=1e-7)
