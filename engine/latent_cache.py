"""The stage-2 latent cache: a latent diffusion run encodes its training images once with the frozen autoencoder
and trains on the stored posteriors instead of running the encoder at every step.

Each image is stored as its scaled posterior (mean, std), so every step still draws a fresh z = mean + std ε (the
seed froze one sample). With --hflip the horizontally flipped image is encoded too and each step picks one of the
two per item, with the trainer's coin: a flipped latent grid is not the latent of the flipped image, so flipping
cached latents would not be the augmentation the on-the-fly path applies. The file (latent_cache.safetensors in the
run folder) records what it was made from (the autoencoder's SHA-256, latent_scale, the data's fingerprint, the
flips); a resumed run reuses it when all of these match and rebuilds it otherwise. --no-cache encodes each batch
on the fly instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .checkpoint import atomic_write
from .distributed import DistInfo, broadcast_object
from .trainer import TrainingError

CACHE_FILE = "latent_cache.safetensors"
ENCODE_BATCH = 256  # images per autoencoder pass while encoding


class LatentCacheDataset(Dataset):
    """Items (posterior (F, 2, c, h, w): for each of F encoded flips (1 or 2), the scaled mean and std; label)."""

    kind, has_sigma = "latent", False

    def __init__(self, posteriors: torch.Tensor, labels: torch.Tensor, source):
        self.posteriors, self.labels = posteriors, labels  # (N, F, 2, c, h, w) float32, (N,) int64
        self.name, self.num_classes = source.name, source.num_classes
        self.image_size, self.split = source.image_size, getattr(source, "split", "all")

    def __len__(self) -> int:
        return len(self.posteriors)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posteriors[index], self.labels[index]


def dataset_fingerprint(dataset) -> str:
    """SHA-256 of what the items are made from: in-memory images' bytes, or an image folder's file names, sizes
    and modification times (reading every file would cost what the cache saves), plus name, count and size."""
    digest = hashlib.sha256(f"{dataset.name}|{len(dataset)}|{dataset.image_size}".encode())
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        digest.update(images.contiguous().view(torch.uint8).numpy().tobytes())
    for path in getattr(dataset, "paths", None) or []:
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_metadata(model, dataset, hflip: bool) -> dict[str, str]:
    """What a cache was made from; a file whose metadata differs is rebuilt."""
    return {
        "autoencoder_sha256": str(model.config.autoencoder_sha256),
        "latent_scale": repr(float(model.latent_scale)),
        "data": dataset_fingerprint(dataset),
        "flips": "2" if hflip else "1",
    }


@torch.no_grad()
def encode_dataset(model, dataset, hflip: bool, show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(posteriors (N, F, 2, c, h, w) on the CPU, labels (N,)) of every item, in dataset order (F = 2 with hflip:
    the image and its mirror image)."""
    device = next(model.unet.parameters()).device
    posteriors, labels = [], []
    # its own generator: making an iterator must not consume the global RNG (training draws from it next)
    loader = DataLoader(dataset, batch_size=ENCODE_BATCH, shuffle=False, generator=torch.Generator())
    for images, batch_labels in tqdm(loader, desc="encoding latents", disable=not show_progress, leave=False):
        images = images.to(device)
        flips = [images, images.flip(-1)] if hflip else [images]
        moments = [torch.stack(model.latents(x), 1) for x in flips]  # each (B, 2, c, h, w)
        posteriors.append(torch.stack(moments, 1).float().cpu())  # (B, F, 2, c, h, w)
        labels.append(torch.as_tensor(batch_labels, dtype=torch.int64))
    return torch.cat(posteriors), torch.cat(labels)


def read_cache(path: Path, metadata: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (posteriors, labels) when the file exists, is readable and matches `metadata`; else None."""
    try:
        with safe_open(str(path), framework="pt") as file:
            if file.metadata() != metadata:
                return None
        tensors = load_file(str(path))
        return tensors["posteriors"], tensors["labels"]
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError):
        return None


def write_cache(path: Path, posteriors: torch.Tensor, labels: torch.Tensor, metadata: dict[str, str]) -> None:
    data = safetensors_bytes({"posteriors": posteriors.contiguous(), "labels": labels.contiguous()}, metadata)
    atomic_write(path, lambda file: file.write(data))


def cached_latents(model, dataset, hflip: bool, run_dir: Path, info: DistInfo, logger) -> LatentCacheDataset:
    """The run's latent cache: read when it matches this model and data, else encoded (rank 0) and written
    atomically; every other rank waits and reads rank 0's file. A failed write stops every rank with one line."""
    path, metadata = Path(run_dir) / CACHE_FILE, cache_metadata(model, dataset, hflip)
    cached = read_cache(path, metadata) if info.is_main else None
    failure = None
    if info.is_main and cached is None:
        why = "autoencoder, scale, data or flips changed" if path.is_file() else "first use"
        logger.info(f"encoding {len(dataset)} training images into {path} ({why}; --no-cache encodes on the fly)")
        cached = encode_dataset(model, dataset, hflip)
        failure = write_failure(path, cached, metadata)
    failure = broadcast_object(failure, info)
    if failure is not None:
        raise TrainingError(failure)
    if cached is None:
        cached = read_cache(path, metadata)
    if cached is None:
        raise TrainingError(f"could not read the latent cache {path} that rank 0 wrote; rerun with --no-cache")
    if info.is_main:
        logger.info(f"latent cache: {tuple(cached[0].shape)} (items, flips, mean/std, c, h, w) from {path}")
    return LatentCacheDataset(*cached, dataset)


def write_failure(path: Path, cached: tuple[torch.Tensor, torch.Tensor], metadata: dict[str, str]) -> str | None:
    """Write the cache; the one-line failure message, or None when it was written."""
    try:
        write_cache(path, *cached, metadata)
    except OSError as error:
        return f"could not write the latent cache {path} ({error.strerror or error}); free space or pass --no-cache"
    return None
