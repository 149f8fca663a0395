"""The somar family's objectives, one per kind.

Autoencoder: rec + perceptual_weight LPIPS, rec the per-value mean L2 (default) or L1 error on [0, 1] images (as the
vqvae's; QAR trained with MSE alone).
Codebook: no gradient; each call fits every level's SOM one step on the patches of the batch's frozen maps
(batch SOM, Kohonen 1982 / 2013 §4: e_j <- (1 - lr) e_j + lr Σ_i h_ji x_i / Σ_i h_ji) and logs the quantisation and
topographic errors. The "loss" logged is the finest level's quantisation error (what the decoder will see).
Prior: the mean cross-entropy of every target token (ARPrior.loss); a conditional prior's labels are replaced by the
null class (index num_classes) with probability label_dropout, so classifier-free guidance has an unconditional branch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gan import GANSettings, ImageGANLoss
from .logs import constant_log, detached_logs

RECON_TERMS = ("l1", "l2")


@dataclass
class SOMARLossConfig:
    """The autoencoder's reconstruction form and LPIPS weight; the prior's label dropout."""

    recon: str = "l2"  # per-value "l1" or "l2" (squared) error on [0, 1] images
    perceptual_weight: float = 0.0  # LPIPS-VGG weight; 0 = no LPIPS network
    label_dropout: float = 0.1  # prior: probability of the null class for a conditional model (CFG)

    def __post_init__(self):
        if self.recon not in RECON_TERMS:
            raise ValueError(f"unknown recon '{self.recon}': use one of {', '.join(RECON_TERMS)}")
        if not self.perceptual_weight >= 0 or not 0 <= self.label_dropout <= 1:
            raise ValueError("perceptual_weight must be >= 0 and label_dropout in [0, 1]")

    def gan_settings(self) -> GANSettings:
        """No discriminator: somar autoencoders train on reconstruction terms alone."""
        return GANSettings()

    def to_dict(self) -> dict:
        return asdict(self)


class SOMARAutoencoderLoss(ImageGANLoss):
    """loss(model, batch, step) for kind "autoencoder": the L1/L2 and LPIPS terms shared with the vqvae and ldm
    autoencoders (losses/gan.py), without a discriminator; `perceptual` a frozen LPIPS on [-1, 1] images (None when
    perceptual_weight is 0)."""

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch[0]
        terms, loss = self.image_terms(model(x).float(), x)
        return loss, detached_logs(loss, terms)


class SOMARCodebookLoss:
    """loss(model, batch, step) for kind "codebook": fits the SOMs (gradient_free: the trainer does no backward)."""

    gradient_free = True

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        core = getattr(model, "module", model)
        logs = {name: constant_log(value, batch[0]) for name, value in core.fit_step(batch[0]).items()}
        loss = logs[f"level{len(core.levels) - 1}_qerr"]  # the SOM fit reads its errors back itself (models/som.py)
        return loss, {"loss": loss, **logs}


class SOMARPriorLoss:
    """loss(model, batch, step) for kind "prior": the prior's cross-entropy on the frozen codebook's tokens.
    `heldout` (images, labels) or None: epoch_stats() gives the model's mean token NLL on them (nats per token)."""

    def __init__(self, config: SOMARLossConfig, model: nn.Module | None = None, heldout=None):
        self.config, self.model, self.heldout = config, model, heldout

    def epoch_stats(self) -> dict[str, float]:
        """heldout_token_nll of the trained model (eval mode, no gradient); {} without held-out images."""
        if self.model is None or self.heldout is None:
            return {}
        images, labels = self.heldout
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                nll = self.model.token_nll(images, labels if self.model.config.num_classes else None)
        finally:
            self.model.train(was_training)
        return {"heldout_token_nll": float(nll.mean())}

    def __call__(self, model: nn.Module, batch, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        core = getattr(model, "module", model)
        tokens = core.tokens(batch[0])  # (B, N_level) per level, from the frozen codebook
        logits = model(tokens, self.dropped_labels(core, batch[1]))  # through the wrapper: DDP syncs gradients
        nll = [F.cross_entropy(lg.float().transpose(1, 2), t, reduction="none") for lg, t in zip(logits, tokens)]
        loss = torch.cat([part.flatten() for part in nll]).mean()
        return loss, detached_logs(loss, {f"nll_seg{k}": part.mean() for k, part in enumerate(nll)})

    def dropped_labels(self, core: nn.Module, labels: torch.Tensor) -> torch.Tensor | None:
        """None for an unconditional prior; else labels with a label_dropout share set to the null class."""
        classes = core.config.num_classes
        if classes == 0:
            return None
        drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
        return torch.where(drop, torch.full_like(labels, classes), labels.long())
