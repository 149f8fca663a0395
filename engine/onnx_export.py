"""ONNX export of a Sphere Encoder's or a Power-Spherical VAE's two networks, beside the web files: the page runs
them with onnxruntime-web's WebAssembly backend where WebGPU is missing or slow.

Graph I/O (float32, the batch axis dynamic; `labels` int64 (B,) only when num_classes > 0, num_classes = null):
  model_decoder.onnx  v (B, *latent_shape) on the sphere -> x (B, C, S, S) in [-1, 1]   = model.decode(v, labels)
  model_encoder.onnx  x (B, C, S, S) in [-1, 1] -> z (B, *latent_shape)                 = sphere: model.encode (before
                      the projection, which the page applies); psvae: mu, already on the unit sphere
The glue (projection, re-noising, guidance) stays in the page, exactly as on its WebGPU path.
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
from .families import family_name_of

ONNX_FILES = {"encoder": "model_encoder.onnx", "decoder": "model_decoder.onnx"}
ONNX_RECORD = "model_onnx.json"  # export_onnx's answer, written last: what index.json checks the files against
OPSET = 20  # what torch's exporter emits by default here; onnxruntime-web 1.30 runs it
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a batch of 1 to a constant
ONNX_FAMILIES = ("sphere", "psvae")

log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


class OnnxExportError(RuntimeError):
    """The exporter failed on a model of a family it handles."""


class OnnxFileError(ValueError):
    """An exported .onnx file is missing, truncated or changed since its export."""


class _Decoder(nn.Module):
    """model.decode(v, labels) with the graph's input names."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, v: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decode(v, labels)


class _Encoder(nn.Module):
    """The encoder's latent: the sphere family's z before projection, the psvae's mu (its kappa is not used)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.model.encode(x, labels)
        return z[0] if isinstance(z, tuple) else z


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this model gets no ONNX files, or None when it does."""
    family = family_name_of(model)
    if family not in ONNX_FAMILIES:
        return f"{family} models have no ONNX export yet (only {', '.join(ONNX_FAMILIES)}); the page uses WebGPU"
    if getattr(model, "is_signal", False):
        return "1-D signal models (psvae conv1d) get no ONNX export: the page does not show them"
    return None


def _example_inputs(model: nn.Module, network: str) -> dict[str, torch.Tensor]:
    """Named example inputs of one network (a batch of EXAMPLE_BATCH), labels only for conditional models."""
    config, device = model.config, next(model.parameters()).device
    if network == "decoder":
        shape = tuple(model.latent_shape) if hasattr(model, "latent_shape") else (config.z_dim,)
        inputs = {"v": torch.randn(EXAMPLE_BATCH, *shape, device=device)}
    else:
        size = config.image_size
        inputs = {"x": torch.rand(EXAMPLE_BATCH, config.in_channels, size, size, device=device) * 2 - 1}
    if config.num_classes > 0:
        inputs["labels"] = torch.arange(EXAMPLE_BATCH, device=device) % (config.num_classes + 1)
    return inputs


@functools.cache
def _torchlib_registry():
    """torchlib's op table, built once per process: torch.onnx.export rebuilds it on every call, a quarter of the
    time of a tiny model's export. Private exporter API (torch is pinned in requirements.txt)."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=OPSET)


def onnx_bytes(model: nn.Module, network: str) -> bytes:
    """One network of an eval-mode model as a serialized ONNX model (weights inside, batch axis dynamic)."""
    from torch.onnx._internal.exporter import _core

    wrapper = (_Decoder if network == "decoder" else _Encoder)(model).eval()
    inputs = _example_inputs(model, network)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {name: {0: batch} for name in inputs}
    quiet = io.StringIO()  # the exporter prints its progress; the scripts print one line per file instead
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message=".*The axis name")  # v and labels share the one batch axis
        program = _core.export(
            wrapper,
            (),
            inputs,
            registry=_torchlib_registry(),
            dynamic_shapes=dynamic_shapes,
            input_names=list(inputs),
            output_names=["x" if network == "decoder" else "z"],
            opset_version=OPSET,
        )
        program._rename_dynamic_axes(dynamic_shapes)  # the axis is "batch" in the file, not "s0"
    return program.model_proto.SerializeToString()


def _write(path: Path, blob: bytes) -> dict:
    atomic_write(path, lambda file: file.write(blob))
    return {"file": path.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def export_onnx(
    model: nn.Module, folder: str | Path, networks: tuple[str, ...] = ("decoder", "encoder")
) -> dict | None:
    """Write folder/model_decoder.onnx and folder/model_encoder.onnx (each atomically) for a sphere or psvae
    model in its current weights (pass the EMA model the web files get); returns the index.json object
    {"decoder": {"file", "bytes", "sha256"}, "encoder": {...}}, or None (reason logged once) for a model with
    no ONNX export. networks: which to write (a decoder-only export passes ("decoder",))."""
    reason = unsupported_reason(model)
    if reason is not None:
        if reason not in _logged_reasons:
            _logged_reasons.add(reason)
            log.warning("no ONNX files: %s", reason)
        return None
    was_training = model.training
    model.eval()
    try:
        blobs = {network: _exported(model, network) for network in networks}
    finally:
        model.train(was_training)
    described = {network: _write(Path(folder) / ONNX_FILES[network], blob) for network, blob in blobs.items()}
    _write(Path(folder) / ONNX_RECORD, (json.dumps(described, indent=1) + "\n").encode())
    return described


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
    """Delete the folder's ONNX files and their record (so none outlive the weights they were exported from);
    the paths removed."""
    paths = [Path(folder) / name for name in (ONNX_RECORD, *ONNX_FILES.values())]
    removed = [path for path in paths if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def describe_onnx(folder: str | Path, root: str | Path | None = None) -> dict | None:
    """The index object of the ONNX files export_onnx wrote in folder (file names relative to root, default
    folder), each checked against the size and SHA-256 recorded at export; None when the folder has no record.
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
        and "decoder" in recorded
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
