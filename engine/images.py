"""Image grids and strips: evaluation renders during training and sampling outputs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def per_image_generators(seed: int, start: int, count: int, device) -> list[torch.Generator]:
    """One generator per image, seeded by seed and the image's global index (batch-size independent)."""
    device = torch.device(device)
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + start + i) for i in range(count)]


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images in [-1, 1] (B, C, H, W) as a PNG grid (nrow defaults to a square-ish layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(
        make_grid(images.float().cpu().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1), padding=2),
        path,
    )
    return path


def mean_psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1], measured on [0, 1] as evaluate.py does."""
    mse = ((x.double() - y.double()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).mean().item()


@torch.no_grad()
def render_eval_images(model, dataset, out_dir: Path, epoch: int, count: int, device, seed: int = 0) -> float:
    """epoch_N_recon.png (originals above 1-step reconstructions) and epoch_N_samples_{1,2,4}step.png; returns
    the mean PSNR (dB) of those reconstructions. Pass the held-out split as `dataset` where there is one."""
    was_training = model.training
    model.eval()
    count = min(count, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)))
    images, labels = (
        torch.stack(images).to(device),
        torch.stack([torch.as_tensor(t) for t in labels]).to(device),
    )
    labels = labels if model.config.num_classes > 0 else None
    recon = model.reconstruct(images, steps=1, labels=labels)
    nrow = max(1, math.ceil(math.sqrt(count)))
    save_grid(torch.cat([images, recon]), out_dir / f"epoch_{epoch:04d}_recon.png", nrow=nrow)
    generators = per_image_generators(seed, 0, count, device)
    steps_outputs = model.sample(count, steps=4, generator=generators, labels=labels, return_all=True)
    for steps in (1, 2, 4):
        save_grid(steps_outputs[steps - 1], out_dir / f"epoch_{epoch:04d}_samples_{steps}step.png", nrow=nrow)
    model.train(was_training)
    return mean_psnr(recon, images)
