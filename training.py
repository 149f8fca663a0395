"""Train a model of any family (the Sphere Encoder, arXiv 2602.15030, by default) on one CPU/GPU or, under
torchrun, with DDP on many GPUs.

python training.py                                   # no GPU: the 4-minute quickstart on the embedded Fashion-MNIST
python training.py --dataset cifar10                  # on a GPU: the paper's CIFAR-10 recipe
python training.py --config configs/sphere_cifar10.yaml --lr 3e-4    # a config file, a typed flag over it
python training.py --config configs/psvae_fashion.yaml             # Power-Spherical VAE: Fashion-MNIST on a globe
torchrun --nproc_per_node=8 training.py --dataset cifar10 --batch_size 1024
"""

from __future__ import annotations

import sys

INTERRUPTED = "interrupted (Ctrl-C); no file was left half-written, run again to start or resume"


def quiet_interrupt_hook(kind, value, traceback) -> None:
    """sys.excepthook of the script: Ctrl-C prints one line, not a traceback, even while torch is imported."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"error: {INTERRUPTED}", file=sys.stderr)  # Python then exits through SIGINT: status 130
    else:
        sys.__excepthook__(kind, value, traceback)


if __name__ == "__main__":
    sys.excepthook = quiet_interrupt_hook  # before the imports below, which take seconds

import argparse  # noqa: E402
import contextlib  # noqa: E402
import errno  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from engine.checkpoint import (  # noqa: E402
    CheckpointError,
    config_differences,
    load_checkpoint,
    load_model_state,
    load_weights,
    require_resumable,
)
from engine.cli import positive_int  # noqa: E402
from engine.data import AUTO, DATA_KINDS, SIGNAL_NORMS, DatasetError, build_dataset  # noqa: E402
from engine.distributed import DeviceError, DistInfo, distributed  # noqa: E402
from engine.families import DEFAULT_FAMILY, family_of_model  # noqa: E402
from engine.flags import ConfigError  # noqa: E402
from engine.hub import add_hub_flags, pusher_for  # noqa: E402
from engine.optim import EMA, build_optimizer, build_scheduler, scaled_lr  # noqa: E402
from engine.runs import LATEST_CHECKPOINT, MetricsWriter, dataset_options, setup_logger  # noqa: E402
from engine.setup import (  # noqa: E402
    RunPlan,
    build_loss,
    check_capabilities,
    check_dataset,
    lr_multipliers,
    model_overrides,
    open_run,
    plan_run,
    run_config_for,
    train_settings,
    validate_args,
)
from engine.threads import add_threads_flag, configure_threads  # noqa: E402
from engine.trainer import Trainer, TrainingError, enable_tf32, prefers_channels_last  # noqa: E402
from engine.training_flags import (  # noqa: E402
    PRESET_CHOICES,
    add_family_flag_groups,
    add_tracker_flags,
    parse_training_flags,
)
from losses import PerceptualWeightsError  # noqa: E402
from losses.psvae import RECON_TERMS as PSVAE_RECON_TERMS  # noqa: E402
from losses.vqvae import RECON_TERMS as VQVAE_RECON_TERMS  # noqa: E402
from models import MODELS, build_model  # noqa: E402

RECON_CHOICES = list(dict.fromkeys(PSVAE_RECON_TERMS + VQVAE_RECON_TERMS))  # --recon: a flag two families share

# Failures the user can fix: one `error: ...` line, no traceback.
EXPECTED_ERRORS = (CheckpointError, ConfigError, DatasetError, DeviceError, PerceptualWeightsError, TrainingError)


def add_array_data_flags(data: argparse._ArgumentGroup) -> None:
    """How 1-D signals are scaled and which Parquet columns hold what (saved with the run: evaluate.py, sampling.py
    and a resumed run read the data the same way)."""
    data.add_argument(
        "--signal_norm",
        choices=SIGNAL_NORMS,
        default="absmax",
        help="scaling of 1-D signals, fitted once on the train split and never per sample: absmax = divide by the "
        "largest |value| (train signals in [-1, 1]); standard = per-channel mean/std; none = as stored. Errors are "
        "divided by the same scale",
    )
    data.add_argument(
        "--data_column",
        default=AUTO,
        help="Parquet column holding one image or spectrum per row; auto = the only list column that is not an error "
        "column",
    )
    data.add_argument(
        "--error_column",
        default=AUTO,
        help="Parquet column of per-value errors; auto = <data_column>_error/_errors/_err if present; none = ignore",
    )
    data.add_argument(
        "--label_column",
        default=AUTO,
        help="Parquet column of class labels; auto = 'label' or 'labels' if present; none = unlabeled",
    )
    data.add_argument(
        "--data_shape",
        type=str,
        default=None,
        help="shape of one Parquet row, e.g. 3,64,64 or 2,128; default: schema metadata '<data_column>_shape', else "
        "the rows' nesting",
    )
    data.add_argument(
        "--data_kind",
        choices=DATA_KINDS,
        default=AUTO,
        help="what Parquet rows are: auto = 1-D rows are signals, 2-D and 3-D rows images; signal for (C, L) rows",
    )


def add_data_and_model_flags(parser: argparse.ArgumentParser) -> None:
    """Dataset and the architecture flags every family takes."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="cifar10",
        help="cifar10 | fashion | demo | ffhq | sines | folder of images | .npz file | .parquet file or folder",
    )
    data.add_argument("--data_root", default="data", help="where download_*.py put cifar10/ and ffhq_64/")
    data.add_argument("--image_size", type=positive_int, default=None, help="default: the dataset's")
    data.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--num_workers", type=int, default=2, help="data-loading processes (0: in the main one)")
    add_array_data_flags(data)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_type",
        "--model",
        dest="model_type",
        default="vit",
        choices=sorted(MODELS),
        metavar="NAME",
        help=f"a registered model of any family: {', '.join(sorted(MODELS))}; its family's flags are in the family's "
        "group below",
    )
    model.add_argument(
        "--latent_dim", type=positive_int, default=None, help="sphere: L (2048 at 32 px); psvae: z_dim (3)"
    )
    model.add_argument(
        "--conditional",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="class-conditional (adaLN-Zero) with a null class for CFG",
    )
    model.add_argument("--norm", choices=["group", "batch"], default=None, help="conv net norm (default group)")
    model.add_argument("--label_dropout", type=float, default=0.1, help="conditional models: null-class rate (CFG)")
    model.add_argument(
        "--vgg_weights",
        default=None,
        help="local vgg16().features state_dict for LPIPS (or env SPHERE_VGG_WEIGHTS); default: torchvision download",
    )
    model.add_argument(
        "--recon",
        choices=RECON_CHOICES,
        default=None,
        help="psvae and vqvae: the reconstruction term (default psvae mse, vqvae l2; vqvae takes l1 or l2)",
    )
    model.add_argument(
        "--perceptual_weight",
        type=float,
        default=None,
        help="psvae and vqvae: LPIPS-VGG weight, RGB images only (default psvae 0, vqvae 1)",
    )


def add_optim_flags(parser: argparse.ArgumentParser) -> None:
    """Optimizer, schedule, EMA and precision flags (DESIGN §3 step 6)."""
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=positive_int, default=256, help="global batch over all ranks")
    optim.add_argument("--epochs", type=positive_int, default=5000, help="the official CIFAR-10 schedule")
    optim.add_argument("--steps", type=positive_int, default=None, help="steps per epoch (default: one pass)")
    optim.add_argument("--lr", type=float, default=1e-4, help="peak lr at batch 256, scaled linearly")
    optim.add_argument("--min_lr", type=float, default=1e-6)
    optim.add_argument("--warmup_steps", type=int, default=None, help="default min(1000, 5%% of all steps)")
    optim.add_argument("--beta1", type=float, default=0.9)
    optim.add_argument("--beta2", type=float, default=0.95)
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--grad_clip", type=float, default=1.0)
    optim.add_argument("--ema_decay", type=float, default=0.9997)
    optim.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    optim.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model's forward (default: on CUDA, off on the CPU); if compiling fails at the first "
        "step, one line says so and training goes on uncompiled",
    )
    optim.add_argument(
        "--data_on_device",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep an in-memory dataset (embedded, CIFAR-10, .npz, Parquet) on the training device as one tensor and "
        "batch it there, no DataLoader (default: when it fits in a quarter of the GPU's memory, 2 GiB on the CPU); "
        "image folders always use the DataLoader",
    )


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Config files and presets: defaults < preset < config files < typed flags."""
    config = parser.add_argument_group("config files and presets")
    config.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="FILE",
        help="YAML/JSON file of flag values (keys are flag names: batch_size, eval_frequency...); repeat for "
        "several, later ones win, typed flags win over files; a run's config.json reproduces that run's flags",
    )
    config.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default="auto",
        help="values for the flags you neither type nor set in a --config file, from the model family's file under "
        "configs/: quickstart (sphere: a 5-minute CPU demo on the embedded Fashion-MNIST; psvae: that data mapped "
        "onto a globe), paper (sphere: the paper's CIFAR-10 recipe: the defaults shown here); auto = quickstart "
        "without a GPU, else paper; none = plain defaults; with --config, no preset applies unless you type one",
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Run folder, resuming, renders, checkpoints, FID, seed and device flags."""
    run = parser.add_argument_group("run")
    run.add_argument("--results_dir", default="results")
    run.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue the latest run with the same dataset and architecture",
    )
    run.add_argument(
        "--init_from",
        default=None,
        metavar="CKPT",
        help="start a new run from the weights (and EMA) of CKPT with a fresh optimizer and schedule (fine-tuning); "
        "running the same command again resumes that run",
    )
    run.add_argument("--eval-frequency", dest="eval_frequency", type=positive_int, default=10, help="epochs")
    run.add_argument(
        "--checkpoint-frequency",
        dest="checkpoint_frequency",
        type=positive_int,
        default=100,
        help="epochs between checkpoint_epoch_N.pth (checkpoint_latest.pth every epoch)",
    )
    run.add_argument("--eval_samples", type=positive_int, default=16, help="images per render grid")
    run.add_argument("--log_every", type=positive_int, default=10, help="steps between metrics.jsonl lines")
    run.add_argument("--fid-every", dest="fid_every", type=int, default=0, help="epochs between quick FIDs")
    run.add_argument("--fid-samples", dest="fid_samples", type=positive_int, default=5000)
    run.add_argument("--fid-steps", dest="fid_steps", type=positive_int, nargs="+", default=[1])
    run.add_argument("--inception_weights", default=None, help="FID Inception file (or SPHERE_INCEPTION_WEIGHTS)")
    run.add_argument(
        "--stop_after_steps",
        type=positive_int,
        default=None,
        help="checkpoint and exit after this many steps in this invocation (time-limited jobs)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_threads_flag(run)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, set[str]]]:
    """The parser and, per family, the destinations of its flags (its --help group)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    groups = (add_data_and_model_flags, add_optim_flags, add_config_flags, add_run_flags)
    for add_flags in (*groups, add_hub_flags, add_tracker_flags):
        add_flags(parser)
    return parser, add_family_flag_groups(parser)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The training flags; `args.explicit` names the ones typed or set by a --config file (they override a
    resumed run's saved config); flags of other families than the model's are refused, then dropped."""
    parser, family_flags = build_parser()
    try:
        return parse_training_flags(parser, argv, family_flags)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


def build_training(args, dataset, info: DistInfo) -> tuple:
    """Model (on device; channels_last for a conv model on CUDA, TF32 for fp32 math there), the model used for the
    forward (DDP; the trainer compiles it), EMA, fused optimizer, schedule."""
    model = build_model(args.model_type, **model_overrides(args, dataset)).to(info.device)
    family_of_model(args.model_type).prepare_model(args, model, dataset)  # e.g. a frozen autoencoder's weights
    if info.device.type == "cuda":
        enable_tf32()
    if prefers_channels_last(model, info.device):
        model = model.to(memory_format=torch.channels_last)
    trainable = any(p.requires_grad for p in model.parameters())  # DDP refuses a model with nothing to train
    train_model = (
        DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
        if info.enabled and trainable
        else model
    )
    ema = EMA(model, args.ema_decay)
    lr = scaled_lr(args.lr, args.batch_size)
    optimizer = build_optimizer(model, lr, lr_multipliers(args), (args.beta1, args.beta2), args.weight_decay)
    settings = train_settings(args, dataset, info)
    total = settings.epochs * settings.steps_per_epoch
    warmup = args.warmup_steps if args.warmup_steps is not None else min(1000, total // 20)
    scheduler = build_scheduler(optimizer, total, warmup, lr, args.min_lr)
    return model, train_model, ema, optimizer, scheduler, settings


def read_dataset(args, train: bool, image_size: int | None):
    """A split of --dataset, read as the data flags say (signal scaling, Parquet columns)."""
    options = dataset_options(vars(args))
    return build_dataset(args.dataset, image_size, train=train, hflip=False, root=args.data_root, **options)


def training_data(args, info: DistInfo) -> tuple:
    """The training split (checked against the model's family) and, on rank 0, the held-out split the renders
    reconstruct: the dataset's test split where it has one (the same items otherwise)."""
    dataset = read_dataset(args, True, args.image_size)
    check_dataset(args, dataset)
    return dataset, read_dataset(args, False, dataset.image_size) if info.is_main else None


def init_from_weights(path: str, model, ema: EMA) -> None:
    """--init_from: the model's weights (and EMA's, else the same weights) from another run, on the CPU; the
    optimizer, schedule and counters stay fresh. A mismatch names the architecture settings that differ."""
    model_state, ema_state, saved_config = load_weights(path)
    check_same_family(path, saved_config, model)
    try:
        load_model_state(model, model_state, path)
        load_model_state(ema.model, model_state if ema_state is None else ema_state, path)
    except CheckpointError as error:
        changed = config_differences(saved_config, model.config.to_dict()) if saved_config else []
        differ = f" (settings that differ: {'; '.join(changed)})" if changed else ""
        raise ConfigError(
            f"--init_from: {error}{differ}; pass the --model_type/--image_size/--latent_dim/--conditional "
            "of the run it comes from"
        ) from None


def check_same_family(path: str, saved_config: dict | None, model) -> None:
    """--init_from weights of another family's model: one line naming both families."""
    saved = (saved_config or {}).get("family", DEFAULT_FAMILY)
    if saved_config is not None and saved != model.config.family:
        raise ConfigError(
            f"--init_from '{path}' holds a {saved} model, but this run trains a {model.config.family} model; "
            "pass a --model_type of its family"
        )


def load_start_point(plan: RunPlan, args, model, ema: EMA) -> dict | None:
    """The checkpoint to resume (None for a fresh run, which gets the --init_from weights if asked). Loaded on
    the CPU: load_state_dict moves tensors to the model's device, and RNG states must stay CPU byte tensors."""
    if plan.checkpoint is not None:
        ckpt = load_checkpoint(plan.checkpoint, map_location="cpu")
        require_resumable(ckpt, plan.checkpoint)
        return ckpt
    if args.init_from is not None:
        init_from_weights(args.init_from, model, ema)
    return None


def start(trainer: Trainer, resume: dict | None, args, logger) -> None:
    """Continue the checkpoint (its RNG states included) and say in the log where this run starts from."""
    run_dir = trainer.run_dir
    if resume is not None:
        warning = trainer.restore(resume, str(run_dir / LATEST_CHECKPOINT))
        if warning:
            logger.warning(f"warning: {warning}")
        logger.info(f"resumed {run_dir} at epoch {trainer.state.epoch}, step {trainer.state.step}")
    elif args.init_from is not None:
        logger.info(f"started from the weights of {args.init_from} with a fresh optimizer and schedule")


def describe_items(dataset) -> str:
    """'6000 images, 32px' or, for 1-D data, '2400 signals of 128 values'."""
    if getattr(dataset, "kind", "image") == "image":
        return f"{len(dataset)} images, {dataset.image_size}px"
    return f"{len(dataset)} {dataset.kind}s of {dataset.image_size} values"


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Expected failures end as one `error: ...` line without a traceback; Ctrl-C exits with status 130."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        raise SystemExit(130) from None
    except EXPECTED_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # the log, metrics or images (checkpoint writes say more, as TrainingError)
        if error.errno != errno.ENOSPC:
            raise
        where = error.filename or "the run folder"
        raise SystemExit(f"error: disk full while writing {where}; free space and run again to resume") from None


def main(args: argparse.Namespace) -> Path:
    """Validate the flags and dataset and build everything in memory; only then create (or continue) the run
    folder and train. Returns the run folder."""
    threads = configure_threads(args.threads)  # before torch's thread pools first run
    with one_line_errors(), distributed(args.device) as info:
        validate_args(args, info.world_size)
        dataset, eval_dataset = training_data(args, info)
        options = dataset_options(vars(args))
        plan = plan_run(args, dataset, info)
        if dataset_options(vars(args)) != options:  # a resumed run's saved data flags: read the data as it did
            dataset, eval_dataset = training_data(args, info)
        torch.manual_seed(args.seed * info.world_size + info.rank)  # per-rank seed (STYLE §12)
        model, train_model, ema, optimizer, scheduler, settings = build_training(args, dataset, info)
        check_capabilities(args, model)
        loss_fn = build_loss(args, model, info.device)
        resume = load_start_point(plan, args, model, ema)
        run_config = run_config_for(args, dataset, model.config.to_dict())
        run_dir = open_run(plan, args.results_dir, run_config, int(resume["step"]) if resume else 0, info)
        logger = setup_logger(run_dir, info.is_main)
        train_items = family_of_model(args.model_type).training_items(args, model, dataset, run_dir, info, logger)
        trainer = Trainer(
            model,
            train_model,
            loss_fn,
            optimizer,
            scheduler,
            ema,
            dataset,
            settings,
            info,
            run_dir,
            run_config,
            logger,
            MetricsWriter(run_dir / "metrics.jsonl" if info.is_main else None),
            args.num_workers,
            eval_dataset,
            train_items,
        )
        start(trainer, resume, args, logger)
        trainer.hub = pusher_for(args, run_dir, run_config, logger) if info.is_main else None
        params = sum(p.numel() for p in model.parameters())
        logger.info(
            f"run {run_dir} | {args.model_type} {params / 1e6:.2f}M params | dataset {dataset.name} "
            f"({describe_items(dataset)}) | {settings.epochs} epochs x "
            f"{settings.steps_per_epoch} steps | global batch {settings.global_batch} | {info.device}"
            + (f" | {threads} thread{'s' if threads > 1 else ''}" if info.device.type == "cpu" else "")
        )
        state = trainer.fit()
        logger.info(f"finished at epoch {state.epoch}, step {state.step}: {run_dir}")
        if trainer.hub is not None:
            trainer.hub.finish()  # waits (bounded) for the last upload and says where it went
        return run_dir


if __name__ == "__main__":
    main(parse_args())
