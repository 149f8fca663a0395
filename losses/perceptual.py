"""LPIPS-VGG perceptual distance (the `lpips` package) with an offline path for the VGG16 backbone."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lpips
import torch

VGG_ENV = "SPHERE_VGG_WEIGHTS"
_FIX = (
    f"pass --vgg_weights PATH or set {VGG_ENV}=PATH to a state_dict of torchvision's vgg16().features "
    "(offline copy: ../shared/weights/vgg16_features_hed.pth), or connect to the internet once so torchvision "
    "can download and cache the ImageNet VGG16"
)


class PerceptualWeightsError(RuntimeError):
    """The VGG16 backbone for LPIPS is missing or unreadable."""


def _load_backbone_file(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise PerceptualWeightsError(f"VGG16 weights file '{path}' does not exist; {_FIX}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or not a torch file
        problem = f"cannot read VGG16 weights '{path}' ({error.__class__.__name__})"
        raise PerceptualWeightsError(f"{problem}; {_FIX}") from None
    if not isinstance(state, dict) or "0.weight" not in state or "28.weight" not in state:
        raise PerceptualWeightsError(f"'{path}' is not a state_dict of vgg16().features (keys 0.weight..28.bias)")
    return state


def build_lpips(vgg_weights: str | None = None) -> lpips.LPIPS:
    """Frozen LPIPS-VGG in eval mode. Backbone from `vgg_weights`, else $SPHERE_VGG_WEIGHTS, else torchvision's
    ImageNet VGG16 (downloaded once, then read from the torch hub cache). Never falls back to random weights."""
    path = vgg_weights or os.environ.get(VGG_ENV)
    if path:
        state = _load_backbone_file(path)
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # backbone replaced just below
        backbone = {key: state[key.split(".", 1)[1]] for key in model.net.state_dict()}
        model.net.load_state_dict(backbone, strict=True)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        except Exception as error:  # offline with an empty cache: urllib / hub errors
            raise PerceptualWeightsError(
                f"could not get the ImageNet VGG16 for LPIPS ({error.__class__.__name__}); {_FIX}"
            ) from None
    model.eval().requires_grad_(False)
    return model
