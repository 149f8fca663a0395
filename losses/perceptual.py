"""Perceptual distances: LPIPS-VGG (the `lpips` package) and the official ConvNeXt-S logit term, with offline paths
for both backbones.

The losses compare features, not image pairs: `features(images)` runs the backbones once per batch of images and
`distance(features_a, features_b)` is lpips.LPIPS.forward's arithmetic on them, so an image compared twice (the
sphere loss's x_small: reconstruction and consistency target) goes through VGG16 once, and real images go through it
without an autograd graph.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

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


class PerceptualFeatures(NamedTuple):
    """What perc(a, b) compares of a batch of images: LPIPS's unit-normalised VGG16 activations, one
    (B, C_k, H_k, W_k) per layer, and the ConvNeXt-S logits (B, 1000) (None without that term)."""

    lpips: tuple[torch.Tensor, ...]
    logits: torch.Tensor | None

    def detach(self) -> PerceptualFeatures:
        """The same features as a stop-gradient target."""
        logits = None if self.logits is None else self.logits.detach()
        return PerceptualFeatures(tuple(layer.detach() for layer in self.lpips), logits)


def check_lpips(model: lpips.LPIPS) -> lpips.LPIPS:
    """The LPIPS settings lpips_features / lpips_distance reproduce: v0.1, learned linear layers, not spatial."""
    if model.version != "0.1" or not model.lpips or model.spatial:
        raise ValueError("the perceptual loss needs lpips.LPIPS(version='0.1', lpips=True, spatial=False)")
    return model


def lpips_features(model: lpips.LPIPS, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The unit-normalised backbone activations lpips.LPIPS.forward compares, of images in [-1, 1]."""
    return tuple(lpips.normalize_tensor(layer) for layer in model.net(model.scaling_layer(images)))


def lpips_distance(model: lpips.LPIPS, features_a: tuple, features_b: tuple) -> torch.Tensor:
    """lpips.LPIPS.forward from features: per layer the learned 1x1 conv of the squared difference averaged over
    space, summed over layers in the package's order. (B,)"""
    total = 0
    for linear, a, b in zip(model.lins, features_a, features_b, strict=True):
        total = total + linear((a - b) ** 2).mean([2, 3], keepdim=True)  # (B, 1, 1, 1)
    return total.view(-1)


class PerceptualDistance(nn.Module):
    """perc(a, b) of DESIGN §3 for images in [-1, 1]: LPIPS-VGG, and with a ConvNeXt-S the official code's
    (LPIPS + w * MSE(ConvNeXt-S logits at 224 px)) / (1 + w). forward(a, b) is its batch mean; features() and
    distance() split it so that each image's features are computed once per step."""

    def __init__(self, lpips_model: nn.Module, convnext: nn.Module | None = None, convnext_weight: float = 0.0):
        super().__init__()
        if convnext_weight > 0 and convnext is None:
            raise ValueError("convnext_weight > 0 needs a ConvNeXt-S (build_convnext_small)")
        self.lpips, self.convnext, self.convnext_weight = check_lpips(lpips_model), convnext, convnext_weight
        device = next(lpips_model.parameters()).device  # a bare LPIPS wrapped by a loss may already be on its GPU
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1), persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ConvNeXt-S logits of images in [-1, 1] (resized to 224 px, ImageNet-normalised)."""
        x = F.interpolate((images + 1) / 2, size=CONVNEXT_SIZE, mode="bilinear", antialias=True)
        return self.convnext((x - self.mean) / self.std)  # (B, 1000)

    def features(self, images: torch.Tensor) -> PerceptualFeatures:
        """Every backbone's features of images in [-1, 1] (float32), with gradients to the images if they have any."""
        images = images.float()
        logits = self.logits(images) if self.convnext_weight > 0 else None
        return PerceptualFeatures(lpips_features(self.lpips, images), logits)

    @torch.no_grad()
    def target_features(self, images: torch.Tensor) -> PerceptualFeatures:
        """features() of images no gradient should reach (real images): no autograd graph is kept."""
        return self.features(images)

    def distance(self, a: PerceptualFeatures, b: PerceptualFeatures) -> torch.Tensor:
        """perc of each pair of images from their features. (B,)"""
        distance = lpips_distance(self.lpips, a.lpips, b.lpips)
        if self.convnext_weight == 0:
            return distance
        mse = (a.logits - b.logits).pow(2).mean(1)  # (B,); its batch mean is F.mse_loss of the logits
        return (distance + self.convnext_weight * mse) / (1 + self.convnext_weight)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(a), self.features(b)).mean()


def perceptual_distance(module: nn.Module | None) -> PerceptualDistance | None:
    """The losses' perceptual module: a PerceptualDistance as given, a bare lpips.LPIPS (build_lpips) wrapped
    without a ConvNeXt term, None as None."""
    if module is None or isinstance(module, PerceptualDistance):
        return module
    if isinstance(module, lpips.LPIPS):
        return PerceptualDistance(module).eval()  # eval: LPIPS's linear layers have dropout in train mode
    raise TypeError(f"perceptual must be an lpips.LPIPS or a PerceptualDistance, got {type(module).__name__}")


def build_perceptual(
    vgg_weights: str | None = None, convnext_weight: float = 0.0, convnext_weights: str | None = None
) -> PerceptualDistance:
    """The training objective's perceptual distance; the ConvNeXt-S is only loaded when convnext_weight > 0."""
    convnext = build_convnext_small(convnext_weights) if convnext_weight > 0 else None
    return PerceptualDistance(build_lpips(vgg_weights), convnext, convnext_weight).eval()
