"""Latent diffusion (LordKelvin144/LatentDiffusion's method, done as CompVis LDM does it): a KL autoencoder
(stage 1), a UNet denoiser trained on its frozen, scaled latents (stage 2), and the same UNet on pixels.

kind "autoencoder": x (B, C, H, W) in [-1, 1] -> encoder -> (mean, logvar) (B, 2·c, H/f, W/f) -> z = mean + σ ε ->
decoder -> raw x̂ (no output activation; clamped when reconstructing). It cannot sample: its stage-2 model does.
kind "latent": z = latent_scale · (AE posterior sample) -> UNet ε/v-prediction; samples are decoded by the AE.
kind "pixel": the UNet on images directly (the seed's MNIST sanity check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .diffusion import (
    BETA_SCHEDULES,
    PREDICTIONS,
    SAMPLERS,
    Schedule,
    ddim_sample,
    ddpm_sample,
    guided_denoiser,
    per_image_noise,
)
from .layers import Upsample
from .sphere import CFG_MODES
from .typed_config import TypedConfig
from .vqvae import AttnBlock, Decoder, Downsample, Encoder, ResBlock, group_norm

KINDS = ("autoencoder", "latent", "pixel")
LOGVAR_RANGE = (-30.0, 20.0)  # CompVis clamp: σ in [3e-7, 2e4] keeps exp() finite in fp32
TIME_PERIOD = 10000.0  # longest period of the sinusoidal time features (Transformer / DDPM)


@dataclass
class LDMConfig(TypedConfig):
    """Every architecture setting of an ldm-family model (one of KINDS); what config.json and checkpoints store."""

    family: str = "ldm"
    kind: str = "latent"  # "autoencoder" (stage 1), "latent" (stage 2 UNet on AE latents), "pixel" (UNet on pixels)
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 0  # UNet kinds: 0 = unconditional, else a null class (index num_classes) for CFG
    # autoencoder (kind "autoencoder"; for "latent" when `autoencoder` is None)
    ae_width: int = 32  # channels of the first level; level i has ae_width * ae_mults[i]
    ae_mults: tuple[int, ...] = field(default=(1, 2, 2))  # downsampling factor f = 2^(len - 1)
    ae_res_blocks: int = 1  # encoder blocks per level (the decoder has one more, as the vqvae's)
    latent_channels: int = 4
    ae_groups: int = 8  # GroupNorm groups
    # UNet (kinds "latent" and "pixel")
    unet_width: int = 64
    unet_mults: tuple[int, ...] = field(default=(1, 2))  # one level per entry, /2 resolution between
    unet_res_blocks: int = 1
    unet_attn_levels: tuple[int, ...] = field(default=(1,))  # indices of levels with self-attention (mid always)
    unet_groups: int = 8
    unet_heads: int = 4
    dropout: float = 0.0  # UNet ResBlocks
    # diffusion
    timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "eps"
    sampler: str = "ddim"
    eta: float = 0.0  # DDIM η: 0 deterministic
    # stage 2
    autoencoder: dict | None = None  # the frozen AE's config dict (kind "autoencoder"); None: the ae_* fields
    autoencoder_sha256: str | None = None  # hash of the AE weights the denoiser was trained on
    latent_scale: float | None = None  # 1/std of the encoded training latents (None: not computed yet, 1 is used)

    def __post_init__(self):
        for name in ("ae_mults", "unet_mults", "unet_attn_levels"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()
        if self.autoencoder is not None:  # normalised, so a round trip compares equal
            self.autoencoder = LDMConfig.from_dict(self.autoencoder).to_dict()

    def validate(self) -> None:
        """Raise ValueError with a one-line fix when the settings do not fit together."""
        if self.family != "ldm":
            raise ValueError(f"a '{self.family}' config is not an ldm config (family 'ldm')")
        self._validate_types()
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("beta_schedule", self.beta_schedule, BETA_SCHEDULES),
            ("prediction", self.prediction, PREDICTIONS),
            ("sampler", self.sampler, SAMPLERS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}': use one of {', '.join(allowed)}")
        if self.kind == "autoencoder":
            self._validate_autoencoder()
        else:
            self._validate_unet()

    def _validate_autoencoder(self) -> None:
        if self.num_classes != 0:
            raise ValueError(f"an ldm autoencoder is unconditional; got num_classes={self.num_classes}: drop labels")
        if self.autoencoder is not None or self.latent_scale is not None:
            raise ValueError("an ldm autoencoder config holds no autoencoder or latent_scale (stage-2 fields)")
        _check_levels("ae_mults", self.ae_mults, self.ae_width, self.ae_groups)
        if self.image_size % self.ae_factor:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the autoencoder factor {self.ae_factor}"
            )

    def _validate_unet(self) -> None:
        if self.kind == "pixel" and self.autoencoder is not None:
            raise ValueError("a pixel ldm model has no autoencoder; use kind 'latent' or drop autoencoder")
        if self.kind == "latent":
            self.autoencoder_config()  # builds (so validates) the stage-1 config
        widths = _check_levels("unet_mults", self.unet_mults, self.unet_width, self.unet_groups)
        bad = [i for i in self.unet_attn_levels if not 0 <= i < len(self.unet_mults)]
        if bad:
            raise ValueError(f"unet_attn_levels {bad} are not level indices 0..{len(self.unet_mults) - 1}")
        if any(widths[i] % self.unet_heads for i in (*self.unet_attn_levels, -1)):
            raise ValueError(f"unet_heads {self.unet_heads} must divide the attention levels' widths; change it")
        factor = 2 ** (len(self.unet_mults) - 1)
        if self.diffusion_size % factor:
            raise ValueError(f"the diffused side {self.diffusion_size} is not a multiple of the UNet factor {factor}")
        if self.num_classes < 0 or self.timesteps < 1 or not 0.0 <= self.eta <= 1.0:
            raise ValueError("num_classes must be >= 0, timesteps >= 1 and eta in [0, 1]")

    @property
    def ae_factor(self) -> int:
        """Downsampling factor f of the autoencoder (kind "autoencoder")."""
        return 2 ** (len(self.ae_mults) - 1)

    def autoencoder_config(self) -> LDMConfig:
        """The stage-1 config of a latent model: the saved `autoencoder`, else this config's ae_* fields."""
        if self.autoencoder is not None:
            return LDMConfig.from_dict(self.autoencoder)
        keys = ("image_size", "in_channels", "ae_width", "ae_mults", "ae_res_blocks", "latent_channels", "ae_groups")
        return LDMConfig(kind="autoencoder", **{key: getattr(self, key) for key in keys})

    @property
    def diffusion_channels(self) -> int:
        """Channels the UNet sees: the AE's latent channels (latent) or the image's (pixel)."""
        return self.autoencoder_config().latent_channels if self.kind == "latent" else self.in_channels

    @property
    def diffusion_size(self) -> int:
        """Side of what the UNet sees: image_size / f (latent) or image_size (pixel)."""
        return self.image_size // self.autoencoder_config().ae_factor if self.kind == "latent" else self.image_size


_TUPLES = ("ae_mults", "unet_mults", "unet_attn_levels")
_OPTIONAL = ("autoencoder", "autoencoder_sha256", "latent_scale")
_FIELD_TYPES = {
    **dict.fromkeys(("family", "kind", "beta_schedule", "prediction", "sampler", "autoencoder_sha256"), str),
    **dict.fromkeys(("image_size", "in_channels", "num_classes", "ae_width", "ae_res_blocks"), int),
    **dict.fromkeys(("latent_channels", "ae_groups", "unet_width", "unet_res_blocks", "unet_groups"), int),
    **dict.fromkeys(("unet_heads", "timesteps"), int),
    **dict.fromkeys(("dropout", "beta_start", "beta_end", "eta", "latent_scale"), (int, float)),
    **dict.fromkeys(_TUPLES, (tuple, list)),
    "autoencoder": dict,
}
LDMConfig.FIELD_TYPES, LDMConfig.TUPLES, LDMConfig.OPTIONAL = _FIELD_TYPES, _TUPLES, _OPTIONAL


def _check_levels(name: str, mults: tuple[int, ...], width: int, groups: int) -> list[int]:
    """Channel count of each level; ValueError when a level is empty or GroupNorm's groups do not divide it."""
    if not mults or min(mults) < 1 or width < 1:
        raise ValueError(f"{name} needs at least one positive entry and a positive width, got {mults}, {width}")
    widths = [width * mult for mult in mults]
    if groups < 1 or any(w % groups for w in widths):
        raise ValueError(f"groups {groups} does not divide the {name} channel counts {widths}; change the width")
    return widths


# ---------------------------------------------------------------------------------------------------------
# KL autoencoder (stage 1): the vqvae's encoder and decoder, a diagonal Gaussian posterior in between


def diagonal_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) || N(0, I)) per item, summed over every latent entry: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


class KLAutoencoder(nn.Module):
    """Stage 1: encoder -> (mean, logvar) -> z = mean + σ ε -> decoder (LDM's AutoencoderKL, no quant convs)."""

    can_sample = False
    cannot_sample_reason = "a stage-1 autoencoder: its ldm_* stage-2 model samples"
    can_reconstruct = True
    steps_are_prefix = True  # re-encode cycles: step T of a longer run equals a T-step run
    default_eval_steps = (1,)

    def __init__(self, config: LDMConfig):
        super().__init__()
        if config.kind != "autoencoder":
            raise ValueError(f"KLAutoencoder needs an ldm config of kind 'autoencoder', got '{config.kind}'")
        self.config = config
        self.encoder = Encoder(_conv_settings(config, 2 * config.latent_channels))  # -> (mean, logvar)
        self.decoder = Decoder(_conv_settings(config, config.latent_channels))

    @property
    def downsample_factor(self) -> int:
        return self.config.ae_factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x): (mean, logvar), each (B, c, H/f, W/f); logvar clamped to LOGVAR_RANGE."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw images (no output activation) from latents (B, c, h, w)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator=None):
        """Training pass: (raw x̂ of a posterior sample, mean, logvar); generator None, one or a list of B."""
        mean, logvar = self.encode(x)
        noise = per_image_noise(len(x), tuple(mean.shape[1:]), generator, x.device).to(mean.dtype)
        return self.decode(mean + (0.5 * logvar).exp() * noise), mean, logvar

    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        """decode(posterior mean) clamped to [-1, 1]; steps > 1: re-encode cycles. generator: unused (the mean)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if labels is not None:
            raise ValueError("an ldm autoencoder is unconditional; do not pass class labels")
        outputs = []
        for _ in range(steps):
            x = self.decode(self.encode(x)[0]).clamp(-1, 1)
            outputs.append(x)
        return outputs if return_all else outputs[-1]

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight: the adaptive GAN weight balances gradients there (Esser et al. 2021)."""
        return self.decoder.conv_out.weight

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}


def _conv_settings(config: LDMConfig, z_channels: int) -> SimpleNamespace:
    """The settings the vqvae's Encoder/Decoder read, from an ldm autoencoder config (no level attention: the mid
    block attends, as LDM's KL-f4/f8 autoencoders)."""
    return SimpleNamespace(
        in_channels=config.in_channels, width=config.ae_width, channel_mults=config.ae_mults,
        num_res_blocks=config.ae_res_blocks, attn_at_lowest=False, z_channels=z_channels,
        norm_groups=config.ae_groups, dropout=0.0,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# UNet (DDPM / ADM layout): time-embedding MLP as FiLM scale and shift, attention at chosen levels, skip concat


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (B, dim) of timesteps t (B,): [cos(t ω_k), sin(t ω_k)], ω_k = TIME_PERIOD^(−k/(dim/2))."""
    half = dim // 2
    omega = torch.exp(-math.log(TIME_PERIOD) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * omega[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TimeResBlock(ResBlock):
    """The vqvae's ResBlock with FiLM: h = norm2(conv1(silu(norm1(x)))) · (1 + scale) + shift, (scale, shift) =
    emb(silu(temb)); then h = conv2(dropout(silu(h))); out = shortcut(x) + h."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float, emb_dim: int):
        super().__init__(in_channels, out_channels, groups, dropout)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.shortcut(x) + self.conv2(self.dropout(F.silu(h)))


class MultiHeadAttnBlock(AttnBlock):
    """The vqvae's AttnBlock (norm, q, k, v, proj 1x1 convs) with `heads` heads; out = x + proj(attention)."""

    def __init__(self, channels: int, groups: int, heads: int):
        super().__init__(channels, groups)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (
            conv(h).view(batch, self.heads, channels // self.heads, height * width).transpose(2, 3)
            for conv in (self.q, self.k, self.v)
        )  # (B, heads, N, C / heads)
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3)  # (B, heads, C / heads, N)
        return x + self.proj(out.reshape(batch, channels, height, width))


class UNetLevel(nn.Module):
    """One resolution: TimeResBlocks (each followed by attention when `attention`), then an optional resample."""

    def __init__(self, inputs: list[int], out_channels: int, cfg: LDMConfig, attention: bool, resample: str | None):
        super().__init__()
        emb_dim = 4 * cfg.unet_width
        self.blocks = nn.ModuleList(
            TimeResBlock(c, out_channels, cfg.unet_groups, cfg.dropout, emb_dim) for c in inputs
        )
        heads = cfg.unet_heads
        self.attns = nn.ModuleList(
            MultiHeadAttnBlock(out_channels, cfg.unet_groups, heads) for _ in inputs if attention
        )
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)

    def block(self, index: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.blocks[index](h, temb)
        return self.attns[index](h) if self.attns else h


class TimeMidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution (the vqvae's MidBlock names), time-conditioned."""

    def __init__(self, channels: int, cfg: LDMConfig):
        super().__init__()
        emb_dim = 4 * cfg.unet_width
        self.block_1 = TimeResBlock(channels, channels, cfg.unet_groups, cfg.dropout, emb_dim)
        self.attn_1 = MultiHeadAttnBlock(channels, cfg.unet_groups, cfg.unet_heads)
        self.block_2 = TimeResBlock(channels, channels, cfg.unet_groups, cfg.dropout, emb_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x, temb)), temb)


class UNet(nn.Module):
    """ε/v-prediction UNet: conv_in -> down levels (every block's output kept) -> mid -> up levels (each block
    concatenates one kept map) -> norm_out -> silu -> conv_out (zero-initialised: the untrained net predicts 0)."""

    def __init__(self, config: LDMConfig, channels: int):
        super().__init__()
        self.width, self.num_classes = config.unet_width, config.num_classes
        widths = [config.unet_width * mult for mult in config.unet_mults]
        self.time_embed = nn.Sequential(
            nn.Linear(self.width, 4 * self.width), nn.SiLU(), nn.Linear(4 * self.width, 4 * self.width)
        )
        if config.num_classes > 0:
            self.label_embed = nn.Embedding(config.num_classes + 1, 4 * self.width)  # last row: the null class
        self.conv_in = nn.Conv2d(channels, self.width, 3, padding=1)
        self.down, skips = self._down_levels(config, widths)
        self.mid = TimeMidBlock(widths[-1], config)
        self.up = self._up_levels(config, widths, skips)
        self.norm_out = group_norm(self.width, config.unet_groups)
        self.conv_out = nn.Conv2d(self.width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _down_levels(self, cfg: LDMConfig, widths: list[int]) -> tuple[nn.ModuleList, list[int]]:
        """down.{i}, and the channels of every map kept for the up path (conv_in's, each block's, each downsample's)."""
        levels, skips, last = nn.ModuleList(), [self.width], len(widths) - 1
        for i, out in enumerate(widths):
            inputs = [skips[-1]] + [out] * (cfg.unet_res_blocks - 1)
            levels.append(UNetLevel(inputs, out, cfg, i in cfg.unet_attn_levels, "down" if i < last else None))
            skips += [out] * (cfg.unet_res_blocks + (i < last))
        return levels, skips

    def _up_levels(self, cfg: LDMConfig, widths: list[int], skips: list[int]) -> nn.ModuleList:
        """up.{i} at level i's resolution: res_blocks + 1 blocks, each taking one kept map (concatenated)."""
        levels, current = [], widths[-1]
        for i in reversed(range(len(widths))):
            inputs = [(current if j == 0 else widths[i]) + skips.pop() for j in range(cfg.unet_res_blocks + 1)]
            levels.insert(0, UNetLevel(inputs, widths[i], cfg, i in cfg.unet_attn_levels, "up" if i else None))
            current = widths[i]
        return nn.ModuleList(levels)

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """temb (B, 4·width) = MLP(sinusoid(t)) (+ the label's row; None on a conditional net = the null class)."""
        temb = self.time_embed(timestep_embedding(t, self.width))
        if self.num_classes == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes=0); do not pass class labels")
            return temb
        if labels is None:
            labels = torch.full((len(t),), self.num_classes, dtype=torch.long, device=t.device)
        return temb + self.label_embed(labels.long())

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Network output (ε or v) (B, C, h, w) for x_t (B, C, h, w) at timesteps t (B,)."""
        temb = self.embed(t.to(x.device), labels)
        h, kept = self._down(self.conv_in(x), temb)
        h = self.mid(h, temb)
        for level in reversed(self.up):
            for index in range(len(level.blocks)):
                h = level.block(index, torch.cat([h, kept.pop()], dim=1), temb)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _down(self, h: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down path: its output and every kept map, in order (the up path pops them)."""
        kept = [h]
        for level in self.down:
            for index in range(len(level.blocks)):
                h = level.block(index, h, temb)
                kept.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
                kept.append(h)
        return h, kept


# ---------------------------------------------------------------------------------------------------------
# Diffusion models: the UNet with a schedule and samplers, on latents or on pixels


class DiffusionModel(nn.Module):
    """What latent and pixel diffusion share: the UNet, the schedule, labels and sampling."""

    can_sample = True
    clip_x0: float | None = None  # bound of x̂_0 while sampling: pixels [-1, 1]; latents are not clipped
    steps_are_prefix = False  # DDIM's n-step run is not a prefix of a longer one: each count is its own run
    default_eval_steps = (10, 50)

    def __init__(self, config: LDMConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config, config.diffusion_channels)
        self.schedule = Schedule(config.timesteps, config.beta_schedule, config.beta_start, config.beta_end)

    @property
    def diffusion_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of what is diffused."""
        size = self.config.diffusion_size
        return (self.config.diffusion_channels, size, size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's output (ε or v, per config.prediction) at x_t, timesteps t (B,)."""
        return self.unet(x_t, t, labels)

    def _labels(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        """Conditional models get the null class when labels is None; unconditional ones reject labels."""
        if self.config.num_classes == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes=0); do not pass class labels")
            return None
        if labels is None:
            return torch.full((n,), self.config.num_classes, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long)

    def _to_images(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int = 50,
        generator=None,
        labels: torch.Tensor | None = None,
        cfg: float = 1.0,
        cfg_mode: str = "combo",
        return_all: bool = False,
        eta: float | None = None,
        sampler: str | None = None,
    ):
        """n images in [-1, 1] after `steps` sampler steps (DDIM or DDPM, config.sampler unless given; eta None:
        config.eta). generator: None, one, or a list of n (x_T and every step's noise drawn per image). labels:
        (n,) classes of a conditional model (None: the null class). cfg: guidance w (1 = off); cfg_mode is accepted
        for the common interface: the denoiser has one guidance point, so every mode is the same.
        return_all: the decoded x̂_0 predictions after each step (the last is the sample)."""
        sampler, eta = sampler or self.config.sampler, self.config.eta if eta is None else eta
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{sampler}': use one of {', '.join(SAMPLERS)}")
        if cfg_mode not in CFG_MODES or not cfg >= 0:
            raise ValueError(f"cfg must be >= 0 and cfg_mode one of {', '.join(CFG_MODES)}; got {cfg}, {cfg_mode}")
        device = next(self.unet.parameters()).device
        labels = self._labels(labels, n, device)
        denoise = guided_denoiser(self.unet, labels, self.config.num_classes, cfg)
        x_T = per_image_noise(n, self.diffusion_shape, generator, device)
        common = dict(prediction=self.config.prediction, generator=generator, return_all=return_all)
        common["clip_x0"] = self.clip_x0
        if sampler == "ddim":
            out = ddim_sample(denoise, self.schedule, x_T, steps, eta=eta, **common)
        else:
            out = ddpm_sample(denoise, self.schedule, x_T, steps, **common)
        return [self._to_images(x) for x in out] if return_all else self._to_images(out)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"unet": list(self.unet.parameters())}


class LatentDiffusion(DiffusionModel):
    """Stage 2: the UNet on latent_scale · z of a frozen KL autoencoder (kept in eval mode, never trained)."""

    can_reconstruct = True

    def __init__(self, config: LDMConfig):
        if config.kind != "latent":
            raise ValueError(f"LatentDiffusion needs an ldm config of kind 'latent', got '{config.kind}'")
        super().__init__(config)
        self.autoencoder = KLAutoencoder(config.autoencoder_config()).requires_grad_(False).eval()
        scale = 1.0 if config.latent_scale is None else config.latent_scale
        self.register_buffer("latent_scale", torch.tensor(float(scale)))

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Train/eval the UNet; the autoencoder stays in eval mode (its dropout and norms are frozen)."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior (mean, std) of images x, each (B, c, h, w): z = mean + std · ε is a training latent."""
        mean, logvar = self.autoencoder.encode(x)
        return mean * self.latent_scale, (0.5 * logvar).exp() * self.latent_scale

    @torch.no_grad()
    def fit_latent_scale(self, x: torch.Tensor, generator=None) -> float:
        """Set latent_scale = 1 / std of posterior samples of x (unscaled), in the buffer and the config; returns it.
        LDM's scale_factor: the diffusion prior N(0, I) then matches the latents' spread."""
        mean, logvar = self.autoencoder.encode(x)
        noise = per_image_noise(len(x), tuple(mean.shape[1:]), generator, x.device).to(mean.dtype)
        scale = 1.0 / float((mean + (0.5 * logvar).exp() * noise).float().std())
        self.set_latent_scale(scale)
        return scale

    def set_latent_scale(self, scale: float) -> None:
        self.latent_scale.fill_(scale)
        self.config.latent_scale = float(scale)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of scaled latents."""
        return self.autoencoder.decode(z / self.latent_scale).clamp(-1, 1)

    def _to_images(self, x0: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(x0)

    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        """The autoencoder's round trip (posterior mean), in [-1, 1]; labels are accepted and unused."""
        return self.autoencoder.reconstruct(x, steps=steps, return_all=return_all)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """unet (trained) and autoencoder (frozen: requires_grad False, left out of the optimizer)."""
        return {"unet": list(self.unet.parameters()), "autoencoder": list(self.autoencoder.parameters())}


class PixelDiffusion(DiffusionModel):
    """The UNet and samplers directly on images (x̂_0 clipped to [-1, 1] while sampling)."""

    can_reconstruct = False
    clip_x0 = 1.0

    def __init__(self, config: LDMConfig):
        if config.kind != "pixel":
            raise ValueError(f"PixelDiffusion needs an ldm config of kind 'pixel', got '{config.kind}'")
        super().__init__(config)

    def _to_images(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1, 1)

    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        raise ValueError("a pixel diffusion model has no encoder, so it cannot reconstruct; sample instead")


MODEL_CLASSES = {"autoencoder": KLAutoencoder, "latent": LatentDiffusion, "pixel": PixelDiffusion}


def build_ldm(config: LDMConfig) -> nn.Module:
    """The model of a config's kind (the family table's model_class)."""
    return MODEL_CLASSES[config.kind](config)


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> builder(**overrides)

_AE_SIZES = {
    "tiny": dict(ae_width=32, ae_mults=(1, 2, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8),  # f4
    "small": dict(ae_width=64, ae_mults=(1, 2, 4, 4), ae_res_blocks=2, latent_channels=4, ae_groups=32),  # f8
}
_UNET_SIZES = {
    "ldm_tiny": dict(unet_width=64, unet_mults=(1, 2), unet_res_blocks=1, unet_attn_levels=(1,), unet_groups=8),
    "ldm_small": dict(unet_width=128, unet_mults=(1, 2, 2), unet_res_blocks=2, unet_attn_levels=(1, 2), unet_groups=32),
    "ldm_base": dict(
        unet_width=192, unet_mults=(1, 2, 4), unet_res_blocks=2, unet_attn_levels=(1, 2), unet_groups=32, unet_heads=8
    ),
    "ddpm_tiny": dict(unet_width=32, unet_mults=(1, 2, 2), unet_res_blocks=1, unet_attn_levels=(2,), unet_groups=8),
    "ddpm_small": dict(
        unet_width=64, unet_mults=(1, 2, 2, 2), unet_res_blocks=2, unet_attn_levels=(1,), unet_groups=32
    ),  # attention at 16x16 on 32 px images (DDPM's CIFAR-10 net at half width)
}
_SIZES = {
    "ldm_ae_tiny": dict(kind="autoencoder", **_AE_SIZES["tiny"]),
    "ldm_ae_small": dict(kind="autoencoder", **_AE_SIZES["small"]),
    "ldm_tiny": dict(kind="latent", **_AE_SIZES["tiny"], **_UNET_SIZES["ldm_tiny"]),
    "ldm_small": dict(kind="latent", **_AE_SIZES["small"], **_UNET_SIZES["ldm_small"]),
    "ldm_base": dict(kind="latent", **_AE_SIZES["small"], **_UNET_SIZES["ldm_base"]),
    "ddpm_tiny": dict(kind="pixel", **_UNET_SIZES["ddpm_tiny"]),
    "ddpm_small": dict(kind="pixel", **_UNET_SIZES["ddpm_small"]),
}
BUILDER_OVERRIDES = ({f.name for f in fields(LDMConfig)} - {"family", "kind"}) | {"latent_dim", "norm"}


def _config_settings(size: dict, overrides: dict) -> dict:
    """Size defaults + overrides (None = not given); latent_dim is the engine's name for latent_channels."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - BUILDER_OVERRIDES)
    if unknown:
        raise ValueError(f"ldm models take no setting {unknown}; known: {', '.join(sorted(BUILDER_OVERRIDES))}")
    if given.pop("norm", "group") != "group":
        raise ValueError("ldm models use GroupNorm only; drop --norm batch")
    if "latent_dim" in given:
        if size["kind"] == "pixel" or "latent_channels" in given:
            raise ValueError("latent_dim sets an ldm autoencoder's latent_channels: not for pixel models or with it")
        given["latent_channels"] = given.pop("latent_dim")
    return {**size, **given}


def _builder(size: dict):
    def build(**overrides) -> nn.Module:
        return build_ldm(LDMConfig(**_config_settings(size, overrides)))

    return build


LDM_MODELS = {name: _builder(size) for name, size in _SIZES.items()}
LDM_MODELS["ldm"] = LDM_MODELS["ldm_base"]  # the family name alone means the base size
