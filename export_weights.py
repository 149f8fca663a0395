"""Export a trained Sphere Encoder (encoder + decoder) to sphere-web weight files for the WebGPU demo.

    python export_weights.py --checkpoint results/cifar10_<stamp>/checkpoints/checkpoint_latest.pth \
        --output_dir frontend/public/models/cifar10_<stamp> --mode q8 --mode q4

Writes <output_dir>/model_<mode>.safetensors per mode (all four when --mode is not given) and refreshes
<output_dir>/../index.json. Format, quantization and BatchNorm folding: docs/web_format.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError, find_latest_checkpoint
from engine.webformat import MODES, WebFormatError, export_checkpoint, write_index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="training checkpoint (.pth); default: the latest one under --results_dir",
    )
    parser.add_argument("--results_dir", default="results", help="where to look when --checkpoint is not given")
    parser.add_argument("--output_dir", required=True, help="model folder, e.g. frontend/public/models/<name>")
    parser.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        default=None,
        help="repeat for several; default: all of fp32 fp16 q8 q4",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the EMA weights (default) or the raw ones (--no-ema)",
    )
    parser.add_argument("--group_size", type=int, default=32, help="q8/q4 values per fp16 scale along the input")
    parser.add_argument(
        "--index",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rebuild index.json in the output folder's parent",
    )
    return parser.parse_args(argv)


def print_summaries(summaries: list[dict]) -> None:
    for summary in summaries:
        print(
            f"{summary['mode']:>5}: {summary['path']} ({summary['bytes'] / 1e6:.2f} MB, "
            f"{summary['tensors']} tensors, {summary['quantized']} quantized)"
        )


def main(args: argparse.Namespace) -> list[dict]:
    checkpoint = Path(args.checkpoint) if args.checkpoint else find_latest_checkpoint(args.results_dir)
    modes = list(dict.fromkeys(args.mode or MODES))  # keep order, drop repeats
    summaries = export_checkpoint(checkpoint, args.output_dir, modes, args.ema, args.group_size)
    print_summaries(summaries)
    if args.index:
        write_index(Path(args.output_dir).parent)
    return summaries


if __name__ == "__main__":
    try:
        main(parse_args())
    except (CheckpointError, WebFormatError) as error:
        sys.exit(f"error: {error}")
