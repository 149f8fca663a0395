"""The ldm family's row of the table: latent diffusion (models/ldm.py, models/diffusion.py, losses/ldm.py).

Three kinds of model share the family: `autoencoder` (ldm_ae_*: stage 1, the KL autoencoder with LPIPS, KL and the
patch-GAN), `latent` (ldm_*: stage 2, a UNet on the latents of a frozen autoencoder given by --autoencoder) and
`pixel` (ddpm_*: the same UNet on pixels). A flag for another kind than the model's is refused in one line.

Stage 2 loads the autoencoder checkpoint's EMA weights into the model (frozen), stores their SHA-256 and the AE's
config in the model config, and computes latent_scale (1 / std of posterior samples of the first training images)
once at the start; a resumed run or --init_from trained on another autoencoder is refused naming both hashes.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from losses import DiffusionLoss, DiffusionLossConfig, LDMAELossConfig, LDMAutoencoderLoss, build_lpips
from losses.ldm import RECON_TERMS
from models.diffusion import BETA_SCHEDULES, PREDICTIONS, SAMPLERS
from models.ldm import LDM_MODELS, DiffusionModel, KLAutoencoder, LDMConfig, build_ldm

from .family import Family
from .flags import ConfigError, Rule, check_kind_flags, probability_rule, weight_rule
from .gan_flags import GAN_FLAGS, GAN_RULES, check_patch_grid, gan_values
from .web_ldm import LDM_WEB

DEFAULT_DISC_WEIGHT, DEFAULT_DISC_START = 0.5, 0  # CompVis: 0.5; their start (50001) is for 256 px, set it per run
SCALE_IMAGES = 512  # latent_scale: the std of posterior samples of the first 512 training images (CompVis: a batch)
AE_FLAGS = ("ae_width", "ae_mults", "ae_res_blocks", "ae_groups")
UNET_FLAGS = ("unet_width", "unet_mults", "unet_res_blocks", "unet_attn_levels", "unet_groups", "unet_heads")
DIFFUSION_FLAGS = ("timesteps", "noise_schedule", "prediction", "sampler", "eta", "dropout")
KIND_FLAGS = {  # flags that only one or two kinds take
    "autoencoder": {*AE_FLAGS, "kl_weight", *GAN_FLAGS, "recon", "perceptual_weight"},
    "latent": {*UNET_FLAGS, *DIFFUSION_FLAGS, "autoencoder", "cache", "timestep_bins", "label_dropout"},
    "pixel": {*UNET_FLAGS, *DIFFUSION_FLAGS, "timestep_bins", "label_dropout"},
}
KIND_WORDS = {"autoencoder": "stage-1 autoencoder (ldm_ae_*)", "latent": "latent diffusion model (ldm_*)"}
KIND_WORDS["pixel"] = "pixel diffusion model (ddpm_*)"


def add_ldm_flags(group: argparse._ArgumentGroup) -> None:
    """Stage-2 input, architecture, diffusion and autoencoder-loss flags (None: the size's default)."""
    group.add_argument(
        "--autoencoder",
        default=None,
        metavar="RUN_OR_CHECKPOINT",
        help="ldm_*, somar_codebook_*: the stage-1 run (a run folder, checkpoint file or hf://OWNER/NAME[@REV])",
    )
    group.add_argument("--ae_width", type=int, default=None, help="ldm_ae_*: channels of the first level")
    group.add_argument("--ae_mults", type=int, nargs="+", default=None, help="ldm_ae_*: multiplier per level")
    group.add_argument("--ae_res_blocks", type=int, default=None, help="ldm_ae_*: ResBlocks per level")
    group.add_argument("--ae_groups", type=int, default=None, help="ldm_ae_*: GroupNorm groups")
    group.add_argument("--kl_weight", type=float, default=1e-6, help="ldm_ae_*: KL weight (per image value)")
    group.add_argument("--unet_width", type=int, default=None, help="UNet channels of the first level")
    group.add_argument("--unet_mults", type=int, nargs="+", default=None, help="UNet multiplier per level")
    group.add_argument("--unet_res_blocks", type=int, default=None, help="UNet ResBlocks per level")
    group.add_argument("--unet_attn_levels", type=int, nargs="*", default=None, help="UNet levels with attention")
    group.add_argument("--unet_groups", type=int, default=None, help="UNet GroupNorm groups")
    group.add_argument("--unet_heads", type=int, default=None, help="UNet attention heads")
    group.add_argument("--dropout", type=float, default=None, help="UNet ResBlock dropout")
    group.add_argument("--timesteps", type=int, default=None, help="diffusion steps T (default 1000)")
    group.add_argument(
        "--noise_schedule", choices=BETA_SCHEDULES, default=None, help="diffusion betas (config beta_schedule; linear)"
    )
    group.add_argument("--prediction", choices=PREDICTIONS, default=None, help="UNet target: eps (default) or v")
    group.add_argument("--sampler", choices=SAMPLERS, default=None, help="renders' sampler (default ddim)")
    group.add_argument("--eta", type=float, default=None, help="DDIM eta of the renders (0 = deterministic)")
    group.add_argument("--timestep_bins", type=int, default=10, help="loss logged per bin of t (t_bin_k)")
    group.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ldm_*: encode the training images once into the run folder (--no-cache: every batch on the fly)",
    )


class LDMModel(abc.ABC):  # noqa: B024 (a virtual base: registered classes, no abstract methods)
    """The family's model class: LDMModel(config) builds the config's kind; isinstance holds for all three."""

    def __new__(cls, config: LDMConfig) -> nn.Module:
        return build_ldm(config)


LDMModel.register(KLAutoencoder)
LDMModel.register(DiffusionModel)


def ldm_kind(model_type: str) -> str:
    """The kind of a registered ldm model (built on the meta device)."""
    with torch.device("meta"):
        return LDM_MODELS[model_type]().config.kind


# ---------------------------------------------------------------------------------------------------------
# Stage 2: the frozen autoencoder


def state_sha256(state: dict) -> str:
    """SHA-256 of a state_dict: each key (sorted) and its tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # 0-d too
    return digest.hexdigest()


_AUTOENCODERS: dict[tuple, tuple] = {}  # (path, mtime) -> (model, config dict, sha256): loaded once per process


def load_autoencoder(source: str) -> tuple[KLAutoencoder, dict, str]:
    """(frozen KLAutoencoder with the checkpoint's EMA weights, its config dict, their SHA-256) of a run or file."""
    from .checkpoint import load_checkpoint, load_model_state  # engine.checkpoint imports the family table
    from .cli import resolve_checkpoint

    path = resolve_checkpoint(source)
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime if Path(path).is_file() else 0)
    if key not in _AUTOENCODERS:
        ckpt = load_checkpoint(path)
        config = (ckpt.get("config") or {}).get("model") or {}
        if config.get("family") != "ldm" or config.get("kind") != "autoencoder":
            what = f"a {config.get('family', 'sphere')} model" if config.get("kind") is None else config.get("kind")
            raise ConfigError(f"--autoencoder '{source}' holds {what}, not an ldm_ae_* autoencoder; pass its run")
        state = ckpt.get("ema") or ckpt["model"]
        model = KLAutoencoder(LDMConfig.from_dict(config))
        load_model_state(model, state, str(path))
        _AUTOENCODERS[key] = (model.requires_grad_(False).eval(), model.config.to_dict(), state_sha256(state))
    return _AUTOENCODERS[key]


_SCALES: dict[tuple, float] = {}  # (sha256, dataset, size) -> latent_scale, so planning and building agree


def latent_scale_of(autoencoder: KLAutoencoder, sha256: str, dataset) -> float:
    """1 / std of posterior samples (fixed generator) of the first SCALE_IMAGES training images, unflipped."""
    key = (sha256, dataset.name, len(dataset), getattr(dataset, "image_size", None))
    if key not in _SCALES:
        items = Subset(dataset, range(min(SCALE_IMAGES, len(dataset))))
        images = torch.cat([batch[0] for batch in DataLoader(items, batch_size=128)])
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            mean, logvar = autoencoder.encode(images)
            noise = torch.randn(mean.shape, generator=generator)
            _SCALES[key] = 1.0 / float((mean + (0.5 * logvar).exp() * noise).std())
    return _SCALES[key]


def stage2_overrides(args: argparse.Namespace, dataset) -> dict:
    """The autoencoder's config and hash and the latent scale, for a latent model (on the CPU even while the
    config is planned on the meta device)."""
    with torch.device("cpu"):
        autoencoder, config, sha256 = load_autoencoder(args.autoencoder)
    size = args.image_size or dataset.image_size
    if config["image_size"] != size or config["in_channels"] != getattr(dataset, "in_channels", 3):
        raise ConfigError(
            f"--autoencoder '{args.autoencoder}' was trained on {config['image_size']} px images, this run's are "
            f"{size} px; pass --image_size {config['image_size']} or an autoencoder of this size"
        )
    with torch.device("cpu"):
        scale = latent_scale_of(autoencoder, sha256, dataset)
    return {"autoencoder": config, "autoencoder_sha256": sha256, "latent_scale": scale}


def prepare_ldm_model(args: argparse.Namespace, model: nn.Module, dataset) -> None:
    """A latent model gets the frozen autoencoder's weights (before the EMA copies it); a resumable run or
    --init_from weights trained on another autoencoder are refused."""
    if model.config.kind != "latent" or not args.autoencoder:  # a benchmark's untrained autoencoder
        return
    autoencoder, _, _ = load_autoencoder(args.autoencoder)
    device = next(model.unet.parameters()).device
    model.autoencoder.load_state_dict(autoencoder.state_dict())
    model.autoencoder.to(device).requires_grad_(False).eval()
    ours = model.config.autoencoder_sha256
    if args.init_from is not None:
        from .checkpoint import load_weights  # engine.checkpoint imports the family table

        check_same_autoencoder(args.init_from, (load_weights(args.init_from)[2] or {}).get("autoencoder_sha256"), ours)
    if getattr(args, "resume", False):
        refuse_resume_on_other_autoencoder(args.results_dir, dataset.name, model.config.to_dict())


def check_same_autoencoder(source: str, theirs: str | None, ours: str | None) -> None:
    """ConfigError naming both hashes when weights saved for another autoencoder meet this stage-2 model."""
    if ours is not None and theirs is not None and ours != theirs:
        raise ConfigError(
            f"'{source}' was trained on autoencoder sha256 {theirs}, but --autoencoder has sha256 {ours}; pass the "
            "autoencoder it was trained on, or start afresh (--no-resume, no --init_from)"
        )


STAGE2_KEYS = ("autoencoder", "autoencoder_sha256", "latent_scale")


def refuse_resume_on_other_autoencoder(results_dir: str, dataset_name: str, model_config: dict) -> None:
    """The latest run of this dataset and model (stage-2 fields aside) with a checkpoint must share the autoencoder:
    resuming refuses to fork it silently into a new run."""
    from .runs import LATEST_CHECKPOINT, read_run_config  # engine.runs imports engine.checkpoint

    strip = lambda config: {k: v for k, v in config.items() if k not in STAGE2_KEYS}  # noqa: E731
    for run in sorted(Path(results_dir).glob(f"{dataset_name}_*"), reverse=True):
        saved = (read_run_config(run) or {}).get("model") or {}
        if saved.get("family") == "ldm" and strip(saved) == strip(model_config) and (run / LATEST_CHECKPOINT).is_file():
            check_same_autoencoder(str(run), saved.get("autoencoder_sha256"), model_config["autoencoder_sha256"])
            return


# ---------------------------------------------------------------------------------------------------------
# Flags, checks and the loss


def ldm_overrides(args: argparse.Namespace, dataset) -> dict:
    """The architecture and diffusion flags given (None: the size's default); stage 2's autoencoder fields."""
    names = (*AE_FLAGS, *UNET_FLAGS, *DIFFUSION_FLAGS)
    overrides = {name: getattr(args, name) for name in names}
    overrides["beta_schedule"] = overrides.pop("noise_schedule")  # psvae's --beta_schedule is its KL weight's
    for name in ("ae_mults", "unet_mults", "unet_attn_levels"):
        overrides[name] = tuple(overrides[name]) if overrides[name] is not None else None
    if ldm_kind(args.model_type) == "latent" and args.autoencoder:  # training requires it (check_ldm_dataset)
        overrides.update(stage2_overrides(args, dataset))
    return overrides


def check_ldm_dataset(args: argparse.Namespace, dataset) -> None:
    """Kind-specific flags, --autoencoder for stage 2, image data, an unconditional autoencoder, a patch left."""
    kind = ldm_kind(args.model_type)
    check_kind_flags(args, kind, KIND_FLAGS, KIND_WORDS)
    if kind == "latent" and not args.autoencoder:
        raise ConfigError(
            f"{args.model_type} is a stage-2 model: pass --autoencoder RUN_OR_CHECKPOINT (a trained ldm_ae_* run)"
        )
    if getattr(dataset, "kind", "image") != "image":
        raise ConfigError(f"ldm models take images, but dataset '{dataset.name}' holds {dataset.kind}s")
    if kind == "autoencoder" and args.conditional:
        raise ConfigError("--conditional: an ldm autoencoder is unconditional; condition its ldm_* stage-2 model")
    if kind == "autoencoder":
        check_patch_grid(args, args.image_size or dataset.image_size, ae_loss_config(args).disc_weight)


def ae_loss_config(args: argparse.Namespace) -> LDMAELossConfig:
    """The stage-1 loss settings of the flags (--recon l1 and --perceptual_weight 1 by default, as CompVis)."""
    values = gan_values(args, DEFAULT_DISC_WEIGHT, DEFAULT_DISC_START)
    recon = args.recon if args.recon is not None else "l1"
    weight = args.perceptual_weight if args.perceptual_weight is not None else 1.0
    try:
        return LDMAELossConfig(recon=recon, perceptual_weight=weight, kl_weight=args.kl_weight, **values)
    except ValueError as error:
        raise ConfigError(f"ldm loss: {error}") from None


def build_ldm_loss(args: argparse.Namespace, model: nn.Module, device: torch.device):
    """The autoencoder's loss (LPIPS only with a perceptual weight) or the diffusion loss."""
    if model.config.kind == "autoencoder":
        config = ae_loss_config(args)
        perceptual = build_lpips(args.vgg_weights).to(device) if config.perceptual_weight > 0 else None
        return LDMAutoencoderLoss(config, perceptual, model.config.in_channels, device)
    settings = DiffusionLossConfig(label_dropout=args.label_dropout, timestep_bins=args.timestep_bins)
    return DiffusionLoss(settings, model.config.timesteps)


def ldm_training_items(args: argparse.Namespace, model: nn.Module, dataset, run_dir: Path, info, logger):
    """A latent model trains on the run's latent cache (engine/latent_cache.py) unless --no-cache."""
    from .latent_cache import cached_latents  # it imports engine.checkpoint, which imports the family table

    if model.config.kind != "latent" or not args.cache:
        return dataset
    return cached_latents(model, dataset, args.hflip, run_dir, info, logger)


LDM_RULES: tuple[Rule, ...] = (
    ("--recon", lambda v: v in RECON_TERMS, f"is no ldm term: use one of {', '.join(RECON_TERMS)}"),
    weight_rule("--perceptual_weight"),
    weight_rule("--kl_weight"),
    *GAN_RULES,
    *((f"--{name}", lambda v: v >= 1, "must be >= 1") for name in ("ae_width", "ae_res_blocks", "ae_groups")),
    *((f"--{name}", lambda v: v >= 1, "must be >= 1") for name in ("unet_width", "unet_res_blocks", "unet_groups")),
    ("--unet_heads", lambda v: v >= 1, "must be >= 1"),
    ("--timesteps", lambda v: v >= 2, "must be >= 2 (DDPM uses 1000)"),
    ("--timestep_bins", lambda v: v >= 1, "must be >= 1"),
    ("--eta", lambda v: 0 <= v <= 1, "is DDIM's eta: use a value in [0, 1] (0 = deterministic, 1 = DDPM-like)"),
    probability_rule("--dropout", 0.0),
)


LDM_FAMILY = Family(
    name="ldm",
    config_class=LDMConfig,
    model_class=LDMModel,
    registry=LDM_MODELS,
    add_flags=add_ldm_flags,
    model_overrides=ldm_overrides,
    build_loss=build_ldm_loss,
    lr_multipliers=lambda args: {},  # one rate; the frozen autoencoder is out of the optimizer
    check_dataset=check_ldm_dataset,
    flag_rules=LDM_RULES,
    presets={},  # three kinds, three recipes: configs/ldm_ae_fashion.yaml, ldm_fashion.yaml, ddpm_fashion.yaml
    web=LDM_WEB,
    latent=None,  # a Gaussian latent grid, not a sphere
    summary="latent diffusion (ldm_ae_* autoencoders, ldm_* latent and ddpm_* pixel UNets)",
    prepare_model=prepare_ldm_model,
    training_items=ldm_training_items,
)
