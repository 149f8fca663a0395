"""Training objectives (one per model family) and perceptual losses."""

from .gan import GANSettings, PatchDiscriminator, PatchGAN
from .ldm import DiffusionLoss, DiffusionLossConfig, LDMAELossConfig, LDMAutoencoderLoss
from .perceptual import (
    PerceptualDistance,
    PerceptualFeatures,
    PerceptualWeightsError,
    build_convnext_small,
    build_lpips,
    build_perceptual,
)
from .psvae import PSVAELoss, PSVAELossConfig, beta_at
from .somar import SOMARAutoencoderLoss, SOMARCodebookLoss, SOMARLossConfig, SOMARPriorLoss
from .sphere import SphereLoss, SphereLossConfig, hard_case_levels, stratified_levels
from .vqvae import VQVAELoss, VQVAELossConfig

__all__ = [
    "DiffusionLoss",
    "DiffusionLossConfig",
    "GANSettings",
    "LDMAELossConfig",
    "LDMAutoencoderLoss",
    "PatchDiscriminator",
    "PatchGAN",
    "PerceptualDistance",
    "PerceptualFeatures",
    "PerceptualWeightsError",
    "PSVAELoss",
    "PSVAELossConfig",
    "SOMARAutoencoderLoss",
    "SOMARCodebookLoss",
    "SOMARLossConfig",
    "SOMARPriorLoss",
    "SphereLoss",
    "SphereLossConfig",
    "VQVAELoss",
    "VQVAELossConfig",
    "beta_at",
    "build_convnext_small",
    "build_lpips",
    "build_perceptual",
    "hard_case_levels",
    "stratified_levels",
]
