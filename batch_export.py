"""Export every mode of several training runs for the WebGPU demo and write the demo's index.json.

    python batch_export.py                                   # the latest run of each dataset under results/
    python batch_export.py results/cifar10_<stamp> results/ffhq_<stamp>/checkpoints/checkpoint_epoch_40.pth
    python batch_export.py hf://alice/sphere-cifar10 --push_to_hub alice/sphere-web   # the page: ?hub=alice/sphere-web

Each run goes to <output_root>/<run name>/model_<mode>.safetensors, plus the ONNX files of its family (--no-onnx
skips them): model_encoder.onnx and model_decoder.onnx for sphere, psvae, vqvae (vq), ldm autoencoder and latent and
somar models, model_unet.onnx for ldm latent and pixel, model_tensors.bin beside them for vqvae, ldm latent and somar
codebook and prior models (export_weights.py --help lists them); <output_root>/index.json then lists every
model folder under output_root (name, dataset, image size, latent size and shape, backbone, classes,
parameter count, per mode the file, relative to index.json, and its size in bytes, and the ONNX files).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from engine.checkpoint import CheckpointError
from engine.cli import LATEST, InputError, check_output_dir, int_in_range, resolve_checkpoint, source_folder_name
from engine.families import DEFAULT_FAMILY
from engine.hub import add_hub_flags, hub_folder_name, is_hub_path, push_web_files, repo_url
from engine.onnx_export import OnnxExportError
from engine.runs import read_run_config
from engine.webformat import MAX_GROUP_SIZE, MODES, WebFormatError, export_checkpoint, web_export_of, write_index

RUN_NAME = re.compile(r"^(?P<dataset>.+)_(?P<stamp>\d{8}_\d{6})(?:_\d+)?$")  # <dataset>_<YYYYmmdd_HHMMSS>[_k]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs",
        nargs="*",
        help="run folders, checkpoint files or hf://OWNER/NAME[@REV][/FILE]; default: the latest run of each dataset "
        "under --results_dir",
    )
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--output_root", default="frontend/public/models")
    parser.add_argument("--mode", action="append", choices=MODES, default=None, help="default: all four")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--group_size", type=int_in_range(1, MAX_GROUP_SIZE), default=32)
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the ONNX files of the page's CPU path (default; --no-onnx skips them)",
    )
    add_hub_flags(
        parser,
        "then upload index.json and every file it names to this model repository; the page loads them with "
        "?hub=OWNER/NAME",
    )
    return parser.parse_args(argv)


def run_dataset(run_dir: Path) -> str:
    """Dataset of a run: config.json's dataset_name/dataset, else the folder name's prefix."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        return str(config.get("dataset_name") or config["dataset"])
    except (OSError, KeyError, json.JSONDecodeError):
        match = RUN_NAME.match(run_dir.name)
        return match["dataset"] if match else run_dir.name


def latest_runs(results_dir: str | Path) -> list[Path]:
    """The newest run folder (by the timestamp in its name) of each dataset that has checkpoint_latest.pth."""
    latest: dict[str, Path] = {}
    for run_dir in Path(results_dir).glob("*"):
        if not (run_dir / LATEST).is_file():
            continue
        dataset = run_dataset(run_dir)
        if dataset not in latest or _stamp_key(run_dir) > _stamp_key(latest[dataset]):
            latest[dataset] = run_dir
    if not latest:
        raise CheckpointError(
            f"no runs with {LATEST.as_posix()} under '{results_dir}/'; train with training.py, or pass run folders "
            "or checkpoint files as arguments (batch_export.py RUN_DIR_OR_CHECKPOINT ...)"
        )
    return sorted(latest.values())


def _stamp_key(run_dir: Path) -> tuple[str, str]:
    """Sort key: the folder name's timestamp (folders without one sort first), then the name."""
    match = RUN_NAME.match(run_dir.name)
    return (match["stamp"], run_dir.name) if match else ("", run_dir.name)


def resolve_run(run: str | Path) -> tuple[str, Path]:
    """(model folder name, checkpoint) for a run folder or a checkpoint file: <run> for its latest checkpoint,
    <run>_<stem without 'checkpoint_'> for another one, the file's stem outside a run folder."""
    path = resolve_checkpoint(run)
    if is_hub_path(run):
        return hub_folder_name(run), path
    if not path.is_file():
        raise CheckpointError(f"'{run}' does not exist; pass run folders (results/<run>) or checkpoint files")
    if path.parent.name != LATEST.parts[0]:
        return path.stem, path
    name = source_folder_name(path)
    return (name if path.name == LATEST.name else f"{name}_{path.stem.removeprefix('checkpoint_')}"), path


def check_exportable(checkpoint: Path) -> None:
    """WebFormatError, before any export, for a run whose config.json names a family without a web exporter."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == LATEST.parts[0] else None
    config = read_run_config(run_dir) if run_dir is not None else None
    if config and isinstance(config.get("model"), dict):
        web_export_of(config["model"].get("family", DEFAULT_FAMILY))


def file_label(summary: dict) -> str:
    """'fp32', 'q8'... for a web file, 'onnx decoder', 'onnx unet', 'onnx tensors'... for an ONNX export's file."""
    return f"onnx {summary['network']}" if summary["mode"] == "onnx" else summary["mode"]


def export_runs(args: argparse.Namespace) -> list[dict]:
    """Export every run (all resolved and checked before the first export), then rebuild <output_root>/index.json."""
    output_root = check_output_dir(args.output_root, "--output_root")
    runs = [resolve_run(run) for run in args.runs or latest_runs(args.results_dir)]
    for _, checkpoint in runs:
        check_exportable(checkpoint)
    modes = list(dict.fromkeys(args.mode or MODES))
    for name, checkpoint in runs:
        summaries = export_checkpoint(checkpoint, output_root / name, modes, args.ema, args.group_size, args.onnx)
        sizes = ", ".join(f"{file_label(s)} {s['bytes'] / 1e6:.2f} MB" for s in summaries)
        print(f"{name}: {sizes}")
    entries = write_index(output_root)
    print(f"{output_root / 'index.json'}: {len(entries)} models")
    if args.push_to_hub:
        hub = push_web_files(output_root, args.push_to_hub, args.hub_private, args.hub_revision)
        print(f"pushed to {repo_url(args.push_to_hub, args.hub_revision)}; open the page with ?hub={hub}")
    return entries


def main(args: argparse.Namespace) -> list[dict]:
    try:
        return export_runs(args)
    except (CheckpointError, InputError, WebFormatError, OnnxExportError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(parse_args())
