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
import hashlib
import io
import logging
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import atomic_write
from .families import family_name_of

ONNX_FILES = {"encoder": "model_encoder.onnx", "decoder": "model_decoder.onnx"}
OPSET = 20  # what torch's exporter emits by default here; onnxruntime-web 1.30 runs it
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a batch of 1 to a constant
ONNX_FAMILIES = ("sphere", "psvae")

log = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


class OnnxExportError(RuntimeError):
    """The exporter failed on a model it should handle, or an .onnx file cannot be read."""


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


def onnx_bytes(model: nn.Module, network: str) -> bytes:
    """One network of an eval-mode model as a serialized ONNX model (weights inside, batch axis dynamic)."""
    wrapper = (_Decoder if network == "decoder" else _Encoder)(model).eval()
    inputs = _example_inputs(model, network)
    batch = torch.export.Dim("batch", min=1)
    quiet = io.StringIO()  # the exporter prints its progress; the scripts print one line per file instead
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="The axis name")  # v and labels share the one batch axis
        program = torch.onnx.export(
            wrapper,
            (),
            kwargs=inputs,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=["x" if network == "decoder" else "z"],
            dynamic_shapes={name: {0: batch} for name in inputs},
            verbose=False,
        )
    if program is None:
        raise OnnxExportError(f"torch.onnx.export returned nothing for the {network}: {quiet.getvalue()[-300:]}")
    return program.model_proto.SerializeToString()


def _write(path: Path, blob: bytes) -> dict:
    atomic_write(path, lambda file: file.write(blob))
    return {"file": path.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def export_onnx(model: nn.Module, folder: str | Path) -> dict | None:
    """Write folder/model_decoder.onnx and folder/model_encoder.onnx (each atomically) for a sphere or psvae
    model in its current weights (pass the EMA model the web files get); returns the index.json object
    {"decoder": {"file", "bytes", "sha256"}, "encoder": {...}}, or None (reason logged once) for a model with
    no ONNX export."""
    reason = unsupported_reason(model)
    if reason is not None:
        if reason not in _logged_reasons:
            _logged_reasons.add(reason)
            log.warning("no ONNX files: %s", reason)
        return None
    was_training = model.training
    model.eval()
    try:
        blobs = {network: onnx_bytes(model, network) for network in ("decoder", "encoder")}
    finally:
        model.train(was_training)
    return {network: _write(Path(folder) / ONNX_FILES[network], blob) for network, blob in blobs.items()}


def remove_onnx(folder: str | Path) -> list[Path]:
    """Delete the folder's ONNX files (so none outlive the weights they were exported from); the paths removed."""
    removed = [Path(folder) / name for name in ONNX_FILES.values() if (Path(folder) / name).is_file()]
    for path in removed:
        path.unlink()
    return removed


def describe_onnx(folder: str | Path, root: str | Path | None = None) -> dict | None:
    """The index object of the ONNX files already in folder (file names relative to root, default folder), or
    None when it holds no decoder file."""
    folder = Path(folder)
    described = {}
    for network, name in ONNX_FILES.items():
        path = folder / name
        if path.is_file():
            blob = path.read_bytes()
            file = path.relative_to(root).as_posix() if root is not None else name
            described[network] = {"file": file, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    return described if "decoder" in described else None


def export_onnx_timed(model: nn.Module, folder: str | Path) -> tuple[dict | None, float]:
    """export_onnx and the seconds it took."""
    start = time.perf_counter()
    described = export_onnx(model, folder)
    return described, time.perf_counter() - start
