"""Sample image grids from a trained Sphere Encoder, or reconstruct your own images.

python sampling.py                                   # 1/2/4-step grids from the latest run's EMA weights
python sampling.py --checkpoint results/<run>/checkpoints/checkpoint_latest.pth --num_samples 64
python sampling.py --input photo.jpg                 # strip: input | 1 step | 2 | 3 | 4
python sampling.py --cfg 2.0 --class 3               # class-conditional model with guidance
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from engine.checkpoint import CheckpointError, find_latest_checkpoint, load_model_from_checkpoint
from engine.data import DatasetError, load_image
from engine.images import per_image_generators, save_grid
from engine.setup import positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None, help="default: the latest run under --results_dir")
    source.add_argument("--weights", default=None, help="an exported web weight file (export_weights.py)")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--dest_folder", default="samples", help="outputs go to <dest_folder>/<run name>/")
    parser.add_argument("--num_samples", type=positive_int, default=16)
    parser.add_argument("--steps", type=positive_int, nargs="+", default=[1, 2, 4], help="step counts to render")
    parser.add_argument("--seed", type=int, default=0, help="image i uses its own generator seeded by (seed, i)")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--input", nargs="+", default=None, help="image file(s) to reconstruct")
    parser.add_argument(
        "--recon_noise_angle",
        type=float,
        default=0.0,
        help="re-noise angle (degrees) between reconstruction steps; 0 = plain cycles",
    )
    parser.add_argument("--noise_angle", type=float, default=None, help="sampling re-noise angle (default: model's)")
    parser.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--cfg_mode", choices=["both", "latent", "pixel"], default="both")
    parser.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="class index for conditional models (default: cycle through all classes)",
    )
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="--no-ema: raw weights")
    parser.add_argument(
        "--individual",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also save every sample as its own PNG",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def load_model(args):
    """(model, run name) from --weights, --checkpoint or the latest run."""
    if args.weights:
        from engine.webformat import load_model_from_web_weights

        return load_model_from_web_weights(args.weights, device=args.device), Path(args.weights).parent.name
    path = Path(args.checkpoint) if args.checkpoint else find_latest_checkpoint(args.results_dir)
    model, _ = load_model_from_checkpoint(path, use_ema=args.ema, map_location=args.device)
    return model, path.parent.parent.name


def class_labels(model, args, start: int, count: int) -> torch.Tensor | None:
    num_classes = model.config.num_classes
    if num_classes == 0:
        if args.class_label is not None or args.cfg != 1.0:
            raise SystemExit("error: --class/--cfg need a class-conditional model (trained with --conditional)")
        return None
    if args.class_label is not None and not 0 <= args.class_label < num_classes:
        raise SystemExit(f"error: --class must be in 0..{num_classes - 1}, got {args.class_label}")
    if args.class_label is not None:
        return torch.full((count,), args.class_label, dtype=torch.long)
    return torch.arange(start, start + count) % num_classes


def generate(model, args) -> list[torch.Tensor]:
    """Images for each requested step count; one run of max(steps) rounds gives every shorter count."""
    max_steps, device = max(args.steps), args.device
    outputs: list[list[torch.Tensor]] = [[] for _ in range(max_steps)]
    for start in tqdm(range(0, args.num_samples, args.batch_size), desc="sampling", leave=False):
        count = min(args.batch_size, args.num_samples - start)
        labels = class_labels(model, args, start, count)
        steps_images = model.sample(
            count,
            max_steps,
            generator=per_image_generators(args.seed, start, count, device),
            labels=None if labels is None else labels.to(device),
            cfg=args.cfg,
            cfg_mode=args.cfg_mode,
            noise_angle=args.noise_angle,
            return_all=True,
        )
        for index, images in enumerate(steps_images):
            outputs[index].append(images.cpu())
    return [torch.cat(outputs[steps - 1]) for steps in args.steps]


def save_samples(grids: list[torch.Tensor], args, out_dir: Path) -> list[Path]:
    paths = []
    for steps, images in zip(args.steps, grids):
        paths.append(save_grid(images, out_dir / f"samples_{steps}step_seed{args.seed}.png"))
        if args.individual:
            for index, image in enumerate(images):
                save_grid(image[None], out_dir / f"{steps}step" / f"{args.seed}_{index:05d}.png", nrow=1)
    return paths


def reconstruct_inputs(model, args, out_dir: Path) -> list[Path]:
    """Per input: center-crop, encode without noise, decode with 1..max(steps) rounds; save the strip."""
    paths = []
    for file in args.input:
        image = load_image(file, model.config.image_size).to(args.device)
        generator = per_image_generators(args.seed, 0, 1, args.device)
        steps = model.reconstruct(
            image, max(args.steps), generator=generator, noise_angle=args.recon_noise_angle, return_all=True
        )
        strip = torch.cat([image, *steps])
        paths.append(save_grid(strip, out_dir / f"recon_{Path(file).stem}.png", nrow=strip.shape[0]))
    return paths


def main(args: argparse.Namespace) -> list[Path]:
    try:
        model, run_name = load_model(args)
        out_dir = Path(args.dest_folder) / run_name
        if args.input:
            paths = reconstruct_inputs(model, args, out_dir)
        else:
            paths = save_samples(generate(model, args), args, out_dir)
    except (CheckpointError, DatasetError) as error:
        raise SystemExit(f"error: {error}") from None
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main(parse_args())
