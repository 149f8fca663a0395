"""The somar family's row of the table: autoencoder -> SOM codebooks -> autoregressive prior (models/somar.py,
models/som.py, models/ar_prior.py, losses/somar.py).

Three kinds share the family: `autoencoder` (somar_ae_*: stage 1, trained by gradient), `codebook` (somar_codebook_*:
stage 2, SOMs fitted without gradients on the frozen maps of the autoencoder given by --autoencoder, a somar_ae, vqvae
or ldm_ae run) and `prior` (somar_prior_*, alias somar: stage 3, a causal transformer over the tokens of the codebook
given by --codebook, a somar codebook run or a vqvae run). A later stage loads the earlier stage's EMA weights
(frozen) and stores its config and their SHA-256 in its own config, so its checkpoint is self-contained; resuming a
run (or --init_from weights) made on another earlier stage is refused naming both hashes (a pruned codebook has
another hash than its parent: a prior must be trained again after pruning).
"""

from __future__ import annotations

import abc
import argparse
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from losses.somar import RECON_TERMS, SOMARAutoencoderLoss, SOMARCodebookLoss, SOMARLossConfig, SOMARPriorLoss
from models.somar import MODEL_CLASSES, SOM_DECAYS, SOM_MODES, SOM_TOPOLOGIES, SOMAR_MODELS, SOMARConfig, build_somar

from .family import Family
from .family_ldm import state_sha256
from .flags import ConfigError, Rule, check_kind_flags, weight_rule
from .web_somar import SOMAR_WEB

AE_FLAGS = ("ae_width", "ae_mults", "ae_res_blocks", "ae_groups")  # ldm's flags, shared (Family.shared_flags)
SOM_FLAGS = ("level_patches", "level_sizes", "som_topology", "som_mode", "som_steps", "som_sigma_start")
SOM_FLAGS += ("som_sigma_end", "som_lr_start", "som_lr_end", "som_decay")
PRIOR_FLAGS = ("prior_width", "prior_depth", "prior_heads")
KIND_FLAGS = {  # flags that only one kind takes
    "autoencoder": {*AE_FLAGS, "recon", "perceptual_weight"},
    "codebook": {*SOM_FLAGS, "autoencoder"},
    "prior": {*PRIOR_FLAGS, "codebook", "label_dropout"},
}
KIND_WORDS = {
    "autoencoder": "stage-1 autoencoder (somar_ae_*)",
    "codebook": "stage-2 SOM codebook (somar_codebook_*)",
    "prior": "stage-3 prior (somar_prior_*)",
}
STAGE_OF = {"codebook": ("autoencoder", "autoencoder_sha256"), "prior": ("codebook", "codebook_sha256")}
HELDOUT_IMAGES = 256  # the prior's held-out token NLL per epoch: the first images of the held-out split


def add_somar_flags(group: argparse._ArgumentGroup) -> None:
    """Stage inputs, SOM and prior flags (None: the size's default); --autoencoder and --ae_* are ldm's, shared."""
    group.add_argument(
        "--codebook",
        default=None,
        metavar="RUN_OR_CHECKPOINT",
        help="somar_prior_*: the stage-2 run (a run folder, checkpoint file or hf://OWNER/NAME[@REV])",
    )
    group.add_argument("--level_patches", type=int, nargs="+", default=None, help="patch side per level (0 = map)")
    group.add_argument("--level_sizes", type=int, nargs="+", default=None, help="SOM units per level")
    group.add_argument("--som_topology", choices=SOM_TOPOLOGIES, default=None, help="SOM grid (default 2d)")
    group.add_argument("--som_mode", choices=SOM_MODES, default=None, help="batch (default) or online SOM updates")
    group.add_argument("--som_steps", type=int, default=None, help="fit steps of the sigma/rate decay (2000)")
    group.add_argument("--som_sigma_start", type=float, default=None, help="neighbourhood sigma at step 0")
    group.add_argument("--som_sigma_end", type=float, default=None, help="sigma after som_steps (0.5)")
    group.add_argument("--som_lr_start", type=float, default=None, help="SOM rate at step 0 (0.5)")
    group.add_argument("--som_lr_end", type=float, default=None, help="SOM rate after som_steps (0.01)")
    group.add_argument("--som_decay", choices=SOM_DECAYS, default=None, help="sigma/rate decay (exponential)")
    group.add_argument("--prior_width", type=int, default=None, help="prior transformer width")
    group.add_argument("--prior_depth", type=int, default=None, help="prior transformer blocks")
    group.add_argument("--prior_heads", type=int, default=None, help="prior attention heads")


class SOMARModel(abc.ABC):  # noqa: B024 (a virtual base: registered classes, no abstract methods)
    """The family's model class: SOMARModel(config) builds the config's kind; isinstance holds for all three."""

    def __new__(cls, config: SOMARConfig) -> nn.Module:
        return build_somar(config)


for _model_class in MODEL_CLASSES.values():
    SOMARModel.register(_model_class)


def somar_kind(model_type: str) -> str:
    """The kind of a registered somar model (built on the meta device)."""
    with torch.device("meta"):
        return SOMAR_MODELS[model_type]().config.kind


# ---------------------------------------------------------------------------------------------------------
# Earlier stages: loaded once per process, frozen, hashed

_STAGES: dict[tuple, tuple] = {}  # (path, mtime) -> (model, config dict, sha256)
ACCEPTED = {  # what each stage flag takes: (family, kind or None) pairs, and the words for a refusal
    "autoencoder": ({("somar", "autoencoder"), ("vqvae", None), ("ldm", "autoencoder")}, "a somar_ae, vqvae or "
                    "ldm_ae run"),
    "codebook": ({("somar", "codebook"), ("vqvae", None)}, "a somar_codebook or vqvae run"),
}  # fmt: skip


def load_stage(flag: str, source: str) -> tuple[nn.Module, dict, str]:
    """(frozen model with the checkpoint's EMA weights, its config dict, their SHA-256) of a run or checkpoint given
    to --autoencoder or --codebook; ConfigError for a model that cannot be that stage."""
    from .checkpoint import load_checkpoint, load_model_state  # engine.checkpoint imports the family table
    from .cli import resolve_checkpoint
    from .families import model_from_config

    path = resolve_checkpoint(source)
    key = (flag, str(Path(path).resolve()), Path(path).stat().st_mtime if Path(path).is_file() else 0)
    if key not in _STAGES:
        ckpt = load_checkpoint(path)
        config = (ckpt.get("config") or {}).get("model") or {}
        family, kind = config.get("family", "sphere"), config.get("kind")
        accepted, words = ACCEPTED[flag]
        if (family, kind if family != "vqvae" else None) not in accepted:
            what = f"a {family} {kind}" if kind else f"a {family} model"
            raise ConfigError(f"--{flag} '{source}' holds {what}, not {words}; pass such a run")
        state = ckpt.get("ema") or ckpt["model"]
        model = model_from_config(config)
        load_model_state(model, state, str(path))
        _STAGES[key] = (model.requires_grad_(False).eval(), model.config.to_dict(), state_sha256(state))
    return _STAGES[key]


def stage_overrides(args: argparse.Namespace, kind: str, dataset) -> dict:
    """The frozen earlier stage's config and hash for a codebook or prior model (from --autoencoder/--codebook)."""
    flag, hash_key = STAGE_OF[kind]
    with torch.device("cpu"):  # even while the config is planned on the meta device
        _, config, sha256 = load_stage(flag, getattr(args, flag))
    size = args.image_size or dataset.image_size
    if config["image_size"] != size or config["in_channels"] != getattr(dataset, "in_channels", 3):
        raise ConfigError(
            f"--{flag} '{getattr(args, flag)}' was trained on {config['image_size']} px images with "
            f"{config['in_channels']} channels, this run's are {size} px; pass --image_size {config['image_size']} "
            "or a run of this size"
        )
    overrides = {flag: config, hash_key: sha256}
    if flag == "autoencoder":
        overrides["autoencoder_family"] = config["family"]
    return overrides


def prepare_somar_model(args: argparse.Namespace, model: nn.Module, dataset) -> None:
    """A codebook or prior model gets its frozen stage's weights (before the EMA copies them); a resumable run or
    --init_from weights made on another stage are refused naming both hashes."""
    kind = model.config.kind
    if kind == "autoencoder" or not getattr(args, STAGE_OF[kind][0], None):  # a benchmark's untrained stage
        return
    flag, hash_key = STAGE_OF[kind]
    stage, _, _ = load_stage(flag, getattr(args, flag))
    target = model.autoencoder.net if kind == "codebook" else getattr(model.codebook, "net", model.codebook)  # vqvae
    device = next(iter(model.buffers())).device
    target.load_state_dict(stage.state_dict())
    target.to(device).requires_grad_(False).eval()
    ours = getattr(model.config, hash_key)
    if args.init_from is not None:
        from .checkpoint import load_weights  # engine.checkpoint imports the family table

        check_same_stage(flag, args.init_from, (load_weights(args.init_from)[2] or {}).get(hash_key), ours)
    if getattr(args, "resume", False):
        refuse_resume_on_other_stage(args.results_dir, dataset.name, model.config.to_dict(), flag, hash_key)


def check_same_stage(flag: str, source: str, theirs: str | None, ours: str | None) -> None:
    """ConfigError naming both hashes when weights saved for another earlier stage meet this model."""
    if ours is not None and theirs is not None and ours != theirs:
        raise ConfigError(
            f"'{source}' was trained on a {flag} with sha256 {theirs}, but --{flag} has sha256 {ours}; pass the "
            f"{flag} it was trained on, or start afresh (--no-resume, no --init_from)"
        )


def refuse_resume_on_other_stage(results_dir: str, dataset_name: str, config: dict, flag: str, hash_key: str) -> None:
    """The latest run of this dataset and model (stage fields aside) with a checkpoint must share the earlier stage:
    resuming refuses to fork it silently into a new run."""
    from models.somar import STAGE_FIELDS

    from .runs import LATEST_CHECKPOINT, read_run_config  # engine.runs imports engine.checkpoint

    strip = lambda saved: {k: v for k, v in saved.items() if k not in STAGE_FIELDS}  # noqa: E731
    for run in sorted(Path(results_dir).glob(f"{dataset_name}_*"), reverse=True):
        saved = (read_run_config(run) or {}).get("model") or {}
        if saved.get("family") == "somar" and strip(saved) == strip(config) and (run / LATEST_CHECKPOINT).is_file():
            check_same_stage(flag, str(run), saved.get(hash_key), config[hash_key])
            return


# ---------------------------------------------------------------------------------------------------------
# Flags, checks and the loss


def somar_overrides(args: argparse.Namespace, dataset) -> dict:
    """The architecture, SOM and prior flags given (None: the size's default); the frozen stage's fields."""
    overrides = {name: getattr(args, name, None) for name in (*AE_FLAGS, *SOM_FLAGS, *PRIOR_FLAGS)}
    for name in ("ae_mults", "level_patches", "level_sizes"):
        overrides[name] = tuple(overrides[name]) if overrides[name] is not None else None
    kind = somar_kind(args.model_type)
    if kind != "autoencoder" and getattr(args, STAGE_OF[kind][0], None):  # training requires it (check_somar_dataset)
        overrides.update(stage_overrides(args, kind, dataset))
    return overrides


def check_somar_dataset(args: argparse.Namespace, dataset) -> None:
    """Kind-specific flags, the earlier stage's flag, image data, labels only for the prior."""
    kind = somar_kind(args.model_type)
    check_kind_flags(args, kind, KIND_FLAGS, KIND_WORDS)
    if kind != "autoencoder" and not getattr(args, STAGE_OF[kind][0], None):
        flag, words = STAGE_OF[kind][0], ACCEPTED[STAGE_OF[kind][0]][1]
        raise ConfigError(f"{args.model_type} is a {KIND_WORDS[kind]}: pass --{flag} RUN_OR_CHECKPOINT ({words})")
    if getattr(dataset, "kind", "image") != "image":
        raise ConfigError(f"somar models take images, but dataset '{dataset.name}' holds {dataset.kind}s")
    if kind != "prior" and args.conditional:
        raise ConfigError(f"--conditional: a somar {kind} is unconditional; condition its somar_prior_* model")


def loss_config(args: argparse.Namespace) -> SOMARLossConfig:
    """The loss settings of the flags (--recon l2 and --perceptual_weight 0 by default, as QAR's MSE)."""
    recon = args.recon if args.recon is not None else "l2"
    weight = args.perceptual_weight if args.perceptual_weight is not None else 0.0
    try:
        return SOMARLossConfig(recon=recon, perceptual_weight=weight, label_dropout=args.label_dropout)
    except ValueError as error:
        raise ConfigError(f"somar loss: {error}") from None


def build_somar_loss(args: argparse.Namespace, model: nn.Module, device: torch.device):
    """The kind's loss: reconstruction (autoencoder), SOM fitting (codebook), cross-entropy (prior)."""
    from losses import build_lpips

    config, kind = loss_config(args), model.config.kind
    if kind == "autoencoder":
        perceptual = build_lpips(args.vgg_weights).to(device) if config.perceptual_weight > 0 else None
        return SOMARAutoencoderLoss(config, perceptual)
    if kind == "codebook":
        return SOMARCodebookLoss()
    return SOMARPriorLoss(config, model, heldout_batch(args, model, device))


def heldout_batch(args: argparse.Namespace, model: nn.Module, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first HELDOUT_IMAGES (images, labels) of the held-out split, for the prior's per-epoch token NLL."""
    from .data import build_dataset
    from .runs import dataset_options

    try:
        options = dataset_options(vars(args))
        data = build_dataset(
            args.dataset, model.config.image_size, train=False, hflip=False, root=args.data_root, **options
        )
    except (OSError, ValueError):  # no held-out split to read: no held-out NLL
        return None
    items = next(iter(DataLoader(Subset(data, range(min(HELDOUT_IMAGES, len(data)))), batch_size=HELDOUT_IMAGES)))
    return items[0].to(device), items[1].to(device)


SOMAR_RULES: tuple[Rule, ...] = (
    ("--recon", lambda v: v in RECON_TERMS, f"is no somar term: use one of {', '.join(RECON_TERMS)}"),
    weight_rule("--perceptual_weight"),
    ("--som_steps", lambda v: v >= 1, "must be >= 1"),
    *((f"--{name}", lambda v: v > 0, "must be > 0") for name in ("som_sigma_start", "som_sigma_end")),
    *((f"--{name}", lambda v: 0 < v <= 1, "must be in (0, 1]") for name in ("som_lr_start", "som_lr_end")),
    *((f"--{name}", lambda v: v >= 1, "must be >= 1") for name in PRIOR_FLAGS),
)


SOMAR_FAMILY = Family(
    name="somar",
    config_class=SOMARConfig,
    model_class=SOMARModel,
    registry=SOMAR_MODELS,
    add_flags=add_somar_flags,
    model_overrides=somar_overrides,
    build_loss=build_somar_loss,
    lr_multipliers=lambda args: {},  # one rate; frozen stages are out of the optimizer
    check_dataset=check_somar_dataset,
    flag_rules=SOMAR_RULES,
    presets={},  # three kinds, three recipes: configs/somar_ae_fashion.yaml, somar_codebook_..., somar_prior_...
    web=SOMAR_WEB,
    latent=None,  # discrete tokens, not a sphere
    summary="autoencoder -> SOM codebooks -> autoregressive prior (somar_ae_*, somar_codebook_*, somar_prior_*)",
    prepare_model=prepare_somar_model,
    shared_flags=("autoencoder", *AE_FLAGS),
)
