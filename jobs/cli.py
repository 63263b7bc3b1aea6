"""The shell every stage CLI shares: ``--config FILE``, ``--set dotted.key=value``, ``--preset NAME``.

A job module defines its argparse flags, maps them onto its config dataclass and calls ``run_stage``. The stage's
``run(config) -> summary`` does the work; this shell prints the summary as the *last* stdout line (one JSON
object) so schedulers and tests can parse it, and turns known user errors into a one-line message and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TypeVar

from pipelines.config import ConfigError, build_config, load_yaml, to_dict
from pipelines.errors import StageError

T = TypeVar("T")

PRESET_NAMES = ("tiny", "cpu", "published")

log = logging.getLogger("jobs")


def setup_logging() -> None:
    level = os.environ.get("PFAFN_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def base_parser(prog: str, description: str, *, presets: Sequence[str] | None = PRESET_NAMES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (local path or s3:// URI); see jobs/configs/")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, dotted path, value parsed as YAML (repeatable), e.g. --set train.epochs=3",
    )
    if presets:
        parser.add_argument(
            "--preset",
            choices=list(presets),
            default=None,
            help="tiny: seconds (tests, demo); cpu: minutes on a laptop; published: the paper's settings",
        )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return parser


def _read_config_file(uri: str) -> dict[str, Any]:
    if "://" in uri and not uri.startswith("file://"):
        from pipelines import storage

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
    config_cls: type[T],
    args: argparse.Namespace,
    presets: Mapping[str, Mapping[str, Any]],
    explicit: Mapping[str, Any],
) -> T:
    preset_name = getattr(args, "preset", None)
    preset = presets.get(preset_name, {}) if preset_name else {}
    file_data = _read_config_file(args.config) if args.config else {}
    if preset_name is None and "preset" in file_data:
        preset_name = file_data.pop("preset")
        if preset_name not in presets:
            raise ConfigError(f"{args.config}: unknown preset {preset_name!r}; choose one of {sorted(presets)}")
        preset = presets[preset_name]
    else:
        file_data.pop("preset", None)
    return build_config(config_cls, preset=preset, file_data=file_data, overrides=args.overrides, explicit=explicit)


def emit_summary(summary: Mapping[str, Any]) -> None:
    """Print the run summary as the last stdout line (one JSON object)."""
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)


def run_stage(
    *,
    config_cls: type[T],
    args: argparse.Namespace,
    presets: Mapping[str, Mapping[str, Any]],
    explicit: Mapping[str, Any],
    run: Callable[[T], Mapping[str, Any]],
    exit_code: Callable[[Mapping[str, Any]], int] | None = None,
) -> int:
    """Resolve the config, run the stage, print the summary; return the process exit code."""
    setup_logging()
    try:
        config = resolve_config(config_cls, args, presets, explicit)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        import yaml

        print(yaml.safe_dump(to_dict(config), sort_keys=False))
        return 0
    started = time.time()
    try:
        summary = dict(run(config))
    except (ConfigError, StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary.setdefault("wall_s", round(time.time() - started, 3))
    emit_summary(summary)
    return exit_code(summary) if exit_code else 0

