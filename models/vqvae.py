"""Scalable VQ-VAE (SVQVAE's method, done right): the LlamaGen VQ tokenizer with an l2-normalised (spherical)
codebook, a codebook kept alive (k-means init, dead-code restarts, optional EMA updates) or FSQ, seamless tiling of
large images, multi-scale decoding and per-image colour alignment.

x (B, 3, H, W) in [-1, 1] -> encoder -> quant_conv -> z (B, D, h, w) -> quantizer -> z_q / indices (B, h, w) ->
post_quant_conv -> decoder -> raw images (no output activation; clamped to [-1, 1] when reconstructing).
A VQ-VAE alone cannot sample: it is a tokenizer, a prior over its tokens is another model.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Upsample
from .quantize import FSQuantizer, VectorQuantizer, _all_reduce_sum

QUANTIZERS = ("vq", "fsq")
INPUT_RANGES = ("minus_one_one", "zero_one")
ALIGN_EPS = 1e-6  # keeps the per-image colour normalisation finite on flat (constant) channels


@dataclass
class VQVAEConfig:
    """Every architecture setting of a VQ-VAE; what config.json and checkpoints store."""

    family: str = "vqvae"
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 0  # only 0: the tokenizer is unconditional
    width: int = 32  # channels of the first level; level i has width * channel_mults[i]
    channel_mults: tuple[int, ...] = field(default=(1, 2, 2))  # downsampling factor f = 2^(len - 1)
    num_res_blocks: int = 1  # encoder blocks per level (the decoder has one more, as LlamaGen)
    attn_at_lowest: bool = True  # attention after each block of the lowest-resolution level
    z_channels: int = 32  # encoder output / decoder input channels (before quant_conv / after post_quant_conv)
    codebook_size: int = 512  # K; with fsq: prod(fsq_levels) (set from the levels)
    codebook_dim: int = 8  # D of a code; with fsq: len(fsq_levels) (set from the levels)
    l2_norm: bool = True  # codes and latents on the unit sphere (cosine-similarity lookup)
    quantizer: str = "vq"  # "vq" (learned codebook) or "fsq" (finite scalar quantisation, no codebook to learn)
    fsq_levels: tuple[int, ...] = field(default=(8, 5, 5, 5))  # fsq: values per channel (8*5*5*5 = 1000 codes)
    ema_decay: float | None = None  # None: codebook trained by the vq loss; else EMA codebook updates at this decay
    dead_code_threshold: float = 1.0  # codes whose average assignments per batch fall below are re-seeded
    kmeans_init: bool = True  # codebook from k-means on the first training batch
    commit_beta: float = 0.25  # weight of the commitment term
    entropy_ratio: float = 0.0  # weight of the entropy term (0 = off)
    entropy_temperature: float = 0.01  # T of p_i = softmax(-d_i / T) in the entropy term
    norm_groups: int = 8  # GroupNorm groups (LlamaGen: 32)
    dropout: float = 0.0
    input_range: str = "minus_one_one"  # "zero_one": the network sees (x + 1) / 2 (SVQVAE weights take [0, 1])

    def __post_init__(self):
        self.channel_mults = tuple(int(mult) for mult in self.channel_mults)
        self.fsq_levels = tuple(int(level) for level in self.fsq_levels)
        if self.quantizer == "fsq":  # the levels define the code grid: size and dimension follow from them
            self.codebook_size, self.codebook_dim = math.prod(self.fsq_levels), len(self.fsq_levels)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line fix when the settings do not fit together."""
        if self.family != "vqvae":
            raise ValueError(f"a '{self.family}' config is not a VQ-VAE config (family 'vqvae')")
        if self.num_classes != 0:
            raise ValueError(f"a vqvae tokenizer is unconditional; got num_classes={self.num_classes}: drop labels")
        for name, value, allowed in (
            ("quantizer", self.quantizer, QUANTIZERS),
            ("input_range", self.input_range, INPUT_RANGES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}': use one of {', '.join(allowed)}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults need at least one positive entry, got {self.channel_mults}")
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the downsampling factor {self.downsample_factor}"
            )
        bad = [self.width * mult for mult in self.channel_mults if (self.width * mult) % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups {self.norm_groups} does not divide the channel counts {bad}; change width")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError(
                f"codebook_size must be >= 2 and codebook_dim >= 1, got {self.codebook_size}, {self.codebook_dim}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the token grid of an image_size image."""
        return self.image_size // self.downsample_factor

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channel_mults"], out["fsq_levels"] = list(self.channel_mults), list(self.fsq_levels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> VQVAEConfig:
        """Build from a saved dict; unknown keys (and another family) are an error, never silently dropped."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown VQ-VAE config keys {unknown}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------
# Blocks (LlamaGen tokenizer): pre-norm residual block, single-head attention, asymmetric strided downsampling


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """h = conv1(swish(norm1(x))); h = conv2(dropout(swish(norm2(h)))); out = shortcut(x) + h."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.shortcut(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions with 1x1 q/k/v/proj convs; out = x + proj(attention)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k, self.v))  # (B, 1, N, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(batch, channels, height, width))


class Downsample(nn.Module):
    """Pad right/bottom by 1, then a 3x3 stride-2 conv without padding (LlamaGen's asymmetric downsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """Residual blocks (each followed by attention when `attention`), then an optional resample (`downsample` or
    `upsample`, named for the state dict)."""

    def __init__(self, in_channels, out_channels, count, groups, dropout, attention: bool, resample: str | None):
        super().__init__()
        channels = [in_channels] + [out_channels] * count
        self.blocks = nn.ModuleList(ResBlock(channels[i], out_channels, groups, dropout) for i in range(count))
        self.attns = nn.ModuleList(AttnBlock(out_channels, groups) for _ in range(count if attention else 0))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            x = block(x)
            if self.attns:
                x = self.attns[index](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        return self.upsample(x) if hasattr(self, "upsample") else x


class Encoder(nn.Module):
    """conv_in -> levels (downsampling between) -> mid -> norm_out -> swish -> conv_out (z_channels)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths, last = [cfg.width * mult for mult in cfg.channel_mults], len(cfg.channel_mults) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1)
        inputs = [cfg.width] + widths[:-1]
        self.levels = nn.ModuleList(
            Level(inputs[i], widths[i], cfg.num_res_blocks, cfg.norm_groups, cfg.dropout,
                  cfg.attn_at_lowest and i == last, "down" if i < last else None)
            for i in range(len(widths))
        )  # fmt: skip
        self.mid = MidBlock(widths[-1], cfg.norm_groups, cfg.dropout)
        self.norm_out = group_norm(widths[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))  # (B, z_channels, H/f, W/f)


class Decoder(nn.Module):
    """conv_in -> mid -> levels from the lowest resolution up (upsampling between) -> norm_out -> swish ->
    conv_out (in_channels); no output activation."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = [cfg.width * mult for mult in reversed(cfg.channel_mults)]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[0], 3, padding=1)
        self.mid = MidBlock(widths[0], cfg.norm_groups, cfg.dropout)
        inputs, last = [widths[0]] + widths[:-1], len(widths) - 1
        self.levels = nn.ModuleList(
            Level(inputs[i], widths[i], cfg.num_res_blocks + 1, cfg.norm_groups, cfg.dropout,
                  cfg.attn_at_lowest and i == 0, "up" if i < last else None)
            for i in range(len(widths))
        )  # fmt: skip
        self.norm_out = group_norm(widths[-1], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------------------
# Tiling: linear-ramp blending weights (1 where one tile covers, never 0), normalised per position


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, length) with the given stride; the last tile ends at length."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def ramp_weights(starts: list[int], size: int) -> list[torch.Tensor]:
    """Per tile (size,) weights: 1 where it is alone, linear ramps (j + 0.5) / n inside each n-wide overlap with a
    neighbour (complementary to the neighbour's, never 0), so the outer border keeps full weight."""
    weights = []
    for index, start in enumerate(starts):
        weight = torch.ones(size)
        if index > 0 and (n := starts[index - 1] + size - start) > 0:
            weight[:n] = torch.minimum(weight[:n], (torch.arange(n) + 0.5) / n)
        if index < len(starts) - 1 and (n := start + size - starts[index + 1]) > 0:
            weight[size - n :] = torch.minimum(weight[size - n :], 1 - (torch.arange(n) + 0.5) / n)
        weights.append(weight)
    return weights


def blend_tiles(x: torch.Tensor, tile: int, overlap: int, fn, factor: float, channels: int) -> torch.Tensor:
    """Apply fn to overlapping tiles of x (B, C, H, W) (side `tile`, `overlap` shared) and blend the outputs, each
    `factor` times the tile's size with `channels` channels, with ramp weights normalised per position."""
    (height, width), batch = x.shape[-2:], x.shape[0]
    rows, cols = tile_starts(height, tile, tile - overlap), tile_starts(width, tile, tile - overlap)
    tile_h, tile_w = min(tile, height), min(tile, width)
    out_h, out_w = round(tile_h * factor), round(tile_w * factor)
    row_weights = ramp_weights([round(r * factor) for r in rows], out_h)
    col_weights = ramp_weights([round(c * factor) for c in cols], out_w)
    total = x.new_zeros(batch, channels, round(height * factor), round(width * factor), dtype=torch.float32)
    norm = x.new_zeros(1, 1, *total.shape[-2:], dtype=torch.float32)
    for row, weight_r in zip(rows, row_weights):
        for col, weight_c in zip(cols, col_weights):
            out = fn(x[:, :, row : row + tile_h, col : col + tile_w]).float()
            weight = (weight_r[:, None] * weight_c[None, :]).to(total.device)  # (out_h, out_w)
            top, left = round(row * factor), round(col * factor)
            total[:, :, top : top + out_h, left : left + out_w] += out * weight
            norm[:, :, top : top + out_h, left : left + out_w] += weight
    return total / norm


# ---------------------------------------------------------------------------------------------------------
# The model


class VQVAE(nn.Module):
    """Encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder; tokens, tiling, multi-scale, alignment."""

    can_sample = False
    steps_are_prefix = True  # further steps are deterministic re-encode cycles
    default_eval_steps = (1,)
    cannot_sample_reason = (
        "a VQ-VAE is a tokenizer with no prior over its tokens: train a somar_prior_* on it "
        "(training.py --model_type somar_prior_tiny --codebook <this run>) to sample"
    )

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.downsample_factor = config.downsample_factor
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.quantizer = build_quantizer(config)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)
        self.decoder = Decoder(config)
        self.register_buffer("color_mean", torch.zeros(config.in_channels))  # in [-1, 1] units
        self.register_buffer("color_std", torch.full((config.in_channels,), 0.5))
        self.register_buffer("color_images", torch.zeros(()))  # images the colour statistics average over

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """encoder (+ quant_conv), decoder (post_quant_conv +), codebook (frozen with EMA updates; empty for FSQ)."""
        return {
            "encoder": [*self.encoder.parameters(), *self.quant_conv.parameters()],
            "decoder": [*self.post_quant_conv.parameters(), *self.decoder.parameters()],
            "codebook": list(self.quantizer.parameters()),
        }

    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight (the adaptive GAN weight compares gradients there)."""
        return self.decoder.conv_out.weight

    # ---- the pipeline -------------------------------------------------------------------------------
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> continuous z (B, codebook_dim, H/f, W/f) after quant_conv."""
        if self.config.input_range == "zero_one":
            x = (x + 1) / 2
        return self.quant_conv(self.encoder(x))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(z_q, indices, aux) of the quantizer (training mode also maintains the codebook)."""
        return self.quantizer(z)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised z (B, D, h, w) -> raw images (B, C, h f, w f), not clamped."""
        out = self.decoder(self.post_quant_conv(z_q))
        return 2 * out - 1 if self.config.input_range == "zero_one" else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Training pass: (raw reconstruction, aux) with aux = the quantizer's vq/commit/entropy + "indices"."""
        if self.training:
            self._update_color_stats(x)
        z_q, indices, aux = self.quantize(self.encode_latent(x))
        return self.decode(z_q), {**aux, "indices": indices}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens: indices (B, H/f, W/f) int64 of x in [-1, 1]."""
        with self._lookup_only():
            return self.quantizer(self.encode_latent(x))[1]

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h, w) -> images in [-1, 1]."""
        return self.decode(self.quantizer.codes(indices)).clamp(-1, 1)

    @contextlib.contextmanager
    def _lookup_only(self):
        """Quantise without training-mode codebook maintenance (reconstructions never change the model)."""
        was_training = self.quantizer.training
        self.quantizer.train(False)
        try:
            yield
        finally:
            self.quantizer.train(was_training)

    @torch.no_grad()
    def _roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """decode(quantize(encode_latent(x))) clamped to [-1, 1]."""
        with self._lookup_only():
            return self.decode(self.quantizer(self.encode_latent(x))[0]).clamp(-1, 1)

    # ---- colour alignment ---------------------------------------------------------------------------
    @torch.no_grad()
    def _update_color_stats(self, x: torch.Tensor) -> None:
        """Running average (over all images seen) of per-image channel means and standard deviations."""
        flat = x.detach().float().flatten(2)  # (B, C, HW)
        sums = torch.cat([flat.mean(2).sum(0), flat.std(2, unbiased=False).sum(0), flat.new_full((1,), len(x))])
        sums = _all_reduce_sum(sums)
        channels, count = x.shape[1], sums[-1]
        total = self.color_images + count
        self.color_mean.mul_(self.color_images / total).add_(sums[:channels] / total)
        self.color_std.mul_(self.color_images / total).add_(sums[channels : 2 * channels] / total)
        self.color_images.copy_(total)

    def _aligned(self, fn, x: torch.Tensor, align: bool) -> torch.Tensor | list[torch.Tensor]:
        """fn(x), or with align fn of x mapped per image onto the training colour statistics and each output
        mapped back with the image's own statistics (an image never depends on its batch mates)."""
        if not align:
            return fn(x)
        mean = x.float().mean((2, 3), keepdim=True)  # (B, C, 1, 1), per image
        std = x.float().std((2, 3), unbiased=False, keepdim=True)
        train_mean, train_std = self.color_mean.view(1, -1, 1, 1), self.color_std.view(1, -1, 1, 1)
        out = fn(((x - mean) / (std + ALIGN_EPS) * train_std + train_mean).to(x.dtype))

        def back(y):
            return ((y - train_mean) / (train_std + ALIGN_EPS) * std + mean).clamp(-1, 1).to(y.dtype)

        return [back(y) for y in out] if isinstance(out, list) else back(out)

    # ---- reconstruction -----------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False, align=False):
        """Images in [-1, 1] through the tokens; steps > 1: re-encode cycles (step T of a longer run equals a T-step
        run). generator: unused (no noise), accepted for the common interface; labels must be None."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if labels is not None:
            raise ValueError("a vqvae model is unconditional; do not pass class labels")

        def cycles(images):
            outputs = []
            for _ in range(steps):
                images = self._roundtrip(images)
                outputs.append(images)
            return outputs

        outputs = self._aligned(cycles, x, align)
        return outputs if return_all else outputs[-1]

    def _check_tiles(self, tile_size: int, overlap: int) -> None:
        f = self.downsample_factor
        if tile_size < f or tile_size % f or overlap % f:
            raise ValueError(f"tile_size {tile_size} and overlap {overlap} must be multiples of the factor {f}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {overlap} with tile_size {tile_size}")

    def _pad_to_factor(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad right/bottom to a multiple of the downsampling factor (reflection fails on tiny inputs)."""
        f = self.downsample_factor
        pad_h, pad_w = -x.shape[-2] % f, -x.shape[-1] % f
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def _latent(self, x: torch.Tensor, tile_size: int | None, overlap: int) -> torch.Tensor:
        """Continuous latent of x (padded to the factor), blended from overlapping tiles when tile_size is set."""
        x = self._pad_to_factor(x)
        if tile_size is None or max(x.shape[-2:]) <= tile_size:
            return self.encode_latent(x)
        dim = self.config.codebook_dim
        return blend_tiles(x, tile_size, overlap, self.encode_latent, 1 / self.downsample_factor, dim)

    def _decode_latent(self, z: torch.Tensor, tile_size: int | None, overlap: int) -> torch.Tensor:
        """Quantise the whole latent grid once, then decode it (in overlapping latent tiles when tile_size is set)."""
        with self._lookup_only():
            z_q = self.quantizer(z)[0]
        f = self.downsample_factor
        if tile_size is None or max(z.shape[-2:]) * f <= tile_size:
            return self.decode(z_q).clamp(-1, 1)
        out = blend_tiles(z_q, tile_size // f, overlap // f, self.decode, f, self.config.in_channels)
        return out.clamp(-1, 1).to(z_q.dtype)

    @torch.no_grad()
    def reconstruct_tiled(self, x: torch.Tensor, tile_size: int, overlap: int, align: bool = False) -> torch.Tensor:
        """Reconstruction of a large image in overlapping tiles (latents blended, quantised once, decoded in tiles,
        pixels blended); images no larger than a tile take the untiled path; output in [-1, 1], x's size."""
        self._check_tiles(tile_size, overlap)
        height, width = x.shape[-2:]

        def run(images):
            return self._decode_latent(self._latent(images, tile_size, overlap), tile_size, overlap)[
                ..., :height, :width
            ]

        return self._aligned(run, x, align)

    @torch.no_grad()
    def decode_multiscale(self, x: torch.Tensor, scale: float, tile_size: int | None = None, overlap: int = 0):
        """The latent grid (h, w) resized to (round(h scale), round(w scale)) (area down, bilinear up), quantised
        and decoded: output round(h scale) f x round(w scale) f in [-1, 1], larger than x for scale > 1."""
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if tile_size is not None:
            self._check_tiles(tile_size, overlap)
        z = self._latent(x, tile_size, overlap)
        size = (max(1, round(z.shape[-2] * scale)), max(1, round(z.shape[-1] * scale)))
        if size != tuple(z.shape[-2:]):
            z = F.interpolate(z, size, mode="area") if scale < 1 else F.interpolate(z, size, mode="bilinear")
        return self._decode_latent(z, tile_size, overlap)

    @torch.no_grad()
    def token_map(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) tokens -> (B, 3, h, w) in [-1, 1]: each code coloured by its coordinates on the codebook's
        first three principal components (similar codes, similar colours)."""
        return code_colors(self.quantizer.codebook())[indices].permute(0, 3, 1, 2).contiguous()


def code_colors(codebook: torch.Tensor) -> torch.Tensor:
    """(K, D) codes -> (K, 3) colours in [-1, 1]: projections on the first three principal components, each scaled
    by its largest magnitude (missing components, D < 3, are 0)."""
    centred = codebook.float() - codebook.float().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows of vh: principal directions
    directions = vh[:3]  # (<=3, D)
    # SVD's signs are arbitrary: orient each direction so that its largest loading is positive (the page's rule,
    # frontend/src/tokenmap.ts), so Python and the browser colour a codebook alike
    largest = directions.gather(1, directions.abs().argmax(1, keepdim=True))
    coords = centred @ (directions * torch.sign(largest)).t()  # (K, <=3)
    coords = coords / coords.abs().amax(0).clamp_min(1e-12)
    return F.pad(coords, (0, 3 - coords.shape[1]))


def build_quantizer(cfg: VQVAEConfig) -> nn.Module:
    """VectorQuantizer or FSQuantizer from the config."""
    if cfg.quantizer == "fsq":
        return FSQuantizer(cfg.fsq_levels)
    return VectorQuantizer(
        cfg.codebook_size,
        cfg.codebook_dim,
        l2_norm=cfg.l2_norm,
        ema_decay=cfg.ema_decay,
        dead_code_threshold=cfg.dead_code_threshold,
        commit_beta=cfg.commit_beta,
        entropy_ratio=cfg.entropy_ratio,
        entropy_temperature=cfg.entropy_temperature,
        kmeans_init=cfg.kmeans_init,
    )


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> builder(**overrides) -> VQVAE

_SIZES = {
    "tiny": dict(width=32, channel_mults=(1, 2, 2), num_res_blocks=1, z_channels=32, codebook_size=512, norm_groups=8),
    "small": dict(
        width=64, channel_mults=(1, 2, 2, 4), num_res_blocks=2, z_channels=64, codebook_size=4096, norm_groups=32
    ),
    "base": dict(
        width=128, channel_mults=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, codebook_size=16384, norm_groups=32
    ),  # LlamaGen VQ-16
}
BUILDER_OVERRIDES = ({f.name for f in fields(VQVAEConfig)} - {"family"}) | {"latent_dim", "norm"}


def _config_settings(size: dict, overrides: dict) -> dict:
    """Size defaults + overrides (None = not given); latent_dim is the engine's name for codebook_dim (vq)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - BUILDER_OVERRIDES)
    if unknown:
        raise ValueError(f"vqvae models take no setting {unknown}; known: {', '.join(sorted(BUILDER_OVERRIDES))}")
    if given.pop("norm", "group") != "group":
        raise ValueError("vqvae models use GroupNorm only; drop --norm batch")
    settings = {**size, **given}
    if "latent_dim" in settings:
        latent_dim = settings.pop("latent_dim")
        if settings.get("quantizer") == "fsq":
            levels = settings.get("fsq_levels", VQVAEConfig.fsq_levels)
            if latent_dim != len(levels):
                raise ValueError(f"with fsq the latent size is len(fsq_levels) = {len(levels)}; drop --latent_dim")
        elif "codebook_dim" in given:
            raise ValueError("give latent_dim or codebook_dim (the same setting), not both")
        else:
            settings["codebook_dim"] = latent_dim
    return settings


def _builder(size: dict):
    def build(**overrides) -> VQVAE:
        return VQVAE(VQVAEConfig(**_config_settings(size, overrides)))

    return build


VQVAE_MODELS = {f"vqvae_{name}": _builder(size) for name, size in _SIZES.items()}
VQVAE_MODELS["vqvae"] = VQVAE_MODELS["vqvae_base"]  # the family name alone means the base size


# ---------------------------------------------------------------------------------------------------------
# SVQVAE (LlamaGen layout) weights -> our config and state dict

SVQVAE_COLOR_MEAN = (0.5351199507713318, 0.5217390656471252, 0.4665282666683197)  # SVQVAE's align statistics, [0, 1]
SVQVAE_COLOR_STD = (0.28029370307922363, 0.27318093180656433, 0.28354412317276)
SVQVAE_USAGE_GRACE = 100.0  # loaded codes start at this many times the dead-code threshold: no mass restart
SVQVAE_DEFAULTS = dict(  # SVQVAE's ModelArgs + LlamaGen Encoder/Decoder arguments SVQVAE leaves at their default
    codebook_size=16384, codebook_embed_dim=8, codebook_l2_norm=True, codebook_show_usage=True, commit_loss_beta=0.25,
    entropy_loss_ratio=0.0, encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4], z_channels=256,
    dropout_p=0.0, ch=128, num_res_blocks=2, norm_groups=32, image_size=256, in_channels=3,
)  # fmt: skip
_SVQVAE_RENAMES = (  # (pattern, replacement) applied in order to every key
    (r"^quantize\.", "quantizer."),
    (r"\.conv_blocks\.(\d+)\.res\.(\d+)\.", r".levels.\1.blocks.\2."),
    (r"\.conv_blocks\.(\d+)\.attn\.(\d+)\.", r".levels.\1.attns.\2."),
    (r"\.conv_blocks\.(\d+)\.(downsample|upsample)\.", r".levels.\1.\2."),
    (r"\.mid\.0\.", ".mid.block_1."),
    (r"\.mid\.1\.", ".mid.attn_1."),
    (r"\.mid\.2\.", ".mid.block_2."),
    (r"\.nin_shortcut\.", ".shortcut."),
    (r"\.proj_out\.", ".proj."),
)


def svqvae_config(settings: dict) -> VQVAEConfig:
    """Our config of an SVQVAE ModelArgs mapping (plus ch, num_res_blocks, norm_groups, image_size, in_channels)."""
    unknown = sorted(set(settings) - set(SVQVAE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown SVQVAE settings {unknown}; known: {', '.join(sorted(SVQVAE_DEFAULTS))}")
    args = {**SVQVAE_DEFAULTS, **settings}
    if list(args["encoder_ch_mult"]) != list(args["decoder_ch_mult"]):
        raise ValueError("encoder_ch_mult and decoder_ch_mult differ; this vqvae needs one channel_mults for both")
    return VQVAEConfig(
        image_size=args["image_size"], in_channels=args["in_channels"], width=args["ch"],
        channel_mults=tuple(args["encoder_ch_mult"]), num_res_blocks=args["num_res_blocks"],
        z_channels=args["z_channels"], codebook_size=args["codebook_size"], codebook_dim=args["codebook_embed_dim"],
        l2_norm=bool(args["codebook_l2_norm"]), commit_beta=args["commit_loss_beta"],
        entropy_ratio=args["entropy_loss_ratio"], norm_groups=args["norm_groups"], dropout=args["dropout_p"],
        kmeans_init=False, input_range="zero_one",
    )  # fmt: skip


def svqvae_key(key: str) -> str | None:
    """Our name of an SVQVAE state-dict key; None for entries we do not keep (the usage window)."""
    if key == "quantize.codebook_used":
        return None
    if ".conv_shortcut." in key:
        raise ValueError(f"SVQVAE key '{key}' is a 3x3 conv shortcut; only 1x1 (nin_shortcut) weights are supported")
    for pattern, replacement in _SVQVAE_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def svqvae_state_dict(state: dict, settings: dict) -> tuple[VQVAEConfig, dict]:
    """(our config, our full state dict) from an SVQVAE/LlamaGen state dict and its ModelArgs settings; unknown,
    missing or mis-shaped keys are a one-line ValueError naming them."""
    config = svqvae_config(settings)
    with torch.device("meta"):
        reference = VQVAE(config).state_dict()
    mapped = {new: value for key, value in state.items() if (new := svqvae_key(key)) is not None}
    ours = _svqvae_buffers(config, {k: v for k, v in reference.items() if k not in mapped})
    unknown, missing = sorted(set(mapped) - set(reference)), sorted(set(reference) - set(mapped) - set(ours))
    if unknown or missing:
        raise ValueError(f"SVQVAE weights do not fit the settings: unknown keys {unknown[:4]}, missing {missing[:4]}")
    wrong = [k for k, v in mapped.items() if tuple(v.shape) != tuple(reference[k].shape)]
    if wrong:
        raise ValueError(f"SVQVAE weights have other shapes than the settings give for {wrong[:4]}; check the settings")
    return config, {**ours, **{k: v.float() for k, v in mapped.items()}}


def _svqvae_buffers(config: VQVAEConfig, absent: dict) -> dict:
    """Our buffers SVQVAE files lack: colour statistics (SVQVAE's constants), a codebook marked initialised with
    every code given a grace period before dead-code restarts, zero counts."""
    buffers = {
        "color_mean": 2 * torch.tensor(SVQVAE_COLOR_MEAN) - 1,  # [0, 1] -> [-1, 1] units
        "color_std": 2 * torch.tensor(SVQVAE_COLOR_STD),
        "color_images": torch.zeros(()),
        "quantizer.counts": torch.zeros(config.codebook_size),
        "quantizer.initialized": torch.ones((), dtype=torch.bool),
        "quantizer.usage_ema": torch.full((config.codebook_size,), SVQVAE_USAGE_GRACE * config.dead_code_threshold),
    }
    return {key: value for key, value in buffers.items() if key in absent}
