"""Quantisers of the vqvae family: a vector quantiser with a (by default l2-normalised, spherical) codebook, and FSQ.

VectorQuantizer follows the LlamaGen tokenizer (l2-normalised 8-d codes, codebook + commitment + entropy terms,
straight-through gradient) and adds what keeps a codebook alive: k-means initialisation from the first training
batch, optional EMA codebook updates (van den Oord et al. 2017, App. A.1) and dead-code restarts. FSQuantizer is
finite scalar quantisation (Mentzer et al. 2023): no codebook to learn, no auxiliary loss, no collapse.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

USAGE_DECAY = 0.99  # decay of the per-code usage average that finds dead codes when the codebook has no EMA
LAPLACE_EPS = 1e-5  # Laplace smoothing of the EMA cluster sizes, so a code with no assignment never divides by 0
KMEANS_MAX_POINTS = 16384  # k-means on at most this many first-batch vectors: (N, K) distances stay <= 1 GB at K 16384


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _broadcast(*tensors: torch.Tensor) -> None:
    """Make every rank hold rank 0's values (k-means init, restarts); a no-op outside torch.distributed."""
    if _distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (code counts, EMA sums), so every rank updates the same statistics."""
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def squared_distances(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """||z_i - e_j||^2 = ||z_i||^2 + ||e_j||^2 - 2 z_i.e_j for z (N, D) and codes (K, D) -> (N, K)."""
    return z.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * z @ codes.t()


def entropy_terms(distances: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i H(p_i) - H(mean_i p_i) with p_i = softmax(-d_i / T) (LlamaGen's entropy loss): low when each vector
    is confidently assigned (first term) while the codes are used evenly on average (second term)."""
    logits = -distances / temperature  # (N, K)
    probs, log_probs = logits.softmax(-1), logits.log_softmax(-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)
    mean_entropy = -(mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum()
    return sample_entropy - mean_entropy


def usage_and_perplexity(counts: torch.Tensor) -> dict[str, float]:
    """{"usage": fraction of codes with a count, "perplexity": exp(H(p)), p = counts / sum}; zeros when empty."""
    total = float(counts.sum())
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0}
    p = counts.double() / total
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}


def _flatten(z: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B h w, D) in float32 (distances and statistics are never computed in half precision)."""
    return z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _unflatten(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B h w, D) -> (B, D, h, w) with the shape of `like`."""
    batch, dim, height, width = like.shape
    return vectors.view(batch, height, width, dim).permute(0, 3, 1, 2)


def kmeans(points: torch.Tensor, k: int, iters: int, spherical: bool) -> torch.Tensor:
    """k centres (k, D) of points (N, D): k-means++ seeding then Lloyd iterations; spherical: centres renormalised
    to the unit sphere (points must be unit vectors). Empty clusters keep their centre."""
    centres = kmeans_plus_plus(points, k)
    for _ in range(iters):
        assignment = squared_distances(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=k).to(points.dtype)
        filled = sizes > 0
        centres[filled] = sums[filled] / sizes[filled, None]
        if spherical:
            centres = F.normalize(centres, dim=1)
    return centres


def kmeans_plus_plus(points: torch.Tensor, k: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2, so well
    separated clusters all get a centre; uniform draws once every point is a centre (fewer points than k)."""
    chosen = [int(torch.randint(len(points), (1,), device=points.device))]
    nearest = squared_distances(points, points[chosen[0]][None]).squeeze(1).clamp_min(0)  # (N,)
    for _ in range(k - 1):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        index = int(torch.multinomial(weights, 1))
        chosen.append(index)
        nearest = torch.minimum(nearest, squared_distances(points, points[index][None]).squeeze(1).clamp_min(0))
    return points[chosen].clone()


class _CodeCounter(nn.Module):
    """The `counts` buffer (assignments in training-mode forwards since the last reset) and usage_stats()."""

    def _init_counts(self, codebook_size: int) -> None:
        self.register_buffer("counts", torch.zeros(codebook_size))

    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> torch.Tensor:
        """Add this batch's assignments (summed over ranks) to `counts`; returns the batch's counts (K,)."""
        batch = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        batch = _all_reduce_sum(batch)
        self.counts += batch
        return batch

    def usage_stats(self, reset: bool = True) -> dict[str, float]:
        """{"usage": fraction of codes used, "perplexity": exp(H(p))} of the counted assignments; reset: zero them."""
        stats = usage_and_perplexity(self.counts)
        if reset:
            self.counts.zero_()
        return stats


class VectorQuantizer(_CodeCounter):
    """Nearest-code quantiser z (B, D, h, w) -> (z_q, indices, aux) with a straight-through gradient."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        l2_norm: bool = True,
        ema_decay: float | None = None,
        dead_code_threshold: float = 1.0,
        commit_beta: float = 0.25,
        entropy_ratio: float = 0.0,
        entropy_temperature: float = 0.01,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
    ):
        super().__init__()
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None (gradient-trained codebook), got {ema_decay}")
        self.codebook_size, self.dim, self.l2_norm = codebook_size, dim, l2_norm
        self.ema_decay, self.dead_code_threshold = ema_decay, dead_code_threshold
        self.commit_beta, self.entropy_ratio, self.entropy_temperature = commit_beta, entropy_ratio, entropy_temperature
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.normal_(self.embedding.weight)  # replaced by k-means on the first batch when kmeans_init
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=1)
        if ema_decay is not None:  # updated by running averages only: no gradient, left out of the optimizer
            self.embedding.weight.requires_grad_(False)
        self._init_counts(codebook_size)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))  # set by the first training batch
        self.register_buffer("usage_ema", torch.zeros(codebook_size))  # EMA of assignments per batch (N_k)
        if ema_decay is not None:
            self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))  # EMA of assigned vector sums (m_k)

    @property
    def usage_decay(self) -> float:
        """Decay of usage_ema: the EMA codebook's own decay when it has one (N_k is then its cluster size)."""
        return self.ema_decay if self.ema_decay is not None else USAGE_DECAY

    def codebook(self) -> torch.Tensor:
        """The (K, D) code vectors as used for lookup (unit vectors with l2_norm)."""
        weight = self.embedding.weight
        if self.ema_decay is not None:  # a copy: the EMA update rewrites the weight after autograd has used it
            weight = weight.detach().clone()
        return F.normalize(weight.float(), dim=1) if self.l2_norm else weight.float()

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, D, h, w) code vectors."""
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (N, D) float32 vectors, on the unit sphere with l2_norm."""
        flat = _flatten(z)
        return F.normalize(flat, dim=1) if self.l2_norm else flat

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """z (B, D, h, w) -> (z_q (B, D, h, w) with straight-through gradient, indices (B, h, w) int64, aux).

        aux: "vq" mean((z_q - sg(z))^2), "commit" beta mean((sg(z_q) - z)^2), "entropy" ratio (mean H(p_i) -
        H(mean p_i)); zeros in eval mode ("vq" also with EMA updates). Training mode also initialises the codebook
        (first batch), re-seeds dead codes, counts assignments and runs the EMA update."""
        with torch.autocast(z.device.type, enabled=False):
            flat = self._prepare(z)  # (N, D)
            if self.training:
                self._before_assignment(flat.detach())
            codebook = self.codebook()
            distances = squared_distances(flat, codebook)  # (N, K)
            indices = distances.argmin(1)
            quantized = codebook[indices]  # (N, D)
            aux = self._aux_losses(flat, quantized, distances)
            if self.training:
                self._after_assignment(flat.detach(), indices)
            straight = flat + (quantized - flat).detach()  # forward: the code; backward: identity on z
        batch, _, height, width = z.shape
        return _unflatten(straight, z).to(z.dtype), indices.view(batch, height, width), aux

    def _aux_losses(self, flat: torch.Tensor, quantized: torch.Tensor, distances: torch.Tensor) -> dict:
        """The codebook, commitment and entropy terms (already weighted); zeros outside training."""
        zero = flat.new_zeros(())
        if not self.training:
            return {"vq": zero, "commit": zero, "entropy": zero}
        vq = zero if self.ema_decay is not None else F.mse_loss(quantized, flat.detach())
        commit = self.commit_beta * F.mse_loss(quantized.detach(), flat)
        entropy = zero
        if self.entropy_ratio > 0:
            entropy = self.entropy_ratio * entropy_terms(distances, self.entropy_temperature)
        return {"vq": vq, "commit": commit, "entropy": entropy}

    # ---- codebook maintenance (training mode, no gradient) ------------------------------------------
    @torch.no_grad()
    def _before_assignment(self, flat: torch.Tensor) -> None:
        """First batch: initialise the codebook; later batches: re-seed the codes the usage average calls dead.
        Done before the lookup, so the codebook is never changed in place after autograd has used it."""
        if not bool(self.initialized):
            self._initialize(flat)
        else:
            self.restart_dead_codes(flat)

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        """k-means codebook from the first batch (rank 0's, broadcast); usage averages start at its cluster sizes."""
        if self.kmeans_init:
            points = flat[torch.randperm(len(flat), device=flat.device)[:KMEANS_MAX_POINTS]]
            centres = kmeans(points, self.codebook_size, self.kmeans_iters, self.l2_norm)
            self.embedding.weight.data.copy_(centres)
        _broadcast(self.embedding.weight.data)
        codebook = self.codebook()
        sizes = torch.bincount(squared_distances(flat, codebook).argmin(1), minlength=self.codebook_size).float()
        _broadcast(sizes)
        self.usage_ema.copy_(sizes)
        if self.ema_decay is not None:
            self.embed_sum.copy_(codebook * sizes[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Codes whose usage average is below dead_code_threshold take random vectors of this batch (rank 0's,
        broadcast) and restart at usage = threshold; returns the mask of re-seeded codes (K,)."""
        dead = self.usage_ema < self.dead_code_threshold
        if not bool(dead.any()):
            return dead
        picks = torch.randint(len(flat), (int(dead.sum()),), device=flat.device)
        self.embedding.weight.data[dead] = flat[picks].to(self.embedding.weight.dtype)
        _broadcast(self.embedding.weight.data)
        self.usage_ema[dead] = self.dead_code_threshold
        if self.ema_decay is not None:
            self.embed_sum[dead] = self.codebook()[dead] * self.dead_code_threshold
        return dead

    @torch.no_grad()
    def _after_assignment(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """Count the batch's assignments; update the usage average and, with EMA, the codebook."""
        batch_counts = self._count(indices)  # (K,), summed over ranks
        decay = self.usage_decay
        self.usage_ema.mul_(decay).add_(batch_counts, alpha=1 - decay)
        if self.ema_decay is not None:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
            self.embed_sum.mul_(decay).add_(_all_reduce_sum(sums), alpha=1 - decay)
            self.embedding.weight.data.copy_(self.ema_codebook())

    def ema_codebook(self) -> torch.Tensor:
        """e_k = m_k / N^_k with Laplace-smoothed sizes N^_k = (N_k + eps) n / (n + K eps), n = sum_k N_k."""
        total = self.usage_ema.sum()
        sizes = (self.usage_ema + LAPLACE_EPS) / (total + self.codebook_size * LAPLACE_EPS) * total
        codebook = self.embed_sum / sizes[:, None].clamp_min(LAPLACE_EPS)
        return F.normalize(codebook, dim=1) if self.l2_norm else codebook


class FSQuantizer(_CodeCounter):
    """Finite scalar quantisation (Mentzer et al. 2023): each of D = len(levels) channels is bounded and rounded
    to levels[d] values in [-1, 1]; the codes are the grid, codebook_size = prod(levels)."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        levels = tuple(int(level) for level in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"fsq_levels need at least one entry and every level >= 2, got {levels}")
        self.levels, self.dim, self.codebook_size = levels, len(levels), math.prod(levels)
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        basis = torch.cumprod(torch.tensor((1,) + levels[:-1]), 0)  # mixed-radix place values
        self.register_buffer("_basis", basis, persistent=False)
        self._init_counts(self.codebook_size)

    def _half_width(self) -> torch.Tensor:
        return (self._levels // 2).float()  # (D,): integer grid -half..half (even L: -L/2..L/2-1)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z (N, D) into (-half_l, half_l) shifted so rounding gives exactly L values (FSQ paper, App. A)."""
        half_l = (self._levels.float() - 1) * (1 - 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """z (B, D, h, w) -> (z_q in [-1, 1] with straight-through rounding, indices (B, h, w), zero aux terms)."""
        with torch.autocast(z.device.type, enabled=False):
            bounded = self._bound(_flatten(z))  # (N, D)
            rounded = bounded + (bounded.round() - bounded).detach()
            grid = rounded.detach().round().long() + self._half_width().long()  # 0..L-1 per channel
            indices = (grid * self._basis).sum(1)
            quantized = rounded / self._half_width()
        if self.training:
            self._count(indices)
        zero = quantized.new_zeros(())
        batch, _, height, width = z.shape
        aux = {"vq": zero, "commit": zero, "entropy": zero}
        return _unflatten(quantized, z).to(z.dtype), indices.view(batch, height, width), aux

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> (B, D, h, w) grid values in [-1, 1]."""
        grid = (indices[..., None] // self._basis) % self._levels  # (B, h, w, D)
        return ((grid.float() - self._half_width()) / self._half_width()).permute(0, 3, 1, 2).contiguous()

    def codebook(self) -> torch.Tensor:
        """All prod(levels) codes (K, D), row k = code of index k."""
        indices = torch.arange(self.codebook_size, device=self._levels.device)
        return self.codes(indices.view(1, 1, -1))[0, :, 0].t()
