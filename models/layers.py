"""Shared building blocks: norms, RoPE attention, SwiGLU, adaLN-Zero, latent MLP-mixer, conv blocks."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sphere_project(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """f(z) = z / rms(z) over all latent entries of each sample, so ||f(z)|| = sqrt(L) (DESIGN §3)."""
    flat = z.float().flatten(1)
    scale = flat.shape[1] ** 0.5 / flat.norm(dim=1).clamp_min(eps)  # sqrt(L) / ||z||
    return (z.float() * scale.view(-1, *([1] * (z.ndim - 1)))).to(z.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of token features x (B, N, C) with per-sample (B, C) shift and scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNZero(nn.Module):
    """Maps a conditioning vector to `chunks` modulation vectors; zero-initialised so blocks start as identity."""

    def __init__(self, cond_dim: int, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Linear(cond_dim, chunks * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(F.silu(cond)).chunk(self.chunks, dim=-1)


class LabelEmbedding(nn.Module):
    """Class embedding with an extra learned null class (index num_classes) for classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)


def sincos_pos_embed_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (MAE/DiT style), shape (height*width, dim)."""
    assert dim % 4 == 0, "sin-cos 2D embedding needs dim divisible by 4"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    out_rows = rows.reshape(-1, 1).double() * omega  # (N, dim/4)
    out_cols = cols.reshape(-1, 1).double() * omega
    emb = torch.cat([out_rows.sin(), out_rows.cos(), out_cols.sin(), out_cols.cos()], dim=1)
    return emb.float()


def rope_angles_2d(height: int, width: int, head_dim: int, theta: float) -> torch.Tensor:
    """Axial 2D RoPE angles (N, head_dim/2): first half of the rotated pairs follow the row, second the column."""
    assert head_dim % 4 == 0, "2D axial RoPE needs head_dim divisible by 4"
    quarter = head_dim // 4
    inv_freq = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    angle_rows = rows.reshape(-1, 1).double() * inv_freq  # (N, head_dim/4)
    angle_cols = cols.reshape(-1, 1).double() * inv_freq
    return torch.cat([angle_rows, angle_cols], dim=1).float()  # (N, head_dim/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + d/2) of x (B, H, N, d) by the angles whose cos/sin are (N, d/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class KVCache:
    """Keys and values (B, H, N, d) of the tokens one attention layer has seen, for token-by-token decoding."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds the new tokens' keys/values (B, H, n, d); returns all of them so far (B, H, N + n, d)."""
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    def reorder(self, index: torch.Tensor) -> None:
        """Keeps batch rows `index` (B',) in that order: beam search's parents, or a batch expanded per beam."""
        if self.keys is not None:
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)


def causal_mask(queries: int, past: int, device: torch.device) -> torch.Tensor:
    """(queries, past + queries) bool mask: query i sits at position past + i and sees keys up to there."""
    keys = torch.arange(past + queries, device=device)
    return keys.unsqueeze(0) <= (past + torch.arange(queries, device=device)).unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention with QK RMSNorm and 2D axial RoPE, via scaled_dot_product_attention.

    rope_cos None: no rotation (the caller adds learned positions); causal: each token sees itself and earlier
    ones; cache: a KVCache the new tokens' keys/values are appended to (they sit after the cached ones)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = True):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope_cos: torch.Tensor | None,
        rope_sin: torch.Tensor | None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_cos is not None:
            q, k = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(k, v)
        if causal and past > 0 and tokens > 1:  # a chunk after cached tokens: is_causal would align it at 0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(tokens, past, x.device))
        else:  # one new token after the cache sees every key, so no mask is needed
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and past == 0)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class SwiGLU(nn.Module):
    """SwiGLU MLP: W2(silu(W_gate x) * W_up x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden_dim)
        self.down = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width of a SwiGLU with the parameter count of a GELU MLP of ratio mlp_ratio, rounded to 8."""
    hidden = int(2 * mlp_ratio * dim / 3)
    return max(8, (hidden + 7) // 8 * 8)


class TransformerBlock(nn.Module):
    """Pre-RMSNorm block: RoPE attention + SwiGLU; adaLN-Zero when cond_dim > 0; optional causal mask / KV cache."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool = True, cond_dim: int = 0):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6, elementwise_affine=cond_dim == 0)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6, elementwise_affine=cond_dim == 0)
        self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        self.ada = AdaLNZero(cond_dim, dim, 6) if cond_dim > 0 else None

    def forward(
        self,
        x,
        rope_cos,
        rope_sin,
        cond: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        if self.ada is None:
            x = x + self.attn(self.norm1(x), rope_cos, rope_sin, causal, cache)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)
        attended = self.attn(modulate(self.norm1(x), shift1, scale1), rope_cos, rope_sin, causal, cache)
        x = x + gate1.unsqueeze(1) * attended
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class MixerBlock(nn.Module):
    """MLP-mixer block on (B, N, C) latents: token mixing then channel mixing, zero-initialised residual scales."""

    def __init__(self, tokens: int, channels: int, expansion: int):
        super().__init__()
        self.token_norm = nn.RMSNorm(channels, eps=1e-6)
        self.token_mlp = nn.Sequential(
            nn.Linear(tokens, tokens * expansion), nn.GELU(), nn.Linear(tokens * expansion, tokens)
        )
        self.channel_norm = nn.RMSNorm(channels, eps=1e-6)
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, channels * expansion), nn.GELU(), nn.Linear(channels * expansion, channels)
        )
        self.token_scale = nn.Parameter(torch.zeros(channels))
        self.channel_scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)  # mix along N
        x = x + self.token_scale * mixed
        return x + self.channel_scale * self.channel_mlp(self.channel_norm(x))


class LatentMixer(nn.Module):
    """Stack of MixerBlocks with a final RMSNorm; identity-like at initialisation."""

    def __init__(self, tokens: int, channels: int, depth: int, expansion: int):
        super().__init__()
        self.blocks = nn.ModuleList(MixerBlock(tokens, channels, expansion) for _ in range(depth))
        self.norm = nn.RMSNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


CONVS = {1: nn.Conv1d, 2: nn.Conv2d}  # 1-D signals (B, C, L) and 2-D maps (B, C, H, W)
BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """GroupNorm (32 groups or fewer) or BatchNorm (foldable into the preceding conv for export), 1-D or 2-D."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)
    if kind == "batch":
        return BATCH_NORMS[dims](channels)
    raise ValueError(f"unknown norm '{kind}': use 'group' or 'batch'")


def make_norm2d(kind: str, channels: int) -> nn.Module:
    """make_norm for 2-D maps."""
    return make_norm(kind, channels, dims=2)


class ConvResBlock(nn.Module):
    """Residual block conv -> norm -> SiLU -> conv -> norm (+ adaLN-Zero gate when conditional), post-norm so
    BatchNorm folds exactly into each conv; dims = 2 for images, 1 for signals."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, cond_dim: int = 0, dims: int = 2):
        super().__init__()
        conv, self.dims = CONVS[dims], dims
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.norm1 = make_norm(norm, out_ch, dims)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(norm, out_ch, dims)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.ada = AdaLNZero(cond_dim, out_ch, 3) if cond_dim > 0 else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm2(self.conv2(F.silu(self.norm1(self.conv1(x)))))  # (B, C, H, W) or (B, C, L)
        if self.ada is not None:
            shift, scale, gate = (t.view(*t.shape, *[1] * self.dims) for t in self.ada(cond))
            h = gate * (h * (1 + scale) + shift)
        return F.silu(self.skip(x) + h)


class Downsample(nn.Module):
    """Strided 3x3 (or 3) conv halving the resolution."""

    def __init__(self, channels: int, dims: int = 2):
        super().__init__()
        self.conv = CONVS[dims](channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 (or 3) conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int, dims: int = 2):
        super().__init__()
        self.conv = CONVS[dims](channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def conv_stack(
    levels: list[int], depth: int, norm: str, cond_dim: int, resample: type[nn.Module], dims: int = 2
) -> nn.ModuleList:
    """`depth` residual blocks per level (channels levels[i]), with a resample (Downsample/Upsample) between."""
    blocks, channels = nn.ModuleList(), levels[0]
    for index, out_channels in enumerate(levels):
        for _ in range(depth):
            blocks.append(ConvResBlock(channels, out_channels, norm, cond_dim, dims))
            channels = out_channels
        if index < len(levels) - 1:
            blocks.append(resample(channels, dims))
    return blocks
