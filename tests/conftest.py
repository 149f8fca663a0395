"""Test-wide settings: offline weights from ../shared/weights, no hub access, small thread counts."""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
VGG_WEIGHTS = SHARED / "weights" / "vgg16_features_hed.pth"
INCEPTION_WEIGHTS = SHARED / "weights" / "pt_inception-2015-12-05-fid-pool3.pth"
CIFAR_SUBSET = SHARED / "data" / "cifar10_train_subset.npz"

os.environ.setdefault("SPHERE_VGG_WEIGHTS", str(VGG_WEIGHTS))
os.environ.setdefault("SPHERE_INCEPTION_WEIGHTS", str(INCEPTION_WEIGHTS))
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def lpips_model():
    """One frozen LPIPS-VGG (offline backbone) shared by the tests that need it."""
    from losses import build_lpips

    return build_lpips(str(VGG_WEIGHTS))
