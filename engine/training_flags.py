"""training.py's flags: typed flags over config files over a preset over the defaults, each family's flag group,
and the refusal of a flag that belongs to another family than the model's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .families import FAMILIES, Family, family_of_model
from .flags import ConfigError, explicit_flags, flag_name, read_config_file, read_config_files
from .gan_flags import GAN_FAMILIES, add_gan_flags

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the shipped config files, presets among them
PRESETS = sorted({name for family in FAMILIES.values() for name in family.presets})  # e.g. paper, quickstart
PRESET_CHOICES = ["auto", "none", *PRESETS]


def add_family_flag_groups(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """One --help group per family with its flags; returns family name -> the destinations of its flags."""
    owned = {}
    for family in FAMILIES.values():
        before = len(parser._actions)  # argument groups append to the parser's own action list
        family.add_flags(parser.add_argument_group(f"{family.name} family", family.summary))
        owned[family.name] = {action.dest for action in parser._actions[before:]}
    before = len(parser._actions)
    about = f"the autoencoders' discriminator ({', '.join(GAN_FAMILIES)} families)"
    add_gan_flags(parser.add_argument_group("patch-GAN", about))
    for name in GAN_FAMILIES:
        owned.setdefault(name, set()).update(action.dest for action in parser._actions[before:])
    for family in FAMILIES.values():
        owned[family.name].update(family.shared_flags)
    return owned


def add_tracker_flags(parser: argparse.ArgumentParser) -> None:
    """The curves picture and the optional trackers, beside the metrics.jsonl that every run writes."""
    trackers = parser.add_argument_group("curves and trackers", "beside metrics.jsonl, always written")
    trackers.add_argument(
        "--curves",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="redraw images/curves.png (every metric over steps, matplotlib) after each evaluation; about 0.5 s of "
        "CPU for a short run, 3 s for 100k metrics lines",
    )
    trackers.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also write TensorBoard event files to <run>/tensorboard (every metrics line as scalars, the evaluation "
        "pictures as images; rank 0); needs the tensorboard package; a resumed run keeps its setting",
    )


def on_gpu(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def preset_path(name: str, family: Family, device: str) -> tuple[str, Path | None]:
    """(resolved preset name, its config file or None). "auto" is the family's quickstart where training runs on
    the CPU and its paper recipe on a GPU, "none" where the family has no such preset."""
    if name == "auto":
        name = "paper" if on_gpu(device) else "quickstart"
        name = name if name in family.presets else "none"
    if name == "none":
        return name, None
    if name not in family.presets:
        have = ", ".join(sorted(family.presets)) or "none"
        raise ConfigError(
            f"--preset {name}: {family.name} models have no {name} preset (theirs: {have}); "
            "pass --preset none or a --config file"
        )
    return name, CONFIG_DIR / family.presets[name]


def chosen(key: str, args: argparse.Namespace, typed: set[str], file_values: dict):
    """A flag's value before the preset: typed, else from the config files, else its default."""
    return getattr(args, key) if key in typed or key not in file_values else file_values[key]


def preset_name(args: argparse.Namespace, typed: set[str], file_values: dict) -> str:
    """--preset as typed; else a config file's `preset` key; else none with config files and auto without."""
    if "preset" in typed or "preset" in file_values:
        return chosen("preset", args, typed, file_values)
    return "none" if args.config else args.preset


def check_family_flags(args, owned: dict[str, set[str]], typed: set[str], sources: dict, parser) -> None:
    """ConfigError for a typed flag or config-file key that belongs to another family than the model's."""
    family = family_of_model(args.model_type).name
    actions = {action.dest: action for action in parser._actions}
    for other, dests in sorted(owned.items()):
        foreign = sorted((dests - owned.get(family, set())) & (typed | set(sources))) if other != family else []
        if foreign:
            key = foreign[0]
            where = flag_name(actions[key]) if key in typed else f"{key} (in config file '{sources[key]}')"
            raise ConfigError(f"{where} is a {other}-family flag; {args.model_type} is a {family} model: remove it")


def drop_foreign_flags(args: argparse.Namespace, owned: dict[str, set[str]]) -> None:
    """Remove the other families' flags: config.json then holds only the flags that shaped this run."""
    family = family_of_model(args.model_type).name
    kept = owned.get(family, set())
    for dest in {dest for other, dests in owned.items() if other != family for dest in dests} - kept:
        delattr(args, dest)


def parse_training_flags(
    parser: argparse.ArgumentParser, argv: list[str] | None, owned: dict[str, set[str]]
) -> argparse.Namespace:
    """Defaults < preset < config files (later ones win) < typed flags. `args.explicit` names the flags typed or
    set by a file (they override a resumed run's saved config); `args.preset` is the resolved preset."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    typed = explicit_flags(parser, argv)
    file_values, sources = read_config_files(args.config or [], parser)
    family = family_of_model(chosen("model_type", args, typed, file_values))
    name, path = preset_path(preset_name(args, typed, file_values), family, chosen("device", args, typed, file_values))
    below_files = read_config_file(path, parser) if path is not None else {}
    for key, value in {**below_files, **file_values}.items():
        if key not in typed:
            setattr(args, key, value)
    args.preset, args.explicit = name, typed | set(file_values)
    check_family_flags(args, owned, typed, sources, parser)
    drop_foreign_flags(args, owned)
    return args
