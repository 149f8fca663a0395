"""Training flags from three places: typed flags, config files (--config a.yaml) and presets (configs/*.yaml).

A config file is a YAML (or JSON) mapping whose keys are flag destinations (`batch_size`, `eval_frequency`);
a run's config.json, whose "train" section holds every flag, is one too. Values are checked against the flag's
type and choices as argparse would check a typed value.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from collections.abc import Callable
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A flag value (or combination) that cannot train; the message names the flag, the value and the fix."""


Rule = tuple[str, Callable[[float], bool], str]  # (flag, test the value must pass, what it must be)
NOT_IN_FILES = {"help", "config"}  # destinations a config file cannot set (a file does not include other files)


def probability_rule(flag: str, default: float) -> Rule:
    return flag, lambda v: 0 <= v <= 1, f"is a probability: use a value in [0, 1] (default {default})"


def weight_rule(flag: str) -> Rule:
    return flag, lambda v: 0 <= v < math.inf, "is a loss weight: use a value >= 0 (0 turns the term off)"


def check_rules(args: argparse.Namespace, rules: list[Rule]) -> None:
    """ConfigError for the first flag whose value breaks its rule; None values mean "default" and pass."""
    for flag, test, requirement in rules:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None and not test(value):
            raise ConfigError(f"{flag} {value} {requirement}")


def check_kind_flags(args: argparse.Namespace, kind: str, kind_flags: dict, kind_words: dict) -> None:
    """ConfigError for a typed (or config-file) flag of a staged family (ldm, somar) that belongs to another kind
    of its models than `kind`; kind_flags maps each kind to its flags, kind_words each kind to its name in words."""
    owned = set().union(*kind_flags.values())
    for name in sorted(owned & set(getattr(args, "explicit", ())) - kind_flags[kind]):
        if getattr(args, name, None) is None:
            continue
        kinds = " or a ".join(kind_words[k] for k in kind_flags if name in kind_flags[k])
        raise ConfigError(f"--{name} is for a {kinds}; {args.model_type} is a {kind_words[kind]}: remove it")


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the flags the user actually typed (these override a resumed run's saved config)."""
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    return {action.dest for action in parser._actions if typed & set(action.option_strings)}


def flag_name(action: argparse.Action) -> str:
    """The spelling a user types: the first option string (e.g. --eval-frequency)."""
    return action.option_strings[0] if action.option_strings else action.dest


def file_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """destination -> action of every flag a config file may set."""
    return {action.dest: action for action in parser._actions if action.dest not in NOT_IN_FILES}


# ---------------------------------------------------------------------------------------------------------
# Reading files


def load_mapping(path: str | Path) -> dict:
    """The flag mapping of a YAML/JSON file; a run's config.json gives its "train" section."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"config file '{path}' cannot be read ({reason}); pass a YAML or JSON file") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        where = str(error).splitlines()[0][:160] if str(error) else error.__class__.__name__
        raise ConfigError(f"config file '{path}' is not valid {path.suffix[1:] or 'YAML'} ({where})") from None
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("train"), dict) and isinstance(data.get("model"), dict):
        return data["train"]  # a run's config.json: its flags
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' holds a {type(data).__name__}, not a mapping of flag names to values")
    return data


def unknown_key_error(key: str, path: Path, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "keys are flag names such as batch_size (see training.py --help)"
    return ConfigError(f"config file '{path}' has an unknown key '{key}'; {hint}")


def read_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """{destination: value} of one file, every value checked and converted like a typed flag."""
    path, actions = Path(path), file_actions(parser)
    values = {}
    for raw_key, value in load_mapping(path).items():
        key = str(raw_key).replace("-", "_")  # eval-frequency and eval_frequency both name --eval-frequency
        if key not in actions:
            raise unknown_key_error(str(raw_key), path, sorted(actions))
        values[key] = convert_value(actions[key], value, f"config file '{path}': {key}")
    return values


def read_config_files(paths: list[str], parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """(merged values, destination -> the file that set it); later files override earlier ones."""
    values, sources = {}, {}
    for path in paths:
        for key, value in read_config_file(path, parser).items():
            values[key], sources[key] = value, path
    return values, sources


# ---------------------------------------------------------------------------------------------------------
# Checking values as argparse checks typed ones


def convert_value(action: argparse.Action, value, where: str):
    """`value` from a file as the flag's type, or a one-line ConfigError naming `where`."""
    if value is None:
        if action.default is None:
            return None
        raise ConfigError(f"{where} cannot be null (its default is {action.default!r}); give a value or drop the key")
    if action.nargs == 0:  # store_true / BooleanOptionalAction
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not items and action.nargs == "+":
            raise ConfigError(f"{where} needs at least one value")
        return [convert_scalar(action, item, where) for item in items]
    return convert_scalar(action, value, where)


def type_name(action: argparse.Action) -> str:
    return getattr(action.type, "__name__", "value") if action.type is not None else "text"


def convert_scalar(action: argparse.Action, value, where: str):
    """One value: text through the flag's type (YAML reads 3e-4 as text), numbers checked, choices checked."""
    if isinstance(value, (bool, list, dict)) or (action.type is None and not isinstance(value, str)):
        raise ConfigError(f"{where} must be a single {type_name(action)}, got {value!r}")
    try:
        converted = value if action.type is None else action.type(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        detail = f" ({error})" if isinstance(error, argparse.ArgumentTypeError) else ""
        raise ConfigError(f"{where}: {value!r} is not a valid {type_name(action)}{detail}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {converted!r} is not one of {choices}")
    return converted
