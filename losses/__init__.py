"""Training objectives (one per model family) and perceptual losses."""

from .perceptual import PerceptualWeightsError, build_lpips
from .sphere import SphereLoss, SphereLossConfig, hard_case_levels, stratified_levels

__all__ = [
    "PerceptualWeightsError",
    "SphereLoss",
    "SphereLossConfig",
    "build_lpips",
    "hard_case_levels",
    "stratified_levels",
]
