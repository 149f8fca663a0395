"""Evaluate a checkpoint: FID, KID, Inception Score, precision/recall of samples (models that can sample); rFID,
PSNR, SSIM, LPIPS of reconstructions (tokenizers: also codebook usage and perplexity of the held-out tokens).
Models of 1-D signals: MSE and PSNR of reconstructions in the data's units.

python evaluate.py --steps 1 2 4 --num_samples 50000                 # latest run, paper-comparable FID
python evaluate.py --checkpoint results/<run> --cfg 1.0 1.5                 # a run folder: its latest checkpoint
python evaluate.py --reconstruction --no-generation --recon_split test --num_recon 10000

Results are printed as a table and appended, one JSON line per (evaluation, metric), to <run>/eval.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image
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
    resolve_checkpoint,
    seed_int,
)
from engine.data import DatasetError, build_dataset
from engine.families import cannot_sample_reason, takes_signals
from engine.hub import cached_repo_name
from engine.images import per_image_generators, plot_signals, reconstruct_at_steps, save_grid
from engine.inception import InceptionFeatures, InceptionWeightsError, build_inception, images_to_uint8
from engine.metrics import (
    REF_IMAGES_MAX,
    Metric,
    ReferenceStats,
    ReferenceStatsError,
    check_reference_weights,
    dataset_batches,
    fid_from_features,
    generation_metrics,
    load_reference,
    lpips_distance,
    psnr,
    reference_for_dataset,
    reference_path,
    sample_step_batches,
    ssim,
)
from engine.runs import dataset_options
from engine.threads import add_threads_flag, configure_threads
from losses import PerceptualWeightsError, build_lpips
from losses.perceptual import VGG_ENV

CFG_MODES = ["combo", "both", "latent", "pixel"]  # combo: sqrt(w) after E and sqrt(w) after D (DESIGN §3)
at_least_two = int_in_range(2)  # FID and precision/recall need two images or more
GENERATION_METRICS = ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall")
RECONSTRUCTION_METRICS = ("rfid", "psnr", "ssim", "lpips", "usage", "perplexity")  # the last two: tokenizers
SIGNAL_METRICS = ("mse", "psnr")  # reconstructions of 1-D signals, in the data's units


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint file, a run folder (its latest) or hf://OWNER/NAME[@REV][/FILE]; default: the latest run",
    )
    model.add_argument("--results_dir", default="results", help="where to look for the latest run")
    model.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="--no-ema: raw weights")
    model.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_threads_flag(model)
    gen = parser.add_argument_group("generation (FID, KID, IS, precision/recall)")
    gen.add_argument("--generation", action=argparse.BooleanOptionalAction, default=True)
    gen.add_argument(
        "--steps", type=positive_int, nargs="+", default=None, help="step counts (default: the model's, sphere 1 2 4)"
    )
    gen.add_argument("--num_samples", type=at_least_two, default=50_000, help="50000 for paper-comparable FID")
    gen.add_argument(
        "--cfg", type=non_negative_float, nargs="+", default=[1.0], help="CFG scale(s), conditional models only"
    )
    gen.add_argument("--cfg_mode", choices=CFG_MODES, default="combo", help="where guidance applies")
    gen.add_argument("--seed", type=seed_int, default=0, help="image i uses its own generator seeded by (seed, i)")
    gen.add_argument("--batch_size", type=positive_int, default=100)
    gen.add_argument("--save_images", default=None, help="also write every sample as PNG under this folder")
    rec = parser.add_argument_group("reconstruction (rFID, PSNR, SSIM, LPIPS)")
    rec.add_argument("--reconstruction", action=argparse.BooleanOptionalAction, default=False)
    rec.add_argument(
        "--recon_split", choices=["train", "test"], default="test", help="split of CIFAR-10, fashion, npz with 'split'"
    )
    rec.add_argument("--num_recon", type=at_least_two, default=10_000, help="first N images of the split")
    rec.add_argument(
        "--recon_noise_angle", type=angle_degrees, default=None, help="sphere models: re-noise of steps > 1 (default 0)"
    )
    data = parser.add_argument_group("data and reference statistics")
    data.add_argument("--dataset", default=None, help="default: the run's training dataset")
    data.add_argument("--data_root", default="data")
    data.add_argument("--ref", default=None, help="precomputed npz with mu, sigma (default: cached training stats)")
    data.add_argument("--ref_cache_dir", default="results/fid_stats")
    data.add_argument("--num_ref", type=at_least_two, default=REF_IMAGES_MAX, help="training images for the stats")
    data.add_argument("--inception_weights", default=None, help="FID Inception file (or SPHERE_INCEPTION_WEIGHTS)")
    data.add_argument(
        "--vgg_weights",
        default=None,
        help="vgg16().features file for LPIPS (or SPHERE_VGG_WEIGHTS); default: the run's own --vgg_weights",
    )
    data.add_argument("--out", default=None, help="also write all results to this JSON file")
    args = parser.parse_args(argv)
    args.steps = sorted(set(args.steps)) if args.steps else None  # None: the model's default_eval_steps
    args.cfg = list(dict.fromkeys(args.cfg))  # drop repeats
    return args


# ---------------------------------------------------------------------------------------------------------
# Records and output


def make_records(results: dict[str, Metric], evaluation: str, steps: int, cfg: float | None, context: dict):
    """One JSON-ready dict per metric (value None + reason when unavailable)."""
    now, records = time.strftime("%Y-%m-%dT%H:%M:%S"), []
    for name, metric in results.items():
        record = {**context, "evaluation": evaluation, "steps": steps, "cfg": cfg, "metric": name, "time": now}
        record["value"] = metric.value
        if metric.reason:
            record["reason"] = metric.reason
        records.append(record)
    return records


def format_table(records: list[dict]) -> str:
    """Rows (evaluation, steps, cfg), one column per metric; unavailable values as n/a with notes below."""
    rows: dict[tuple, dict[str, str]] = {}
    notes: dict[str, str] = {}
    for record in records:
        key = (record["evaluation"], record["steps"], "-" if record["cfg"] is None else f"{record['cfg']:g}")
        value = record["value"]
        rows.setdefault(key, {})[record["metric"]] = "n/a" if value is None else f"{value:.4g}"
        if value is None:
            notes[record["metric"]] = record.get("reason", "")
    names = dict.fromkeys(GENERATION_METRICS + RECONSTRUCTION_METRICS + SIGNAL_METRICS)  # ordered, psnr once
    columns = [name for name in names if any(name in r for r in rows.values())]
    header = ["evaluation", "steps", "cfg", *columns]
    body = [[*map(str, key), *(cells.get(name, "") for name in columns)] for key, cells in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *body]]
    lines += [f"{name}: n/a ({reason})" for name, reason in notes.items()]
    return "\n".join(lines)


def run_dir_of(checkpoint: Path, results_dir: str | Path = "results") -> Path:
    """The run folder of a checkpoint; <results_dir>/hub/<owner>--<name>/ for one from the Hub cache (not the cache)."""
    if repo := cached_repo_name(checkpoint):
        return Path(results_dir) / "hub" / repo
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def write_records(records: list[dict], checkpoint: Path, out: str | None, results_dir: str | Path = "results") -> Path:
    """Append to <run>/eval.jsonl; write the whole list to `out` as JSON if given. Returns the jsonl path."""
    jsonl = run_dir_of(checkpoint, results_dir) / "eval.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(records, indent=2) + "\n")
    return jsonl


def check_outputs(args) -> None:
    """Fail on unusable output paths before hours of sampling."""
    if args.out and Path(args.out).is_dir():
        raise InputError(f"--out '{args.out}' is a folder; pass a JSON file name")
    if args.out:
        check_output_dir(Path(args.out).parent, "the folder of --out")
    if args.save_images:
        check_output_dir(args.save_images, "--save_images")


def lpips_weights(args, run_config: dict) -> str | None:
    """--vgg_weights, else $SPHERE_VGG_WEIGHTS (read by build_lpips), else the file the run trained with when it
    is still there; None then means torchvision's ImageNet VGG16."""
    if args.vgg_weights or os.environ.get(VGG_ENV):
        return args.vgg_weights
    recorded = run_config.get("train", {}).get("vgg_weights")
    return recorded if recorded and Path(recorded).is_file() else None


def of_kind(dataset, kind: str):
    """The dataset, when it holds what the model encodes (images, or 1-D signals)."""
    holds = getattr(dataset, "kind", "image")
    if holds != kind:
        raise InputError(
            f"dataset '{dataset.name}' holds {holds}s, but this model encodes {kind}s; pass a --dataset of {kind}s"
        )
    return dataset


def run_dataset(args, run_config: dict, train: bool):
    """A split of --dataset (default: the run's), read as the run read its data (signal scaling, Parquet columns)."""
    name, image_size = args.dataset or run_config["dataset"], image_size_of(run_config)
    options = dataset_options(run_config.get("train", {}))
    return build_dataset(name, image_size, train=train, hflip=False, root=args.data_root, **options)


def image_size_of(run_config: dict) -> int:
    """The run's image size (config.json's top level, else its model config)."""
    return run_config.get("image_size") or run_config["model"]["image_size"]


def save_pngs(images: torch.Tensor, folder: Path, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = images_to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    for offset, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{start + offset:06d}.png")


# ---------------------------------------------------------------------------------------------------------
# Generation


def load_generation_reference(args, run_config: dict, extractor: InceptionFeatures) -> tuple[ReferenceStats, str]:
    """--ref npz, or the training set's cached statistics (computed on first use)."""
    if args.ref:
        reference = load_reference(args.ref)
        check_reference_weights(reference, extractor, args.ref)
        return reference, args.ref
    image_size = image_size_of(run_config)
    dataset = of_kind(run_dataset(args, run_config, train=True), "image")
    reference = reference_for_dataset(dataset, extractor, args.ref_cache_dir, image_size, args.num_ref, args.batch_size)
    return reference, str(reference_path(args.ref_cache_dir, dataset.name, image_size))


def generated_features(model, extractor: InceptionFeatures, args, cfg: float) -> dict[int, tuple]:
    """{T: (pool3 features, logits or None)} of num_samples images per step count (one sampling pass)."""
    collected = {t: ([], []) for t in args.steps}
    batches = sample_step_batches(model, args.num_samples, args.steps, args.batch_size, args.seed, cfg, args.cfg_mode)
    with tqdm(total=args.num_samples, desc=f"sampling + Inception (cfg {cfg:g})", unit="img") as bar:
        for start, images_by_steps in batches:
            for steps, images in images_by_steps.items():
                features, logits = extractor(images_to_uint8(images))
                collected[steps][0].append(features.cpu())
                if logits is not None:
                    collected[steps][1].append(logits.cpu())
                if args.save_images:
                    save_pngs(images, Path(args.save_images) / f"steps{steps}_cfg{cfg:g}", start)
            bar.update(len(images))
    return {t: (torch.cat(f), torch.cat(l) if l else None) for t, (f, l) in collected.items()}


def evaluate_generation(model, extractor: InceptionFeatures, reference: ReferenceStats, args, context) -> list[dict]:
    conditional = model.config.num_classes > 0
    cfgs = args.cfg if conditional else [1.0]
    if cfgs != args.cfg:
        print("note: --cfg is ignored for an unconditional model (num_classes = 0)")
    context = {**context, "cfg_mode": args.cfg_mode} if conditional else context
    records = []
    for cfg in cfgs:
        for steps, (features, logits) in generated_features(model, extractor, args, cfg).items():
            results = generation_metrics(
                features, logits, reference, extractor.logits_unavailable_reason, device=args.device
            )
            cfg_value = cfg if conditional else None
            records += make_records(results, "generation", steps, cfg_value, context)
    return records


# ---------------------------------------------------------------------------------------------------------
# Reconstruction


def reconstruction_batches(model, dataset, args, steps: list[int]):
    """(first index, originals, {T: reconstructions}) for the first num_recon images of the split."""
    conditional = model.config.num_classes > 0
    options = model_options(model, "reconstruct", {"--recon_noise_angle": ("noise_angle", args.recon_noise_angle)})
    start = 0
    for images, labels in dataset_batches(dataset, args.num_recon, args.batch_size, labels=True):
        images = images.to(args.device)
        generators = lambda: per_image_generators(args.seed, start, len(images), args.device)  # noqa: B023, E731
        labels = labels.to(args.device) if conditional else None
        yield start, images, reconstruct_at_steps(model, images, steps, generators, labels=labels, **options)
        start += len(images)


def reconstruction_scores(extractor, lpips_model, originals_uint8: torch.Tensor, recon: torch.Tensor) -> dict:
    """Per-image PSNR, SSIM, LPIPS and the pool3 features of a batch, all on the uint8 images (as saved)."""
    recon_uint8 = images_to_uint8(recon)
    real_unit, recon_unit = originals_uint8.double() / 255, recon_uint8.double() / 255
    return {
        "features": extractor(recon_uint8)[0].cpu(),
        "psnr": psnr(real_unit, recon_unit).cpu(),
        "ssim": ssim(real_unit, recon_unit).cpu(),
        "lpips": lpips_distance(lpips_model, real_unit.float() * 2 - 1, recon_unit.float() * 2 - 1).cpu(),
    }


def codebook_size_of(model) -> int | None:
    """K for a tokenizer (a model whose encode gives code indices and whose quantizer has K codes), else None."""
    size = getattr(getattr(model, "quantizer", None), "codebook_size", None)
    return int(size) if size and callable(getattr(model, "encode", None)) else None


@torch.no_grad()
def code_counts(model, images: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each of the K codes is assigned over a batch's token grids (K,) on the CPU."""
    return torch.bincount(model.encode(images).reshape(-1).cpu(), minlength=codebook_size).double()


def codebook_metrics(counts: torch.Tensor) -> dict[str, Metric]:
    """usage (fraction of codes assigned at least once) and perplexity exp(H(p)) of the held-out assignments."""
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return {"usage": Metric((counts > 0).double().mean().item()), "perplexity": Metric(entropy.exp().item())}


def evaluate_reconstruction(model, extractor: InceptionFeatures, args, run_config: dict, context: dict) -> list[dict]:
    """rFID (vs the originals), PSNR, SSIM and LPIPS after 1 step (no noise) and each of --steps; for a tokenizer
    also codebook usage and perplexity of the held-out images' tokens (in the 1-step row)."""
    steps = sorted({1, *args.steps})
    codebook_size = codebook_size_of(model)
    counts = torch.zeros(codebook_size or 0, dtype=torch.float64)
    dataset = of_kind(run_dataset(args, run_config, train=args.recon_split == "train"), "image")
    count = min(len(dataset), args.num_recon)
    lpips_model = build_lpips(lpips_weights(args, run_config)).to(args.device)
    real_features, scores = [], {t: [] for t in steps}
    with tqdm(total=count, desc="reconstruction + Inception", unit="img") as bar:
        for start, originals, recons in reconstruction_batches(model, dataset, args, steps):
            originals_uint8 = images_to_uint8(originals)
            real_features.append(extractor(originals_uint8)[0].cpu())
            if codebook_size:
                counts += code_counts(model, originals, codebook_size)
            for t, recon in recons.items():
                scores[t].append(reconstruction_scores(extractor, lpips_model, originals_uint8, recon))
                if args.save_images:
                    save_pngs(recon, Path(args.save_images) / f"recon_steps{t}", start)
            bar.update(len(originals))
    real = torch.cat(real_features)
    context = {**context, "num_samples": count, "split": args.recon_split}
    records = []
    for t, batches in scores.items():
        merged = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
        results = {"rfid": Metric(fid_from_features(merged.pop("features"), real))}
        results.update({key: Metric(values.mean().item()) for key, values in merged.items()})
        if codebook_size and t == steps[0]:
            results.update(codebook_metrics(counts))
        records += make_records(results, "reconstruction", t, None, context)
    return records


# ---------------------------------------------------------------------------------------------------------
# 1-D signals: reconstruction errors in the data's units


def in_data_units(dataset, signals: torch.Tensor) -> torch.Tensor:
    """Normalised signals (B, C, L) back in the data's own units (the dataset's scaling inverted), float64."""
    normalisation = getattr(dataset, "normalisation", None)
    signals = signals.detach().cpu()
    return (signals if normalisation is None else normalisation.invert(signals)).double()


def signal_scores(originals: torch.Tensor, recons: torch.Tensor, data_range: float) -> dict[str, Metric]:
    """MSE per value and PSNR = 10 log10(R^2 / MSE) per signal (R: the originals' peak-to-peak range), averaged."""
    mse = (recons - originals).pow(2).flatten(1).mean(1)  # (N,)
    psnr_values = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30))
    return {"mse": Metric(mse.mean().item()), "psnr": Metric(psnr_values.mean().item())}


def evaluate_signal_reconstruction(model, args, run_config: dict, context: dict) -> list[dict]:
    """MSE and PSNR of reconstructions after 1 step and each of --steps, in the data's units (the run's signal
    scaling undone); --save_images writes each reconstruction drawn over its original."""
    steps = sorted({1, *args.steps})
    dataset = of_kind(run_dataset(args, run_config, train=args.recon_split == "train"), "signal")
    originals, recons = [], {t: [] for t in steps}
    for start, signals, by_steps in reconstruction_batches(model, dataset, args, steps):
        originals.append(in_data_units(dataset, signals))
        for t, recon in by_steps.items():
            recons[t].append(in_data_units(dataset, recon))
            if args.save_images:
                save_signal_plots(recons[t][-1], originals[-1], Path(args.save_images) / f"recon_steps{t}", start)
    real = torch.cat(originals)
    data_range = (real.max() - real.min()).item()
    context = {**context, "num_samples": len(real), "split": args.recon_split, "data_range": data_range}
    records = []
    for t, batches in recons.items():
        records += make_records(signal_scores(real, torch.cat(batches), data_range), "reconstruction", t, None, context)
    return records


def save_signal_plots(recons: torch.Tensor, originals: torch.Tensor, folder: Path, start: int) -> None:
    """One PNG per signal: its reconstruction over the original (grey)."""
    for offset, plot in enumerate(plot_signals(recons, originals=originals)):
        save_grid(plot[None], folder / f"{start + offset:06d}.png", nrow=1)


def evaluate_signals(model, args, run_config: dict, context: dict) -> list[dict]:
    """A model of 1-D signals: no Inception metric applies; its reconstructions are measured in the data's units."""
    if args.generation:
        print(
            "note: generation metrics (FID, KID, IS, precision/recall) measure images, and this model encodes 1-D "
            "signals: measuring reconstructions (MSE, PSNR in the data's units) instead"
        )
    return evaluate_signal_reconstruction(model, args, run_config, context)


# ---------------------------------------------------------------------------------------------------------


def generation_to_run(model, args) -> bool:
    """Whether to measure samples: asked for, and the model can draw them (else a note says why not)."""
    reason = cannot_sample_reason(model) if args.generation else None
    if reason is None:
        return args.generation
    if not args.reconstruction:
        raise InputError(f"nothing to evaluate: {reason}; pass --reconstruction for rFID, PSNR, SSIM and LPIPS")
    print(f"note: generation metrics skipped: {reason}")
    return False


def evaluate_images(model, args, run_config: dict, context: dict) -> list[dict]:
    """Generation metrics of samples (models that can sample) and, with --reconstruction, reconstruction metrics."""
    generation = generation_to_run(model, args)
    extractor = build_inception(args.inception_weights, args.device)
    records = []
    if generation:
        reference, source = load_generation_reference(args, run_config, extractor)
        gen_context = {**context, "num_samples": args.num_samples, "reference": source}
        records += evaluate_generation(model, extractor, reference, args, gen_context)
    if args.reconstruction and not getattr(model, "can_reconstruct", True):
        print(f"note: reconstruction metrics skipped: a {type(model).__name__} has no encoder to reconstruct with")
    elif args.reconstruction:
        records += evaluate_reconstruction(model, extractor, args, run_config, context)
    return records


def main(args: argparse.Namespace) -> list[dict]:
    if not (args.generation or args.reconstruction):
        raise SystemExit("error: nothing to evaluate: drop --no-generation or add --reconstruction")
    try:
        args.device = check_device(args.device)  # before loading: a missing GPU is not a broken checkpoint
        configure_threads(args.threads)
        check_outputs(args)
        checkpoint = resolve_checkpoint(args.checkpoint, args.results_dir)
        model, run_config = load_model_from_checkpoint(checkpoint, use_ema=args.ema, map_location=args.device)
        args.steps = args.steps or list(model.default_eval_steps)
        context = {"checkpoint": str(checkpoint), "dataset": args.dataset or run_config["dataset"], "ema": args.ema}
        evaluate_model = evaluate_signals if takes_signals(model) else evaluate_images
        records = evaluate_model(model, args, run_config, context)
    except (
        CheckpointError,
        DatasetError,
        InceptionWeightsError,
        InputError,
        ReferenceStatsError,
        PerceptualWeightsError,
    ) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_table(records))
    print(f"appended {len(records)} results to {write_records(records, checkpoint, args.out, args.results_dir)}")
    return records


if __name__ == "__main__":
    main(parse_args())
