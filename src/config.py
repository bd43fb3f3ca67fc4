"""Configs as dataclasses: YAML presets (safe_load only) plus `key=value` overrides.

Every problem (unknown key, wrong type) is reported before anything compiles,
naming the valid choices.
"""
import dataclasses
import difflib
import os
import typing

import yaml


class ConfigError(ValueError):
    pass


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(key, cls) -> ConfigError:
    valid = field_names(cls)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r} for {cls.__name__}.{hint} Valid keys: {', '.join(valid)}")


def _field_type(cls, key):
    hints = typing.get_type_hints(cls)
    return hints[key]


def coerce(cls, key, value):
    """Convert a YAML or command-line value to the type of field `key`."""
    if key not in field_names(cls):
        raise _unknown_key(key, cls)
    kind = _field_type(cls, key)
    origin = typing.get_origin(kind)
    try:
        if isinstance(value, str) and kind is not str:
            value = yaml.safe_load(value)
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            return str(value)
        if origin in (tuple, list):
            (item,) = set(typing.get_args(kind)) - {Ellipsis}
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(item(v) for v in value)
        if origin is dict or kind is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError, yaml.YAMLError):
        raise ConfigError(f"config key {key!r} expects {getattr(kind, '__name__', kind)}, got {value!r}") from None
    return value


def from_dict(cls, values: dict):
    return cls(**{k: coerce(cls, k, v) for k, v in values.items()})


def override(config, assignments):
    """Apply ["key=value", ...] to a config dataclass. "field.key=value" sets
    one key of a mapping field (a meta loop's `inner.lr=3e-4`), the value
    typed as in a YAML preset (yaml.safe_load), so config.yaml keeps numbers
    numbers; every command's `--set` goes through here."""
    changes = {}
    for item in assignments or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        if "." in key:   # one key of a mapping field: --set ppo.vf_coef=0.25
            field, sub = key.split(".", 1)
            current = changes.get(field, getattr(config, field, None)) if field in field_names(type(config)) else None
            if not isinstance(current, dict):
                raise ConfigError(f"--set {key}: {field!r} is not a mapping of this config")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"--set {key}: cannot read {raw!r}") from None
            changes[field] = {**current, sub: value}
        else:
            changes[key] = coerce(type(config), key, raw)
    return dataclasses.replace(config, **changes)


def inner_config(cls, own: dict, block: dict, block_name: str):
    """The inner agent's config of a meta loop: the loop's own settings for it
    (`own`) plus any other key of `cls` from the loop's `block_name:` mapping.
    A key set in both places, or unknown to `cls`, is refused."""
    twice = sorted(set(own) & set(block))
    if twice:
        raise ConfigError(f"{', '.join(twice)} set both at the top level and in `{block_name}:`; "
                          "set it at the top level")
    for key in block:
        if key not in field_names(cls):
            raise ConfigError(f"`{block_name}:` key {key!r} is not a {cls.__name__} key "
                              f"({', '.join(field_names(cls))})")
    return from_dict(cls, {**own, **block})


def load_yaml(path, _seen=()) -> dict:
    """A preset's keys. `base: OTHER.yaml` (a path relative to this file)
    inherits OTHER's keys; this file's keys win, and mappings (such as LPO's
    `inner`) merge key by key."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = os.path.join(os.path.dirname(os.path.abspath(path)), str(base))
    if os.path.abspath(base_path) in _seen or os.path.abspath(base_path) == os.path.abspath(path):
        raise ConfigError(f"{path}: `base: {base}` inherits from itself")
    if not os.path.exists(base_path):
        raise ConfigError(f"{path}: base preset {base_path} does not exist")
    return _merge(load_yaml(base_path, (*_seen, os.path.abspath(path))), data)


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_dict(config) -> dict:
    out = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_yaml(config, path):
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
