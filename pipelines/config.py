"""Typed stage configs: dataclasses built from presets, YAML files and ``--set dotted.key=value`` overrides.

Precedence, lowest first: dataclass defaults < preset < ``--config`` file < ``--set`` overrides < explicit CLI
flags (``--data``, ``--output`` ...). Unknown keys are errors that name the key, so a typo in a YAML file never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, preset or override that does not fit the stage's config dataclass."""


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``update`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``"train.lr=1e-4"`` -> ``{"train": {"lr": 0.0001}}``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set has an empty key segment in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    out: dict[str, Any] = {}
    cursor = out
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return out


def load_yaml(text: str, source: str = "<config>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} does not match {tp}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, _path=path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, _path: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = _path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{_path}.{name}" if _path else name)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (tuples become lists) suitable for JSON/YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def build_config(
    cls: type[T],
    *,
    preset: Mapping[str, Any] | None = None,
    file_data: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> T:
    """Layer preset < file < --set < explicit flags over the dataclass defaults and validate the result."""
    data = to_dict(cls())
    for layer in (preset or {}, file_data or {}):
        data = deep_merge(data, layer)
    for item in overrides or []:
        data = deep_merge(data, parse_override(item))
    data = deep_merge(data, {k: v for k, v in (explicit or {}).items() if v is not None})
    return from_dict(cls, data)


def absolute_paths(config: T, *fields: str) -> T:
    """``config`` with the named path fields made absolute (``pipelines.storage.absolute_uri``: only relative local
    paths change). Every stage calls it in the driver before any path reaches another process: Ray workers do not
    share the driver's working directory (Ray Train's workers change into their own), so ``runs/x`` would name a
    different folder there — and every URI derived from it (images, results rows) would too."""
    from pipelines import storage

    return dataclasses.replace(config, **{f: storage.absolute_uri(getattr(config, f)) for f in fields})
