"""Export a trained model (a Sphere Encoder's encoder + decoder, or any family with a web exporter) to sphere-web
weight files for the WebGPU demo; a family without one is a one-line error.

    python export_weights.py --checkpoint results/cifar10_<stamp> --output_dir frontend/public/models/cifar10_<stamp> \
        --mode q8 --mode q4 --index_root frontend/public/models

Writes <output_dir>/model_<mode>.safetensors per mode (all four when --mode is not given) and, for the page's CPU
path (onnxruntime-web; float32, any batch size), the ONNX files of the model's family with model_onnx.json (their
sizes and SHA-256; --no-onnx skips them):
  sphere, psvae           model_encoder.onnx, model_decoder.onnx
  vqvae (quantizer vq)    model_encoder.onnx (tokens), model_decoder.onnx, model_tensors.bin (the codebook)
  ldm autoencoder         model_encoder.onnx, model_decoder.onnx
  ldm latent              model_unet.onnx, model_encoder.onnx, model_decoder.onnx, model_tensors.bin (latent_scale)
  ldm pixel               model_unet.onnx
  somar autoencoder       model_encoder.onnx, model_decoder.onnx
  somar codebook, prior   model_encoder.onnx, model_decoder.onnx, model_tensors.bin (the finest level's SOM)
  none                    1-D signal psvae, fsq vqvae, a somar prior over a vqvae's tokens
and nothing outside --output_dir, except <index_root>/index.json when --index_root names the folder that holds
--output_dir.
Format, quantization and BatchNorm folding: docs/web_format.md; ONNX graph inputs and outputs: engine/onnx_export.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.checkpoint import CheckpointError
from engine.cli import InputError, check_output_dir, int_in_range, resolve_checkpoint
from engine.onnx_export import OnnxExportError
from engine.webformat import MAX_GROUP_SIZE, MODES, WebFormatError, export_checkpoint, write_index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint (.pth), a run folder (its latest) or hf://OWNER/NAME[@REV][/FILE]; default: the latest run "
        "under --results_dir",
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
    parser.add_argument(
        "--group_size",
        type=int_in_range(1, MAX_GROUP_SIZE),
        default=32,
        help="q8/q4 values per fp16 scale along the input",
    )
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the ONNX files of the model's family for the page's CPU path (model_encoder.onnx, "
        "model_decoder.onnx, model_unet.onnx, model_tensors.bin: the ones the family has, listed above; default; "
        "--no-onnx skips them and removes those an earlier export left in --output_dir)",
    )
    parser.add_argument(
        "--index_root",
        default=None,
        help="also rebuild index.json in this folder, which must hold --output_dir; default: no index",
    )
    return parser.parse_args(argv)


def check_index_root(index_root: str | None, output_dir: Path) -> None:
    """index.json lists the sub-folders of its own folder: --output_dir must be one of them."""
    if index_root is not None and Path(index_root).resolve() != output_dir.resolve().parent:
        raise InputError(
            f"--index_root '{index_root}' must be the folder that holds --output_dir '{output_dir}' "
            "(index.json lists its sub-folders)"
        )


def print_summaries(summaries: list[dict]) -> None:
    for summary in summaries:
        if summary["mode"] == "onnx":
            print(f" onnx: {summary['path']} ({summary['bytes'] / 1e6:.2f} MB, {summary['network']})")
            continue
        print(
            f"{summary['mode']:>5}: {summary['path']} ({summary['bytes'] / 1e6:.2f} MB, "
            f"{summary['tensors']} tensors, {summary['quantized']} quantized)"
        )
    onnx = [summary for summary in summaries if summary["mode"] == "onnx"]
    if onnx:
        print(f" onnx: exported in {onnx[0]['seconds']:.1f} s")


def main(args: argparse.Namespace) -> list[dict]:
    modes = list(dict.fromkeys(args.mode or MODES))  # keep order, drop repeats
    try:
        check_index_root(args.index_root, Path(args.output_dir))
        checkpoint = resolve_checkpoint(args.checkpoint, args.results_dir)
        output_dir = check_output_dir(args.output_dir, "--output_dir")
        summaries = export_checkpoint(checkpoint, output_dir, modes, args.ema, args.group_size, args.onnx)
        if args.index_root is not None:
            print(f"{Path(args.index_root) / 'index.json'}: {len(write_index(args.index_root))} models")
    except (CheckpointError, InputError, WebFormatError, OnnxExportError) as error:
        raise SystemExit(f"error: {error}") from None
    print_summaries(summaries)
    return summaries


if __name__ == "__main__":
    main(parse_args())
