"""The `sphere-web` weight format: export a model of a family with a web exporter (engine/families.py; today
the Sphere Encoder) to one safetensors-compatible file per mode (fp32, fp16, q8, q4) and read it back. The byte
layout, quantization and folding are specified in docs/web_format.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models.layers import ConvResBlock

from .checkpoint import atomic_write
from .families import DEFAULT_FAMILY, FamilyError, WebExport, family_name_of, family_named, model_from_config
from .onnx_export import OnnxFileError, describe_onnx, export_onnx, remove_onnx

FORMAT_NAME = "sphere-web"
FORMAT_VERSION = "2"  # 2: __metadata__ carries data_sha256, the SHA-256 of the data section (docs §2)
DATA_HASH_KEY = "data_sha256"
REQUIRED_METADATA = ("config", "quantization", "group_size", DATA_HASH_KEY)
REQUIRED_CONFIG_KEYS = ("image_size", "num_classes")  # what every reader uses; a family adds its own (WebExport)
MODES = ("fp32", "fp16", "q8", "q4")
QUANT_LEVELS = {"q8": 127, "q4": 7}  # symmetric: q in [-Q, Q]
DTYPES = {  # format dtype -> (bytes per value, numpy little-endian dtype)
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
}
PAD_PREFIX = "__pad__."
ALIGN_BYTES = 4  # every tensor starts at a multiple of 4 so JS can view it as a typed array
MIN_QUANT_NUMEL = 1024  # smaller weights stay fp16: their bytes are negligible, their error is not
MAX_GROUP_SIZE = 1024  # longer groups defeat grouping, and quantization pads every row to a whole group
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a longer "header" means this is not one of our files
FP16_MAX = 65504.0


class WebFormatError(ValueError):
    """A weight file is not a valid sphere-web file (or cannot be written as one)."""


# ---------------------------------------------------------------------------------------------------------
# Group quantization (docs/web_format.md §4)


def _grouped(w2d: torch.Tensor, group_size: int) -> torch.Tensor:
    """(rows, cols) -> (rows, groups, group_size), zero-padding the last (shorter) group."""
    rows, cols = w2d.shape
    groups = math.ceil(cols / group_size)
    padded = torch.zeros(rows, groups * group_size, dtype=torch.float32)
    padded[:, :cols] = w2d.float()
    return padded.view(rows, groups, group_size)


def quantize_groups(w2d: torch.Tensor, bits: int, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-group quantization of a (rows, cols) weight along cols.

    Returns (packed, scales): q8 -> int8 (rows, cols); q4 -> uint8 (rows, ceil(cols/2)) with nibbles q + 8,
    the even column in the low nibble. scales: float16 (rows, ceil(cols/group_size)); an all-zero group has
    scale 0 and q 0.
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    levels = QUANT_LEVELS[f"q{bits}"]
    rows, cols = w2d.shape
    grouped = _grouped(w2d, group_size)  # (rows, groups, G)
    scales = (grouped.abs().amax(dim=2) / levels).to(torch.float16)  # (rows, groups)
    scale32 = scales.float().unsqueeze(2)
    safe = torch.where(scale32 > 0, scale32, torch.ones_like(scale32))
    q = torch.where(scale32 > 0, torch.round(grouped / safe), torch.zeros_like(grouped))
    q = q.clamp(-levels, levels).view(rows, -1)[:, :cols].to(torch.int8)  # (rows, cols)
    if bits == 8:
        return q, scales
    return _pack_nibbles(q), scales


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """int8 q in [-7, 7] (rows, cols) -> uint8 (rows, ceil(cols/2)): low nibble = even column, value q + 8."""
    rows, cols = q.shape
    nibbles = torch.zeros(rows, cols + cols % 2, dtype=torch.uint8)  # padding nibble 0 (never read)
    nibbles[:, :cols] = (q.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def _unpack_nibbles(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 (rows, ceil(cols/2)) -> int8 q (rows, cols)."""
    low, high = packed & 0x0F, packed >> 4
    nibbles = torch.stack([low, high], dim=2).view(packed.shape[0], -1)[:, :cols]
    return (nibbles.to(torch.int16) - 8).to(torch.int8)


def dequantize_groups(
    packed: torch.Tensor, scales: torch.Tensor, bits: int, cols: int, group_size: int = 32
) -> torch.Tensor:
    """Inverse of quantize_groups: float32 (rows, cols) = q * float32(scale of its group)."""
    q = packed.to(torch.int8) if bits == 8 else _unpack_nibbles(packed, cols)
    per_value = scales.float().repeat_interleave(group_size, dim=1)[:, :cols]  # (rows, cols)
    return q[:, :cols].float() * per_value


# ---------------------------------------------------------------------------------------------------------
# BatchNorm folding (docs/web_format.md §5)


def _bn_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = x * scale + shift, in float64."""
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(norm.running_var.double())
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, beta - norm.running_mean.double() * scale


def _drop_module(state: dict, module_name: str) -> None:
    for key in [k for k in state if k.startswith(f"{module_name}.")]:
        del state[key]


def _fold_into_conv(state: dict, conv_name: str, conv: nn.Conv2d, norm_name: str, norm: nn.BatchNorm2d):
    """conv -> BN becomes one conv: W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    scale, shift = _bn_scale_shift(norm)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    state[f"{conv_name}.weight"] = (conv.weight.double() * scale.view(-1, 1, 1, 1)).float()
    state[f"{conv_name}.bias"] = (bias * scale + shift).float()
    _drop_module(state, norm_name)


def _fold_to_affine(state: dict, norm_name: str, norm: nn.BatchNorm2d) -> None:
    """A BN with no conv right before it becomes y = x * weight + bias (running stats dropped)."""
    scale, shift = _bn_scale_shift(norm)
    _drop_module(state, norm_name)
    state[f"{norm_name}.weight"], state[f"{norm_name}.bias"] = scale.float(), shift.float()


def fold_batchnorm(model: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
    """State dict with every BatchNorm2d folded: into the preceding conv inside ConvResBlocks (BN removed),
    elsewhere into a per-channel affine `.weight`/`.bias` (running stats removed). Returns (state, folded)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    folded = set()
    for name, block in modules.items():
        for conv_attr, norm_attr in (("conv1", "norm1"), ("conv2", "norm2")):
            if isinstance(block, ConvResBlock) and isinstance(getattr(block, norm_attr), nn.BatchNorm2d):
                conv, norm = getattr(block, conv_attr), getattr(block, norm_attr)
                _fold_into_conv(state, f"{name}.{conv_attr}", conv, f"{name}.{norm_attr}", norm)
                folded.add(f"{name}.{norm_attr}")
    for name, norm in modules.items():
        if isinstance(norm, nn.BatchNorm2d) and name not in folded:
            _fold_to_affine(state, name, norm)
            folded.add(name)
    return state, bool(folded)


def restore_batchnorm_entries(config: dict, state: dict[str, torch.Tensor]) -> None:
    """Fill the BatchNorm entries a folded file lacks so the norm=batch model computes the stored affine:
    weight 1 / bias 0 where absent, running_mean 0, running_var 1 - eps, num_batches_tracked 0."""
    with torch.device("meta"):
        skeleton = model_from_config(config)
    for name, module in skeleton.named_modules():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        channels = module.num_features
        state.setdefault(f"{name}.weight", torch.ones(channels))
        state.setdefault(f"{name}.bias", torch.zeros(channels))
        state[f"{name}.running_mean"] = torch.zeros(channels)
        state[f"{name}.running_var"] = torch.full((channels,), 1.0 - module.eps)
        state[f"{name}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------
# Export


def web_export_of(family: str) -> WebExport:
    """The family's web exporter; WebFormatError when it has none (or is unknown)."""
    try:
        web = family_named(family).web
    except FamilyError as error:
        raise WebFormatError(str(error)) from None
    if web is None:
        raise WebFormatError(f"{family} models have no web exporter yet; only families with one can be exported")
    return web


def edge_layers(config: dict) -> set[str]:
    """The first layer of the encoder and the last of the decoder (kept fp16 in q8/q4, docs §4)."""
    return web_export_of(config.get("family", DEFAULT_FAMILY)).edge_layers(config)


def quantized_weights(model: nn.Module, keep_edges: bool = True) -> set[str]:
    """Names of the weights that q8/q4 quantize: Linear/Conv2d weights with >= MIN_QUANT_NUMEL values,
    except the edge layers when keep_edges."""
    keep = edge_layers(model.config.to_dict()) if keep_edges else set()
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.numel() >= MIN_QUANT_NUMEL and name not in keep
    }


def _as_float(name: str, tensor: torch.Tensor, mode: str) -> tuple[str, torch.Tensor]:
    """(dtype, tensor) of an unquantized tensor: F32 in fp32 mode, F16 otherwise (range-checked)."""
    if mode == "fp32":
        return "F32", tensor.float()
    if tensor.numel() and tensor.float().abs().max().item() > FP16_MAX:
        raise WebFormatError(f"tensor '{name}' has values beyond the fp16 range; export it with --mode fp32")
    return "F16", tensor.to(torch.float16)


def encode_tensors(
    state: dict[str, torch.Tensor], quantized: set[str], mode: str, group_size: int
) -> tuple[list[tuple[str, str, torch.Tensor]], dict]:
    """[(name, dtype, tensor)] in file order and the `quantization` metadata for this mode."""
    entries, quant_info = [], {}
    for name, tensor in state.items():
        if mode in QUANT_LEVELS and name in quantized:
            bits = 8 if mode == "q8" else 4
            packed, scales = quantize_groups(tensor.reshape(tensor.shape[0], -1), bits, group_size)
            data_name, scales_name = f"{name}.{mode}", f"{name}.scales"
            entries += [(data_name, "I8" if bits == 8 else "U8", packed), (scales_name, "F16", scales)]
            quant_info[name] = {
                "mode": mode,
                "shape": list(tensor.shape),
                "group_size": group_size,
                "data": data_name,
                "scales": scales_name,
            }
        else:
            entries.append((name, *_as_float(name, tensor, mode)))
    return entries, quant_info


def _to_bytes(dtype: str, tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().astype(DTYPES[dtype][1], copy=False).tobytes()


def layout_tensors(entries: list[tuple[str, str, torch.Tensor]]) -> tuple[dict, list[bytes]]:
    """(tensor table, payloads in data order) with __pad__ entries keeping every tensor 4-byte aligned."""
    table, chunks, offset, pad_index = {}, [], 0, 0
    for name, dtype, tensor in entries:
        payload = _to_bytes(dtype, tensor)
        table[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(payload)]}
        chunks.append(payload)
        offset += len(payload)
        pad = -offset % ALIGN_BYTES
        if pad:
            table[f"{PAD_PREFIX}{pad_index}"] = {"dtype": "U8", "shape": [pad], "data_offsets": [offset, offset + pad]}
            chunks.append(bytes(pad))
            offset, pad_index = offset + pad, pad_index + 1
    return table, chunks


def data_sha256(chunks: list[bytes]) -> str:
    """Lowercase hex SHA-256 of the whole data section (every byte after the header, padding included)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def build_header(entries: list[tuple[str, str, torch.Tensor]], metadata: dict[str, str]) -> tuple[bytes, list]:
    """(JSON header padded to 8-byte alignment, payloads in data order); metadata gains data_sha256."""
    table, chunks = layout_tensors(entries)
    header = {"__metadata__": {**metadata, DATA_HASH_KEY: data_sha256(chunks)}, **table}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data section starts at a multiple of 8
    return text, chunks


def write_atomic(path: Path, header: bytes, chunks: list[bytes]) -> int:
    """Write length + header + data to a temp file, fsync, rename over path; returns the byte count."""

    def write(file) -> None:
        file.write(len(header).to_bytes(8, "little"))
        file.write(header)
        for chunk in chunks:
            file.write(chunk)

    atomic_write(path, write)
    return 8 + len(header) + sum(len(chunk) for chunk in chunks)


def export_model(
    model: nn.Module,
    path: str | Path,
    mode: str,
    group_size: int = 32,
    source: dict | None = None,
    keep_edges: bool = True,
) -> dict:
    """Write `model` (of a family with a web exporter) as a sphere-web file in `mode`; returns a summary dict.

    source: optional provenance stored as JSON (checkpoint path, step, ema). keep_edges: keep the first and
    last layers fp16 in q8/q4 (docs/web_format.md §4, §9).
    """
    web = web_export_of(family_name_of(model))  # a family without an exporter fails before any work
    reason = web.unsupported(model.config.to_dict())
    if reason:
        raise WebFormatError(reason)
    if mode not in MODES:
        raise WebFormatError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
    if not 1 <= group_size <= MAX_GROUP_SIZE:
        raise WebFormatError(f"group_size must be in 1..{MAX_GROUP_SIZE}, got {group_size}")
    state, bn_folded = fold_batchnorm(model)
    state = web.export_state({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    quantized = quantized_weights(model, keep_edges) if mode in QUANT_LEVELS else set()
    entries, quant_info = encode_tensors(state, quantized, mode, group_size)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "mode": mode,
        "group_size": str(group_size),
        "config": json.dumps(model.config.to_dict()),
        "quantization": json.dumps(quant_info),
        "bn_folded": "true" if bn_folded else "false",
        "param_count": str(sum(p.numel() for p in model.parameters())),
    }
    if source is not None:
        metadata["source"] = json.dumps(source)
    header, chunks = build_header(entries, metadata)
    size = write_atomic(Path(path), header, chunks)
    return {
        "path": str(path),
        "mode": mode,
        "bytes": size,
        "tensors": len(entries),
        "quantized": len(quant_info),
        "param_count": int(metadata["param_count"]),
    }


def tensors_file_bytes(config: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    """A whole fp32 sphere-web file holding only `tensors` (F32, none quantized) under a model's config: the ONNX
    export's model_tensors.bin, which the page parses as any web file (docs/web_format.md §8)."""
    entries, _ = encode_tensors({name: tensor.detach().cpu() for name, tensor in tensors.items()}, set(), "fp32", 32)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "mode": "fp32",
        "group_size": "32",
        "config": json.dumps(config),
        "quantization": "{}",
    }
    header, chunks = build_header(entries, metadata)
    return b"".join([len(header).to_bytes(8, "little"), header, *chunks])


# ---------------------------------------------------------------------------------------------------------
# Reading and validation (docs/web_format.md §7)


def _parse_header(blob: bytes, source: str) -> tuple[dict, int]:
    """(header dict, data start offset); checks length, JSON, magic and version."""
    if len(blob) < 8:
        raise WebFormatError(f"'{source}' is truncated: {len(blob)} bytes, fewer than the 8-byte header length")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise WebFormatError(
            f"'{source}' is not a sphere-web file (wrong magic): header length {header_len} is implausible"
        )
    if 8 + header_len > len(blob):
        raise WebFormatError(
            f"'{source}' is truncated: the header needs {header_len} bytes but only "
            f"{len(blob) - 8} follow the length field"
        )
    try:
        header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WebFormatError(
            f"'{source}' is not a sphere-web file (wrong magic): header is not JSON ({error.__class__.__name__})"
        ) from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise WebFormatError(f"'{source}' is not a sphere-web file (wrong magic): no __metadata__ in the header")
    _check_metadata(header["__metadata__"], source)
    if (8 + header_len) % 8:
        raise WebFormatError(f"'{source}': data section starts at byte {8 + header_len}, not a multiple of 8")
    return header, 8 + header_len


def _check_metadata(metadata: dict, source: str) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise WebFormatError(
            f"'{source}' has wrong magic: format is {metadata.get('format')!r}, expected "
            f"'{FORMAT_NAME}' (not a sphere-web weight file)"
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise WebFormatError(
            f"'{source}' has unsupported version {metadata.get('version')!r}: this reader "
            f"knows version {FORMAT_VERSION}; re-export with export_weights.py"
        )
    if metadata.get("mode") not in MODES:
        raise WebFormatError(f"'{source}' has unknown mode {metadata.get('mode')!r}; expected one of {MODES}")
    for key in REQUIRED_METADATA:
        if key not in metadata:
            raise WebFormatError(f"'{source}' metadata lacks '{key}'; re-export it with export_weights.py")


def _check_entry(name: str, entry, source: str) -> tuple[str, list[int], int, int]:
    """(dtype, shape, begin, end) of one table entry, with its own consistency checked."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise WebFormatError(f"'{source}': tensor '{name}' entry needs dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise WebFormatError(
            f"'{source}': tensor '{name}' has unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WebFormatError(f"'{source}': tensor '{name}' has a bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise WebFormatError(f"'{source}': tensor '{name}' has bad data_offsets {offsets!r}")
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype][0]
    if end - begin != expected:
        raise WebFormatError(
            f"'{source}': tensor '{name}' shape {shape} {dtype} needs {expected} bytes but "
            f"data_offsets span {end - begin} (shape/byte-length mismatch)"
        )
    if begin % ALIGN_BYTES and not name.startswith(PAD_PREFIX):
        raise WebFormatError(f"'{source}': tensor '{name}' starts at data byte {begin}, not a multiple of 4")
    return dtype, shape, begin, end


def _is_contiguous(ordered: list) -> bool:
    expected_begin = 0
    for _, (_, _, begin, end) in ordered:
        if begin != expected_begin:
            return False
        expected_begin = end
    return True


def _check_layout(table: dict[str, tuple], data_len: int, source: str) -> None:
    """Offsets in range, contiguous from 0 without overlap or gap, ending at the end of the file."""
    ordered = sorted(table.items(), key=lambda item: (item[1][2], item[1][3]))
    contiguous = _is_contiguous(ordered)
    for name, (_, _, begin, end) in ordered:
        if end > data_len and contiguous:
            raise WebFormatError(
                f"'{source}' is truncated: the tensor table needs {ordered[-1][1][3]} data "
                f"bytes but the file holds {data_len}"
            )
        if end > data_len:
            raise WebFormatError(
                f"'{source}': tensor '{name}' data_offsets [{begin}, {end}] are out of range "
                f"(the data section has {data_len} bytes)"
            )
    expected_begin, previous = 0, None
    for name, (_, _, begin, end) in ordered:
        if begin != expected_begin:
            raise WebFormatError(
                f"'{source}': tensor '{name}' data_offsets [{begin}, {end}] overlap or leave "
                f"a gap after '{previous}' (expected begin {expected_begin})"
            )
        expected_begin, previous = end, name
    if expected_begin != data_len:
        raise WebFormatError(f"'{source}': {data_len - expected_begin} trailing bytes after the last tensor")


def read_raw(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, stored tensors as they are in the file, padding excluded), fully validated."""
    source = str(path)
    try:
        blob = Path(path).read_bytes()
    except OSError as error:
        raise WebFormatError(f"cannot read '{source}': {error.strerror or error}") from None
    header, data_start = _parse_header(blob, source)
    metadata = header.pop("__metadata__")
    table = {name: _check_entry(name, entry, source) for name, entry in header.items()}
    _check_layout(table, len(blob) - data_start, source)
    if hashlib.sha256(memoryview(blob)[data_start:]).hexdigest() != metadata[DATA_HASH_KEY]:
        raise WebFormatError(f"web weight file '{source}' is corrupt (data checksum mismatch); re-export it")
    tensors = {}
    for name, (dtype, shape, begin, _end) in table.items():
        if name.startswith(PAD_PREFIX):
            continue
        array = np.frombuffer(blob, dtype=DTYPES[dtype][1], count=math.prod(shape), offset=data_start + begin)
        tensors[name] = torch.from_numpy(array.copy()).reshape(shape)
    return metadata, tensors


def _json_field(metadata: dict, key: str, source: str):
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise WebFormatError(f"'{source}': metadata '{key}' is not valid JSON") from None


def _dequantize_entry(name: str, info: dict, tensors: dict, source: str) -> torch.Tensor:
    """float32 weight of one `quantization` entry, after checking the tensors it names."""
    try:
        mode, shape, group_size = info["mode"], list(info["shape"]), int(info["group_size"])
        packed, scales = tensors[info["data"]], tensors[info["scales"]]
    except (KeyError, TypeError, ValueError) as error:
        raise WebFormatError(
            f"'{source}': quantization entry '{name}' is incomplete or names a missing tensor ({error})"
        ) from None
    if mode not in QUANT_LEVELS or not shape or not 1 <= group_size <= MAX_GROUP_SIZE:
        raise WebFormatError(f"'{source}': quantization entry '{name}' has a bad mode/shape/group_size")
    rows, cols = shape[0], math.prod(shape[1:])
    packed_cols = cols if mode == "q8" else math.ceil(cols / 2)
    want = {"q8": torch.int8, "q4": torch.uint8}[mode]
    if packed.dtype != want or list(packed.shape) != [rows, packed_cols]:
        raise WebFormatError(f"'{source}': '{info['data']}' should be {mode} data of shape {[rows, packed_cols]}")
    if scales.dtype != torch.float16 or list(scales.shape) != [rows, math.ceil(cols / group_size)]:
        raise WebFormatError(
            f"'{source}': '{info['scales']}' should be F16 of shape {[rows, math.ceil(cols / group_size)]}"
        )
    return dequantize_groups(packed, scales, 8 if mode == "q8" else 4, cols, group_size).reshape(shape)


def config_of(metadata: dict, source: str) -> dict:
    """The file's architecture config, with the keys every reader and its family's reader need; a family this
    reader does not know (or cannot read) is named."""
    config = _json_field(metadata, "config", source)
    if not isinstance(config, dict):
        raise WebFormatError(
            f"'{source}': config lacks {list(REQUIRED_CONFIG_KEYS)}; re-export it with export_weights.py"
        )
    family = config.get("family", DEFAULT_FAMILY)
    try:
        web = family_named(family).web
    except FamilyError:
        raise WebFormatError(f"'{source}' holds a '{family}' model, a family this reader does not know") from None
    if web is None:
        raise WebFormatError(f"'{source}' holds a '{family}' model, a family this reader cannot read (no web format)")
    missing = [key for key in (*REQUIRED_CONFIG_KEYS, *web.required_config_keys) if key not in config]
    if missing:
        raise WebFormatError(f"'{source}': config lacks {missing}; re-export it with export_weights.py")
    reason = web.unsupported(config)
    if reason:
        raise WebFormatError(f"'{source}': {reason}")
    return config


def check_buildable(config: dict, source: str) -> None:
    """Build the config's model on the meta device (no memory): a config this code cannot build is a bad file."""
    try:
        with torch.device("meta"):
            model_from_config(config)
    except Exception as error:  # bad values fail anywhere in the constructors (ValueError, AssertionError...)
        reason = (str(error).splitlines() or [""])[0][:200] or error.__class__.__name__
        raise WebFormatError(f"'{source}' holds a config this code cannot build ({reason}); re-export it") from None


def read_web_weights(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """(model config dict, complete float32 state_dict loadable with strict=True, metadata) of a file."""
    source = str(path)
    metadata, tensors = read_raw(path)
    config = config_of(metadata, source)
    check_buildable(config, source)
    quantization = _json_field(metadata, "quantization", source)
    state = {}
    for name, info in quantization.items():
        state[name] = _dequantize_entry(name, info, tensors, source)
    packed_names = {info[key] for info in quantization.values() for key in ("data", "scales")}
    for name, tensor in tensors.items():
        if name not in packed_names:
            state[name] = tensor.float()
    if metadata.get("bn_folded") == "true":
        restore_batchnorm_entries(config, state)
    return config, state, metadata


def load_model_from_web_weights(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a sphere-web file (eval mode, its family from the config) with its dequantized weights."""
    config, state, _ = read_web_weights(path)
    model = model_from_config(config)  # read_web_weights checked that it builds
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:200]
        raise WebFormatError(f"'{path}' tensors do not match its config ({first})") from None
    return model.eval().to(device)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints -> files, and the frontend's index.json


def web_file_name(mode: str) -> str:
    """File name of one mode inside a model folder: model_<mode>.safetensors."""
    return f"model_{mode}.safetensors"


def export_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    modes: list[str] | tuple[str, ...] = MODES,
    use_ema: bool = True,
    group_size: int = 32,
    onnx: bool = False,
) -> list[dict]:
    """Export one training checkpoint in every mode to output_dir/model_<mode>.safetensors, and with onnx the
    ONNX files its family declares (output_dir/model_{encoder,decoder,unet}.onnx, model_tensors.bin:
    engine/onnx_export.py); summaries. ONNX files an earlier export left in output_dir are removed first: they
    would not match the new weights."""
    from engine.checkpoint import load_model_from_checkpoint  # keeps the format usable without the trainer

    model, run_config = load_model_from_checkpoint(str(checkpoint), use_ema=use_ema)
    source = {
        "checkpoint": str(checkpoint),
        "ema": use_ema,
        "dataset": run_config.get("dataset_name") or run_config.get("dataset"),
        "model_type": run_config.get("model_type"),
    }
    remove_onnx(output_dir)
    summaries = [
        export_model(model, Path(output_dir) / web_file_name(mode), mode, group_size, source) for mode in modes
    ]
    return summaries + (onnx_summaries(model, Path(output_dir)) if onnx else [])


def onnx_summaries(model: nn.Module, output_dir: Path) -> list[dict]:
    """export_onnx's files as summaries (mode "onnx", the network or "tensors", bytes, the seconds the export
    took); [] for a model without an ONNX export."""
    start = time.perf_counter()
    described = export_onnx(model, output_dir) or {}
    seconds = time.perf_counter() - start
    return [
        {
            "mode": "onnx",
            "network": network,
            "path": str(output_dir / entry["file"]),
            "bytes": entry["bytes"],
            "seconds": seconds,
        }
        for network, entry in described.items()
    ]


def read_header(path: str | Path) -> dict[str, str]:
    """Metadata of a file from its header alone (magic/version checked), without reading the tensors."""
    with open(path, "rb") as file:
        head = file.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
        blob = head + file.read(min(header_len, MAX_HEADER_BYTES + 1))
    header, _ = _parse_header(blob, str(path))
    return header["__metadata__"]


def web_source(path: str | Path) -> dict:
    """The provenance a file's header stores (checkpoint, ema, dataset, model_type); {} when it has none."""
    metadata = read_header(path)
    source = _json_field(metadata, "source", str(path)) if "source" in metadata else {}
    return source if isinstance(source, dict) else {}


def index_entry(model_dir: Path, root: Path) -> dict | None:
    """index.json entry of one exported model folder (None when it holds no sphere-web file). `onnx`, when the
    folder holds the files of an ONNX export (model_onnx.json): those files (relative to root, as the modes'
    files) and the config, so that the page's CPU path needs no safetensors file."""
    modes, metadata = {}, None
    for mode in MODES:
        path = model_dir / web_file_name(mode)
        if path.is_file():
            metadata = read_header(path)
            modes[mode] = {"file": path.relative_to(root).as_posix(), "bytes": path.stat().st_size}
    if metadata is None:
        return None
    config = config_of(metadata, str(model_dir))
    source = _json_field(metadata, "source", str(model_dir)) if "source" in metadata else {}
    family = config.get("family", DEFAULT_FAMILY)
    try:
        fields = web_export_of(family).index_fields(config)
    except (TypeError, ValueError) as error:
        raise WebFormatError(f"'{model_dir}' holds a config this code cannot build ({error})") from None
    return {
        "name": model_dir.name,
        "family": family,
        "dataset": source.get("dataset") if isinstance(source, dict) else None,
        "image_size": config["image_size"],
        **fields,
        "num_classes": config["num_classes"],
        "param_count": int(metadata.get("param_count", 0)),
        "modes": modes,
        **({"onnx": {**onnx, "config": config}} if (onnx := _listed_onnx(model_dir, root)) else {}),
    }


def _listed_onnx(model_dir: Path, root: Path) -> dict | None:
    """describe_onnx, or None with a warning for files that do not match their export (the model stays listed,
    for the WebGPU path)."""
    try:
        return describe_onnx(model_dir, root)
    except OnnxFileError as error:
        warnings.warn(f"index.json leaves out the ONNX files of '{model_dir.name}': {error}", stacklevel=3)
        return None


def _listed(model_dir: Path, root: Path) -> dict | None:
    """index_entry, or None with a warning for a folder whose files cannot be read (one bad folder does not
    keep the others out of the index)."""
    try:
        return index_entry(model_dir, root)
    except (OSError, WebFormatError) as error:
        warnings.warn(f"index.json leaves out '{model_dir.name}': {error}", stacklevel=3)
        return None


def write_index(output_root: str | Path) -> list[dict]:
    """Rebuild output_root/index.json from the model folders found under it (so it never lists missing
    files); returns the entries, sorted by name."""
    root = Path(output_root)
    entries = [entry for folder in sorted(p for p in root.iterdir() if p.is_dir()) if (entry := _listed(folder, root))]
    tmp = root / "index.json.tmp"
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(root / "index.json")
    return entries
