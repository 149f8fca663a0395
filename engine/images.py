"""Image grids and strips: evaluation renders during training and sampling outputs; sampling and
reconstructing at several step counts as the model's capabilities allow."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid, save_image


def per_image_generators(seed: int, start: int, count: int, device) -> list[torch.Generator]:
    """One generator per image, seeded by seed and the image's global index (batch-size independent)."""
    device = torch.device(device)
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + start + i) for i in range(count)]


SIGNAL_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
ORIGINAL_COLOUR = (170, 170, 170)  # originals under their reconstructions: light grey
AXIS_COLOUR = (225, 225, 225)  # the zero line
SIGNAL_PLOT_HEIGHT = 48  # pixels of one signal's plot


def value_rows(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, height: int) -> torch.Tensor:
    """Pixel rows of values on a [low, high] scale (top row = high)."""
    return (height - 1) * (1 - (values - low) / (high - low).clamp_min(1e-12))


def draw_curves(draw: ImageDraw.ImageDraw, rows: torch.Tensor, width: int, colours) -> None:
    """One polyline per channel of rows (C, L), stretched over `width` pixels; colours: one per channel or one."""
    xs = torch.linspace(0, width - 1, rows.shape[-1]).tolist()
    for channel, ys in enumerate(rows):
        colour = colours[channel % len(colours)] if isinstance(colours, list) else colours
        draw.line(list(zip(xs, ys.tolist())), fill=colour)


def plot_signals(
    signals: torch.Tensor,
    height: int = SIGNAL_PLOT_HEIGHT,
    width: int | None = None,
    originals: torch.Tensor | None = None,
) -> torch.Tensor:
    """1-D signals (B, C, L) as line plots (B, 3, height, width) in [-1, 1] (width None = L pixels): one colour per
    channel on white, over `originals` (B, C, L) in grey when given, a light zero line where 0 is in range, and one
    value scale for the whole batch (so plots drawn together compare)."""
    values = signals.detach().float().cpu()
    under = None if originals is None else originals.detach().float().cpu()
    both = values if under is None else torch.cat([values, under])
    low, high = both.min(), both.max()
    width = width or values.shape[-1]
    zero = float(value_rows(torch.zeros(()), low, high, height)) if low < 0 < high else None
    plots = []
    for index, sample in enumerate(values):
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        if zero is not None:
            draw.line([(0, zero), (width - 1, zero)], fill=AXIS_COLOUR)
        if under is not None:
            draw_curves(draw, value_rows(under[index], low, high, height), width, ORIGINAL_COLOUR)
        draw_curves(draw, value_rows(sample, low, high, height), width, SIGNAL_COLOURS)
        plots.append(torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1))
    return torch.stack(plots).float() / 127.5 - 1


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images in [-1, 1] (B, C, H, W), or 1-D signals (B, C, L) as line plots, as a PNG grid (nrow
    defaults to a square-ish layout)."""
    images = plot_signals(images) if images.ndim == 3 else images
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


GeneratorFactory = Callable[[], "list[torch.Generator] | None"]  # fresh per-image generators for one run


def sample_at_steps(model, count: int, steps, generators: GeneratorFactory, **options) -> dict[int, torch.Tensor]:
    """{T: count images after T steps}. Where steps are prefixes (model.steps_are_prefix), one max(steps) run
    gives every count; otherwise (e.g. DDIM) each count is its own run, from the same per-image generators."""
    steps = sorted(set(steps))
    if model.steps_are_prefix:
        outputs = model.sample(count, steps=max(steps), generator=generators(), return_all=True, **options)
        return {t: outputs[t - 1] for t in steps}
    return {t: model.sample(count, steps=t, generator=generators(), **options) for t in steps}


def reconstruct_at_steps(model, images, steps, generators: GeneratorFactory, **options) -> dict[int, torch.Tensor]:
    """{T: reconstructions after T steps}, under the same prefix rule as sample_at_steps."""
    steps = sorted(set(steps))
    if model.steps_are_prefix:
        outputs = model.reconstruct(images, steps=max(steps), generator=generators(), return_all=True, **options)
        return {t: outputs[t - 1] for t in steps}
    return {t: model.reconstruct(images, steps=t, generator=generators(), **options) for t in steps}


def first_items(dataset, count: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` inputs (B, ...) and labels (B,) of a dataset whose items are (x, label[, sigma])."""
    items = [dataset[i] for i in range(count)]
    inputs = torch.stack([item[0] for item in items]).to(device)
    return inputs, torch.stack([torch.as_tensor(item[1]) for item in items]).to(device)


def render_samples(model, count: int, labels, out_dir: Path, epoch: int, seed: int, device) -> None:
    """epoch_N_samples_{T}step.png for T in the model's default_eval_steps (image i from generator (seed, i))."""
    nrow = max(1, math.ceil(math.sqrt(count)))
    generators = lambda: per_image_generators(seed, 0, count, device)  # noqa: E731
    outputs = sample_at_steps(model, count, model.default_eval_steps, generators, labels=labels)
    for steps, samples in outputs.items():
        save_grid(samples, out_dir / f"epoch_{epoch:04d}_samples_{steps}step.png", nrow=nrow)


def save_recon_grid(originals: torch.Tensor, recon: torch.Tensor, path: Path) -> Path:
    """Images: the originals above their reconstructions. Signals (B, C, L): one plot per signal, the
    reconstruction drawn over the original in grey."""
    nrow = max(1, math.ceil(math.sqrt(originals.shape[0])))
    if originals.ndim == 3:
        return save_grid(plot_signals(recon, originals=originals), path, nrow=nrow)
    return save_grid(torch.cat([originals, recon]), path, nrow=nrow)


def token_pictures(model, images: torch.Tensor) -> torch.Tensor | None:
    """For a tokenizer (a model with encode -> indices and token_map): each image's token map, nearest-upsampled to
    the image size (B, 3, H, W) in [-1, 1]; None for other models."""
    if not callable(getattr(model, "token_map", None)) or images.ndim != 4:
        return None
    maps = model.token_map(model.encode(images))  # (B, 3, h, w)
    return torch.nn.functional.interpolate(maps, size=images.shape[-2:], mode="nearest")


def save_token_grid(model, images: torch.Tensor, path: Path) -> Path | None:
    """The images above their token maps (similar codes, similar colours); None for a model without tokens."""
    maps = token_pictures(model, images)
    if maps is None:
        return None
    return save_grid(torch.cat([images, maps]), path, nrow=max(1, math.ceil(math.sqrt(images.shape[0]))))


def save_atlases(model, out_dir: Path, epoch: int) -> list[Path]:
    """epoch_N_atlas_level{k}.png for a model with SOM codebooks (`codebook_atlas(k)`: each unit of level k decoded
    on its grid); [] for other models."""
    atlas = getattr(model, "codebook_atlas", None)
    if not callable(atlas):
        return []
    levels = range(len(model.config.level_sizes))
    return [save_grid(atlas(k)[None], out_dir / f"epoch_{epoch:04d}_atlas_level{k}.png", nrow=1) for k in levels]


VERDICT_TINT = 0.45  # the share of each pixel the verdict colour takes in epoch_N_verdict.png
VERDICT_IMAGES = 8  # columns of epoch_N_verdict.png


def verdict_overlay(images: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] tinted per discriminator patch: green where it says real (probability 1), red where fake
    (the original project's predictions.jpg); the patch map is stretched over the image, nearest-neighbour."""
    p = torch.nn.functional.interpolate(probability.float(), size=images.shape[-2:], mode="nearest")  # (B, 1, H, W)
    colour = torch.cat([1 - p, p, torch.zeros_like(p)], 1) * 2 - 1  # red .. green, in [-1, 1]
    return (1 - VERDICT_TINT) * images.float() + VERDICT_TINT * colour


@torch.no_grad()
def render_verdict(model, verdict: Callable, dataset, out_dir: Path, epoch: int, device) -> tuple[float, float] | None:
    """epoch_N_verdict.png: the first images, their reconstructions, then both tinted by the discriminator's
    per-patch verdict (`verdict(x)` -> P(real) (B, 1, h, w), or None when there is none yet). Returns the mean
    P(real) of the originals and of the reconstructions, or None."""
    images, _ = first_items(dataset, min(VERDICT_IMAGES, len(dataset)), device)
    real = verdict(images)
    if real is None:
        return None
    was_training = model.training
    model.eval()
    try:
        recon = model.reconstruct(images, steps=1)
    finally:
        model.train(was_training)
    fake = verdict(recon)
    rows = [images, recon, verdict_overlay(images, real), verdict_overlay(recon, fake)]
    save_grid(torch.cat(rows), out_dir / f"epoch_{epoch:04d}_verdict.png", nrow=len(images))
    return float(real.mean()), float(fake.mean())


@torch.no_grad()
def render_eval_images(model, dataset, out_dir: Path, epoch: int, count: int, device, seed: int = 0) -> float | None:
    """epoch_N_recon.png (originals above 1-step reconstructions; signals: each drawn under its reconstruction),
    for a tokenizer epoch_N_tokens.png (originals above their token maps) and, for a model that can sample,
    epoch_N_samples_{T}step.png for T in model.default_eval_steps; returns the mean PSNR (dB) of those
    reconstructions (None, and no epoch_N_recon.png, for a model with can_reconstruct False). Pass the held-out
    split as `dataset` where there is one."""
    was_training = model.training
    model.eval()
    try:
        count = min(count, len(dataset))
        images, labels = first_items(dataset, count, device)
        labels = labels if model.config.num_classes > 0 else None
        psnr = None
        if getattr(model, "can_reconstruct", True):  # a pixel diffusion model has no encoder
            recon = model.reconstruct(images, steps=1, labels=labels)
            save_recon_grid(images, recon, out_dir / f"epoch_{epoch:04d}_recon.png")
            save_token_grid(model, images, out_dir / f"epoch_{epoch:04d}_tokens.png")  # tokenizers only
            save_atlases(model, out_dir, epoch)  # SOM codebooks only
            psnr = mean_psnr(recon, images)
        if model.can_sample:
            render_samples(model, count, labels, out_dir, epoch, seed, device)
    finally:
        model.train(was_training)
    return psnr
