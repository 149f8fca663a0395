"""Power-Spherical VAE (Spherinator's method, done right): a hyperspherical VAE whose latent is a point of the unit
sphere S^(d-1), d = z_dim (3 by default: a globe to browse the data on).

q(z|x) = PowerSpherical(mu(x), kappa(x)) (De Cao & Aziz 2020) or von Mises-Fisher, prior Uniform(S^(d-1)), decoder
D(z). Reconstruction uses mu; sampling decodes uniform points of the sphere; further steps are encode -> decode cycles
on mu (step T of a longer run equals a T-step run). Backbones: 2-D residual conv or ViT encoder, conv or upsampling
decoder (images, tanh output in [-1, 1]), 1-D conv encoder/decoder for signals (C, L) (linear output).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher
from .layers import (
    ConvResBlock,
    Downsample,
    LabelEmbedding,
    TransformerBlock,
    Upsample,
    conv_stack,
    make_norm,
    make_norm2d,
    rope_angles_2d,
    sincos_pos_embed_2d,
)
from .sphere import guidance_scales

BACKBONES = ("conv", "vit", "conv1d")
DECODERS = ("conv", "upsample")
POSTERIORS = ("power_spherical", "vmf")


@dataclass
class PSVAEConfig:
    """Every architecture setting of a Power-Spherical VAE; what config.json and checkpoints store."""

    family: str = "psvae"
    backbone: str = "conv"  # encoder: "conv" (2-D residual conv), "vit" (2-D transformer), "conv1d" (1-D signals)
    decoder: str = "conv"  # 2-D decoder: "conv" (residual levels) or "upsample" (x2 + conv per level); conv1d: "conv"
    image_size: int = 32  # image side; for conv1d it mirrors signal_length
    in_channels: int = 3
    signal_length: int = 0  # conv1d: values per channel (0 = take image_size); images: 0
    num_classes: int = 0  # 0 = unconditional; otherwise class-conditional E and D with a null class for CFG
    z_dim: int = 3  # d: the latent is a point of S^(d-1); 3 gives the globe view
    width: int = 32  # conv/conv1d: base channel count
    depth: int = 2  # conv/conv1d: residual blocks per level
    channel_mults: tuple[int, ...] = field(default=(1, 2, 4, 4))  # one level per entry, /2 resolution between
    norm: str = "group"  # 2-D conv: "group" or "batch" (foldable for export); conv1d: the 1-D counterpart
    seed_size: int = 0  # upsample decoder: side of its first feature map; 0 = the conv encoder's map side
    vit_width: int = 128  # vit encoder: token width
    vit_depth: int = 4  # vit encoder: transformer blocks
    heads: int = 4  # vit encoder: attention heads (head width must be a multiple of 4 for 2-D RoPE)
    mlp_ratio: float = 4.0  # vit encoder: SwiGLU hidden ratio (parameter-matched to a GELU MLP)
    patch_size: int = 4  # vit encoder
    rope_theta: float = 100.0  # vit encoder: RoPE base, small for grids of a few dozen tokens
    posterior: str = "power_spherical"  # "power_spherical" (closed-form KL, no rejection) or "vmf"
    deterministic: bool = False  # plain spherical autoencoder: z = mu, no kappa head, no KL (Spherinator's Autoencoder)
    kappa_min: float = 1.0  # kappa = softplus(.) + kappa_min (Spherinator: 1, so q is never near-uniform)
    kappa_max: float | None = None  # optional clamp of kappa (the gradient stops above it); None = no cap
    kappa_init: float = 10.0  # kappa of every input at initialisation (bias of the kappa head; weight 0)
    fixed_kappa: float | None = None  # a constant concentration: kappa = fixed_kappa exactly, no kappa head

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        if self.backbone == "conv1d":
            self.signal_length = self.signal_length or self.image_size
            self.image_size, self.decoder, self.seed_size = self.signal_length, "conv", 0
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line fix when the settings do not fit together."""
        if self.family != "psvae":
            raise ValueError(f"a '{self.family}' config is not a Power-Spherical VAE config (family 'psvae')")
        for name, value, allowed in (
            ("backbone", self.backbone, BACKBONES),
            ("decoder", self.decoder, DECODERS),
            ("posterior", self.posterior, POSTERIORS),
            ("norm", self.norm, ("group", "batch")),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}': use one of {', '.join(allowed)}")
        if self.z_dim < 2:
            raise ValueError(f"z_dim must be >= 2 (the sphere S^(d-1)), got {self.z_dim}")
        self._validate_sizes()
        self._validate_kappa()

    def _validate_sizes(self) -> None:
        stride = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % stride != 0 or self.image_size < stride:
            what = "signal_length" if self.backbone == "conv1d" else "image_size"
            raise ValueError(f"{what} {self.image_size} is not a multiple of the conv stride {stride}")
        if self.backbone == "vit" and self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.backbone == "vit" and (self.vit_width % self.heads or (self.vit_width // self.heads) % 4):
            raise ValueError(f"vit_width {self.vit_width} / heads {self.heads} must be a multiple of 4 (2-D RoPE)")
        if self.decoder == "upsample":
            levels = math.log2(self.image_size / self.decoder_seed_size)
            if levels < 0 or levels != int(levels):
                raise ValueError(
                    f"seed_size {self.decoder_seed_size} cannot reach image_size {self.image_size} by doubling; "
                    f"use image_size / 2^k (e.g. {self.conv_map_size})"
                )

    def _validate_kappa(self) -> None:
        if self.fixed_kappa is not None and not self.fixed_kappa > 0:
            raise ValueError(f"fixed_kappa must be > 0, got {self.fixed_kappa}")
        if not self.kappa_min >= 0:
            raise ValueError(f"kappa_min must be >= 0, got {self.kappa_min}")
        if self.kappa_max is not None and not self.kappa_max > self.kappa_min:
            raise ValueError(f"kappa_max {self.kappa_max} must be > kappa_min {self.kappa_min}")
        top = math.inf if self.kappa_max is None else self.kappa_max
        if not self.kappa_min < self.kappa_init <= top:
            raise ValueError(
                f"kappa_init {self.kappa_init} must be in (kappa_min, kappa_max] = ({self.kappa_min}, {top}]"
            )

    @property
    def conv_map_size(self) -> int:
        """Side (length for conv1d) of the conv encoder's last feature map, flattened into the heads."""
        return self.image_size // 2 ** (len(self.channel_mults) - 1)

    @property
    def decoder_seed_size(self) -> int:
        return self.seed_size or self.conv_map_size

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One item without batch: (C, H, W) images or (C, L) signals."""
        if self.backbone == "conv1d":
            return (self.in_channels, self.signal_length)
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channel_mults"] = list(self.channel_mults)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PSVAEConfig:
        """Build from a saved dict; unknown keys (and another family) are an error, never silently dropped."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown Power-Spherical VAE config keys {unknown}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------
# Posterior head: features -> (mu on S^(d-1), kappa)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0: x = y + log(1 - e^-y)."""
    return y + math.log(-math.expm1(-y))


class SphereHead(nn.Module):
    """mu = normalize(W_loc h); kappa = softplus(w_kappa h + b) + kappa_min, clamped at kappa_max (when set), or
    exactly fixed_kappa; deterministic models have no kappa (kappa = inf: a point mass at mu)."""

    def __init__(self, features: int, cfg: PSVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.loc = nn.Linear(features, cfg.z_dim)
        learned = cfg.fixed_kappa is None and not cfg.deterministic
        self.kappa = nn.Linear(features, 1) if learned else None
        if self.kappa is not None:  # every input starts at kappa_init: moderate, neither uniform nor a point
            nn.init.zeros_(self.kappa.weight)
            nn.init.constant_(self.kappa.bias, inverse_softplus(cfg.kappa_init - cfg.kappa_min))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = F.normalize(self.loc(h).float(), dim=-1)  # (B, d) on the unit sphere
        batch, cfg = h.shape[0], self.cfg
        if self.kappa is None:
            value = math.inf if cfg.deterministic else cfg.fixed_kappa
            return mu, torch.full((batch,), value, device=h.device)
        kappa = F.softplus(self.kappa(h).float().squeeze(-1)) + cfg.kappa_min  # (B,), never 0-d
        return mu, kappa if cfg.kappa_max is None else kappa.clamp(max=cfg.kappa_max)


def _cond_dim(cfg: PSVAEConfig) -> int:
    return 4 * cfg.width if cfg.num_classes > 0 else 0


def _conv_levels(cfg: PSVAEConfig) -> list[int]:
    return [cfg.width * mult for mult in cfg.channel_mults]


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    for block in blocks:
        x = block(x, cond) if isinstance(block, ConvResBlock) else block(x)
    return x


class _Conditioned(nn.Module):
    """A label embedding (with a null class) when the model is class-conditional."""

    def _init_labels(self, cfg: PSVAEConfig, dim: int) -> None:
        self.label_embed = LabelEmbedding(cfg.num_classes, dim) if cfg.num_classes > 0 else None

    def condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return self.label_embed(labels) if self.label_embed is not None else None


# ---------------------------------------------------------------------------------------------------------
# 2-D backbones


class ConvEncoder2d(_Conditioned):
    """Stem -> residual levels with strided downsampling -> (C, s, s) -> flatten -> sphere head."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        levels = _conv_levels(cfg)
        self._init_labels(cfg, _cond_dim(cfg))
        self.stem = nn.Conv2d(cfg.in_channels, levels[0], 3, padding=1)
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, _cond_dim(cfg), Downsample)
        self.head = SphereHead(levels[-1] * cfg.conv_map_size**2, cfg)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = _run_blocks(self.blocks, self.stem(x), self.condition(labels))  # (B, C, s, s)
        return self.head(h.flatten(1))


class ConvDecoder2d(_Conditioned):
    """Linear(z -> C s s) -> residual levels with nearest upsampling + conv -> norm -> SiLU -> conv -> tanh."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        levels = _conv_levels(cfg)[::-1]
        self._init_labels(cfg, _cond_dim(cfg))
        self.map_shape = (levels[0], cfg.conv_map_size, cfg.conv_map_size)
        self.embed = nn.Linear(cfg.z_dim, math.prod(self.map_shape))
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, _cond_dim(cfg), Upsample)
        self.out_norm = make_norm2d(cfg.norm, levels[-1])
        self.out = nn.Conv2d(levels[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(z).view(-1, *self.map_shape)  # (B, C, s, s)
        h = _run_blocks(self.blocks, h, self.condition(labels))
        return torch.tanh(self.out(F.silu(self.out_norm(h))))


class UpsamplingDecoder2d(_Conditioned):
    """Spherinator's UpsamplingDecoder2D idea with checked sizes: Linear(z -> C seed^2) -> k x [nearest x2, conv3,
    norm, SiLU] with channels halved (not below width) -> 1x1 conv -> tanh; seed 2^k must equal image_size."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        channels, seed = cfg.width * cfg.channel_mults[-1], cfg.decoder_seed_size
        self._init_labels(cfg, channels)
        self.map_shape = (channels, seed, seed)
        self.embed = nn.Linear(cfg.z_dim, math.prod(self.map_shape))
        self.in_norm = make_norm2d(cfg.norm, channels)
        layers = []
        for _ in range(round(math.log2(cfg.image_size // seed))):
            out = max(channels // 2, cfg.width)
            layers += [
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
            ]
            layers += [make_norm2d(cfg.norm, out), nn.SiLU()]
            channels = out
        self.levels = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, cfg.in_channels, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(z).view(-1, *self.map_shape)  # (B, C, seed, seed)
        cond = self.condition(labels)
        if cond is not None:
            h = h + cond[:, :, None, None]  # the class as a per-channel offset of the seed map
        return torch.tanh(self.out(self.levels(F.silu(self.in_norm(h)))))


class ViTEncoder(_Conditioned):
    """Patch embedding + sin-cos positions -> RoPE transformer (sphere family blocks) -> mean token -> sphere head."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        grid, cond_dim = cfg.image_size // cfg.patch_size, cfg.vit_width if cfg.num_classes > 0 else 0
        self._init_labels(cfg, cond_dim)
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.vit_width, cfg.patch_size, stride=cfg.patch_size)
        angles = rope_angles_2d(grid, grid, cfg.vit_width // cfg.heads, cfg.rope_theta)  # (N, head_dim/2)
        self.register_buffer("pos", sincos_pos_embed_2d(grid, grid, cfg.vit_width), persistent=False)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.vit_width, cfg.heads, cfg.mlp_ratio, True, cond_dim) for _ in range(cfg.vit_depth)
        )
        self.norm = nn.RMSNorm(cfg.vit_width, eps=1e-6)
        self.head = SphereHead(cfg.vit_width, cfg)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, width)
        cond = self.condition(labels)
        for block in self.blocks:
            h = block(h, self.rope_cos, self.rope_sin, cond)
        return self.head(self.norm(h).mean(1))  # (B, width) -> (mu, kappa)


# ---------------------------------------------------------------------------------------------------------
# 1-D backbones (spectra and other signals (C, L)): the same residual blocks with dims=1


class ConvEncoder1d(_Conditioned):
    """Stem -> 1-D residual levels with strided downsampling -> (C, l) -> flatten -> sphere head."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        levels = _conv_levels(cfg)
        self._init_labels(cfg, _cond_dim(cfg))
        self.stem = nn.Conv1d(cfg.in_channels, levels[0], 3, padding=1)
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, _cond_dim(cfg), Downsample, dims=1)
        self.head = SphereHead(levels[-1] * cfg.conv_map_size, cfg)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        h = _run_blocks(self.blocks, self.stem(x), self.condition(labels))  # (B, C, l)
        return self.head(h.flatten(1))


class ConvDecoder1d(_Conditioned):
    """Linear(z -> C l) -> 1-D residual levels with upsampling -> norm -> SiLU -> conv; linear output (any range)."""

    def __init__(self, cfg: PSVAEConfig):
        super().__init__()
        levels = _conv_levels(cfg)[::-1]
        self._init_labels(cfg, _cond_dim(cfg))
        self.map_shape = (levels[0], cfg.conv_map_size)
        self.embed = nn.Linear(cfg.z_dim, math.prod(self.map_shape))
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, _cond_dim(cfg), Upsample, dims=1)
        self.out_norm = make_norm(cfg.norm, levels[-1], dims=1)
        self.out = nn.Conv1d(levels[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = _run_blocks(self.blocks, self.embed(z).view(-1, *self.map_shape), self.condition(labels))
        return self.out(F.silu(self.out_norm(h)))  # (B, C, L)


def build_backbones(cfg: PSVAEConfig) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for the configured backbone and decoder."""
    if cfg.backbone == "conv1d":
        return ConvEncoder1d(cfg), ConvDecoder1d(cfg)
    encoder = ViTEncoder(cfg) if cfg.backbone == "vit" else ConvEncoder2d(cfg)
    decoder = UpsamplingDecoder2d(cfg) if cfg.decoder == "upsample" else ConvDecoder2d(cfg)
    return encoder, decoder


# ---------------------------------------------------------------------------------------------------------
# The model


class PSVAE(nn.Module):
    """Encoder -> (mu, kappa) -> q(z|x) on S^(d-1) -> decoder; training forward, sampling and reconstruction."""

    can_sample = True  # every point of the sphere decodes: samples are D(z), z ~ Uniform(S^(d-1))
    steps_are_prefix = True  # each further step is a deterministic encode(mu) -> decode cycle
    default_eval_steps = (1,)

    def __init__(self, config: PSVAEConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = build_backbones(config)

    @property
    def is_signal(self) -> bool:
        return self.config.backbone == "conv1d"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups: the encoder (with its mu/kappa head) and the decoder."""
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """Conditional models get the null class when labels is None; unconditional ones reject labels."""
        if self.config.num_classes == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes=0); do not pass class labels")
            return None
        if labels is None:
            return torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long)

    def posterior(self, mu: torch.Tensor, kappa: torch.Tensor) -> PowerSpherical | VonMisesFisher:
        """q(z|x) with location mu (B, d) and concentration kappa (B,)."""
        return (VonMisesFisher if self.config.posterior == "vmf" else PowerSpherical)(mu, kappa)

    def prior(self, device: torch.device | str | None = None) -> HypersphericalUniform:
        return HypersphericalUniform(self.config.z_dim, device or next(self.parameters()).device)

    def kl(self, mu: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || Uniform(S^(d-1))) per sample (B,), closed form; zeros for the deterministic variant."""
        if self.config.deterministic:
            return torch.zeros(mu.shape[0], device=mu.device)
        return self.posterior(mu, kappa).kl_to_uniform()

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu (B, d) on the unit sphere, kappa (B,)); kappa = inf for the deterministic variant."""
        return self.encoder(x, self._labels(labels, x.shape[0], x.device))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(z) for unit vectors z (B, d): images (B, C, H, W) in [-1, 1] or signals (B, C, L)."""
        return self.decoder(z, self._labels(labels, z.shape[0], z.device))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training pass: mu, kappa = E(x); z ~ q(z|x) (reparameterised; mu when deterministic); x_hat = D(z)."""
        mu, kappa = self.encode(x, labels)
        z = mu if self.config.deterministic else self.posterior(mu, kappa).rsample()
        return {"mu": mu, "kappa": kappa, "z": z, "x_hat": self.decode(z, labels)}

    # ---- guidance -----------------------------------------------------------------------------------
    def _guided(self, fn, inputs: torch.Tensor, labels, scale: float) -> torch.Tensor:
        """fn(inputs, labels), or with CFG: out_uncond + scale * (out_cond - out_uncond) in one batch."""
        labels = self._labels(labels, inputs.shape[0], inputs.device)
        if scale == 1.0 or labels is None:
            return fn(inputs, labels)
        null = torch.full_like(labels, self.config.num_classes)
        cond, uncond = fn(torch.cat([inputs, inputs]), torch.cat([labels, null])).chunk(2)
        return uncond + scale * (cond - uncond)

    def _decode_guided(self, z: torch.Tensor, labels, cfg: float, cfg_mode: str) -> torch.Tensor:
        x = self._guided(self.decoder, z, labels, guidance_scales(cfg, cfg_mode)[1])
        return x if self.is_signal else x.clamp(-1, 1)

    def _encode_guided(self, x: torch.Tensor, labels, cfg: float, cfg_mode: str) -> torch.Tensor:
        """Guided mu, back on the sphere."""
        mu = self._guided(lambda inputs, y: self.encoder(inputs, y)[0], x, labels, guidance_scales(cfg, cfg_mode)[0])
        return F.normalize(mu, dim=-1)

    # ---- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int = 1,
        generator=None,
        labels: torch.Tensor | None = None,
        cfg: float = 1.0,
        cfg_mode: str = "combo",
        return_all: bool = False,
    ):
        """n outputs from z ~ Uniform(S^(d-1)): x = D(z), then steps-1 cycles x = D(mu(x)).

        generator: None, a torch.Generator, or a list of n (one per image: an image does not depend on its batch).
        labels: None = the null class for conditional models. cfg/cfg_mode: classifier-free guidance as the sphere
        family (models/sphere.guidance_scales: "combo" puts sqrt(cfg) on mu and on the pixels). return_all: the list
        of outputs after each step. Images are clamped to [-1, 1]; signals are returned as decoded.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        z = self.prior().sample(n, generator)  # (n, d)
        x = self._decode_guided(z, labels, cfg, cfg_mode)
        outputs = [x]
        for _ in range(steps - 1):
            x = self._decode_guided(self._encode_guided(x, labels, cfg, cfg_mode), labels, cfg, cfg_mode)
            outputs.append(x)
        return outputs if return_all else x

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        steps: int = 1,
        generator=None,
        labels: torch.Tensor | None = None,
        return_all: bool = False,
    ):
        """D(mu(x)), then steps-1 further encode -> decode cycles on mu. generator: unused (no noise), accepted
        for the common interface."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        outputs = []
        for _ in range(steps):
            x = self._decode_guided(self.encode(x, labels)[0], labels, 1.0, "combo")
            outputs.append(x)
        return outputs if return_all else x


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> builder(**overrides) -> PSVAE

_SIZES = {
    "tiny": dict(width=16, depth=1, vit_width=64, vit_depth=2, heads=2, mlp_ratio=2.0),
    "small": dict(width=32, depth=2, vit_width=192, vit_depth=6, heads=3),
    "base": dict(width=64, depth=2, vit_width=384, vit_depth=8, heads=6),
}
BUILDER_OVERRIDES = ({f.name for f in fields(PSVAEConfig)} - {"family"}) | {"latent_dim"}


def _config_settings(size: dict, overrides: dict) -> dict:
    """Size defaults + overrides (None = not given); latent_dim is the engine's name for z_dim."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - BUILDER_OVERRIDES)
    if unknown:
        raise ValueError(f"psvae models take no setting {unknown}; known: {', '.join(sorted(BUILDER_OVERRIDES))}")
    if "latent_dim" in given and "z_dim" in given:
        raise ValueError("give latent_dim or z_dim (the same setting), not both")
    if "latent_dim" in given:
        given["z_dim"] = given.pop("latent_dim")
    return {**size, **given}


def _builder(size: dict):
    def build(**overrides) -> PSVAE:
        return PSVAE(PSVAEConfig(**_config_settings(size, overrides)))

    return build


PSVAE_MODELS = {f"psvae_{name}": _builder(size) for name, size in _SIZES.items()}
PSVAE_MODELS["psvae"] = PSVAE_MODELS["psvae_base"]  # the family name alone means the base size
