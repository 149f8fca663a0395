"""somar (QAR's method, done properly): a conv autoencoder with a bounded latent map (stage 1), self-organizing-map
codebooks fitted without gradients on its frozen maps (stage 2), and a causal transformer prior over the codebooks'
tokens (stage 3).

kind "autoencoder": x (B, C, H, W) in [-1, 1] -> encoder -> tanh -> map (B, c, H/f, W/f) in [-1, 1] -> decoder -> raw x̂.
kind "codebook": the frozen map of an autoencoder (a somar one, a vqvae run's pre-quantisation latent or an ldm_ae
run's posterior mean) cut into patches per level (coarse -> fine; patch 0 = the whole map, one token) and quantised by
a SOM per level (BMU only, exactly as trained: models/som.py). Reconstructions decode the finest level's BMU codes.
kind "prior": ARPrior (models/ar_prior.py) over [class, level 0 tokens, level 1 tokens, ...] of a frozen codebook
model, or over a vqvae run's token grid (one segment): the codebook then decodes the sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ar_prior import ARPrior, PriorSettings
from .ldm import KLAutoencoder, LDMConfig
from .som import SOMCodebook, patchify, unpatchify
from .sphere import CFG_MODES
from .typed_config import TypedConfig
from .vqvae import VQVAE, Decoder, Encoder, VQVAEConfig

KINDS = ("autoencoder", "codebook", "prior")
AUTOENCODER_FAMILIES = ("somar", "vqvae", "ldm")  # what a codebook's frozen map may come from
SOM_TOPOLOGIES = ("1d", "2d")
SOM_MODES = ("batch", "online")
SOM_DECAYS = ("exponential", "linear")
STAGE_FIELDS = ("autoencoder", "autoencoder_family", "autoencoder_sha256", "codebook", "codebook_sha256")


@dataclass
class SOMARConfig(TypedConfig):
    """Every architecture setting of a somar-family model (one of KINDS); what config.json and checkpoints store."""

    family: str = "somar"
    kind: str = "autoencoder"  # "autoencoder" (stage 1), "codebook" (stage 2, SOMs), "prior" (stage 3, AR prior)
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 0  # prior only: 0 = unconditional, else a null class (index num_classes) for CFG
    # autoencoder: the vqvae's conv blocks, the encoder's output bounded by tanh
    ae_width: int = 32  # channels of the first level; level i has ae_width * ae_mults[i]
    ae_mults: tuple[int, ...] = field(default=(1, 2, 2))  # downsampling factor f = 2^(len - 1): f4, 32 px -> 8x8
    ae_res_blocks: int = 1
    latent_channels: int = 4
    ae_groups: int = 8  # GroupNorm groups
    # codebooks, coarse -> fine
    level_patches: tuple[int, ...] = field(default=(0, 2))  # 0 = the whole map (one token); p = p x p patches
    level_sizes: tuple[int, ...] = field(default=(64, 256))  # SOM units per level
    som_topology: str = "2d"
    som_mode: str = "batch"
    som_steps: int = 2000  # fit steps over which sigma and the SOM rate decay (then stay at their end values)
    som_sigma_start: float | None = None  # None: half the grid's larger side
    som_sigma_end: float = 0.5
    som_lr_start: float = 0.5
    som_lr_end: float = 0.01
    som_decay: str = "exponential"
    # prior
    prior_width: int = 128
    prior_depth: int = 4
    prior_heads: int = 4
    # frozen earlier stages (filled by the engine from --autoencoder / --codebook runs)
    autoencoder: dict | None = None  # codebook: the frozen AE's config dict; None: this config's ae_* fields
    autoencoder_family: str | None = None  # its family (somar, vqvae, ldm); None: somar
    autoencoder_sha256: str | None = None
    codebook: dict | None = None  # prior: the frozen codebook's config (a somar codebook or a vqvae); None: own fields
    codebook_sha256: str | None = None

    def __post_init__(self):
        for name in _TUPLES:
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()
        if self.autoencoder is not None:  # normalised, so a round trip compares equal
            self.autoencoder = frozen_config(self.autoencoder_family or "somar", self.autoencoder).to_dict()
        if self.codebook is not None:
            self.codebook = frozen_config(self.codebook.get("family", "somar"), self.codebook).to_dict()

    def validate(self) -> None:
        """Raise ValueError with a one-line fix when the settings do not fit together."""
        if self.family != "somar":
            raise ValueError(f"a '{self.family}' config is not a somar config (family 'somar')")
        self._validate_types()
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("som_topology", self.som_topology, SOM_TOPOLOGIES),
            ("som_mode", self.som_mode, SOM_MODES),
            ("som_decay", self.som_decay, SOM_DECAYS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}': use one of {', '.join(allowed)}")
        if self.kind != "prior" and self.num_classes != 0:
            raise ValueError(f"a somar {self.kind} is unconditional; got num_classes={self.num_classes}: drop labels")
        if self.kind != "prior" and (self.codebook is not None or self.codebook_sha256 is not None):
            raise ValueError(f"a somar {self.kind} config holds no codebook (a prior's field)")
        if self.kind == "autoencoder" and any(getattr(self, name) is not None for name in STAGE_FIELDS[:3]):
            raise ValueError("a somar autoencoder config holds no autoencoder fields (a codebook's)")
        getattr(self, f"_validate_{self.kind}")()

    def _validate_autoencoder(self) -> None:
        if not self.ae_mults or min(self.ae_mults) < 1 or min(self.ae_width, self.ae_res_blocks) < 1:
            raise ValueError("ae_mults needs positive entries, ae_width and ae_res_blocks must be >= 1")
        widths = [self.ae_width * mult for mult in self.ae_mults]
        if self.ae_groups < 1 or any(w % self.ae_groups for w in widths):
            raise ValueError(f"ae_groups {self.ae_groups} does not divide the channel counts {widths}")
        if self.latent_channels < 1 or self.image_size % self.ae_factor:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the autoencoder factor {self.ae_factor}"
            )

    def _validate_codebook(self) -> None:
        if (self.autoencoder_family or "somar") not in AUTOENCODER_FAMILIES:
            raise ValueError(f"autoencoder_family must be one of {', '.join(AUTOENCODER_FAMILIES)}")
        channels, height, width = self.map_shape  # builds (so validates) the autoencoder's config
        if not self.level_patches or len(self.level_patches) != len(self.level_sizes):
            raise ValueError(f"level_patches {self.level_patches} and level_sizes {self.level_sizes} need one entry "
                             "per level")  # fmt: skip
        if min(self.level_sizes) < 2 or min(self.level_patches) < 0:
            raise ValueError("level_sizes must be >= 2 units and level_patches >= 0 (0 = the whole map)")
        bad = [p for p in self.level_patches if p and (height % p or width % p)]
        if bad:
            raise ValueError(f"level_patches {bad} do not divide the {height}x{width} latent map; change them")
        if self.som_steps < 1 or not 0 < self.som_lr_end <= self.som_lr_start <= 1 or self.som_sigma_end <= 0:
            raise ValueError("som_steps must be >= 1, 0 < som_lr_end <= som_lr_start <= 1 and som_sigma_end > 0")

    def _validate_prior(self) -> None:
        codebook = self.codebook_config()  # builds (so validates) the codebook's config
        if codebook.image_size != self.image_size or codebook.in_channels != self.in_channels:
            raise ValueError(f"the codebook takes {codebook.image_size} px images with {codebook.in_channels} "
                             f"channels, this prior {self.image_size} px and {self.in_channels}")  # fmt: skip
        if self.num_classes < 0 or min(self.prior_width, self.prior_depth, self.prior_heads) < 1:
            raise ValueError("num_classes must be >= 0; prior_width, prior_depth and prior_heads >= 1")
        if self.prior_width % self.prior_heads:
            raise ValueError(f"prior_heads {self.prior_heads} must divide prior_width {self.prior_width}")

    @property
    def ae_factor(self) -> int:
        """Downsampling factor f of this config's own autoencoder."""
        return 2 ** (len(self.ae_mults) - 1)

    def autoencoder_config(self):
        """The frozen AE's config (a SOMARConfig, VQVAEConfig or LDMConfig): the saved one, else the ae_* fields."""
        if self.autoencoder is not None:
            return frozen_config(self.autoencoder_family or "somar", self.autoencoder)
        keys = ("image_size", "in_channels", "ae_width", "ae_mults", "ae_res_blocks", "latent_channels", "ae_groups")
        return SOMARConfig(kind="autoencoder", **{key: getattr(self, key) for key in keys})

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the frozen autoencoder's latent map, the codebooks' input."""
        config = self.autoencoder_config()
        if isinstance(config, VQVAEConfig):
            return (config.codebook_dim, config.latent_size, config.latent_size)
        side = config.image_size // config.ae_factor
        return (config.latent_channels, side, side)

    def codebook_config(self):
        """A prior's frozen codebook config (a somar codebook or a VQVAEConfig): the saved one, else own fields."""
        if self.codebook is not None:
            return frozen_config(self.codebook.get("family", "somar"), self.codebook)
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _PRIOR_ONLY}
        return SOMARConfig(**{**own, "kind": "codebook"})


_TUPLES = ("ae_mults", "level_patches", "level_sizes")
_OPTIONAL = (*STAGE_FIELDS, "som_sigma_start")
_PRIOR_ONLY = ("kind", "num_classes", "prior_width", "prior_depth", "prior_heads", "codebook", "codebook_sha256")
_FIELD_TYPES = {
    **dict.fromkeys(("family", "kind", "som_topology", "som_mode", "som_decay"), str),
    **dict.fromkeys(("autoencoder_family", "autoencoder_sha256", "codebook_sha256"), str),
    **dict.fromkeys(("image_size", "in_channels", "num_classes", "ae_width", "ae_res_blocks"), int),
    **dict.fromkeys(("latent_channels", "ae_groups", "som_steps", "prior_width", "prior_depth", "prior_heads"), int),
    **dict.fromkeys(("som_sigma_start", "som_sigma_end", "som_lr_start", "som_lr_end"), (int, float)),
    **dict.fromkeys(_TUPLES, (tuple, list)),
    **dict.fromkeys(("autoencoder", "codebook"), dict),
}
SOMARConfig.FIELD_TYPES, SOMARConfig.TUPLES, SOMARConfig.OPTIONAL = _FIELD_TYPES, _TUPLES, _OPTIONAL


def frozen_config(family: str, data: dict):
    """The config of a frozen earlier stage from its dict: a somar autoencoder/codebook, a vqvae or an ldm
    autoencoder (ValueError for anything else)."""
    if family == "vqvae":
        return VQVAEConfig.from_dict(data)
    if family == "ldm":
        config = LDMConfig.from_dict(data)
        if config.kind != "autoencoder":
            raise ValueError(f"an ldm model of kind '{config.kind}' is no autoencoder; pass an ldm_ae_* run")
        return config
    if family != "somar":
        raise ValueError(f"a {family} model cannot be a somar stage; use a somar, vqvae or ldm_ae run")
    return SOMARConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------------------
# Stage 1: the autoencoder


class SOMARAutoencoder(nn.Module):
    """Encoder -> tanh (a bounded map, so SOM units live in a known box) -> decoder; MSE/L1 (+ LPIPS) trained."""

    can_sample = False
    cannot_sample_reason = "a stage-1 autoencoder: its somar_prior_* model samples"
    can_reconstruct = True
    steps_are_prefix = True  # re-encode cycles: step T of a longer run equals a T-step run
    default_eval_steps = (1,)

    def __init__(self, config: SOMARConfig):
        super().__init__()
        if config.kind != "autoencoder":
            raise ValueError(f"SOMARAutoencoder needs a somar config of kind 'autoencoder', got '{config.kind}'")
        self.config = config
        self.encoder = Encoder(_conv_settings(config))
        self.decoder = Decoder(_conv_settings(config))

    @property
    def downsample_factor(self) -> int:
        return self.config.ae_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> latent map (B, c, H/f, W/f) in [-1, 1]."""
        return torch.tanh(self.encoder(x))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw images (no output activation) from a latent map."""
        return self.decoder(latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass: the raw reconstruction."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        """decode(encode(x)) clamped to [-1, 1]; steps > 1: re-encode cycles. generator: unused (deterministic)."""
        if labels is not None:
            raise ValueError("a somar autoencoder is unconditional; do not pass class labels")
        return _cycles(lambda images: self.decode(self.encode(images)).clamp(-1, 1), x, steps, return_all)

    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (where an adaptive GAN weight would compare gradients)."""
        return self.decoder.conv_out.weight

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.decoder.parameters())}


def _conv_settings(config: SOMARConfig) -> SimpleNamespace:
    """The settings the vqvae's Encoder/Decoder read (mid-block attention only, as the ldm autoencoder)."""
    return SimpleNamespace(
        in_channels=config.in_channels, width=config.ae_width, channel_mults=config.ae_mults,
        num_res_blocks=config.ae_res_blocks, attn_at_lowest=False, z_channels=config.latent_channels,
        norm_groups=config.ae_groups, dropout=0.0,
    )  # fmt: skip


def _cycles(step, x: torch.Tensor, steps: int, return_all: bool):
    """`steps` applications of step (image -> image); the list of every output with return_all, else the last."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    outputs = []
    for _ in range(steps):
        x = step(x)
        outputs.append(x)
    return outputs if return_all else outputs[-1]


class FrozenMap(nn.Module):
    """A frozen autoencoder seen as map <-> image: somar's bounded map, a vqvae's pre-quantisation latent (on the
    unit sphere where its codebook is, as its decoder expects) or an ldm autoencoder's posterior mean."""

    def __init__(self, family: str, config):
        super().__init__()
        self.family = family
        self.net = {"somar": SOMARAutoencoder, "vqvae": VQVAE, "ldm": KLAutoencoder}[family](config)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenMap:
        return super().train(False)  # frozen: norms and dropout stay in eval mode

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, C, h, w) latent map."""
        if self.family == "somar":
            return self.net.encode(x)
        if self.family == "ldm":
            return self.net.encode(x)[0]
        z = self.net.encode_latent(x)
        sphere = self.net.config.quantizer == "vq" and self.net.config.l2_norm
        return F.normalize(z, dim=1) if sphere else z

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A latent map -> images in [-1, 1]."""
        return self.net.decode(latent).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------
# Stage 2: SOM codebooks on the frozen map


class SOMARCodebook(nn.Module):
    """A frozen autoencoder and one SOMCodebook per level (coarse -> fine), fitted by fit_step (no optimizer)."""

    can_sample = False
    cannot_sample_reason = "a stage-2 codebook: its somar_prior_* model samples"
    can_reconstruct = True
    steps_are_prefix = True
    default_eval_steps = (1,)

    def __init__(self, config: SOMARConfig):
        super().__init__()
        if config.kind != "codebook":
            raise ValueError(f"SOMARCodebook needs a somar config of kind 'codebook', got '{config.kind}'")
        self.config = config
        self.autoencoder = FrozenMap(config.autoencoder_family or "somar", config.autoencoder_config())
        channels, height, width = config.map_shape
        som = dict(topology=config.som_topology, sigma_start=config.som_sigma_start, sigma_end=config.som_sigma_end,
                   lr_start=config.som_lr_start, lr_end=config.som_lr_end, som_steps=config.som_steps,
                   decay=config.som_decay, mode=config.som_mode)  # fmt: skip
        dims = [channels * (p * p if p else height * width) for p in config.level_patches]
        self.levels = nn.ModuleList(SOMCodebook(size, dim, **som) for size, dim in zip(config.level_sizes, dims))

    def train(self, mode: bool = True) -> SOMARCodebook:
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def patches(self) -> tuple[int | None, ...]:
        """Each level's patch side, None for the whole map."""
        return tuple(p or None for p in self.config.level_patches)

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Units per level (after pruning: the survivors)."""
        return tuple(int(level.codes.shape[0]) for level in self.levels)

    @property
    def segment_lengths(self) -> tuple[int, ...]:
        """Tokens per level."""
        _, height, width = self.config.map_shape
        return tuple(1 if p is None else (height // p) * (width // p) for p in self.patches)

    def level_vectors(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Each level's patches of latent maps (B, C, h, w): a list of (B, N_level, D_level)."""
        return [patchify(latent.float(), p) for p in self.patches]

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> one (B, N_level) long tensor of BMU indices per level, coarse to fine."""
        latent = self.autoencoder.encode(x)
        with torch.autocast(x.device.type, enabled=False):  # BMUs by fp32 distances
            vectors = self.level_vectors(latent)
            return [level.bmu(v.flatten(0, 1)).view(v.shape[:2]) for level, v in zip(self.levels, vectors)]

    @torch.no_grad()
    def decode_tokens(self, tokens: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The finest level's tokens (B, N) (or the list of every level's) -> images in [-1, 1] (BMU codes only)."""
        return self.autoencoder.decode(self.level_map(len(self.levels) - 1, _last(tokens)))

    def level_map(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Level `index`'s tokens (B, N) -> the latent map (B, C, h, w) of their units."""
        codes = self.levels[index].codes[tokens]  # (B, N, D)
        return unpatchify(codes, self.patches[index], self.config.map_shape)

    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        """decode of the finest level's BMU-quantised map (the quality ceiling of the prior); steps > 1: cycles."""
        return _cycles(lambda images: self.decode_tokens(self.tokenize(images)), x, steps, return_all)

    @torch.no_grad()
    def fit_step(self, x: torch.Tensor) -> dict[str, float]:
        """One SOM step per level on the patches of the batch's encoded maps (the first initialises the codes from
        them); logs each level's batch quantisation error (qerr, before the step), sigma and SOM rate."""
        logs, latent = {}, self.autoencoder.encode(x)
        with torch.autocast(x.device.type, enabled=False):  # SOM sums and distances in fp32 even under bf16 training
            for k, (level, vectors) in enumerate(zip(self.levels, self.level_vectors(latent))):
                step = level.fit_step(vectors)  # the batch's errors also go into the epoch's (epoch_stats)
                logs.update({f"level{k}_qerr": step["quantization_error"], f"level{k}_sigma": step["sigma"]})
                logs[f"level{k}_som_lr"] = step["som_lr"]
        return logs

    def epoch_stats(self) -> dict[str, float]:
        """Each level's usage, perplexity, quantisation and topographic error since the last call (then reset)."""
        stats = {}
        for k, level in enumerate(self.levels):
            stats.update({f"level{k}_{name}": float(value) for name, value in level.epoch_stats().items()})
        return stats

    @torch.no_grad()
    def codebook_atlas(self, index: int) -> torch.Tensor:
        """Level `index`'s units decoded on their SOM grid: (C, rows·(H'+1)+1, cols·(W'+1)+1) in [-1, 1]. A patch
        level's unit sits at the map's middle token, every other token at the level's mean code, and the picture
        is the image region of that token (H' = patch·f); a whole-map level's unit is the whole image."""
        level = self.levels[index]
        codes, grid = level.codes.float(), level.grid.long()
        tokens = self.segment_lengths[index]
        mean = codes.mean(0, keepdim=True).expand(tokens, -1).clone()  # (N, D)
        maps = mean[None].repeat(len(codes), 1, 1)  # (K, N, D)
        maps[:, tokens // 2] = codes  # a unit at the middle position, the rest at the level's mean code
        images = self.autoencoder.decode(unpatchify(maps, self.patches[index], self.config.map_shape))
        images = self._crop(images, index)
        return _grid_picture(images, grid)

    def _crop(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """The image region a patch level's middle token covers (the whole image for a whole-map level)."""
        patch = self.patches[index]
        if patch is None:
            return images
        _, height, width = self.config.map_shape
        scale = images.shape[-1] // width
        per_row = width // patch
        row, col = divmod(self.segment_lengths[index] // 2, per_row)
        top, left, side = row * patch * scale, col * patch * scale, patch * scale
        return images[:, :, top : top + side, left : left + side]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """autoencoder (frozen: left out of the optimizer); the SOMs are buffers fitted by fit_step."""
        return {"autoencoder": list(self.autoencoder.parameters())}


def _last(tokens):
    return tokens[-1] if isinstance(tokens, (list, tuple)) else tokens


def _grid_picture(images: torch.Tensor, grid: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Images (K, C, H, W) placed at their unit's grid cell (K, 2) (row, col); empty cells stay at -1."""
    rows, cols = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
    _, channels, height, width = images.shape
    canvas = images.new_full((channels, rows * (height + pad) + pad, cols * (width + pad) + pad), -1.0)
    for image, (row, col) in zip(images, grid.tolist()):
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        canvas[:, top : top + height, left : left + width] = image
    return canvas


# ---------------------------------------------------------------------------------------------------------
# Stage 3: the autoregressive prior over a frozen codebook's tokens


class VQTokens(nn.Module):
    """A frozen vqvae as a prior's codebook: its token grid, row-major, is one segment."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.net = VQVAE(config)
        self.requires_grad_(False).eval()
        self.vocab_sizes, self.segment_lengths = (config.codebook_size,), (config.latent_size**2,)

    def train(self, mode: bool = True) -> VQTokens:
        return super().train(False)

    def tokenize(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.net.encode(x).flatten(1)]  # (B, h·w)

    def decode_tokens(self, tokens: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        side = self.net.config.latent_size
        return self.net.decode_indices(_last(tokens).view(-1, side, side))

    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        return self.net.reconstruct(x, steps=steps, return_all=return_all)


class SOMARPrior(nn.Module):
    """Stage 3: ARPrior over [class, level 0, level 1, ...] tokens of a frozen codebook (kept in eval mode)."""

    can_sample = True
    can_reconstruct = True
    steps_are_prefix = True  # steps > 1: the sample, then re-encode cycles through the codebook
    default_eval_steps = (1,)

    def __init__(self, config: SOMARConfig):
        super().__init__()
        if config.kind != "prior":
            raise ValueError(f"SOMARPrior needs a somar config of kind 'prior', got '{config.kind}'")
        self.config = config
        codebook = config.codebook_config()
        self.codebook = VQTokens(codebook) if isinstance(codebook, VQVAEConfig) else SOMARCodebook(codebook)
        self.codebook.requires_grad_(False).eval()
        settings = PriorSettings(
            vocab_sizes=self.codebook.vocab_sizes, segment_lengths=self.codebook.segment_lengths,
            num_classes=config.num_classes, width=config.prior_width, depth=config.prior_depth,
            heads=config.prior_heads, label_dropout=0.0,  # the loss drops labels (--label_dropout)
        )  # fmt: skip
        self.prior = ARPrior(settings)

    def train(self, mode: bool = True) -> SOMARPrior:
        """Train/eval the prior; the codebook (and its autoencoder) stays in eval mode."""
        super().train(mode)
        self.codebook.eval()
        return self

    def forward(self, tokens: list[torch.Tensor], labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Teacher forcing: the prior's logits (B, N_level, K_level) for every level's tokens (the loss's pass)."""
        return self.prior(tokens, labels)

    @torch.no_grad()
    def tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> the codebook's tokens, one (B, N_level) tensor per segment."""
        return self.codebook.tokenize(x)

    def token_nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) mean negative log-likelihood per token (nats) of images' tokens; log K for a uniform prior."""
        return self.prior.token_nll(self.tokens(x), self._labels(labels, len(x)))

    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """None on an unconditional prior (labels refused); a conditional prior's labels as long tensors."""
        if self.config.num_classes == 0:
            if labels is not None:
                raise ValueError("this prior is unconditional (num_classes=0); do not pass class labels")
            return None
        return None if labels is None else labels.to(self.prior.pos_embed.device).long()

    @torch.no_grad()
    def sample(
        self, n: int, steps: int = 1, generator=None, labels: torch.Tensor | None = None, cfg: float = 1.0,
        cfg_mode: str = "combo", return_all: bool = False, temperature: float = 1.0, top_k: int | None = None,
        top_p: float | None = None, beam: int | None = None, prefix: list[torch.Tensor] | None = None,
    ):  # fmt: skip
        """n images in [-1, 1]: tokens drawn by the prior (class, then coarse to fine; beam > 0: beam search for the
        most likely sequence instead), decoded by the codebook. generator: None, one or a list of n (per image).
        labels: (n,) classes of a conditional prior (None: the null class); cfg: guidance on logits (1 = off); every
        cfg_mode is the same (one guidance point). steps > 1 adds re-encode cycles through the codebook. prefix: the
        leading levels' tokens [(n, N_0), ...] (tokens(x)[:1]: variations of images that keep their coarse token)."""
        if cfg_mode not in CFG_MODES or not cfg >= 0 or steps < 1:
            raise ValueError(f"cfg must be >= 0, cfg_mode one of {', '.join(CFG_MODES)} and steps >= 1; got {cfg}, "
                             f"{cfg_mode}, {steps}")  # fmt: skip
        labels = self._labels(labels, n)
        if beam:
            tokens, _ = self.prior.beam_search(n, beam, labels=labels, cfg=cfg, prefix=prefix)
        else:
            options = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, prefix=prefix)
            tokens = self.prior.generate(n, labels=labels, cfg=cfg, **options)
        outputs = [self.codebook.decode_tokens(tokens)]
        outputs += self.reconstruct(outputs[0], steps=steps - 1, return_all=True) if steps > 1 else []
        return outputs if return_all else outputs[-1]

    @torch.no_grad()
    def reconstruct(self, x, steps: int = 1, generator=None, labels=None, return_all: bool = False):
        """Through the codebook (its BMU round trip); labels are accepted and unused."""
        return self.codebook.reconstruct(x, steps=steps, return_all=return_all)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """prior (trained) and codebook (its frozen autoencoder: left out of the optimizer)."""
        return {"prior": list(self.prior.parameters()), "codebook": list(self.codebook.parameters())}


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> builder(**overrides)

_AE_SIZES = {
    "tiny": dict(ae_width=32, ae_mults=(1, 2, 2), ae_res_blocks=1, latent_channels=4, ae_groups=8),  # f4: 8x8x4
    "small": dict(ae_width=64, ae_mults=(1, 2, 2), ae_res_blocks=2, latent_channels=4, ae_groups=32),  # f4: 8x8x4
}
_CODEBOOK_SIZES = {
    "tiny": dict(level_patches=(0, 2), level_sizes=(64, 256)),  # 1 coarse token, 16 fine tokens of 16 dims at 32 px
    "small": dict(level_patches=(0, 2), level_sizes=(128, 512)),
}
_PRIOR_SIZES = {"tiny": dict(prior_width=128, prior_depth=4, prior_heads=4), "small": dict(prior_width=256,
                prior_depth=6, prior_heads=8)}  # fmt: skip
_SIZES = {
    **{f"somar_ae_{s}": dict(kind="autoencoder", **_AE_SIZES[s]) for s in ("tiny", "small")},
    **{f"somar_codebook_{s}": dict(kind="codebook", **_AE_SIZES[s], **_CODEBOOK_SIZES[s]) for s in ("tiny", "small")},
    **{
        f"somar_prior_{s}": dict(kind="prior", **_AE_SIZES[s], **_CODEBOOK_SIZES[s], **_PRIOR_SIZES[s])
        for s in ("tiny", "small")
    },
}
BUILDER_OVERRIDES = ({f.name for f in fields(SOMARConfig)} - {"family", "kind"}) | {"latent_dim", "norm"}


def _config_settings(size: dict, overrides: dict) -> dict:
    """Size defaults + overrides (None = not given); latent_dim is the engine's name for latent_channels."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - BUILDER_OVERRIDES)
    if unknown:
        raise ValueError(f"somar models take no setting {unknown}; known: {', '.join(sorted(BUILDER_OVERRIDES))}")
    if given.pop("norm", "group") != "group":
        raise ValueError("somar autoencoders use GroupNorm only; drop --norm batch")
    if "latent_dim" in given:
        if "latent_channels" in given:
            raise ValueError("latent_dim is the somar autoencoder's latent_channels: give one of them")
        given["latent_channels"] = given.pop("latent_dim")
    return {**size, **given}


MODEL_CLASSES = {"autoencoder": SOMARAutoencoder, "codebook": SOMARCodebook, "prior": SOMARPrior}


def build_somar(config: SOMARConfig) -> nn.Module:
    """The model of a config's kind (the family table's model_class)."""
    return MODEL_CLASSES[config.kind](config)


def _builder(size: dict):
    def build(**overrides) -> nn.Module:
        return build_somar(SOMARConfig(**_config_settings(size, overrides)))

    return build


SOMAR_MODELS = {name: _builder(size) for name, size in _SIZES.items()}
SOMAR_MODELS["somar"] = SOMAR_MODELS["somar_prior_small"]  # the family name alone means the small prior
