"""Sphere Encoder (arXiv 2602.15030): an autoencoder whose latent lives on the sphere of radius sqrt(L).

Two backbones share one interface: `vit` (RoPE transformer with a latent MLP-mixer) and `convnet` (residual
conv net with a spatial latent). Every point of the sphere decodes to an image, so a random point gives a new
image in one decoder pass, and a few encode -> re-noise -> decode rounds refine it (DESIGN §3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (
    ConvResBlock,
    Downsample,
    LabelEmbedding,
    LatentMixer,
    TransformerBlock,
    Upsample,
    conv_stack,
    make_norm2d,
    rope_angles_2d,
    sincos_pos_embed_2d,
    sphere_project,
)


def default_compression_ratio(image_size: int) -> float:
    """Pixels per latent entry, 3 S^2 / L: 1.5 up to 32 px (CIFAR, L = 2048), 3 above (ImageNet 256 px)."""
    return 1.5 if image_size <= 32 else 3.0


def default_patch_size(image_size: int) -> int:
    """The official per-resolution patch: 2 up to 64 px, then S / 32 (128 px: 4, 256 px: 8, 512 px: 16)."""
    return max(2, image_size // 32)


def default_latent_dim(image_size: int) -> int:
    """L = 3 S^2 / compression ratio: 2048 at 32 px (16x16 tokens x 8), 65536 at 256 px (32x32 x 64)."""
    return round(3 * image_size**2 / default_compression_ratio(image_size))


def default_mixer_depth(image_size: int) -> int:
    """Latent MLP-mixer blocks: 2 up to 32 px (the official CIFAR setting), 4 above (ImageNet, faces)."""
    return 2 if image_size <= 32 else 4


def default_noise_angle(image_size: int) -> float:
    """theta_max in degrees: 80 for images up to 32 px, 85 above (DESIGN §3)."""
    return 80.0 if image_size <= 32 else 85.0


@dataclass
class SphereConfig:
    """Every architecture setting of a Sphere Encoder; this is what config.json and checkpoints store."""

    family: str = "sphere"  # the model family (docs/families.md); configs saved without it are sphere ones
    backbone: str = "vit"  # "vit" or "convnet"
    image_size: int = 32
    in_channels: int = 3
    latent_dim: int = 2048  # L = number of latent entries; the sphere has radius sqrt(L)
    num_classes: int = 0  # 0 = unconditional; otherwise adaLN-Zero conditioning with a null class
    noise_angle: float = 80.0  # theta_max (degrees) used by sample()/reconstruct(); sigma_max = tan(theta_max)
    width: int = 384  # vit: token width; convnet: base channel count
    depth: int = 6  # vit: transformer blocks in each of E and D; convnet: residual blocks per level
    heads: int = 6  # vit only
    mlp_ratio: float = 4.0  # vit SwiGLU hidden ratio (parameter-matched to a GELU MLP of this ratio)
    patch_size: int = 0  # vit; 0 = the official per-resolution patch (default_patch_size)
    qk_norm: bool = True  # vit: RMSNorm on queries and keys
    rope_theta: float = 100.0  # vit: RoPE base; small because grids are at most a few dozen tokens wide
    mixer_depth: int = 0  # latent MLP-mixer blocks after E's head and D's embedding; 0 = by image size
    mixer_expansion: int = 2
    # vit decoder: "width" mixes after the linear embedding, on W channels (the official code); "latent" mixes the
    # latent channels before it (checkpoints written before this setting existed load as "latent")
    decoder_mixer: str = "width"
    pixel_head: str = "auto"  # vit: "conv" (small conv head), "linear" (unpatchify), "auto" = conv up to 32 px
    pixel_head_channels: int = 64  # vit conv pixel head width
    channel_mults: tuple[int, ...] = field(default=(1, 2, 2))  # convnet: one level per entry, /2 between
    norm: str = "group"  # convnet: "group" or "batch" (foldable for export)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        if self.backbone == "convnet":
            self.decoder_mixer = "width"  # no mixer in the convnet: one canonical value keeps configs comparable
        if self.patch_size == 0:
            self.patch_size = default_patch_size(self.image_size)
        if self.mixer_depth == 0:
            self.mixer_depth = default_mixer_depth(self.image_size)
        if self.pixel_head == "auto":
            self.pixel_head = "conv" if self.image_size <= 32 else "linear"
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line fix when the settings do not fit together."""
        if self.family != "sphere":
            raise ValueError(f"a '{self.family}' config is not a Sphere Encoder config (family 'sphere')")
        if self.backbone not in ("vit", "convnet"):
            raise ValueError(f"unknown backbone '{self.backbone}': use 'vit' or 'convnet'")
        if self.decoder_mixer not in ("width", "latent"):
            raise ValueError(f"unknown decoder_mixer '{self.decoder_mixer}': use 'width' or 'latent'")
        stride = self.patch_size if self.backbone == "vit" else 2 ** (len(self.channel_mults) - 1)
        if self.image_size % stride != 0 or self.image_size < stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the {self.backbone} stride {stride}")
        grid = self.latent_grid
        if self.latent_dim % (grid * grid) != 0:
            raise ValueError(
                f"latent_dim {self.latent_dim} is not a multiple of the {grid}x{grid} latent grid; "
                f"choose a multiple of {grid * grid} (e.g. {default_latent_dim(self.image_size)})"
            )

    @property
    def latent_grid(self) -> int:
        """Side of the latent grid: tokens per row (vit) or latent feature-map size (convnet)."""
        if self.backbone == "vit":
            return self.image_size // self.patch_size
        return self.image_size // 2 ** (len(self.channel_mults) - 1)

    @property
    def latent_channels(self) -> int:
        return self.latent_dim // self.latent_grid**2

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Latent shape without batch: (N, C) tokens for vit, (C, h, w) for convnet."""
        grid, channels = self.latent_grid, self.latent_channels
        return (grid * grid, channels) if self.backbone == "vit" else (channels, grid, grid)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channel_mults"] = list(self.channel_mults)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SphereConfig:
        """Build from a saved dict; unknown keys are an error so a foreign config is not silently accepted."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Sphere Encoder config keys {unknown}")
        return cls(**{**LEGACY_DEFAULTS, **data})


# Settings added after checkpoints were already in use, with the value that reproduces those older models.
LEGACY_DEFAULTS = {"decoder_mixer": "latent"}


# ---------------------------------------------------------------------------------------------------------
# ViT backbone


class _TokenGrid(nn.Module):
    """Holds the fixed sin-cos positions and RoPE tables of a square token grid (not saved: derived)."""

    def __init__(self, grid: int, width: int, head_dim: int, rope_theta: float):
        super().__init__()
        angles = rope_angles_2d(grid, grid, head_dim, rope_theta)  # (N, head_dim/2)
        self.register_buffer("pos", sincos_pos_embed_2d(grid, grid, width), persistent=False)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)


class ViTEncoder(nn.Module):
    """Patch embedding -> RoPE transformer -> linear head -> latent MLP-mixer; returns z (B, N, C)."""

    def __init__(self, cfg: SphereConfig):
        super().__init__()
        cond_dim = cfg.width if cfg.num_classes > 0 else 0
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.grid = _TokenGrid(cfg.latent_grid, cfg.width, cfg.width // cfg.heads, cfg.rope_theta)
        self.label_embed = LabelEmbedding(cfg.num_classes, cfg.width) if cond_dim else None
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, cond_dim) for _ in range(cfg.depth)
        )
        self.norm = nn.RMSNorm(cfg.width, eps=1e-6)
        self.head = nn.Linear(cfg.width, cfg.latent_channels)
        self.mixer = LatentMixer(cfg.latent_grid**2, cfg.latent_channels, cfg.mixer_depth, cfg.mixer_expansion)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.grid.pos  # (B, N, width)
        cond = self.label_embed(labels) if self.label_embed is not None else None
        for block in self.blocks:
            x = block(x, self.grid.rope_cos, self.grid.rope_sin, cond)
        return self.mixer(self.head(self.norm(x)))  # (B, N, C)


class ViTDecoder(nn.Module):
    """Linear embedding -> latent MLP-mixer on width W -> RoPE transformer -> pixel head -> tanh."""

    def __init__(self, cfg: SphereConfig):
        super().__init__()
        cond_dim = cfg.width if cfg.num_classes > 0 else 0
        self.patch_size, self.grid_size, self.out_channels = cfg.patch_size, cfg.latent_grid, cfg.in_channels
        self.mix_first = cfg.decoder_mixer == "latent"  # legacy layout: mix the latent channels, then embed
        mixer_channels = cfg.latent_channels if self.mix_first else cfg.width
        self.mixer = LatentMixer(cfg.latent_grid**2, mixer_channels, cfg.mixer_depth, cfg.mixer_expansion)
        self.embed = nn.Linear(cfg.latent_channels, cfg.width)
        self.grid = _TokenGrid(cfg.latent_grid, cfg.width, cfg.width // cfg.heads, cfg.rope_theta)
        self.label_embed = LabelEmbedding(cfg.num_classes, cfg.width) if cond_dim else None
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, cond_dim) for _ in range(cfg.depth)
        )
        self.norm = nn.RMSNorm(cfg.width, eps=1e-6)
        self.pixel_head = cfg.pixel_head
        head_channels = cfg.pixel_head_channels if cfg.pixel_head == "conv" else cfg.in_channels
        self.head = nn.Linear(cfg.width, cfg.patch_size**2 * head_channels)
        if cfg.pixel_head == "conv":
            self.head_conv = nn.Conv2d(head_channels, head_channels, 3, padding=1)
            self.head_out = nn.Conv2d(head_channels, cfg.in_channels, 3, padding=1)
            nn.init.zeros_(self.head_out.weight)
            nn.init.zeros_(self.head_out.bias)
        else:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image."""
        batch, p, grid = x.shape[0], self.patch_size, self.grid_size
        x = x.view(batch, grid, grid, p, p, -1).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(batch, -1, grid * p, grid * p)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(self.mixer(v)) if self.mix_first else self.mixer(self.embed(v))
        x = x + self.grid.pos  # (B, N, width)
        cond = self.label_embed(labels) if self.label_embed is not None else None
        for block in self.blocks:
            x = block(x, self.grid.rope_cos, self.grid.rope_sin, cond)
        x = self.unpatchify(self.head(self.norm(x)))  # (B, C', H, W)
        if self.pixel_head == "conv":
            x = self.head_out(F.silu(self.head_conv(x)))
        return torch.tanh(x)


# ---------------------------------------------------------------------------------------------------------
# ConvNet backbone


def _conv_levels(cfg: SphereConfig) -> list[int]:
    return [cfg.width * mult for mult in cfg.channel_mults]


class ConvEncoder(nn.Module):
    """Residual conv encoder to a spatial latent (C, h, w); no flattening bottleneck."""

    def __init__(self, cfg: SphereConfig):
        super().__init__()
        levels, cond_dim = _conv_levels(cfg), (4 * cfg.width if cfg.num_classes > 0 else 0)
        self.label_embed = LabelEmbedding(cfg.num_classes, cond_dim) if cond_dim else None
        self.stem = nn.Conv2d(cfg.in_channels, levels[0], 3, padding=1)
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, cond_dim, Downsample)
        channels = levels[-1]
        self.head = nn.Conv2d(channels, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.label_embed(labels) if self.label_embed is not None else None
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, cond) if isinstance(block, ConvResBlock) else block(x)
        return self.head(x)  # (B, C, h, w)


class ConvDecoder(nn.Module):
    """Residual conv decoder from the spatial latent; nearest up-sampling + conv; zero-initialised output."""

    def __init__(self, cfg: SphereConfig):
        super().__init__()
        levels, cond_dim = _conv_levels(cfg)[::-1], (4 * cfg.width if cfg.num_classes > 0 else 0)
        self.label_embed = LabelEmbedding(cfg.num_classes, cond_dim) if cond_dim else None
        self.stem = nn.Conv2d(cfg.latent_channels, levels[0], 3, padding=1)
        self.blocks = conv_stack(levels, cfg.depth, cfg.norm, cond_dim, Upsample)
        channels = levels[-1]
        self.out_norm = make_norm2d(cfg.norm, channels)
        self.out = nn.Conv2d(channels, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.label_embed(labels) if self.label_embed is not None else None
        x = self.stem(v)
        for block in self.blocks:
            x = block(x, cond) if isinstance(block, ConvResBlock) else block(x)
        return torch.tanh(self.out(F.silu(self.out_norm(x))))


# ---------------------------------------------------------------------------------------------------------
# The model


CFG_MODES = ("combo", "both", "latent", "pixel")


def guidance_scales(cfg: float, cfg_mode: str) -> tuple[float, float]:
    """(scale after E, scale after D) for guidance cfg. "combo" (the official default) puts sqrt(cfg) at both
    places so the total is cfg; "both" puts cfg at each; "latent" / "pixel" only after E / D."""
    if cfg_mode not in CFG_MODES:
        raise ValueError(f"unknown cfg_mode '{cfg_mode}': use one of {', '.join(CFG_MODES)}")
    if not cfg >= 0:
        raise ValueError(f"the guidance scale must be >= 0 (1 = off), got {cfg}")
    if cfg_mode == "combo":
        return math.sqrt(cfg), math.sqrt(cfg)
    return (cfg if cfg_mode in ("both", "latent") else 1.0), (cfg if cfg_mode in ("both", "pixel") else 1.0)


def per_image_noise(n: int, shape: tuple[int, ...], generator, device: torch.device | str) -> torch.Tensor:
    """N(0, I) noise (n, *shape); `generator` is None, one torch.Generator, or a list of n (one per image, so
    an image does not depend on the batch it is drawn in)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images")
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn((n, *shape), generator=generator, device=gen_device).to(device)


class SphereEncoder(nn.Module):
    """Encoder E, decoder D and the sphere projection f; training forward, sampling and reconstruction."""

    # Capabilities the scripts honour (docs/families.md): a random point of the sphere decodes to an image, and
    # step T of a longer sampling run equals a T-step run (one run of max(steps) gives every shorter count).
    can_sample = True
    steps_are_prefix = True
    default_eval_steps = (1, 2, 4)

    def __init__(self, config: SphereConfig):
        super().__init__()
        self.config = config
        if config.backbone == "vit":
            self.encoder, self.decoder = ViTEncoder(config), ViTDecoder(config)
        else:
            self.encoder, self.decoder = ConvEncoder(config), ConvDecoder(config)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.config.latent_shape

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups: the paper trains the encoder at a tenth of the decoder's lr (--encoder_lr_mult)."""
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}

    @property
    def sigma_max(self) -> float:
        return math.tan(math.radians(self.config.noise_angle))

    @staticmethod
    def project(z: torch.Tensor) -> torch.Tensor:
        """f: onto the sphere of radius sqrt(L)."""
        return sphere_project(z)

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """Conditional models get the null class when labels is None; unconditional ones reject labels."""
        if self.config.num_classes == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes=0); do not pass class labels")
            return None
        if labels is None:
            return torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z = E(x), before projection; (B, *latent_shape)."""
        return self.encoder(x, self._labels(labels, x.shape[0], x.device))

    def decode(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x = D(v) in [-1, 1]; v is expected on the sphere."""
        return self.decoder(v, self._labels(labels, v.shape[0], v.device))

    def forward(
        self,
        x: torch.Tensor,
        noise_small: torch.Tensor,
        noise_big: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One training pass (DESIGN §3 steps 1-4 and E(x_big)); the loss draws the scaled noises."""
        z = self.encode(x, labels)
        v = self.project(z)
        v_small, v_big = self.project(v + noise_small), self.project(v + noise_big)
        both_labels = None if labels is None else torch.cat([labels, labels])
        x_small, x_big = self.decode(torch.cat([v_small, v_big]), both_labels).chunk(2)
        z_big = self.encode(x_big, labels)
        return {"z": z, "x_small": x_small, "x_big": x_big, "z_big": z_big}

    # ---- guidance -----------------------------------------------------------------------------------
    def _guided(self, fn, inputs: torch.Tensor, labels, scale: float) -> torch.Tensor:
        """fn(inputs, labels), or with CFG: out_uncond + scale * (out_cond - out_uncond) in one batch."""
        labels = self._labels(labels, inputs.shape[0], inputs.device)
        if scale == 1.0 or labels is None:
            return fn(inputs, labels)
        null = torch.full_like(labels, self.config.num_classes)
        cond, uncond = fn(torch.cat([inputs, inputs]), torch.cat([labels, null])).chunk(2)
        return uncond + scale * (cond - uncond)

    def _encode_guided(self, x, labels, cfg: float, cfg_mode: str):
        return self._guided(self.encoder, x, labels, guidance_scales(cfg, cfg_mode)[0])

    def _decode_guided(self, v, labels, cfg: float, cfg_mode: str):
        return self._guided(self.decoder, v, labels, guidance_scales(cfg, cfg_mode)[1]).clamp(-1, 1)

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
        noise_angle: float | None = None,
        return_all: bool = False,
    ):
        """n images in [-1, 1] from random points of the sphere with `steps` rounds (DESIGN §3 sampling).

        x = D(f(e)); then steps-1 times z = E(x), x = D(f(f(z) + sigma_max e')), e' drawn once per image.
        generator: None, a torch.Generator, or a list of n (per-image reproducibility). labels: None = the
        null class for conditional models. cfg_mode: where guidance applies (see guidance_scales).
        noise_angle: refinement noise in degrees (None = the model's theta_max). return_all: list of the
        images after each step (step T of a longer run equals a T-step run).
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        device = next(self.parameters()).device
        sigma = math.tan(math.radians(self.config.noise_angle if noise_angle is None else noise_angle))
        x = self._decode_guided(
            self.project(per_image_noise(n, self.latent_shape, generator, device)), labels, cfg, cfg_mode
        )
        outputs = [x]
        if steps > 1:
            renoise = per_image_noise(n, self.latent_shape, generator, device)  # e', reused every round
            for _ in range(steps - 1):
                z = self._encode_guided(x, labels, cfg, cfg_mode)
                x = self._decode_guided(self.project(self.project(z) + sigma * renoise), labels, cfg, cfg_mode)
                outputs.append(x)
        return outputs if return_all else x

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        steps: int = 1,
        generator=None,
        labels: torch.Tensor | None = None,
        noise_angle: float = 0.0,
        return_all: bool = False,
    ):
        """Encode without noise and decode; each further step re-encodes the output and re-projects it with
        noise of `noise_angle` degrees (0 = pure encode/decode cycles), same rule as sampling."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        out = self.decode(self.project(self.encode(x, labels)), labels)
        outputs = [out]
        sigma = math.tan(math.radians(noise_angle))
        renoise = per_image_noise(x.shape[0], self.latent_shape, generator, x.device) if sigma > 0 else 0.0
        for _ in range(steps - 1):
            v = self.project(self.project(self.encode(out, labels)) + sigma * renoise)
            out = self.decode(v, labels)
            outputs.append(out)
        return outputs if return_all else out


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> builder(**overrides) -> SphereEncoder

_VIT_SIZES = {
    "tiny": dict(width=64, depth=2, heads=2, mlp_ratio=2.0, mixer_depth=1, pixel_head_channels=16),
    "small": dict(width=512, depth=8, heads=8),
    "base": dict(width=768, depth=12, heads=12),
    "large": dict(width=1024, depth=24, heads=16, pixel_head_channels=128),
}
_CONVNET_SIZES = {
    "tiny": dict(width=32, depth=1),
    "small": dict(width=64, depth=2),
    "base": dict(width=128, depth=2),
    "large": dict(width=192, depth=3),
}


def _builder(backbone: str, size: dict):
    def build(**overrides) -> SphereEncoder:
        image_size = overrides.get("image_size", 32)
        settings = dict(
            backbone=backbone,
            latent_dim=default_latent_dim(image_size),
            noise_angle=default_noise_angle(image_size),
        )
        settings.update(size)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return SphereEncoder(SphereConfig(**settings))

    return build


SPHERE_MODELS = {f"vit_{name}": _builder("vit", size) for name, size in _VIT_SIZES.items()}
SPHERE_MODELS.update({f"convnet_{name}": _builder("convnet", size) for name, size in _CONVNET_SIZES.items()})
SPHERE_MODELS["vit"] = SPHERE_MODELS["vit_base"]  # family names alone mean the base size
SPHERE_MODELS["convnet"] = SPHERE_MODELS["convnet_base"]
