"""Sample image grids from a trained model (a Sphere Encoder or any family that can sample), or reconstruct your
own images. A model that cannot draw samples reconstructs --input, or else held-out images of its dataset.

python sampling.py                                   # 1/2/4-step grids from the latest run's EMA weights
python sampling.py --checkpoint results/<run> --num_samples 64          # a run folder: its latest checkpoint
python sampling.py --checkpoint results/<run>/checkpoints/checkpoint_epoch_10.pth
python sampling.py --input photo.jpg                 # strip: input | 1 step | 2 | 3 | 4
python sampling.py --cfg 2.0 --class 3               # class-conditional model with guidance
python sampling.py --atlas                           # z_dim 3: globe atlas + map of held-out items on the globe
python sampling.py --input a.png b.png --interpolate 8   # great-circle strip a | 8 decoded points | b
python sampling.py --input big.jpg --tile_size 256 --overlap 32 --scales 0.5 2   # vqvae: tiled, multi-scale

Outputs go to <dest_folder>/<run>/<checkpoint stem>/ (for --weights: <dest_folder>/<model folder>/<file stem>/);
an existing file is never replaced without --overwrite.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from engine.checkpoint import CheckpointError, load_model_from_checkpoint
from engine.cli import (
    InputError,
    angle_degrees,
    check_device,
    check_output_dir,
    int_in_range,
    model_options,
    non_negative_float,
    positive_int,
    refuse_overwrite,
    resolve_checkpoint,
    seed_int,
    source_folder_name,
    top_p_float,
)
from engine.data import DatasetError, build_dataset, load_image
from engine.families import cannot_sample_reason, takes_signals
from engine.globe import (
    ATLAS_COLS,
    ATLAS_ROWS,
    MAP_ITEMS,
    GlobeError,
    atlas_needs_s2,
    interpolation_strips,
    latent_size,
    latent_sphere,
    save_atlas,
    save_maps,
)
from engine.hub import local_path
from engine.images import (
    first_items,
    per_image_generators,
    reconstruct_at_steps,
    sample_at_steps,
    save_grid,
    save_token_grid,
)
from engine.runs import dataset_options
from engine.threads import add_threads_flag, configure_threads
from engine.webformat import WebFormatError, load_model_from_web_weights, web_source

CFG_MODES = ["combo", "both", "latent", "pixel"]  # combo: sqrt(w) after E and sqrt(w) after D (DESIGN §3)


def add_globe_flags(parser: argparse.ArgumentParser) -> None:
    """The pictures of the latent sphere: atlas, latent maps, slerp strips (they replace the sample grids)."""
    globe = parser.add_argument_group("latent sphere (psvae, sphere): instead of sample grids")
    globe.add_argument(
        "--atlas",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the globe atlas (decoded centres of an equirectangular grid of S^2; needs z_dim 3) and latent maps of "
        "held-out items of --dataset (default: the run's) at their longitude/latitude (other latent sizes: on the "
        "first two principal directions)",
    )
    globe.add_argument("--atlas_rows", type=positive_int, default=ATLAS_ROWS, help="cells in latitude")
    globe.add_argument("--atlas_cols", type=positive_int, default=ATLAS_COLS, help="cells in longitude")
    globe.add_argument("--map_items", type=positive_int, default=MAP_ITEMS, help="held-out items on the latent maps")
    globe.add_argument(
        "--interpolate",
        type=int_in_range(2),
        default=None,
        metavar="N",
        help="great-circle (slerp) strips of N decoded points between encoded inputs: the --input files in turn "
        "(a to b, b to c...), else --num_samples // 2 pairs of held-out items of --dataset",
    )


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    """Tiled and multi-scale reconstruction and colour alignment (vqvae models; refused for models without them)."""
    tokens = parser.add_argument_group("tokenizers (vqvae): large images, other scales, colour alignment")
    tokens.add_argument(
        "--tile_size",
        type=positive_int,
        default=None,
        help="reconstruct each --input image at its own size in tiles of this many pixels (blended overlaps)",
    )
    tokens.add_argument("--overlap", type=int_in_range(0), default=0, help="pixels shared by neighbouring tiles")
    tokens.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="also decode each --input image's latent grid resized by these factors (2 = twice the size)",
    )
    tokens.add_argument(
        "--align",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="map each image's colour statistics onto the training images' before encoding, and back after",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint file, a run folder (its latest) or hf://OWNER/NAME[@REV][/FILE]; default: the latest run",
    )
    source.add_argument(
        "--weights", default=None, help="an exported web weight file (export_weights.py) or hf://OWNER/NAME[@REV]/FILE"
    )
    parser.add_argument("--results_dir", default="results")
    parser.add_argument(
        "--dest_folder", default="samples", help="outputs go to <dest_folder>/<run or model folder>/<file stem>/"
    )
    parser.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing output files"
    )
    parser.add_argument("--num_samples", type=positive_int, default=16)
    parser.add_argument(
        "--steps",
        type=positive_int,
        nargs="+",
        default=None,
        help="step counts to render, each its own run where steps are not prefixes (default: the model's, e.g. 1 2 4 "
        "for a sphere model, 1 for psvae and vqvae, 10 50 sampler steps for a diffusion model)",
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="image i uses its own generator seeded by (seed, i)")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--input", nargs="+", default=None, help="image file(s) to reconstruct")
    parser.add_argument(
        "--dataset",
        default=None,
        help="for a model that cannot sample: reconstruct this dataset's held-out images (default: the run's)",
    )
    parser.add_argument("--data_root", default="data", help="where download_*.py put cifar10/ and ffhq_64/")
    parser.add_argument(
        "--recon_noise_angle",
        type=angle_degrees,
        default=0.0,
        help="sphere models: re-noise angle (degrees) between reconstruction steps; 0 = plain cycles",
    )
    parser.add_argument(
        "--noise_angle", type=angle_degrees, default=None, help="sampling re-noise angle (default: model's)"
    )
    parser.add_argument(
        "--sampler", choices=("ddim", "ddpm"), default=None, help="diffusion models: the sampler (default: model's)"
    )
    parser.add_argument(
        "--eta", type=non_negative_float, default=None, help="diffusion models: DDIM eta (0 = deterministic)"
    )
    prior = "somar priors: "
    parser.add_argument(
        "--temperature", type=non_negative_float, default=None, help=prior + "logit temperature (1; 0 = greedy)"
    )
    parser.add_argument("--top_k", type=positive_int, default=None, help=prior + "sample among the k likeliest codes")
    parser.add_argument("--top_p", type=top_p_float, default=None, help=prior + "nucleus sampling mass in (0, 1]")
    parser.add_argument(
        "--beam", type=positive_int, default=None, help=prior + "beam search (log space) with N beams, not sampling"
    )
    parser.add_argument("--cfg", type=non_negative_float, default=1.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--cfg_mode", choices=CFG_MODES, default="combo", help="where guidance applies")
    parser.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="class index for conditional models (default: cycle through all classes)",
    )
    add_globe_flags(parser)
    add_tokenizer_flags(parser)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="--no-ema: raw weights")
    parser.add_argument(
        "--individual",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also save every sample as its own PNG",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    if args.steps is not None:
        args.steps = list(dict.fromkeys(args.steps))  # a repeated count would write the same file twice
    return args


def weights_file(args) -> Path:
    """The file to load: --weights, --checkpoint (a file, or a run folder's latest) or the latest run's."""
    return local_path(args.weights) if args.weights else resolve_checkpoint(args.checkpoint, args.results_dir)


@dataclass(frozen=True)
class TrainingData:
    """What the model was trained on: the --dataset name (None when unknown) and how it was read."""

    name: str | None
    options: dict  # build_dataset's data keywords (signal scaling, Parquet columns) from the run's flags


def load_model(args, path: Path) -> tuple[torch.nn.Module, TrainingData]:
    """(model in eval mode, the data it was trained on; a web file records the dataset's name only)."""
    if args.weights:
        model = load_model_from_web_weights(path, device=args.device)
        return model, TrainingData(web_source(path).get("dataset"), {})
    model, run_config = load_model_from_checkpoint(path, use_ema=args.ema, map_location=args.device)
    return model, TrainingData(run_config.get("dataset"), dataset_options(run_config.get("train", {})))


def held_out_dataset(model, args, data: TrainingData, why: str):
    """The held-out split of --dataset, else of the training dataset, read as the run read its data."""
    name = args.dataset or data.name
    if not name:
        raise InputError(f"{why}; pass --dataset NAME (the file does not say what the model was trained on)")
    size = model.config.image_size
    return build_dataset(name, size, train=False, hflip=False, root=args.data_root, **data.options)


def output_folder(args, path: Path) -> Path:
    """<dest_folder>/<run or model folder>/<file stem>/: one folder per checkpoint or web file."""
    return Path(args.dest_folder) / source_folder_name(path) / path.stem


def grid_path(out_dir: Path, steps: int, seed: int) -> Path:
    return out_dir / f"samples_{steps}step_seed{seed}.png"


def individual_path(out_dir: Path, steps: int, seed: int, index: int) -> Path:
    return out_dir / f"{steps}step" / f"{seed}_{index:05d}.png"


def recon_path(out_dir: Path, file: str) -> Path:
    return out_dir / f"recon_{Path(file).stem}.png"


def held_out_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"recon_heldout_seed{seed}.png"


def tokens_path(out_dir: Path, name: str) -> Path:
    """The token map picture of an --input file's stem or of the held-out grid ('heldout_seed0')."""
    return out_dir / f"tokens_{name}.png"


def scale_path(out_dir: Path, file: str, scale: float) -> Path:
    return out_dir / f"recon_{Path(file).stem}_scale{scale:g}.png"


def has_tokens(model) -> bool:
    return callable(getattr(model, "token_map", None))


def atlas_path(out_dir: Path, args) -> Path:
    return out_dir / f"atlas_{args.atlas_rows}x{args.atlas_cols}.png"


MAP_NAMES = {"thumbnails": "latent_thumbnails.png", "dots": "latent_map.png"}  # the dot map needs labels


def interpolation_path(out_dir: Path, args) -> Path:
    if args.input:
        return out_dir / f"interpolate_{Path(args.input[0]).stem}_{Path(args.input[-1]).stem}.png"
    return out_dir / f"interpolate_heldout_{args.interpolate}.png"


def globe_outputs(args, out_dir: Path) -> list[Path]:
    """The files --atlas and --interpolate may write (the dot map only for labelled data; no atlas off S^2)."""
    paths = [atlas_path(out_dir, args), *(out_dir / name for name in MAP_NAMES.values())] if args.atlas else []
    return paths + ([interpolation_path(out_dir, args)] if args.interpolate else [])


def planned_outputs(args, out_dir: Path, can_sample: bool, tokens: bool = False) -> list[Path]:
    """Every file this run will write, known before any work so that nothing is overwritten by surprise (`tokens`:
    the model writes token maps too)."""
    if args.atlas or args.interpolate:
        return globe_outputs(args, out_dir)
    if args.input:
        paths = [recon_path(out_dir, file) for file in args.input]
        if len(set(paths)) < len(paths):
            raise InputError("two --input files share a name (stem); their strips would overwrite each other")
        paths += [scale_path(out_dir, file, scale) for file in args.input for scale in args.scales or []]
        return paths + [tokens_path(out_dir, Path(file).stem) for file in args.input if tokens]
    if not can_sample:
        return [held_out_path(out_dir, args.seed)] + ([tokens_path(out_dir, f"heldout_seed{args.seed}")] * tokens)
    paths = [grid_path(out_dir, steps, args.seed) for steps in args.steps]
    if args.individual:
        paths += [individual_path(out_dir, t, args.seed, i) for t in args.steps for i in range(args.num_samples)]
    return paths


SAMPLING_ONLY = ("noise_angle", "sampler", "eta", "temperature", "top_k", "top_p", "beam")  # sample() options


def check_class_flags(model, args) -> None:
    if not model.can_sample and args.cfg != 1.0:
        raise InputError(f"--cfg guides sampling, but {cannot_sample_reason(model)}; drop --cfg")
    given = [name for name in SAMPLING_ONLY if getattr(args, name) is not None]
    if not model.can_sample and given:
        raise InputError(f"--{given[0]} sets how samples are drawn, but {cannot_sample_reason(model)}; drop it")
    num_classes = model.config.num_classes
    if num_classes == 0 and (args.class_label is not None or args.cfg != 1.0):
        raise InputError("--class/--cfg need a class-conditional model (trained with --conditional)")
    if num_classes and args.class_label is not None and not 0 <= args.class_label < num_classes:
        raise InputError(f"--class must be in 0..{num_classes - 1}, got {args.class_label}")


def class_labels(model, args, start: int, count: int) -> torch.Tensor | None:
    num_classes = model.config.num_classes
    if num_classes == 0:
        return None
    if args.class_label is not None:
        return torch.full((count,), args.class_label, dtype=torch.long)
    return torch.arange(start, start + count) % num_classes


def generate(model, args) -> list[torch.Tensor]:
    """Images for each requested step count (one max(steps) run gives every count where steps are prefixes)."""
    device = args.device
    given = {"--noise_angle": ("noise_angle", args.noise_angle), "--eta": ("eta", args.eta)}
    given["--sampler"] = ("sampler", args.sampler)
    for name in ("temperature", "top_k", "top_p", "beam"):
        given[f"--{name}"] = (name, getattr(args, name))
    options = model_options(model, "sample", given)
    outputs: dict[int, list[torch.Tensor]] = {steps: [] for steps in args.steps}
    for start in tqdm(range(0, args.num_samples, args.batch_size), desc="sampling", leave=False):
        count = min(args.batch_size, args.num_samples - start)
        labels = class_labels(model, args, start, count)
        by_steps = sample_at_steps(
            model,
            count,
            args.steps,
            lambda: per_image_generators(args.seed, start, count, device),  # noqa: B023 (called at once)
            labels=None if labels is None else labels.to(device),
            cfg=args.cfg,
            cfg_mode=args.cfg_mode,
            **options,
        )
        for steps, images in by_steps.items():
            outputs[steps].append(images.cpu())
    return [torch.cat(outputs[steps]) for steps in args.steps]


def save_samples(grids: list[torch.Tensor], args, out_dir: Path) -> list[Path]:
    paths = []
    for steps, images in zip(args.steps, grids):
        paths.append(save_grid(images, grid_path(out_dir, steps, args.seed)))
        if args.individual:
            for index, image in enumerate(images):
                save_grid(image[None], individual_path(out_dir, steps, args.seed, index), nrow=1)
    return paths


def recon_options(model, args) -> dict:
    given = {"--recon_noise_angle": ("noise_angle", args.recon_noise_angle or None)}
    given["--align"] = ("align", True if args.align else None)
    return model_options(model, "reconstruct", given)


def input_images(model, args) -> list[torch.Tensor]:
    """The --input files (all read before any work): at their own size with --tile_size, else center-cropped and
    resized to the model's image size."""
    if args.tile_size:
        return [load_image(file, None) for file in args.input]
    return [load_image(file, model.config.image_size) for file in args.input]


def reconstruction_strip(model, args, image: torch.Tensor, options: dict) -> torch.Tensor:
    """input | reconstructions after 1..max(steps) rounds; with --tile_size: input | the tiled reconstruction."""
    if args.tile_size:
        tiled = model.reconstruct_tiled(image, args.tile_size, args.overlap, **options)
        return torch.cat([image, tiled])
    generators = lambda: per_image_generators(args.seed, 0, 1, args.device)  # noqa: E731
    steps = reconstruct_at_steps(model, image, range(1, max(args.steps) + 1), generators, **options)
    return torch.cat([image, *steps.values()])


@torch.no_grad()
def reconstruct_inputs(model, args, out_dir: Path) -> list[Path]:
    """Per input: encode without noise, decode with 1..max(steps) rounds (or tiled at its own size); save the strip,
    each --scales decoding and, for a tokenizer, the token map."""
    paths, images, options = [], input_images(model, args), recon_options(model, args)
    for file, image in zip(args.input, images):
        image = image.to(args.device)
        strip = reconstruction_strip(model, args, image, options)
        paths.append(save_grid(strip, recon_path(out_dir, file), nrow=strip.shape[0]))
        for scale in args.scales or []:
            scaled = model.decode_multiscale(image, scale, tile_size=args.tile_size, overlap=args.overlap)
            paths.append(save_grid(scaled, scale_path(out_dir, file, scale), nrow=1))
        if has_tokens(model):
            paths.append(save_token_grid(model, image, tokens_path(out_dir, Path(file).stem)))
    return paths


@torch.no_grad()
def reconstruct_held_out(model, args, data: TrainingData, out_dir: Path) -> list[Path]:
    """For a model that cannot sample: its first --num_samples held-out images (first row) and their
    reconstructions after each of --steps (one row each); a tokenizer's token maps in a second file."""
    why = f"{cannot_sample_reason(model)}; pass --input FILE to reconstruct instead"
    dataset = held_out_dataset(model, args, data, why)
    count = min(args.num_samples, len(dataset))
    images, labels = first_items(dataset, count, args.device)
    labels = labels if model.config.num_classes > 0 else None
    generators = lambda: per_image_generators(args.seed, 0, count, args.device)  # noqa: E731
    recons = reconstruct_at_steps(model, images, args.steps, generators, labels=labels, **recon_options(model, args))
    grid = torch.cat([images, *recons.values()])
    paths = [save_grid(grid, held_out_path(out_dir, args.seed), nrow=count)]
    if has_tokens(model):
        paths.append(save_token_grid(model, images, tokens_path(out_dir, f"heldout_seed{args.seed}")))
    return paths


def write_atlas(model, args, data: TrainingData, out_dir: Path) -> list[Path]:
    """The globe atlas (latent sphere S^2 only) and the latent maps of held-out items."""
    dataset = held_out_dataset(model, args, data, "--atlas maps held-out items")
    size, paths = latent_size(model, dataset), []
    if size == 3:
        paths.append(save_atlas(model, atlas_path(out_dir, args), args.atlas_rows, args.atlas_cols))
    else:
        print(f"note: {atlas_needs_s2(size)}: writing the latent maps on its first two principal directions only")
    return paths + save_maps(model, dataset, out_dir, MAP_NAMES, args.map_items)


def interpolation_inputs(model, args, data: TrainingData) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, ends) of the strips: consecutive --input files, else pairs of held-out items."""
    if args.input:
        images = torch.cat([load_image(file, model.config.image_size) for file in args.input])
        return images[:-1], images[1:]
    dataset = held_out_dataset(model, args, data, "--interpolate without --input interpolates held-out items")
    pairs = min(max(1, args.num_samples // 2), len(dataset) // 2)
    items, _ = first_items(dataset, 2 * pairs, "cpu")
    return items[0::2], items[1::2]


def write_interpolation(model, args, data: TrainingData, out_dir: Path) -> Path:
    """One row per pair: the first item, --interpolate decoded points of the great circle between their
    encodings, the second item."""
    starts, ends = interpolation_inputs(model, args, data)
    strips = interpolation_strips(model, starts.to(args.device), ends.to(args.device), args.interpolate)
    return save_grid(strips, interpolation_path(out_dir, args), nrow=args.interpolate + 2)


def write_globe_outputs(model, args, data: TrainingData, out_dir: Path) -> list[Path]:
    """--atlas and/or --interpolate."""
    latent_sphere(model)  # a family without a latent sphere: one line before any work
    paths = write_atlas(model, args, data, out_dir) if args.atlas else []
    return paths + ([write_interpolation(model, args, data, out_dir)] if args.interpolate else [])


def write_outputs(model, args, data: TrainingData, out_dir: Path) -> list[Path]:
    """Globe pictures; else reconstructions of --input; else samples; else (a model that cannot sample)
    held-out reconstructions."""
    if args.atlas or args.interpolate:
        return write_globe_outputs(model, args, data, out_dir)
    if args.input:
        return reconstruct_inputs(model, args, out_dir)
    reason = cannot_sample_reason(model)
    if reason is None:
        return save_samples(generate(model, args), args, out_dir)
    print(f"note: {reason}; writing reconstructions of held-out images instead (first row: the originals)")
    return reconstruct_held_out(model, args, data, out_dir)


def check_inputs(model, args) -> None:
    """--input needs an image model; --interpolate between files needs two of them."""
    if args.input and takes_signals(model):
        length = model.config.image_size
        raise InputError(
            f"--input takes image files, but this model encodes 1-D signals of {length} values; drop --input to use "
            "held-out signals of --dataset (default: the run's)"
        )
    if args.interpolate and args.input and len(args.input) < 2:
        raise InputError("--interpolate between --input files needs two or more of them")
    check_tokenizer_flags(model, args)


def check_tokenizer_flags(model, args) -> None:
    """--tile_size / --scales need --input and a model with the method; --align a reconstruct that takes it."""
    wanted = {"--tile_size": ("reconstruct_tiled", args.tile_size), "--scales": ("decode_multiscale", args.scales)}
    for flag, (method, value) in wanted.items():
        if value is None:
            continue
        if not callable(getattr(model, method, None)):
            name = type(model).__name__
            raise InputError(f"{flag} needs a model with {method}() (vqvae); {name} has none: drop {flag}")
        if not args.input:
            raise InputError(f"{flag} applies to --input images; pass --input FILE")
    if args.scales and any(not 0 < scale < float("inf") for scale in args.scales):
        raise InputError(f"--scales must all be > 0, got {args.scales}")
    if args.overlap and args.tile_size and args.overlap >= args.tile_size:
        raise InputError(f"--overlap {args.overlap} must be smaller than --tile_size {args.tile_size}")
    recon_options(model, args)  # --align on a model whose reconstruct takes no align: one line


def main(args: argparse.Namespace) -> list[Path]:
    try:
        args.device = check_device(args.device)  # before loading: a missing GPU is not a broken checkpoint
        configure_threads(args.threads)
        path = weights_file(args)
        out_dir = check_output_dir(output_folder(args, path), "--dest_folder")
        model, data = load_model(args, path)
        args.steps = args.steps or list(getattr(model, "default_eval_steps", (1, 2, 4)))
        check_inputs(model, args)
        refuse_overwrite(planned_outputs(args, out_dir, model.can_sample, has_tokens(model)), args.overwrite)
        check_class_flags(model, args)
        paths = write_outputs(model, args, data, out_dir)
    except (CheckpointError, DatasetError, GlobeError, InputError, WebFormatError) as error:
        raise SystemExit(f"error: {error}") from None
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main(parse_args())
