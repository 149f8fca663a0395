"""The FID Inception-v3 (TF 2015-12-05 graph, via torch-fidelity) with offline weights and clear errors."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

INCEPTION_ENV = "SPHERE_INCEPTION_WEIGHTS"
# torch-fidelity's FID Inception (TF 2015-12-05 graph), the file its own download caches
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
_FIX = (
    f"pass --inception_weights PATH or set {INCEPTION_ENV}=PATH to an FID Inception-v3 state_dict (download "
    f"{INCEPTION_URL} on a machine with internet), or connect to the internet once so torch-fidelity can "
    "download and cache it"
)
FEATURES = "2048"  # pool3, what FID/KID/precision-recall use
LOGITS = "logits_unbiased"  # 1008-way classifier without bias, what torch-fidelity's Inception Score uses


class InceptionWeightsError(RuntimeError):
    """The FID Inception weights are missing, unreadable, of another network, or could not be downloaded."""


def resolve_inception_weights(path: str | None = None) -> str | None:
    """Explicit path, else $SPHERE_INCEPTION_WEIGHTS, else None (= torch-fidelity's cached download)."""
    return path or os.environ.get(INCEPTION_ENV) or None


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 0-255, the input pytorch-fid / torch-fidelity quantize to."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _check_weights_file(path: str) -> None:
    """Fail early with one line when the file is absent, truncated or not a plain tensor state_dict."""
    if not Path(path).is_file():
        raise InceptionWeightsError(f"Inception weights file '{path}' does not exist; {_FIX}")
    try:  # weights_only=True: a plain tensor dict loads, a foreign pickle does not (torch-fidelity uses False)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InceptionWeightsError(
            f"cannot read Inception weights '{path}' ({error.__class__.__name__}: truncated or not a torch "
            f"file); {_FIX}"
        ) from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state or "fc.weight" not in state:
        raise InceptionWeightsError(f"'{path}' is not an FID Inception-v3 state_dict (Mixed_7c..., fc.*); {_FIX}")


def _fingerprint(network: nn.Module) -> str:
    """Short hash of every weight: reference statistics made with other weights are not reused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class InceptionFeatures(nn.Module):
    """uint8 images (N, 3, H, W) -> (pool3 features (N, 2048), logits (N, 1008) or None), float32.

    Images of any size are resized to 299 inside torch-fidelity's network, exactly as its FID does.
    `has_logits` is False when the classifier head is all zeros (pool3-only weights); then the Inception
    Score is unavailable and `logits_unavailable_reason` says why.
    """

    def __init__(self, weights: str | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights = resolve_inception_weights(weights)
        if self.weights is not None:
            _check_weights_file(self.weights)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", [FEATURES, LOGITS], feature_extractor_weights_path=self.weights
            )
        except Exception as error:  # offline download (URLError...), key/shape mismatch
            source = f"'{self.weights}'" if self.weights else "the torch-fidelity download"
            first_line = (str(error).strip().splitlines() or [""])[0][:160]
            raise InceptionWeightsError(
                f"could not load the FID Inception weights from {source} ({error.__class__.__name__}: "
                f"{first_line}); {_FIX}"
            ) from None
        self.fingerprint = _fingerprint(self.net)
        head_is_zero = bool(self.net.fc.weight.abs().max() == 0)
        self.has_logits = not head_is_zero
        self.logits_unavailable_reason = (
            "Inception classifier head is all zeros (pool3-only weights such as "
            "pt_inception-2015-12-05-fid-pool3.pth); use the full 2015-12-05 weights for the Inception Score"
            if head_is_zero
            else None
        )

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images_uint8.dtype} {images_uint8.shape}")
        device = self.net.fc.weight.device
        features, logits = self.net(images_uint8.to(device))  # (N, 2048), (N, 1008)
        return features, (logits if self.has_logits else None)


@functools.lru_cache(maxsize=2)
def _cached_inception(weights: str | None, device: str) -> InceptionFeatures:
    return InceptionFeatures(weights).to(device).eval()


def build_inception(weights: str | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception on `device`, built once per (weights, device) and reused (e.g. by quick FIDs)."""
    return _cached_inception(resolve_inception_weights(weights), str(torch.device(device)))
