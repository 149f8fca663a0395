"""Perceptual distances: LPIPS-VGG (the `lpips` package) and the official ConvNeXt-S logit term, with offline paths
for both backbones."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lpips
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

VGG_ENV = "SPHERE_VGG_WEIGHTS"
CONVNEXT_ENV = "SPHERE_CONVNEXT_WEIGHTS"
_FIX = (
    f"pass --vgg_weights PATH or set {VGG_ENV}=PATH to a state_dict of torchvision's vgg16().features, "
    "or connect to the internet once so torchvision can download and cache the ImageNet VGG16"
)
_CONVNEXT_FIX = (
    f"pass --convnext_weights PATH or set {CONVNEXT_ENV}=PATH to a state_dict of torchvision's convnext_small(), "
    "or connect to the internet once so torchvision can download and cache ConvNeXt_Small_Weights.IMAGENET1K_V1, "
    "or turn the term off with --convnext_weight 0"
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVNEXT_SIZE = 224  # ConvNeXt-S sees images resized to its ImageNet resolution (the official code)


class PerceptualWeightsError(RuntimeError):
    """The VGG16 backbone for LPIPS (or the ConvNeXt-S) is missing or unreadable."""


def _load_state_file(path: str, what: str, required: tuple[str, ...], fix: str) -> dict[str, torch.Tensor]:
    """A state_dict from a local file, with one-line errors for missing, unreadable and foreign files."""
    file = Path(path)
    if not file.is_file():
        raise PerceptualWeightsError(f"{what} weights file '{path}' does not exist; {fix}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or not a torch file
        problem = f"cannot read {what} weights '{path}' ({error.__class__.__name__})"
        raise PerceptualWeightsError(f"{problem}; {fix}") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise PerceptualWeightsError(f"'{path}' is not a state_dict of {what} (keys {', '.join(required)}...); {fix}")
    return state


def _quiet_lpips(**kwargs) -> lpips.LPIPS:
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="vgg", verbose=False, **kwargs)


def build_lpips(vgg_weights: str | None = None) -> lpips.LPIPS:
    """Frozen LPIPS-VGG in eval mode. Backbone from `vgg_weights`, else $SPHERE_VGG_WEIGHTS, else torchvision's
    ImageNet VGG16 (downloaded once, then read from the torch hub cache). Never falls back to random weights."""
    path = vgg_weights or os.environ.get(VGG_ENV)
    if path:
        state = _load_state_file(path, "VGG16 (vgg16().features)", ("0.weight", "28.weight"), _FIX)
        model = _quiet_lpips(pnet_rand=True)  # random backbone, replaced just below
        backbone = {key: state[key.split(".", 1)[1]] for key in model.net.state_dict()}
        model.net.load_state_dict(backbone, strict=True)
    else:
        try:
            model = _quiet_lpips(pretrained=True, pnet_rand=False)
        except Exception as error:  # offline with an empty cache: urllib / hub errors
            raise PerceptualWeightsError(
                f"could not get the ImageNet VGG16 for LPIPS ({error.__class__.__name__}); {_FIX}"
            ) from None
    model.eval().requires_grad_(False)
    return model


def build_convnext_small(convnext_weights: str | None = None) -> nn.Module:
    """Frozen torchvision ConvNeXt-S classifier: from `convnext_weights`, else $SPHERE_CONVNEXT_WEIGHTS, else the
    IMAGENET1K_V1 download (cached by torchvision). Never random weights."""
    path = convnext_weights or os.environ.get(CONVNEXT_ENV)
    if path:
        state = _load_state_file(path, "ConvNeXt-S", ("features.0.0.weight", "classifier.2.weight"), _CONVNEXT_FIX)
        model = torchvision.models.convnext_small(weights=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0][:160]
            raise PerceptualWeightsError(f"'{path}' does not fit convnext_small() ({first}); {_CONVNEXT_FIX}") from None
    else:
        try:
            model = torchvision.models.convnext_small(weights=torchvision.models.ConvNeXt_Small_Weights.IMAGENET1K_V1)
        except Exception as error:  # offline with an empty cache
            raise PerceptualWeightsError(
                f"could not get the ImageNet ConvNeXt-S ({error.__class__.__name__}); {_CONVNEXT_FIX}"
            ) from None
    return model.eval().requires_grad_(False)


class PerceptualDistance(nn.Module):
    """perc(a, b) of DESIGN §3 for images in [-1, 1]: mean LPIPS-VGG, and with a ConvNeXt-S the official code's
    (LPIPS + w * MSE(ConvNeXt-S logits at 224 px)) / (1 + w)."""

    def __init__(self, lpips_model: nn.Module, convnext: nn.Module | None = None, convnext_weight: float = 0.0):
        super().__init__()
        if convnext_weight > 0 and convnext is None:
            raise ValueError("convnext_weight > 0 needs a ConvNeXt-S (build_convnext_small)")
        self.lpips, self.convnext, self.convnext_weight = lpips_model, convnext, convnext_weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ConvNeXt-S logits of images in [-1, 1] (resized to 224 px, ImageNet-normalised)."""
        x = F.interpolate((images + 1) / 2, size=CONVNEXT_SIZE, mode="bilinear", antialias=True)
        return self.convnext((x - self.mean) / self.std)  # (B, 1000)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = self.lpips(a, b).mean()
        if self.convnext_weight == 0:
            return distance
        mse = F.mse_loss(self.logits(a), self.logits(b))
        return (distance + self.convnext_weight * mse) / (1 + self.convnext_weight)


def build_perceptual(
    vgg_weights: str | None = None, convnext_weight: float = 0.0, convnext_weights: str | None = None
) -> PerceptualDistance:
    """The training objective's perceptual distance; the ConvNeXt-S is only loaded when convnext_weight > 0."""
    convnext = build_convnext_small(convnext_weights) if convnext_weight > 0 else None
    return PerceptualDistance(build_lpips(vgg_weights), convnext, convnext_weight).eval()
