"""Image metrics: FID, KID, Inception Score, precision/recall on FID-Inception features; PSNR, SSIM, LPIPS.

Conventions: images are float (B, 3, H, W) in [-1, 1] and reach the Inception network as uint8, as in
pytorch-fid / torch-fidelity. "Generated" / "fake" sets are compared against a dataset's reference statistics
(mu, sigma and a subset of its pool3 features), computed once and cached as
`<cache_dir>/fid_stats_<dataset>_<resolution>.npz`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from engine.checkpoint import atomic_write
from engine.inception import InceptionFeatures, build_inception, images_to_uint8

REF_IMAGES_MAX = 50_000  # reference statistics use the dataset's first 50k images (all of CIFAR-10 train)
REF_FEATURES_KEPT = 10_000  # pool3 features stored with the statistics for KID and precision/recall
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults (Binkowski et al. 2018)
KID_SEED = 2020  # torch-fidelity's rng_seed, so subsets (and values) match it
IS_SPLITS = 10  # Salimans et al. 2016
PR_NEIGHBOURS = 3  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004


class ReferenceStatsError(RuntimeError):
    """A reference statistics file is missing, corrupt or not FID statistics."""


@dataclass
class Metric:
    """One number, or None with the reason it could not be computed (never a wrong number)."""

    value: float | None
    reason: str | None = None


@dataclass
class ReferenceStats:
    """pool3 statistics of a real image set."""

    mu: np.ndarray  # (2048,) float64
    sigma: np.ndarray  # (2048, 2048) float64
    num_features: int | None  # images the statistics come from; None = unknown (e.g. a pytorch-fid npz)
    features: np.ndarray | None = None  # (M, 2048) float32 first images, for KID / P&R; None = not stored
    fingerprint: str | None = None  # Inception weights they were made with; None = unknown


# ---------------------------------------------------------------------------------------------------------
# Statistics and distribution metrics


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu (D,) and unbiased covariance sigma (D, D) of features (N, D), in float64 like np.cov."""
    features = torch.as_tensor(features).double().cpu()
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {tuple(features.shape)}")
    return features.mean(0).numpy(), torch.cov(features.T).numpy()


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix, negative round-off eigenvalues clipped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1 S2)^1/2 = tr (R^T S2 R)^1/2 for any R with R R^T = S1; R^T S2 R is symmetric PSD, so its
    eigenvalues are real (no imaginary part to drop, as pytorch-fid's sqrtm / torch-fidelity's eigvals
    must), only round-off below 0. R is a Cholesky factor of S1 or S2 (the trace is symmetric in them),
    or the PSD root of S1 when both are singular (fewer samples than 2048 dimensions; slower)."""
    for first, second in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            root = np.linalg.cholesky(first)  # full rank, e.g. reference statistics of 50k images
        except np.linalg.LinAlgError:
            continue
        return _trace_sqrt(root.T @ second @ root)
    root = _psd_sqrt(sigma1)
    return _trace_sqrt(root.T @ sigma2 @ root)


def _trace_sqrt(symmetric_psd: np.ndarray) -> float:
    """tr M^1/2 of a symmetric PSD matrix: sum of sqrt eigenvalues, negative round-off clipped to 0."""
    eigenvalues = np.linalg.eigvalsh(symmetric_psd)
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    trace_covmean = _trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def fid_from_features(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FID of two feature sets (N1, D), (N2, D); same value as frechet_distance of their statistics.

    With fewer samples than dimensions, S_i = A_i^T A_i (A_i centred features / sqrt(N_i - 1)) has rank < N_i
    and tr (S1 S2)^1/2 = sum of singular values of A1 A2^T (N1 x N2): exact and far cheaper than 2048^3.
    """
    f1, f2 = torch.as_tensor(features_1).double().cpu(), torch.as_tensor(features_2).double().cpu()
    if max(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    a1 = (f1 - f1.mean(0)) / math.sqrt(len(f1) - 1)  # (N1, D)
    a2 = (f2 - f2.mean(0)) / math.sqrt(len(f2) - 1)  # (N2, D)
    trace_covmean = torch.linalg.svdvals(a1 @ a2.T).sum()
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + a1.pow(2).sum() + a2.pow(2).sum() - 2 * trace_covmean)


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 per subset (S,) of x, y (S, m, D), polynomial kernel k(a, b) = (a.b / D + 1)^3; the
    diagonals of Kxx and Kyy are left out (Binkowski et al. 2018, as torch-fidelity)."""
    m, dim = x.shape[1], x.shape[2]
    k_xx, k_yy, k_xy = ((a @ b.transpose(1, 2) / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))  # (S, m, m)
    diagonals = k_xx.diagonal(dim1=1, dim2=2).sum(1) + k_yy.diagonal(dim1=1, dim2=2).sum(1)
    within = (k_xx.sum((1, 2)) + k_yy.sum((1, 2)) - diagonals) / (m * (m - 1))
    return within - 2 * k_xy.mean((1, 2))


def kernel_inception_distance(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """KID mean and std over random subsets of min(subset_size, N1, N2) from each side (as torch-fidelity,
    whose subset draws this repeats), in float64, several subsets per batched matmul."""
    n1, n2 = len(features_1), len(features_2)
    size = min(subset_size, n1, n2)
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per side, got {n1} and {n2}")
    features_1, features_2 = torch.as_tensor(features_1).double(), torch.as_tensor(features_2).double()
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n1, size, replace=False), rng.choice(n2, size, replace=False)) for _ in range(num_subsets)]
    index_1 = torch.from_numpy(np.stack([a for a, _ in draws])).to(features_1.device)  # (S, size)
    index_2 = torch.from_numpy(np.stack([b for _, b in draws])).to(features_2.device)
    per_chunk = max(1, 2**24 // (size * features_1.shape[1]))  # bounds memory: ~128 MB per gathered side
    mmds = torch.cat(
        [
            _mmd2_unbiased(features_1[chunk_1], features_2[chunk_2])
            for chunk_1, chunk_2 in zip(index_1.split(per_chunk), index_2.split(per_chunk))
        ]
    )
    return mmds.mean().item(), mmds.std(unbiased=False).item()


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, mean and std over splits (Salimans et al. 2016)."""
    logits = torch.as_tensor(logits).double()
    n = len(logits)
    if n < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}")
    probs, log_probs = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        marginal = probs[chunk].mean(0, keepdim=True)  # p(y) within the split
        kl = (probs[chunk] * (log_probs[chunk] - marginal.log())).sum(1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point (the point itself is at distance 0)."""
    return torch.cat(
        [torch.cdist(block, features).kthvalue(k + 1, dim=1).values for block in features.split(batch_size)]
    )


def _fraction_inside(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Share of queries within radii[j] of some support point j (inside the support's k-NN manifold)."""
    inside = [(torch.cdist(block, support) <= radii[None]).any(dim=1) for block in queries.split(batch_size)]
    return torch.cat(inside).float().mean().item()


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = PR_NEIGHBOURS, batch_size: int = 1000
) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold),
    manifolds as unions of k-NN balls (Kynkaanniemi et al. 2019); same rule (<=) as torch-fidelity."""
    real, fake = torch.as_tensor(real).float(), torch.as_tensor(fake).float().to(torch.as_tensor(real).device)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} features per side")
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, batch_size), batch_size)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, batch_size), batch_size)
    return precision, recall


# ---------------------------------------------------------------------------------------------------------
# Pixel metrics (reconstructions)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (B,) of images with values in [0, data_range]; inf where x == y."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (B,): 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, valid region only,
    averaged over channels and positions (Wang et al. 2004; as torchmetrics / pytorch-msssim)."""
    x, y = x.double(), y.double()
    channels = x.shape[1]
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)
    rows = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    cols = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, per channel, no padding
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


@torch.no_grad()
def lpips_distance(lpips_model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS (B,) of images in [-1, 1] (0 for identical images)."""
    return lpips_model(x, y).flatten()


# ---------------------------------------------------------------------------------------------------------
# Feature extraction


@torch.no_grad()
def extract_features(
    extractor: InceptionFeatures,
    batches: Iterable[torch.Tensor],
    total_images: int | None = None,
    desc: str = "Inception features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """pool3 features (N, 2048) and logits (N, 1008) or None (zeroed head), on CPU, of image batches in [-1, 1]."""
    features, logits = [], []
    with tqdm(total=total_images, desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for images in batches:
            batch_features, batch_logits = extractor(images_to_uint8(images))
            features.append(batch_features.cpu())
            if batch_logits is not None:
                logits.append(batch_logits.cpu())
            bar.update(len(images))
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), (torch.cat(logits) if logits else None)


def without_flips(dataset: Dataset) -> Dataset:
    """A shallow copy of an engine.data dataset whose transform has no random horizontal flip."""
    if not all(hasattr(dataset, key) for key in ("transform", "native_size", "image_size")):
        return dataset
    from engine.data import build_transform

    unflipped = copy.copy(dataset)
    unflipped.transform = build_transform(dataset.native_size, dataset.image_size, hflip=False)
    return unflipped


def dataset_batches(
    dataset: Dataset, max_images: int | None = None, batch_size: int = 64, num_workers: int = 0, labels: bool = False
) -> Iterator:
    """The dataset's first min(len, max_images) images (or signals) in order, unflipped, as (B, 3, H, W) batches
    (or (images, labels) pairs when labels=True); per-value errors of (x, label, sigma) items are left out."""
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    subset = Subset(without_flips(dataset), range(count))
    for batch in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        images, batch_labels = batch[:2] if isinstance(batch, (list, tuple)) else (batch, None)
        yield (images, batch_labels) if labels else images


# ---------------------------------------------------------------------------------------------------------
# Reference statistics: cache and files


def reference_from_features(
    features: torch.Tensor, fingerprint: str | None, keep_features: int = REF_FEATURES_KEPT
) -> ReferenceStats:
    mu, sigma = feature_statistics(features)
    kept = features[:keep_features].float().cpu().numpy()
    return ReferenceStats(mu, sigma, len(features), kept, fingerprint)


def reference_path(cache_dir: str | Path, dataset_name: str, image_size: int) -> Path:
    from engine.data import slug

    return Path(cache_dir) / f"fid_stats_{slug(dataset_name)}_{image_size}.npz"


def save_reference(reference: ReferenceStats, path: str | Path) -> None:
    """npz with mu, sigma, num_features (+ features, fingerprint when known), written atomically."""
    arrays = {"mu": reference.mu, "sigma": reference.sigma, "num_features": np.int64(reference.num_features or -1)}
    if reference.features is not None:
        arrays["features"] = reference.features
    if reference.fingerprint is not None:
        arrays["fingerprint"] = np.array(reference.fingerprint)
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _read_npz(path: Path, with_features: bool) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files if with_features or key != "features"}
    except Exception as error:  # BadZipFile, EOFError, ValueError (pickled arrays), OSError
        raise ReferenceStatsError(
            f"cannot read reference statistics '{path}' ({error.__class__.__name__}: corrupt or not an npz); "
            "delete it to recompute, or pass another --ref"
        ) from None


def load_reference(path: str | Path, with_features: bool = True) -> ReferenceStats:
    """Read an npz with mu (2048,) and sigma (2048, 2048) (pytorch-fid's format) and optionally
    num_features, features (M, 2048) and the weights fingerprint; one-line ReferenceStatsError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceStatsError(f"reference statistics '{path}' do not exist; pass an npz with mu and sigma to --ref")
    arrays = _read_npz(path, with_features)
    if "mu" not in arrays or "sigma" not in arrays:
        raise ReferenceStatsError(f"'{path}' is not FID statistics (needs 'mu' and 'sigma', has {sorted(arrays)})")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.shape != (2048,) or sigma.shape != (2048, 2048):
        raise ReferenceStatsError(
            f"'{path}' holds mu {mu.shape} / sigma {sigma.shape}; expected 2048-d Inception pool3 statistics"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceStatsError(f"'{path}' holds non-finite statistics; recompute them")
    features = arrays.get("features")
    if features is not None and (features.ndim != 2 or features.shape[1] != 2048):
        raise ReferenceStatsError(f"'{path}' holds features of shape {features.shape}; expected (M, 2048)")
    num_features = int(arrays["num_features"]) if "num_features" in arrays else None
    fingerprint = str(arrays["fingerprint"]) if "fingerprint" in arrays else None
    return ReferenceStats(mu, sigma, num_features if num_features and num_features > 0 else None, features, fingerprint)


def _cached_reference(path: Path, fingerprint: str, count: int, with_features: bool) -> ReferenceStats | None:
    """The cached statistics if they exist and match these weights and image count, else None."""
    if not path.is_file():
        return None
    try:
        reference = load_reference(path, with_features)
    except ReferenceStatsError as error:
        warnings.warn(f"{error}; recomputing it", stacklevel=3)
        return None
    if reference.fingerprint != fingerprint or reference.num_features != count:
        return None
    return reference


def reference_for_dataset(
    dataset: Dataset,
    extractor: InceptionFeatures,
    cache_dir: str | Path = "results/fid_stats",
    image_size: int | None = None,
    max_images: int = REF_IMAGES_MAX,
    batch_size: int = 64,
    with_features: bool = True,
) -> ReferenceStats:
    """Statistics of the dataset's first min(len, max_images) images (no flips), computed once and cached
    per (dataset name, resolution); a cache made with other Inception weights or another count is redone."""
    image_size = image_size or getattr(dataset, "image_size", None) or dataset[0][0].shape[-1]
    path = reference_path(cache_dir, getattr(dataset, "name", None) or "dataset", image_size)
    count = min(len(dataset), max_images)
    reference = _cached_reference(path, extractor.fingerprint, count, with_features)
    if reference is not None:
        return reference
    batches = dataset_batches(dataset, count, batch_size)
    features, _ = extract_features(extractor, batches, count, desc=f"reference statistics ({path.name})")
    reference = reference_from_features(features, extractor.fingerprint)
    save_reference(reference, path)
    return reference


def check_reference_weights(reference: ReferenceStats, extractor: InceptionFeatures, source: str) -> None:
    """Warn when statistics were made with other Inception weights (their FID would not be comparable)."""
    if reference.fingerprint is not None and reference.fingerprint != extractor.fingerprint:
        warnings.warn(
            f"reference statistics '{source}' were computed with other Inception weights "
            f"({reference.fingerprint} vs {extractor.fingerprint}); FID against them is not comparable",
            stacklevel=2,
        )


# ---------------------------------------------------------------------------------------------------------
# Sampling and generation metrics


def balanced_labels(start: int, count: int, num_classes: int, device) -> torch.Tensor | None:
    """Class of global image i is i mod num_classes (balanced classes); None for unconditional models."""
    if num_classes == 0:
        return None
    return torch.arange(start, start + count, device=device) % num_classes


@torch.no_grad()
def sample_step_batches(
    model: torch.nn.Module,
    num_samples: int,
    steps: list[int],
    batch_size: int,
    seed: int = 0,
    cfg: float = 1.0,
    cfg_mode: str = "combo",
) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
    """(first global index, {T: images (B, 3, H, W) in [-1, 1] after T steps}) per batch.

    Where steps are prefixes (model.steps_are_prefix), one max(steps)-round run gives every shorter count;
    otherwise each count is its own run (engine.images.sample_at_steps). Image i has its own generator
    (engine.images.per_image_generators, as sampling.py), so batches do not matter; conditional models get
    class-balanced labels, the CFG scale and where it applies (cfg_mode). The model must be able to sample.
    """
    from engine.images import per_image_generators, sample_at_steps

    device = next(model.parameters()).device
    num_classes = getattr(model.config, "num_classes", 0)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        options = dict(
            labels=balanced_labels(start, count, num_classes, device),
            cfg=cfg if num_classes else 1.0,
            cfg_mode=cfg_mode,
        )
        generators = lambda: per_image_generators(seed, start, count, device)  # noqa: B023, E731 (used at once)
        yield start, sample_at_steps(model, count, steps, generators, **options)


def fid_against_reference(features: torch.Tensor, reference: ReferenceStats) -> float:
    """FID of features vs reference statistics; from the features themselves when the reference kept all of
    its features (small sets: same value, without 2048^3 eigen-decompositions of singular covariances)."""
    if reference.features is not None and len(reference.features) == reference.num_features:
        return fid_from_features(features, torch.from_numpy(reference.features))
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def _unavailable(names: tuple[str, ...], reason: str) -> dict[str, Metric]:
    return {name: Metric(None, reason) for name in names}


def generation_metrics(
    features: torch.Tensor,
    logits: torch.Tensor | None,
    reference: ReferenceStats,
    logits_unavailable_reason: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Metric]:
    """fid, kid, kid_std, precision, recall, is, is_std of generated pool3 features / logits vs a reference.

    KID uses all features (subsets of 1000); precision/recall the first min(N, M) of each side, where M is
    the number of reference features stored (10k by default). Unavailable metrics carry their reason.
    """
    results = {"fid": Metric(fid_against_reference(features, reference))}
    real = None if reference.features is None else torch.from_numpy(reference.features).to(device)
    count = 0 if real is None else min(len(real), len(features))
    if real is None:
        reason = "reference statistics hold only mu/sigma (no features); let evaluate.py compute them"
        results.update(_unavailable(("kid", "kid_std", "precision", "recall"), reason))
    elif count <= PR_NEIGHBOURS:
        results.update(_unavailable(("kid", "kid_std", "precision", "recall"), f"needs > {PR_NEIGHBOURS} samples"))
    else:
        fake = features.to(device)
        kid, kid_std = kernel_inception_distance(fake, real)
        precision, recall = precision_recall(real[:count], fake[:count])
        results.update(kid=Metric(kid), kid_std=Metric(kid_std), precision=Metric(precision), recall=Metric(recall))
    if logits is None:
        results.update(_unavailable(("is", "is_std"), logits_unavailable_reason or "no Inception logits"))
    elif len(logits) < IS_SPLITS:
        results.update(_unavailable(("is", "is_std"), f"needs >= {IS_SPLITS} samples ({IS_SPLITS} splits)"))
    else:
        score, score_std = inception_score(logits)
        results.update({"is": Metric(score), "is_std": Metric(score_std)})
    return results


def quick_fid(
    model: torch.nn.Module,
    dataset: Dataset,
    num_samples: int,
    steps: int,
    device: str | torch.device,
    batch_size: int = 64,
    seed: int = 0,
    inception_weights: str | None = None,
    cache_dir: str = "results/fid_stats",
) -> float:
    """FID of num_samples `steps`-step samples vs the dataset's cached reference statistics (training-time
    monitor; pass the unwrapped model, already on `device`; its train/eval mode is restored)."""
    extractor = build_inception(inception_weights, device)
    image_size = getattr(getattr(model, "config", None), "image_size", None)
    reference = reference_for_dataset(dataset, extractor, cache_dir, image_size, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        batches = (images[steps] for _, images in sample_step_batches(model, num_samples, [steps], batch_size, seed))
        features, _ = extract_features(extractor, batches, num_samples, desc=f"quick FID ({steps} steps)")
    finally:
        model.train(was_training)
    return fid_against_reference(features, reference)
