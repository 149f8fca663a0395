"""One row of the family table (engine/families.py): what the scripts need to train, rebuild and export a
family's models (docs/families.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .flags import Rule

DEFAULT_FAMILY = "sphere"  # configs saved before families existed are Sphere Encoder ones


@dataclass(frozen=True)
class OnnxNetwork:
    """One ONNX graph of a model (engine/onnx_export.py): fn(model, *inputs), inputs in the order `example` names
    them, the batch axis (the first of every input) dynamic."""

    fn: Callable[..., torch.Tensor]  # (eval model, *inputs) -> the graph's one output
    example: Callable[[int], dict[str, torch.Tensor]]  # batch -> named example inputs (their dtypes are the graph's)
    output: str  # the graph's output name


@dataclass(frozen=True)
class OnnxExport:
    """What a family's models give the page's CPU path (docs/web_format.md §8): ONNX networks, and the tensors the
    page reads beside them (model_tensors.bin, under their web-file names)."""

    networks: Callable[[nn.Module], dict[str, OnnxNetwork]]  # model -> {"encoder" | "decoder" | "unet": network}
    tensors: Callable[[nn.Module], tuple[str, ...]] = lambda model: ()  # state_dict names; () = no tensors file
    unsupported: Callable[[nn.Module], str | None] = lambda model: None  # why this model gets no ONNX files, or None


@dataclass(frozen=True)
class WebExport:
    """How a family's models are written to the sphere-web format (engine/webformat.py, docs/web_format.md)."""

    required_config_keys: tuple[str, ...]  # beyond image_size and num_classes, which every file has
    edge_layers: Callable[[dict], set[str]]  # first/last layers, kept fp16 in q8/q4 (web_format.md §4)
    index_fields: Callable[[dict], dict]  # the family's own fields of an index.json entry
    unsupported: Callable[[dict], str | None] = lambda config: None  # why a config cannot be exported/read, or None
    export_state: Callable[[dict], dict] = lambda state: state  # the state_dict as written (training statistics reset)
    onnx: OnnxExport | None = None  # None: no ONNX files (the page runs the family on WebGPU only)


@dataclass(frozen=True)
class LatentSphere:
    """What "a point of the model's latent sphere" means for a family: slerp strips, the globe atlas and the latent
    map (engine/globe.py) go through these two functions and work for any radius."""

    encode: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (model, x, labels) -> (B, D)
    decode: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (model, (B, D), labels) -> x


@dataclass(frozen=True)
class Family:
    """One row of the table: everything the scripts need to train, rebuild and export a family's models."""

    name: str
    config_class: type  # dataclass with family, image_size, in_channels, num_classes, to_dict(), from_dict()
    model_class: type  # built as model_class(config); capabilities as attributes
    registry: dict[str, Callable[..., nn.Module]]  # named sizes, merged into models.MODELS
    add_flags: Callable[[argparse._ArgumentGroup], None]  # the family's training flags (one --help group)
    model_overrides: Callable[[argparse.Namespace, object], dict]  # (flags, dataset) -> builder overrides
    build_loss: Callable[[argparse.Namespace, nn.Module, torch.device], Callable]  # loss(model, batch, step)
    lr_multipliers: Callable[[argparse.Namespace], dict[str, float]]  # parameter group -> lr multiplier
    check_dataset: Callable[[argparse.Namespace, object], None] = lambda args, dataset: None  # ConfigError if unfit
    flag_rules: tuple[Rule, ...] = ()  # numeric checks of its flags (engine.flags.check_rules)
    presets: dict[str, str] = field(default_factory=dict)  # --preset name -> file under configs/
    web: WebExport | None = None  # None: no web exporter
    latent: LatentSphere | None = None  # None: no points of a sphere to interpolate or map
    summary: str = ""  # the description of its --help group
    prepare_model: Callable[[argparse.Namespace, nn.Module, object], None] = lambda args, model, dataset: None
    # (flags, built model, dataset): fill what the model takes from elsewhere (a frozen stage-1 network)
    training_items: Callable[..., object] = lambda args, model, dataset, run_dir, info, logger: dataset
    # what the training loader reads (e.g. cached latents of the dataset, kept in run_dir); renders and FID still
    # use the dataset
    shared_flags: tuple[str, ...] = ()  # destinations of another family's flags this family takes too (somar
    # takes ldm's --autoencoder and --ae_*): a flag name exists once, so the flag is owned by both
