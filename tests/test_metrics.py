"""Metrics (FID, KID, precision/recall, IS, PSNR, SSIM, LPIPS) on CPU with no downloads.

The mechanics (our numbers equal torch-fidelity's, a set against itself, files and errors) run anywhere: on the
repository's embedded CIFAR-10 demo images, with the real FID Inception when SPHERE_INCEPTION_WEIGHTS names it,
else with a random-weight Inception of the same layout (same code path, meaningless values). The tests of
real-valued claims (real images closer to real than to noise or blur...) need the real weights and skip without.
Inception features cost ~0.15-0.5 s per image on a small CPU (everything is resized to 299 px), so the image sets
are small (64 each) and their features are extracted once for the module.
"""

import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset

from engine import metrics
from engine.data import ArrayDataset
from engine.images import per_image_generators
from engine.inception import InceptionFeatures, InceptionWeightsError, build_inception, images_to_uint8
from losses import build_lpips
from tests.conftest import REAL_INCEPTION_WEIGHTS, REAL_VGG_WEIGHTS, needs_real_inception, needs_real_vgg

DEMO_IMAGES = Path(__file__).resolve().parents[1] / "assets" / "cifar10_demo.npz"  # 1,000 real CIFAR-10 images
# Images per set: 64 for the real-valued tests (FID at this size is biased upward: ~200 for two real sets); 16 are
# enough for the mechanics and save minutes of CPU where only those run (random weights).
SET_SIZE = 64 if REAL_INCEPTION_WEIGHTS is not None else 16


@pytest.fixture(scope="module")
def inception_weights(inception_weights_file) -> str:
    return inception_weights_file


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1


class UInt8Images(Dataset):
    """uint8 (3, H, W) items, the input torch-fidelity's calculate_metrics accepts as a Dataset."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@pytest.fixture(scope="module")
def extractor(inception_weights) -> InceptionFeatures:
    return build_inception(inception_weights, "cpu")


@pytest.fixture(scope="module")
def image_sets() -> dict[str, torch.Tensor]:
    """uint8 (N, 3, 32, 32): two disjoint real sets, uniform noise, blurred real_b."""
    images = torch.from_numpy(np.load(DEMO_IMAGES)["images"]).permute(0, 3, 1, 2).contiguous()
    real_a, real_b = images[:SET_SIZE], images[500 : 500 + SET_SIZE]
    noise = torch.randint(0, 256, real_a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    blurred = TF.gaussian_blur(real_b.float(), kernel_size=9, sigma=2.0).round().clamp(0, 255).to(torch.uint8)
    return {"real_a": real_a, "real_b": real_b, "noise": noise, "blurred": blurred}


@pytest.fixture(scope="module")
def features(extractor, image_sets) -> dict[str, torch.Tensor]:
    """pool3 features of each set, fed through the [-1, 1] -> uint8 path generated images take."""
    out = {}
    for name, images in image_sets.items():
        batches = to_float(images).split(32)
        out[name], logits = metrics.extract_features(extractor, batches, len(images), progress=False)
        assert logits is None  # zeroed head: no logits handed out
    return out


# ---- FID -------------------------------------------------------------------------------------------------


def test_uint8_conversion_round_trips_and_clamps():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(images_to_uint8(to_float(images)), images)
    assert images_to_uint8(torch.tensor([-1.5, 1.5, 0.0])).tolist() == [0, 255, 128]


def test_fid_of_a_set_against_itself_is_zero(features):
    real_a = features["real_a"]
    assert abs(metrics.fid_from_features(real_a, real_a)) < 1e-6
    mu, sigma = metrics.feature_statistics(real_a)
    self_distance = abs(metrics.frechet_distance(mu, sigma, mu, sigma))  # singular covariance: eigen route
    assert self_distance < 1e-2
    assert metrics.fid_from_features(real_a, features["real_b"]) > 1e3 * self_distance  # noise next to a real gap


@needs_real_inception
def test_fid_real_halves_far_below_noise_and_blur(features):
    fid = {name: metrics.fid_from_features(features["real_a"], features[name]) for name in features}
    assert fid["real_b"] < 0.8 * fid["blurred"], fid
    assert fid["real_b"] < 0.5 * fid["noise"], fid
    assert fid["blurred"] < fid["noise"], fid


def test_fid_kid_precision_recall_match_torch_fidelity(features, image_sets, inception_weights):
    import torch_fidelity

    count = 16  # torch-fidelity extracts its own features (~0.25 s an image on one core): keep its share small
    reference = torch_fidelity.calculate_metrics(
        input1=UInt8Images(image_sets["blurred"][:count]),  # torch-fidelity: input1 generated, input2 real
        input2=UInt8Images(image_sets["real_a"][:count]),
        fid=True,
        kid=True,
        prc=True,
        kid_subset_size=count // 2,
        feature_extractor="inception-v3-compat",
        feature_layer_prc="2048",  # its precision/recall default to VGG16 features
        feature_extractor_weights_path=inception_weights,
        cuda=False,
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes
        verbose=False,
    )
    fake, real = features["blurred"][:count], features["real_a"][:count]
    expected_fid = reference["frechet_inception_distance"]
    assert metrics.fid_from_features(fake, real) == pytest.approx(expected_fid, rel=1e-3)
    stats = metrics.feature_statistics(fake) + metrics.feature_statistics(real)
    assert metrics.frechet_distance(*stats) == pytest.approx(expected_fid, rel=1e-3)
    kid_mean, kid_std = metrics.kernel_inception_distance(fake, real, subset_size=count // 2)
    assert kid_mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-3)
    assert kid_std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-2)
    precision, recall = metrics.precision_recall(real, fake)
    assert (precision, recall) == (reference["precision"], reference["recall"])
    assert 0 < precision < 1 or 0 < recall < 1  # a comparison that could differ


def test_fid_from_statistics_equals_fid_from_features_full_rank():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(80, 16, generator=generator), torch.randn(90, 16, generator=generator) * 1.5 + 0.3
    from_stats = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
    assert metrics.fid_from_features(a, b) == pytest.approx(from_stats, rel=1e-9)


# ---- KID, precision/recall, Inception Score ------------------------------------------------------------------


@needs_real_inception
def test_kid_is_unbiased_near_zero_for_same_distribution(features):
    real_a, real_b = features["real_a"], features["real_b"]
    same, same_std = metrics.kernel_inception_distance(real_a, real_b, subset_size=32)
    blurred, _ = metrics.kernel_inception_distance(real_a, features["blurred"], subset_size=32)
    noise, _ = metrics.kernel_inception_distance(real_a, features["noise"], subset_size=32)
    assert abs(same) < 0.05 * blurred and abs(same) < 0.01 * noise, (same, blurred, noise)
    assert abs(same) < 3 * same_std + 1e-3
    # on the whole sets, the biased estimate (diagonals kept) is clearly positive; the unbiased one is not
    whole, _ = metrics.kernel_inception_distance(real_a, real_b, num_subsets=1, subset_size=SET_SIZE)
    x, y = real_a.double(), real_b.double()
    kernel = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3  # noqa: E731
    biased = (kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()).item()
    assert abs(whole) < 0.25 * biased, (whole, biased)


def test_precision_recall_of_a_set_against_itself_is_one(features):
    assert metrics.precision_recall(features["real_a"], features["real_a"]) == (1.0, 1.0)


@needs_real_inception
def test_precision_recall_noise_is_zero_and_real_sets_overlap(features):
    real_a = features["real_a"]
    assert metrics.precision_recall(real_a, features["noise"]) == (0.0, 0.0)
    precision, recall = metrics.precision_recall(real_a, features["real_b"])
    assert 0.3 < precision < 1.0 and 0.3 < recall < 1.0


def test_inception_score_unavailable_with_zeroed_head(extractor, features):
    assert not extractor.has_logits
    assert "all zeros" in extractor.logits_unavailable_reason
    reference = metrics.reference_from_features(features["real_a"], extractor.fingerprint)
    results = metrics.generation_metrics(features["real_b"], None, reference, extractor.logits_unavailable_reason)
    assert results["is"].value is None and results["is_std"].value is None
    assert results["is"].reason == extractor.logits_unavailable_reason
    assert results["fid"].value > 0 and results["kid"].value is not None and results["precision"].value > 0


def test_inception_score_matches_torch_fidelity_and_known_values():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(200, 1008, generator=torch.Generator().manual_seed(0)) * 3
    expected = isc_features_to_metric(logits, splits=10, shuffle=False)
    score, score_std = metrics.inception_score(logits)
    assert score == pytest.approx(expected["inception_score_mean"], rel=1e-9)
    assert score_std == pytest.approx(expected["inception_score_std"], rel=1e-9)
    assert metrics.inception_score(torch.zeros(100, 1008))[0] == pytest.approx(1.0)  # what a zero head gives
    confident = torch.eye(10).repeat(10, 1) * 100  # 10 classes, certain, equally often in every split
    assert metrics.inception_score(confident)[0] == pytest.approx(10.0, rel=1e-6)


# ---- PSNR, SSIM, LPIPS -------------------------------------------------------------------------------------


def scipy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM of one (H, W) channel in [0, 1]: scipy Gaussian filter, border cropped = valid."""

    def blur(t):
        return gaussian_filter(t, 1.5, truncate=3.5)[5:-5, 5:-5]  # radius 5: an 11x11 window

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))).mean())


def test_psnr_identical_is_inf_and_known_value(image_sets):
    images = image_sets["real_a"][:8].double() / 255
    assert torch.isinf(metrics.psnr(images, images)).all()
    assert metrics.psnr(torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1)).tolist() == pytest.approx([20.0] * 2)
    assert metrics.psnr(
        torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 25.5), data_range=255
    ).item() == pytest.approx(20.0)


def test_ssim_identical_is_one_matches_scipy_and_drops_with_noise(image_sets):
    images = image_sets["real_a"][:8].double() / 255
    assert metrics.ssim(images, images).tolist() == pytest.approx([1.0] * 8, abs=1e-12)
    generator = torch.Generator().manual_seed(0)
    scores = []
    for noise_std in (0.02, 0.1, 0.3):
        noisy = (images + noise_std * torch.randn(images.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
        ssim = metrics.ssim(images, noisy)
        expected = np.mean([scipy_ssim(images[0, c].numpy(), noisy[0, c].numpy()) for c in range(3)])
        assert ssim[0].item() == pytest.approx(expected, rel=1e-9)
        scores.append(ssim.mean().item())
    assert 1 > scores[0] > scores[1] > scores[2]


@needs_real_vgg
def test_lpips_identical_is_zero_and_grows_with_distortion(image_sets):
    lpips_model = build_lpips(str(REAL_VGG_WEIGHTS))
    images = to_float(image_sets["real_a"][:8])
    assert metrics.lpips_distance(lpips_model, images, images).abs().max().item() < 1e-6
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    other = to_float(image_sets["real_b"][:8])
    noisy_distance = metrics.lpips_distance(lpips_model, images, noisy).mean().item()
    assert 0 < noisy_distance < metrics.lpips_distance(lpips_model, images, other).mean().item()


# ---- weights, reference statistics, quick FID -----------------------------------------------------------------


def assert_weights_error(error: pytest.ExceptionInfo, fragment: str) -> None:
    message = str(error.value)
    assert "\n" not in message and fragment in message, message
    assert "--inception_weights PATH" in message and "SPHERE_INCEPTION_WEIGHTS" in message, message
    assert "weights-inception-2015-12-05" in message and "shared" not in message, message  # the download, no local path


def test_inception_weights_errors_are_one_clear_line(tmp_path, monkeypatch, inception_weights):
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures(str(tmp_path / "missing.pth"))
    assert_weights_error(error, "does not exist")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(inception_weights).read_bytes()[: 1 << 20])
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures(str(truncated))
    assert_weights_error(error, "truncated")
    wrong = tmp_path / "wrong.pth"
    torch.save({"0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures(str(wrong))
    assert_weights_error(error, "not an FID Inception-v3 state_dict")
    monkeypatch.setenv("SPHERE_INCEPTION_WEIGHTS", str(tmp_path / "from_env.pth"))
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures()
    assert_weights_error(error, "from_env.pth")


def test_failed_download_offline_gives_clear_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("SPHERE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(inception_module, "load_state_dict_from_url", offline)
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures()
    assert_weights_error(error, "torch-fidelity download (URLError")


def test_reference_file_round_trip_and_clear_errors(tmp_path, features, extractor, monkeypatch):
    reference = metrics.reference_from_features(features["real_a"], extractor.fingerprint)
    path = metrics.reference_path(tmp_path, "my/data set", 32)
    assert path.name == "fid_stats_my_data_set_32.npz"
    metrics.save_reference(reference, path)
    loaded = metrics.load_reference(path)
    assert np.array_equal(loaded.mu, reference.mu) and np.array_equal(loaded.sigma, reference.sigma)
    assert loaded.num_features == SET_SIZE and loaded.fingerprint == extractor.fingerprint
    assert np.array_equal(loaded.features, features["real_a"].numpy())
    assert metrics.load_reference(path, with_features=False).features is None

    mu_sigma_only = tmp_path / "pytorch_fid_style.npz"
    np.savez(mu_sigma_only, mu=reference.mu, sigma=reference.sigma)
    plain = metrics.load_reference(mu_sigma_only)
    monkeypatch.setattr(metrics, "frechet_distance", lambda *stats: 1.0)  # singular 2048^2 route: tested elsewhere
    assert plain.num_features is None and plain.features is None
    results = metrics.generation_metrics(features["real_b"], None, plain)
    assert results["fid"].value > 0 and results["kid"].value is None and "no features" in results["kid"].reason
    assert results["precision"].value is None and results["recall"].value is None

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip file")
    no_sigma, wrong_shape = tmp_path / "no_sigma.npz", tmp_path / "wrong_shape.npz"
    np.savez(no_sigma, mu=reference.mu)
    np.savez(wrong_shape, mu=np.zeros(64), sigma=np.eye(64))
    for bad, fragment in [
        (corrupt, "corrupt"),
        (no_sigma, "needs 'mu' and 'sigma'"),
        (wrong_shape, "expected 2048-d"),
        (tmp_path / "absent.npz", "do not exist"),
    ]:
        with pytest.raises(metrics.ReferenceStatsError, match=fragment) as error:
            metrics.load_reference(bad)
        assert "\n" not in str(error.value)


class PoolModel(torch.nn.Module):
    """Stands in for a generator: returns image i of a fixed pool for image i's generator."""

    can_sample, steps_are_prefix, default_eval_steps = True, True, (1,)  # capabilities (docs/families.md)

    def __init__(self, pool: torch.Tensor, seed: int = 0):
        super().__init__()
        self.register_buffer("pool", pool)  # (N, 3, H, W) in [-1, 1]
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.config = SimpleNamespace(num_classes=0, image_size=pool.shape[-1])
        self.first_seed = per_image_generators(seed, 0, 1, "cpu")[0].initial_seed()

    def sample(self, n, steps=1, generator=None, labels=None, cfg=1.0, cfg_mode="combo", return_all=False):
        assert len(generator) == n and labels is None and not self.training
        index = torch.tensor([g.initial_seed() - self.first_seed for g in generator])
        images = self.pool[index % len(self.pool)]
        return [images] * steps if return_all else images


def test_quick_fid_uses_unflipped_cached_reference(tmp_path, image_sets, features, inception_weights):
    count = 8  # 3 x 8 Inception passes; the claims are exact (same images) or a cache file's time stamp
    real_a = image_sets["real_a"][:count]
    dataset = ArrayDataset(real_a, torch.zeros(count, dtype=torch.int64), "poolset", 0, image_size=32, hflip=True)
    model = PoolModel(to_float(real_a)).train()
    fid = metrics.quick_fid(
        model,
        dataset,
        count,
        steps=1,
        device="cpu",
        batch_size=4,
        inception_weights=inception_weights,
        cache_dir=str(tmp_path),
    )
    assert model.training  # mode restored
    cache = tmp_path / "fid_stats_poolset_32.npz"
    reference = metrics.load_reference(cache)
    assert reference.num_features == count
    mu, sigma = metrics.feature_statistics(features["real_a"][:count])  # the same images, never flipped
    for cached, expected in ((reference.mu, mu), (reference.sigma, sigma)):  # tolerances on the features' scale
        assert np.allclose(cached, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    stamp = cache.stat().st_mtime_ns
    shifted = PoolModel(to_float(image_sets["real_b"][:count]))
    other = metrics.quick_fid(
        shifted,
        dataset,
        count,
        steps=2,
        device="cpu",
        batch_size=count,
        cache_dir=str(tmp_path),
        inception_weights=inception_weights,
    )
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
    # the samples are exactly the reference images: next to the gap between two real sets, their FID is noise (a
    # flipped reference would give a gap of its own)
    assert abs(fid) < 1e-3 * other


class NoiseModel(torch.nn.Module):
    """Per-image noise; "step t" differs from step 1 by t-1 (and, when steps are no prefixes, by the run's length)."""

    can_sample, steps_are_prefix, default_eval_steps = True, True, (1,)

    def __init__(self, num_classes):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(num_classes=num_classes, image_size=4)
        self.labels_seen, self.runs = [], []

    def sample(self, n, steps=1, generator=None, labels=None, cfg=1.0, cfg_mode="combo", return_all=False):
        self.labels_seen.append(labels)
        self.runs.append((steps, return_all))
        first = torch.stack([torch.randn(3, 4, 4, generator=g) for g in generator])
        offset = 0 if self.steps_are_prefix else 100 * steps  # a run of another length differs at every step
        outputs = [first + t + offset for t in range(steps)]
        return outputs if return_all else outputs[-1]


def test_sample_step_batches_do_not_depend_on_batch_size():
    def run(batch_size, seed):
        batches = list(metrics.sample_step_batches(model, 23, [1, 3], batch_size=batch_size, seed=seed))
        assert [start for start, _ in batches] == list(range(0, 23, batch_size))
        return {t: torch.cat([images[t] for _, images in batches]) for t in (1, 3)}

    model = NoiseModel(num_classes=10)
    first = run(batch_size=4, seed=5)
    assert torch.cat(model.labels_seen).tolist() == [i % 10 for i in range(23)]
    second, third = run(batch_size=7, seed=5), run(batch_size=7, seed=6)
    assert first[1].shape == (23, 3, 4, 4) and torch.equal(first[3], first[1] + 2)
    assert torch.equal(first[1], second[1]) and not torch.equal(first[1], third[1])
    assert set(model.runs) == {(3, True)}  # one 3-step run gives the 1-step images too


def test_sample_step_batches_run_each_step_count_when_steps_are_no_prefixes():
    model = NoiseModel(num_classes=0)
    model.steps_are_prefix = False  # e.g. DDIM: step 1 of a 3-step run is not a 1-step sample
    ((start, images),) = list(metrics.sample_step_batches(model, 5, [3, 1], batch_size=8, seed=2))
    assert start == 0 and model.runs == [(1, False), (3, False)]
    assert torch.allclose(images[3] - 302, images[1] - 100, atol=1e-4)  # own runs, the same per-image noise


def test_extractor_rejects_float_images(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32))
