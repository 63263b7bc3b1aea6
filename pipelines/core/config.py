"""Typed stage configs: dataclasses built from presets, YAML files and ``--set dotted.key=value`` overrides.

Precedence, lowest first: dataclass defaults < preset < ``--config`` file < ``--set`` overrides < explicit CLI
flags (``--data``, ``--output`` ...). Unknown keys are errors that name the key, so a typo in a YAML file never
silently falls back to a default. :func:`resolve_config` is that layering for a run (a preset by name, a config
file by URI); the job CLIs (``jobs/``) only map their flags onto it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
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
    if not all(key.strip().split(".")):
        raise ConfigError(f"--set has an empty key segment in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return nest(key.strip(), value)


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """``nest("train.lr", 1e-4)`` -> ``{"train": {"lr": 1e-4}}``."""
    *parents, last = dotted.split(".")
    out: dict[str, Any] = {last: value}
    for part in reversed(parents):
        out = {part: out}
    return out


def lookup(data: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at ``dotted`` in nested mappings, or ``default`` where a segment is missing."""
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


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
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                pass
        options = choice_options(tp)
        if options is not None:
            raise ConfigError(_choice_message(path, options, value))
        raise ConfigError(f"{path}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(_choice_message(path, args, value))
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
    extend: Mapping[str, list] | None = None,
) -> T:
    """Layer preset < file < --set < explicit flags over the dataclass defaults (``explicit`` keys may be dotted,
    None values are skipped); then ``extend`` adds items to list fields instead of replacing them."""
    data = to_dict(cls())
    for layer in (preset or {}, file_data or {}):
        data = deep_merge(data, layer)
    for item in overrides or []:
        data = deep_merge(data, parse_override(item))
    for key, value in (explicit or {}).items():
        if value is not None:
            data = deep_merge(data, nest(key, value))
    for key, items in (extend or {}).items():
        if items:
            data = deep_merge(data, nest(key, list(lookup(data, key) or []) + list(items)))
    return from_dict(cls, data)


def read_config_file(uri: str) -> dict[str, Any]:
    """A YAML config file from a local path, ``file://`` or any URI :mod:`pipelines.core.storage` reads."""
    if "://" in uri and not uri.startswith("file://"):
        from pipelines.core import storage

        text = storage.read_bytes(uri).decode("utf-8")
    else:
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {uri}: {exc.strerror or exc}") from None
    return load_yaml(text, source=uri)


def resolve_config(
    cls: type[T],
    presets: Mapping[str, Mapping[str, Any]],
    *,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    explicit: Mapping[str, Any] | None = None,
    extend: Mapping[str, list] | None = None,
) -> T:
    """A run's config: ``preset`` (by name; else the file's own ``preset:`` key) < ``config_file`` < ``overrides``
    (``--set`` items) < ``explicit`` < ``extend`` (see :func:`build_config`)."""
    from pipelines.core.storage import StorageError

    try:
        file_data = read_config_file(config_file) if config_file else {}
    except StorageError as exc:  # an s3:// config that cannot be read is a config error (exit 2), not a traceback
        raise ConfigError(f"cannot read config file {config_file}: {exc.reason}") from None
    named = file_data.pop("preset", None)
    if preset is None and named is not None:
        preset, where = named, config_file
    else:
        where = "--preset"
    if preset is not None and preset not in presets:
        raise ConfigError(f"{where}: unknown preset {preset!r}; choose one of {sorted(presets)}")
    return build_config(cls, preset=presets.get(preset, {}) if preset else {}, file_data=file_data,
                        overrides=overrides, explicit=explicit, extend=extend)


def field_type(cls: type, dotted: str) -> Any:
    """The type hint of the (possibly nested) field ``dotted`` of dataclass ``cls``; ConfigError if there is none."""
    tp: Any = cls
    for part in dotted.split("."):
        hints = typing.get_type_hints(tp) if _is_dataclass_type(tp) else {}
        if part not in hints:
            raise ConfigError(f"{cls.__name__} has no field {dotted!r}")
        tp = hints[part]
    return tp


def summary_line(summary: Mapping[str, Any]) -> str:
    """A run summary as the one JSON line every stage prints last on stdout (keys sorted; dates etc. as strings),
    which schedulers and tests parse."""
    return json.dumps(summary, sort_keys=True, default=str)


def absolute_paths(config: T, *fields: str) -> T:
    """``config`` with the named path fields made absolute (``pipelines.core.storage.absolute_uri``: only relative local
    paths change). Every stage calls it in the driver before any path reaches another process: Ray workers do not
    share the driver's working directory (Ray Train's workers change into their own), so ``runs/x`` would name a
    different folder there — and every URI derived from it (images, results rows) would too."""
    from pipelines.core import storage

    return dataclasses.replace(config, **{f: storage.absolute_uri(getattr(config, f)) for f in fields})


# ----------------------------------------------------------------------------------------------------------------------
# Checks every stage's ``validate()`` shares (configs built in Python skip from_dict, so validate() re-checks).


def check_choices(config: Any, where: str) -> None:
    """Raise :class:`ConfigError` unless every ``Literal[...]`` field of the dataclass ``config`` (nested dataclasses
    included) holds one of its allowed values; the message lists them."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        tp, value = hints[f.name], getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{where}.{f.name}")
            continue
        options = choice_options(tp)
        if options is not None and not any(value == o and type(value) is type(o) for o in options):
            raise ConfigError(_choice_message(f"{where}: {f.name}", options, value))


def _choice_message(what: str, options: tuple, value: Any) -> str:
    return f"{what} must be one of {'|'.join(map(show_value, options))}, got {value!r}"


def choice_options(tp: Any) -> tuple | None:
    """The allowed values of a choice type: ``Literal[...]``, or a union of Literals with None or bool (``bool |
    Literal["auto"]``: true, false, auto); None for any other type."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if not any(typing.get_origin(a) is typing.Literal for a in args):
            return None  # a plain Optional[...] or str | bool is not a choice
        options: list = []
        for arg in args:
            inner = {type(None): (None,), bool: (True, False)}.get(arg) or choice_options(arg)
            if inner is None:
                return None
            options.extend(inner)
        return tuple(options)
    return None


def show_value(value: Any) -> str:
    """A config value as YAML spells it (``true``, ``null``, ``[a, b]``), so messages and help show what to type."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(show_value, value)) + "]"
    return str(value)


def require(config: Any, where: str, *names: str) -> None:
    """Raise :class:`ConfigError` naming the first of ``names`` that is empty (``--flag-name is required``)."""
    for name in names:
        if not getattr(config, name):
            raise ConfigError(f"{where}: --{name.replace('_', '-')} is required")


def check_size(where: str, height: int, width: int) -> None:
    """The one image-size rule of every stage: :func:`pfafn.check_image_size` (multiples of 32, at least 64)."""
    from pfafn.nn.afwm import check_image_size

    try:
        check_image_size(height, width)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
