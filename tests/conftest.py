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
def threads_counted_once():
    """The scripts' --threads 0 (auto) watches /proc/stat for 0.1 s per main() call unless OMP_NUM_THREADS is set; the
    suite makes hundreds of such calls, so the free cores are counted once here and passed on as OMP_NUM_THREADS
    (what auto then takes without measuring; tests/test_threads.py tests the measuring itself). A pytest-xdist worker
    (run_tests.sh runs one per core) takes one thread: the workers already fill the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OMP_NUM_THREADS", "1")
            yield
        return
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    from engine.threads import auto_threads

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", str(auto_threads()))
        yield


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


def random_inception_state() -> dict:
    """A state_dict of torch-fidelity's FID Inception-v3 with random weights, in the layout its loader reads.

    He-normal convolutions (so activations neither vanish nor explode through ~50 layers; BatchNorm keeps its
    identity statistics) and a zero classifier head, like a pool3-only file: mechanics tests only.
    """
    import math
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    network_class = inception_module.FeatureExtractorInceptionV3
    with (  # build the bare network: no download, no weights file
        mock.patch.object(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: {}),
        mock.patch.object(network_class, "load_state_dict", lambda self, state: None),
    ):
        network = network_class("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(0)
    state = network.state_dict()
    for name, tensor in state.items():
        if name.endswith("conv.weight"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2 / tensor[0].numel()))
        elif name.startswith("fc."):
            tensor.zero_()
    return state


@pytest.fixture(scope="session")
def inception_weights_file(tmp_path_factory) -> str:
    """The real FID Inception file when SPHERE_INCEPTION_WEIGHTS names one, else a random-weight one."""
    if REAL_INCEPTION_WEIGHTS is not None:
        return str(REAL_INCEPTION_WEIGHTS)
    import torch

    path = tmp_path_factory.mktemp("weights") / "inception_random.pth"
    torch.save(random_inception_state(), path)
    return str(path)


@pytest.fixture(scope="session")
def lpips_model(vgg_weights_file):
    """One frozen LPIPS-VGG built from `vgg_weights_file` (real or random backbone: mechanics only)."""
    from losses import build_lpips

    return build_lpips(vgg_weights_file)
