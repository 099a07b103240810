"""Config dataclasses to and from plain dicts (JSON metadata, TOML files, `--set key=value`): the one builder every
config of the project uses, so an unknown key or a wrong type is reported the same way everywhere.

`from_dict(cls, data, where)` builds dataclass `cls`: a key it does not know is an error naming the key, the valid
keys and where it was (`config.optim`); a field typed as a dataclass is built from a nested dict; values are checked
against the field's type (JSON and TOML have lists, not tuples; a `--set` value may arrive as a string).
`to_dict(config)` is the inverse, JSON-safe. `read_config_file` and `apply_set` layer TOML (or YAML) files and
`--set` assignments onto a dict before it is built.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Optional


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and what to do."""


def to_dict(config) -> dict:
    """A config dataclass as a JSON-safe dict (nested dataclasses become dicts, tuples lists)."""
    return _jsonable(dataclasses.asdict(config))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def from_dict(cls, data, where: Optional[str] = None):
    """Dataclass `cls` from `data`; ConfigError (a ValueError) on an unknown key or a value of the wrong type."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of keys; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        place = "" if where == cls.__name__ else f" in {where}"
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}{place}; valid keys: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return tuple(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of keys; got {value!r}")
        return dict(value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Layering: file <- --set <- flags, as nested dicts


def deep_merge(base: dict, override: dict) -> dict:
    """`override` onto `base`, table by table (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) file of config keys as a nested dict."""
    import tomllib  # here, not at the top: the inference library must import on Python 3.10

    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        if str(path).lower().endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"config file '{path}' is YAML, which needs pyyaml: pip install pyyaml "
                                  "(or `pip install .[train]`), or give a .toml file") from None
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        else:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except Exception as error:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        raise ConfigError(f"config file '{path}' cannot be parsed: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold tables of keys")
    return data


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax (numbers, true/false, "strings", [lists]); anything else is a plain string."""
    import tomllib

    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(data: dict, assignment: str) -> dict:
    """`key=value` or `section.key=value` (`model.network.base_channels=64`) onto a nested dict."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs key=value (e.g. optim.lr=2e-4); got '{assignment}'")
    override: dict = {}
    node = override
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parse_value(value.strip())
    return deep_merge(data, override)
