"""A self-organizing map (Kohonen 1982) used as a codebook of feature-map patches, fitted without gradients.

The somar family's stage 2. The original's "SOM" was an nn.Embedding trained by backprop so that an unnormalised
neighbourhood sum reconstructs a patch, then used BMU-only at inference, with a neighbourhood radius tied to raw step
counts (FAMILIES.md §3.3 bugs 1-2). This is the classic map instead (Kohonen 2013, "Essentials of the
self-organizing map"): units on a 1-D or 2-D grid, batch-SOM or online-SOM updates with a Gaussian neighbourhood
whose width sigma(t) and learning rate lr(t) decay over a fixed number of fit steps, a PCA-plane (linear)
initialisation, and a codebook evaluated exactly as it is used: the best-matching unit (BMU) alone.

Every statistic an update needs is summed over ranks under torch.distributed, so every rank holds the same map.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist
import torch.nn as nn

from .quantize import _all_reduce_sum, _broadcast, _distributed, squared_distances, usage_and_perplexity

TOPOLOGIES = ("1d", "2d")
DECAYS = ("exponential", "linear")
MODES = ("batch", "online")
INITS = ("pca", "samples")
SUPPORT_EPS = 1e-12  # batch SOM: a unit whose neighbourhood support sum_i h_ji is below this keeps its code
BMU_CHUNK = 8192  # vectors per distance matrix: (8192, K) floats stay <= 128 MB at K 4096
INIT_MAX_POINTS = 65536  # the first-call initialisation looks at most at this many vectors
UNIFORM_HALF_WIDTH = math.sqrt(3.0)  # a uniform distribution of std s spans ±sqrt(3) s: the PCA plane's extent


def _patch_grid(shape: tuple[int, int, int], patch: int | None) -> tuple[int, int]:
    """(patch height, patch width) of a (C, H, W) map: the whole map for None / 0; checks divisibility."""
    _, height, width = shape
    if not patch:
        return height, width
    if height % patch or width % patch:
        raise ValueError(f"a {height}x{width} feature map cannot be cut into {patch}x{patch} patches")
    return patch, patch


def patchify(fmap: torch.Tensor, patch: int | None) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C p p): patches row-major, channel-major inside a patch; None / 0: the whole map, N 1."""
    batch, channels, height, width = fmap.shape
    patch_h, patch_w = _patch_grid((channels, height, width), patch)
    blocks = fmap.reshape(batch, channels, height // patch_h, patch_h, width // patch_w, patch_w)
    return blocks.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch_h * patch_w)


def unpatchify(tokens: torch.Tensor, patch: int | None, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, N, C p p) -> (B, C, H, W), the inverse of patchify; shape = (C, H, W) of the map."""
    channels, height, width = shape
    patch_h, patch_w = _patch_grid(shape, patch)
    blocks = tokens.reshape(tokens.shape[0], height // patch_h, width // patch_w, channels, patch_h, patch_w)
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(tokens.shape[0], channels, height, width)


def grid_shape(size: int, topology: str) -> tuple[int, int]:
    """(rows, cols) of a map of `size` units: 1 x size on 1d; on 2d the most square rows <= cols, rows * cols = size."""
    if topology == "1d":
        return 1, size
    rows = max(r for r in range(1, math.isqrt(size) + 1) if size % r == 0)
    return rows, size // rows


def grid_coordinates(rows: int, cols: int) -> torch.Tensor:
    """(rows cols, 2) float (row, col) of each unit, unit k at (k // cols, k % cols)."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([row.flatten(), col.flatten()], 1).float()


def decayed(start: float, end: float, step: int, total: int, decay: str) -> float:
    """start -> end over `total` steps (exponential: start (end / start)^(t / T); linear), then end for good."""
    if total <= 0 or step >= total:
        return end
    fraction = step / total
    if decay == "exponential":
        return start * (end / start) ** fraction
    return start + (end - start) * fraction


def pca_plane(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Codes (K, D) on the plane of x's two leading principal components (Kohonen's linear initialisation): the
    grid's longer axis along the first component, each axis spanning the ±sqrt(3) std of a uniform of that
    variance (the outer units half a cell inside), so the map starts ordered and inside the data."""
    mean = x.mean(0)
    centred = (x - mean).double().cpu()  # eigh in float64 on CPU: the same init on every device
    covariance = centred.t() @ centred / max(len(x) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    std = eigenvalues.flip(0).clamp_min(0).sqrt().to(x)
    directions = eigenvectors.flip(1).t().to(x)  # (D, D), rows = components, largest first
    low, span = grid.amin(0), grid.amax(0) - grid.amin(0)  # (2,)
    codes = mean.expand(len(grid), -1).clone()
    axes = torch.argsort(span, descending=True, stable=True).tolist()
    for component, axis in enumerate(axes[: len(std)]):
        if span[axis] <= 0:
            continue
        cells = float(span[axis]) + 1
        position = ((grid[:, axis] - low[axis]) / span[axis] * 2 - 1) * (1 - 1 / cells)  # (K,) in (-1, 1)
        codes += position[:, None] * (UNIFORM_HALF_WIDTH * std[component] * directions[component])
    return codes


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (M_r, D), concatenated in rank order (identical on every rank); x outside torch.distributed."""
    if not _distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    lengths = [int(size) for size in sizes]
    padded = x.new_zeros(max(lengths), x.shape[1])  # all_gather needs equal shapes
    padded[: len(x)] = x
    pieces = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:length] for piece, length in zip(pieces, lengths)])


def _full_precision(method):
    """Run a SOMCodebook method with autocast off: distances in float32 whatever the caller's precision (a bf16
    matmul in ||x||^2 + ||e||^2 - 2 x.e would change BMUs)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(self.codes.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


class SOMCodebook(nn.Module):
    """K = rows * cols units of dim D on a 1-D (rows = 1) or 2-D grid; buffers only, fitted by fit_step (no optimizer).

    Buffers: codes (K, D); grid (K, 2) unit coordinates (row, col), kept by prune; steps_done (fit steps so far, the
    schedules' t); initialized; counts (K,) BMU hits and error_sums [sum ||x - e_bmu||, topographic errors] with
    vectors_seen since the last epoch_stats() call."""

    def __init__(
        self,
        size: int,
        dim: int,
        topology: str = "2d",
        sigma_start: float | None = None,
        sigma_end: float = 0.5,
        lr_start: float = 0.5,
        lr_end: float = 0.01,
        som_steps: int = 2000,
        decay: str = "exponential",
        mode: str = "batch",
        init: str = "pca",
    ):
        super().__init__()
        settings = {"topology": (topology, TOPOLOGIES), "decay": (decay, DECAYS), "mode": (mode, MODES)}
        for name, (value, allowed) in {**settings, "init": (init, INITS)}.items():
            _check_choice(name, value, allowed)
        if size < 1 or dim < 1:
            raise ValueError(f"a SOM needs size >= 1 and dim >= 1, got size {size}, dim {dim}")
        if sigma_end <= 0 or (sigma_start is not None and sigma_start <= 0):
            raise ValueError(f"sigma_start and sigma_end must be > 0, got {sigma_start}, {sigma_end}")
        if not (0 < lr_start <= 1 and 0 < lr_end <= 1):
            raise ValueError(f"lr_start and lr_end must be in (0, 1], got {lr_start}, {lr_end}")
        self.dim, self.topology, self.mode, self.decay, self.init = dim, topology, mode, decay, init
        self.sigma_start_setting = sigma_start  # None: half the grid's larger side (see sigma_start)
        self.sigma_end, self.lr_start, self.lr_end, self.som_steps = sigma_end, lr_start, lr_end, som_steps
        self.register_buffer("codes", torch.zeros(size, dim))
        self.register_buffer("grid", grid_coordinates(*grid_shape(size, topology)))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("counts", torch.zeros(size, dtype=torch.long))
        self.register_buffer("error_sums", torch.zeros(2))
        self.register_buffer("vectors_seen", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        rows, cols = self.grid_shape
        return f"size={self.size}, dim={self.dim}, grid={rows}x{cols}, mode={self.mode}, som_steps={self.som_steps}"

    @property
    def size(self) -> int:
        """K, the number of units (fewer than built with after prune)."""
        return self.codes.shape[0]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid the units sit on (a pruned map keeps its original extent, with holes)."""
        rows, cols = (self.grid.amax(0) + 1).long().tolist()
        return rows, cols

    @property
    def sigma_start(self) -> float:
        """The neighbourhood width at step 0: as set, or half the grid's larger side."""
        return self.sigma_start_setting if self.sigma_start_setting is not None else max(self.grid_shape) / 2

    def sigma_at(self, step: int) -> float:
        """sigma(t): sigma_start -> sigma_end over som_steps fit steps, then sigma_end."""
        return decayed(self.sigma_start, self.sigma_end, step, self.som_steps, self.decay)

    def lr_at(self, step: int) -> float:
        """lr(t): lr_start -> lr_end over som_steps fit steps, then lr_end."""
        return decayed(self.lr_start, self.lr_end, step, self.som_steps, self.decay)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (M, D) float32 on the codebook's device (distances never in half precision)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"vectors of dim {x.shape[-1]} given to a SOM of dim {self.dim}")
        return x.detach().reshape(-1, self.dim).to(self.codes.device, torch.float32)

    @_full_precision
    def bmu(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...,) long: argmin_j ||x - e_j||^2, the best-matching unit."""
        flat = self._flat(x)
        pieces = [squared_distances(chunk, self.codes).argmin(1) for chunk in flat.split(BMU_CHUNK)]
        return torch.cat(pieces).view(x.shape[:-1]) if pieces else flat.new_zeros(x.shape[:-1], dtype=torch.long)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) -> (codes[bmu] (..., D), bmu (...,)): the BMU's code alone, as the codebook is used."""
        index = self.bmu(x)
        return self.codes[index], index

    @_full_precision
    def neighbourhood(self, bmu: torch.Tensor, sigma: float) -> torch.Tensor:
        """(M,) BMU indices -> (M, K) h_jb = exp(-d_grid(j, b)^2 / (2 sigma^2)), 1 at the BMU itself."""
        grid_distances = squared_distances(self.grid[bmu], self.grid).clamp_min(0)  # exact on integer coordinates
        return torch.exp(-grid_distances / (2 * sigma**2))

    def _two_best(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, D) -> first and second BMU (M,) each; the second is the first on a one-unit map."""
        if self.size == 1:
            first = torch.zeros(len(x), dtype=torch.long, device=x.device)
            return first, first
        pieces = [
            squared_distances(chunk, self.codes).topk(2, dim=1, largest=False).indices for chunk in x.split(BMU_CHUNK)
        ]
        best = torch.cat(pieces) if pieces else torch.zeros(0, 2, dtype=torch.long, device=x.device)  # (M, 2)
        return best[:, 0], best[:, 1]

    def _not_neighbours(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(M,) bool: units not adjacent on the grid (8-neighbourhood on 2-D, ±1 on 1-D: Chebyshev distance > 1)."""
        chebyshev = (self.grid[first] - self.grid[second]).abs().amax(1)
        return chebyshev > 1.5  # integer coordinates: > 1

    def _statistics(self, x: torch.Tensor, with_sums: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Summed over ranks: BMU counts (K,), [sum ||x - e_bmu||, topographic errors, M] (3,) and, with_sums, the
        per-BMU sums of x (K, D) (batch SOM's sufficient statistics), all from the codes as they are now."""
        size = self.size
        first, second = self._two_best(x)
        errors = (x - self.codes[first]).norm(dim=1)
        totals = torch.stack([errors.sum(), self._not_neighbours(first, second).float().sum()])
        parts = [torch.bincount(first, minlength=size).float(), totals, x.new_tensor([len(x)])]
        if with_sums:
            parts.append(torch.zeros_like(self.codes).index_add_(0, first, x).flatten())
        packed = _all_reduce_sum(torch.cat(parts))  # one collective per step
        sums = packed[size + 3 :].view(size, self.dim) if with_sums else None
        return packed[:size], packed[size : size + 3], sums

    def _record(self, counts: torch.Tensor, totals: torch.Tensor) -> dict[str, float]:
        """Add a step's statistics to the epoch's; returns the step's mean quantisation / topographic error."""
        self.counts += counts.round().long()
        self.error_sums += totals[:2]
        self.vectors_seen += int(totals[2])
        seen = max(float(totals[2]), 1.0)
        return {"quantization_error": float(totals[0]) / seen, "topographic_error": float(totals[1]) / seen}

    @torch.no_grad()
    @_full_precision
    def observe(self, x: torch.Tensor) -> dict[str, float]:
        """Count BMUs and errors of x (..., D) into the epoch statistics without changing the map (held-out data,
        counting for prune); call on every rank under torch.distributed."""
        counts, totals, _ = self._statistics(self._flat(x), with_sums=False)
        return self._record(counts, totals)

    @torch.no_grad()
    @_full_precision
    def fit_step(self, x: torch.Tensor) -> dict[str, float]:
        """One SOM step on vectors x (..., D) (initialises the codes on the first call); call on every rank under
        torch.distributed. Errors and counts are measured on the codes before the update."""
        x = self._flat(x)
        if not bool(self.initialized):
            self.init_from(x)
        step = int(self.steps_done)
        sigma, lr = self.sigma_at(step), self.lr_at(step)
        counts, totals, sums = self._statistics(x, with_sums=self.mode == "batch")
        if self.mode == "batch":
            self._batch_update(sums, counts, sigma, lr)
        else:
            self._online_update(gather_rows(x), sigma, lr)
        self.steps_done += 1
        return {**self._record(counts, totals), "sigma": sigma, "som_lr": lr}

    def _batch_update(self, sums: torch.Tensor, counts: torch.Tensor, sigma: float, lr: float) -> None:
        """e_j <- (1 - lr) e_j + lr sum_b h_jb S_b / sum_b h_jb n_b (S_b, n_b: sum and number of the x whose BMU is b,
        i.e. sum_i h_ji x_i / sum_i h_ji); units with no neighbourhood support keep their code."""
        h = self.neighbourhood(torch.arange(self.size, device=self.codes.device), sigma)  # (K, K) symmetric
        support = h @ counts  # (K,)
        target = h @ sums / support.clamp_min(SUPPORT_EPS)[:, None]  # (K, D)
        supported = support > SUPPORT_EPS
        self.codes[supported] = torch.lerp(self.codes[supported], target[supported], lr)

    def _online_update(self, x: torch.Tensor, sigma: float, lr: float) -> None:
        """e_j += lr h_jb (x - e_j) for each x in order, the BMU b found against the codes as they are at that x."""
        h = self.neighbourhood(torch.arange(self.size, device=self.codes.device), sigma)  # (K, K)
        step = lr * h  # (K, K): row b = lr h_jb
        for vector in x:
            offset = vector - self.codes  # (K, D), both the distances and the update
            self.codes.addcmul_(step[offset.pow(2).sum(1).argmin()][:, None], offset)

    @torch.no_grad()
    @_full_precision
    def init_from(self, x: torch.Tensor, method: str | None = None) -> None:
        """Codes from the data x (..., D) so no unit starts far from it: "pca" (default from init) the PCA plane
        spanned over the grid, or "samples" random vectors of x; rank 0's result on every rank."""
        method = method or self.init
        _check_choice("init", method, INITS)
        x = self._flat(x)[:INIT_MAX_POINTS]
        if len(x) == 0:
            raise ValueError("cannot initialise a SOM from no vectors")
        if method == "pca":
            codes = pca_plane(x, self.grid)
        else:
            codes = x[torch.randint(len(x), (self.size,), device=x.device)]
        self.codes.copy_(codes)
        _broadcast(self.codes)
        self.initialized.fill_(True)

    def epoch_stats(self) -> dict[str, float]:
        """{"usage": fraction of units hit, "perplexity", "quantization_error", "topographic_error"} since the last
        call (fit_step and observe); resets them."""
        seen = max(int(self.vectors_seen), 1)
        quantization, topographic = (self.error_sums / seen).tolist()
        stats = {**usage_and_perplexity(self.counts), "quantization_error": quantization}
        stats["topographic_error"] = topographic
        self.counts.zero_()
        self.error_sums.zero_()
        self.vectors_seen.zero_()
        return stats

    @torch.no_grad()
    def u_matrix(self) -> torch.Tensor:
        """(rows, cols) mean data-space distance of each unit to its 4 grid neighbours (Ultsch's U-matrix: ridges
        separate clusters); NaN on cells a pruned map no longer has."""
        rows, cols = self.grid_shape
        cells = self.codes.new_full((rows, cols, self.dim), float("nan"))
        cells[self.grid[:, 0].long(), self.grid[:, 1].long()] = self.codes.float()
        vertical, horizontal = (cells[1:] - cells[:-1]).norm(dim=-1), (cells[:, 1:] - cells[:, :-1]).norm(dim=-1)
        around = cells.new_full((4, rows, cols), float("nan"))  # distance to the unit above, below, left, right
        around[0, 1:], around[1, :-1], around[2, :, 1:], around[3, :, :-1] = vertical, vertical, horizontal, horizontal
        return around.nanmean(0)

    @torch.no_grad()
    def prune(self, min_count: int, counts: torch.Tensor) -> torch.Tensor:
        """Keep the units with counts >= min_count, renumbered in order; returns the old -> new index map (K_old,)
        (-1 = removed). Survivors keep their grid coordinates; rebuild with size = the new K to load the state."""
        if counts.shape != (self.size,):
            raise ValueError(f"prune needs one count per unit ({self.size}), got shape {tuple(counts.shape)}")
        keep = counts.to(self.codes.device) >= min_count
        kept = int(keep.sum())
        if kept == 0:
            raise ValueError(f"no unit has {min_count} or more hits: pruning would leave an empty codebook")
        mapping = torch.full_like(self.counts, -1)
        mapping[keep] = torch.arange(kept, device=mapping.device)
        for name in ("codes", "grid", "counts"):
            setattr(self, name, getattr(self, name)[keep].clone())  # replaces the buffer (new K)
        return mapping
