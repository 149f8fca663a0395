"""Test-wide settings: no network, and the only weights and data the tests may use.

Tests use what the repository ships or makes. The few that need real pretrained weights or real CIFAR-10 images
read them from the documented environment variables (SPHERE_VGG_WEIGHTS, SPHERE_INCEPTION_WEIGHTS,
SPHERE_CIFAR_SUBSET) and skip with a one-line reason when they are unset; `.ci/run` points them at our offline
copies. Mechanics tests (training, resume, export...) get a VGG16 backbone for LPIPS either way: the real one when
SPHERE_VGG_WEIGHTS is set, else a random-weight VGG16 written once per session (same code path, meaningless values).
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


def _env_file(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value and Path(value).is_file() else None


# Real files, captured before the session fixture below may point SPHERE_VGG_WEIGHTS at a random backbone.
REAL_VGG_WEIGHTS = _env_file("SPHERE_VGG_WEIGHTS")
REAL_INCEPTION_WEIGHTS = _env_file("SPHERE_INCEPTION_WEIGHTS")
CIFAR_SUBSET = _env_file("SPHERE_CIFAR_SUBSET")

needs_real_vgg = pytest.mark.skipif(
    REAL_VGG_WEIGHTS is None, reason="needs real VGG16 weights: set SPHERE_VGG_WEIGHTS (see README, Tests)"
)
needs_real_inception = pytest.mark.skipif(
    REAL_INCEPTION_WEIGHTS is None,
    reason="needs real FID Inception weights: set SPHERE_INCEPTION_WEIGHTS (see README, Tests)",
)
needs_cifar_subset = pytest.mark.skipif(
    CIFAR_SUBSET is None, reason="needs real CIFAR-10 images: set SPHERE_CIFAR_SUBSET (see README, Tests)"
)


@pytest.fixture(scope="session", autouse=True)
def vgg_weights_file(tmp_path_factory) -> str:
    """Path of a vgg16().features state_dict; also exported as SPHERE_VGG_WEIGHTS for scripts under test."""
    if REAL_VGG_WEIGHTS is not None:
        return str(REAL_VGG_WEIGHTS)
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vgg16_features_random.pth"
    torch.save(torchvision.models.vgg16(weights=None).features.state_dict(), path)
    os.environ["SPHERE_VGG_WEIGHTS"] = str(path)
    return str(path)


@pytest.fixture(scope="session")
def lpips_model(vgg_weights_file):
    """One frozen LPIPS-VGG built from `vgg_weights_file` (real or random backbone: mechanics only)."""
    from losses import build_lpips

    return build_lpips(vgg_weights_file)
