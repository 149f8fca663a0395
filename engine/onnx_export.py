"""ONNX export of a model's networks, beside the web files: the page runs them with onnxruntime-web's WebAssembly
backend where WebGPU is missing or slow. Each family declares its networks and tensors (engine.family.OnnxExport,
its WebExport's `onnx`); a family without one, or a model it refuses, gets no files (the reason logged once).

Graph I/O (opset 20, float32 unless noted, the batch axis "batch" dynamic, weights inside; `labels` int64 (B,) only
when num_classes > 0, num_classes = the null class):
  sphere, psvae  model_decoder.onnx  v (B, *latent_shape) -> x (B, C, S, S) = model.decode(v, labels)
                 model_encoder.onnx  x [, labels] -> z: sphere: model.encode (before the projection, which the page
                                     applies); psvae: mu, already on the unit sphere
  vqvae ("vq")   model_encoder.onnx  x -> tokens int64 (B, h, w)         = VQVAE.encode (nearest-code indices)
                 model_decoder.onnx  tokens int64 (B, h, w) -> x          = VQVAE.decode_indices (clamped)
                 model_tensors.bin   quantizer.embedding.weight (the stored codebook)
  ldm            model_encoder.onnx  x -> mean (B, c, h, w)              kinds autoencoder, latent: posterior mean
                 model_decoder.onnx  z (B, c, h, w) -> x, clamped         unscaled z (a latent model's x0 / scale)
                 model_unet.onnx     x (B, *latent_shape), t int64 (B,) [, labels] -> out (B, *latent_shape), the
                                     UNet's raw prediction (eps / v / x0); kinds latent, pixel
                 model_tensors.bin   latent_scale (kind latent)
  somar          model_encoder.onnx  x -> maps (B, C, h, w)              = FrozenMap.encode (kinds autoencoder,
                 model_decoder.onnx  maps -> x, clamped                    codebook, prior over a somar codebook)
                 model_tensors.bin   the finest level's `levels.{k}.codes` and `levels.{k}.grid` (prefix `codebook.`
                                     in a prior), kinds codebook and prior
model_tensors.bin is an fp32 sphere-web file (engine/webformat.py) holding only those tensors under their web-file
names. The glue (projection, re-noising, guidance, sampler steps, SOM matching) stays in the page, as on WebGPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import atomic_write
from .families import FAMILIES, family_of
from .family import OnnxExport, OnnxNetwork

NETWORK_FILES = {"encoder": "model_encoder.onnx", "decoder": "model_decoder.onnx", "unet": "model_unet.onnx"}
TENSORS = "tensors"  # the record's and the index's name of model_tensors.bin
ONNX_FILES = {**NETWORK_FILES, TENSORS: "model_tensors.bin"}
ONNX_RECORD = "model_onnx.json"  # export_onnx's answer, written last: what index.json checks the files against
OPSET = 20  # what torch's exporter emits by default here; onnxruntime-web 1.30 runs it
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a batch of 1 to a constant

log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


class OnnxExportError(RuntimeError):
    """The exporter failed on a model of a family it handles."""


class OnnxFileError(ValueError):
    """An exported file is missing, truncated or changed since its export."""


class _Network(nn.Module):
    """One declared network as a module: forward(*inputs) = fn(model, *inputs)."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *inputs)


def onnx_export_of(model: nn.Module) -> OnnxExport | None:
    """The model's family's ONNX declaration, None when the family has none."""
    web = family_of(model).web
    return web.onnx if web is not None else None


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this model gets no ONNX files, or None when it does."""
    declared = onnx_export_of(model)
    if declared is None:
        having = ", ".join(name for name, family in FAMILIES.items() if family.web is not None and family.web.onnx)
        return f"{family_of(model).name} models have no ONNX export (only {having}); the page uses WebGPU"
    return declared.unsupported(model)


def networks_of(model: nn.Module) -> dict[str, OnnxNetwork]:
    """The networks the model's family declares for it, by name (encoder, decoder, unet)."""
    return onnx_export_of(model).networks(model)


@functools.cache
def _torchlib_registry():
    """torchlib's op table, built once per process: torch.onnx.export rebuilds it on every call, a quarter of the
    time of a tiny model's export. Private exporter API (torch is pinned in requirements.txt)."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)


def onnx_bytes(model: nn.Module, network: str) -> bytes:
    """One network of an eval-mode model as a serialized ONNX model (weights inside, batch axis dynamic)."""
    from torch.onnx._internal.exporter import _core

    declared = networks_of(model)[network]
    inputs = declared.example(EXAMPLE_BATCH)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {"inputs": tuple({0: batch} for _ in inputs)}
    quiet = io.StringIO()  # the exporter prints its progress; the scripts print one line per file instead
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*The axis name")  # the inputs share the one batch axis
        program = _core.export(
            _Network(model, declared.fn).eval(),
            tuple(inputs.values()),
            registry=_torchlib_registry(),
            dynamic_shapes=dynamic_shapes,
            input_names=list(inputs),
            output_names=[declared.output],
            opset_version=OPSET,
        )
        program._rename_dynamic_axes(dynamic_shapes)  # the axis is "batch" in the file, not "s0"
    return program.model_proto.SerializeToString()


def tensors_bytes(model: nn.Module) -> bytes | None:
    """model_tensors.bin of the model (its family's named tensors, fp32), None when the family names none."""
    from .webformat import tensors_file_bytes  # webformat imports this module

    names = onnx_export_of(model).tensors(model)
    if not names:
        return None
    state = model.state_dict()
    return tensors_file_bytes(model.config.to_dict(), {name: state[name].float() for name in names})


def _write(path: Path, blob: bytes) -> dict:
    atomic_write(path, lambda file: file.write(blob))
    return {"file": path.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def export_onnx(model: nn.Module, folder: str | Path, networks: tuple[str, ...] | None = None) -> dict | None:
    """Write the model's ONNX networks (folder/model_<network>.onnx) and tensors file (model_tensors.bin, when its
    family names tensors), each atomically, from its current weights (pass the EMA model the web files get), then
    model_onnx.json; returns the index.json object {network: {"file", "bytes", "sha256"}, ..., "tensors": {...}},
    or None (reason logged once) for a model with no ONNX export. networks: which to write (default: all the family
    declares; a decoder-only export passes ("decoder",))."""
    reason = unsupported_reason(model)
    if reason is not None:
        if reason not in _logged_reasons:
            _logged_reasons.add(reason)
            log.warning("no ONNX files: %s", reason)
        return None
    names = _chosen(model, networks)
    was_training = model.training
    model.eval()
    try:
        blobs = {network: _exported(model, network) for network in names}
    finally:
        model.train(was_training)
    if (tensors := tensors_bytes(model)) is not None:
        blobs[TENSORS] = tensors
    described = {name: _write(Path(folder) / ONNX_FILES[name], blob) for name, blob in blobs.items()}
    _write(Path(folder) / ONNX_RECORD, (json.dumps(described, indent=1) + "\n").encode())
    return described


def _chosen(model: nn.Module, networks: tuple[str, ...] | None) -> tuple[str, ...]:
    """The networks to write: all the model's, or those asked for (ValueError naming one it does not have)."""
    declared = tuple(networks_of(model))
    unknown = [name for name in networks or () if name not in declared]
    if unknown:
        raise ValueError(f"this model has no ONNX network {unknown}; it has {', '.join(declared)}")
    return declared if networks is None else tuple(networks)


def _exported(model: nn.Module, network: str) -> bytes:
    """onnx_bytes, with an exporter failure as one line that names the fix."""
    try:
        return onnx_bytes(model, network)
    except Exception as error:  # the exporter fails in many ways (torch.export, a missing op, onnxscript)
        first = (str(error).strip().splitlines() or [error.__class__.__name__])[0][:200]
        raise OnnxExportError(
            f"ONNX export of the {network} failed ({first}); pass --no-onnx to write the web files alone"
        ) from error


def remove_onnx(folder: str | Path) -> list[Path]:
    """Delete the folder's ONNX files, tensors file and their record (so none outlive the weights they were exported
    from); the paths removed."""
    paths = [Path(folder) / name for name in (ONNX_RECORD, *ONNX_FILES.values())]
    removed = [path for path in paths if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def describe_onnx(folder: str | Path, root: str | Path | None = None) -> dict | None:
    """The index object of the files export_onnx wrote in folder (file names relative to root, default folder),
    each checked against the size and SHA-256 recorded at export; None when the folder has no record.
    OnnxFileError names a file that is missing, truncated or changed."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / ONNX_RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OnnxFileError(
            f"'{folder / ONNX_RECORD}' cannot be read ({error}); re-export it with export_weights.py"
        ) from None
    if not (
        isinstance(recorded, dict)
        and set(recorded) & set(NETWORK_FILES)
        and set(recorded) <= set(ONNX_FILES)
        and all(isinstance(entry, dict) for entry in recorded.values())
    ):
        raise OnnxFileError(
            f"'{folder / ONNX_RECORD}' is not a record of export_onnx; re-export it with export_weights.py"
        )
    return {network: _checked(folder / ONNX_FILES[network], entry, root) for network, entry in recorded.items()}


def _checked(path: Path, entry: dict, root: str | Path | None) -> dict:
    """One recorded file's index object, after checking that the file on disk is the one exported."""
    if not path.is_file():
        raise OnnxFileError(f"'{path}' is missing; re-export it with export_weights.py")
    blob = path.read_bytes()
    if len(blob) != entry.get("bytes"):
        raise OnnxFileError(
            f"'{path}' is truncated or changed: {len(blob)} bytes, the export wrote {entry.get('bytes')}; "
            "re-export it with export_weights.py"
        )
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise OnnxFileError(
            f"'{path}' is corrupt (SHA-256 differs from the export's); re-export it with export_weights.py"
        )
    file = path.relative_to(root).as_posix() if root is not None else path.name
    return {"file": file, "bytes": len(blob), "sha256": entry["sha256"]}
