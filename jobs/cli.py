"""The shell every stage CLI shares: ``--config FILE``, ``--set dotted.key=value``, ``--preset NAME`` and a table of
flags, each naming the config field it sets.

A job module is a :class:`Job`: its docstring (the help text), the stage's config class, presets and ``run``, and
its :class:`Flag` table; ``Job.main(argv)`` is its entry point. Types, choices and the defaults shown in ``--help``
come from the config dataclass and the stage's presets, so the help cannot drift from the config. The layering of
preset < file < ``--set`` < flags is :func:`pipelines.core.config.resolve_config`. The stage's
``run(config) -> summary`` does the work; :func:`run_stage` prints the summary as the *last* stdout line (one JSON
object) so schedulers and tests can parse it, and turns known user errors into a one-line message and exit 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pipelines.core.config import (
    ConfigError, choice_options, field_type, lookup, resolve_config, show_value, summary_line, to_dict,
)
from pipelines.core.errors import error_line, is_expected

PRESET_HELP = {"tiny": "seconds (tests, demo)", "cpu": "minutes on a laptop", "published": "the paper's settings"}
_UNSET = object()

log = logging.getLogger("jobs")


def setup_logging() -> None:
    level = os.environ.get("PFAFN_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@dataclass(frozen=True)
class Flag:
    """``--name`` sets config field ``field`` (dotted for a nested config; default: the name with ``_`` for ``-``).

    The argparse type comes from the field: a number or string takes a value, a ``Literal`` its choices, a bool is a
    switch (``negatable``: ``--name/--no-name``), a list is repeatable (``extend``: its items are added to the
    config's list instead of replacing it). ``const`` makes a switch that sets the field to that value."""

    name: str
    help: str
    field: str = ""
    const: Any = _UNSET
    negatable: bool = False
    extend: bool = False

    @property
    def key(self) -> str:
        return self.field or self.name[2:].replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")


#: The Ray Train flags both training jobs share (train_tutor, distill).
TRAIN_FLAGS = (
    Flag("--num-workers", "Ray Train workers (one GPU each with --use-gpu)", field="train.num_workers"),
    Flag("--use-gpu", "train on GPUs", field="train.use_gpu"),
    Flag("--max-failures", "worker-failure retries from the latest checkpoint", field="train.max_failures"),
    Flag("--force-unlock", "take over a lock left by a dead run"),
)


#: The flags every Ray Data stage shares (catalog_tryon, tutor_inference, evaluate).
RAY_STAGE_FLAGS = (
    Flag("--allowed-root", "a folder (absolute path or s3:// prefix) that manifests may name images in, besides the "
                           "manifests' own folders; repeat for more", field="allowed_roots", extend=True),
    Flag("--force-unlock", "take over a lock left by a dead run"),
)


@dataclass(frozen=True)
class Job:
    """One stage's CLI. ``doc``: the job module's docstring (first paragraph: the description; the rest, examples and
    exit status, is printed after the options). ``set_example``: the ``--set`` example of the help (default: one
    derived from the config). ``exit_code``: summary -> exit status (default :func:`default_exit_code`)."""

    doc: str
    config_cls: type
    presets: Mapping[str, Mapping[str, Any]]
    run: Callable[[Any], Mapping[str, Any]]
    flags: Sequence[Flag] = ()
    set_example: str = ""
    exit_code: Callable[[Mapping[str, Any]], int] | None = None

    @property
    def prog(self) -> str:
        """``jobs.<stage>``: a job is named like its stage module (``pipelines.stages.<stage>``)."""
        return "jobs." + self.run.__module__.rsplit(".", 1)[-1]

    def parser(self) -> argparse.ArgumentParser:
        return build_parser(self)

    def main(self, argv: list[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        explicit: dict[str, Any] = {}
        extend: dict[str, list] = {}
        for flag in self.flags:
            value = getattr(args, flag.dest)
            if value is not None:
                (extend if flag.extend else explicit)[flag.key] = value
        return run_stage(config_cls=self.config_cls, args=args, presets=self.presets, explicit=explicit,
                         extend=extend, run=self.run, exit_code=self.exit_code)


def build_parser(job: Job) -> argparse.ArgumentParser:
    """The job's parser: the shared options, then one option per row of the flag table."""
    description, _, epilog = job.doc.strip().partition("\n\n")
    parser = argparse.ArgumentParser(prog=f"python -m {job.prog}", description=description, epilog=epilog or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (local path or s3:// URI); see jobs/configs/")
    example = job.set_example or set_example(job.config_cls, {f.key for f in job.flags})
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field: dotted key, value parsed as YAML (repeatable), "
                             f"e.g. --set {example}")
    if job.presets:
        names = list(job.presets)
        parser.add_argument("--preset", choices=names, default=None,
                            help="; ".join(f"{n}: {PRESET_HELP[n]}" if n in PRESET_HELP else n for n in names)
                            + " (default: none, the config's own defaults)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    for flag in job.flags:
        parser.add_argument(flag.name, dest=flag.dest, default=None,
                            help=flag.help + default_note(job, flag), **_argparse_kind(job.config_cls, flag))
    return parser


def _argparse_kind(config_cls: type, flag: Flag) -> dict[str, Any]:
    """``action`` / ``type`` / ``choices`` of the option, from the config field's type."""
    tp = field_type(config_cls, flag.key)
    options = choice_options(tp)
    if flag.const is not _UNSET:
        return {"action": "store_const", "const": flag.const}
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction if flag.negatable else "store_true"}
    if typing.get_origin(tp) is list or tp is list:
        return {"action": "append", "metavar": "VALUE"}
    if options is not None:
        if all(isinstance(o, str) for o in options):
            return {"choices": list(options)}
        return {"type": _yaml_value, "choices": list(options), "metavar": "{" + ",".join(map(show_value, options)) + "}"}
    for scalar in (int, float, str):
        if tp is scalar or scalar in typing.get_args(tp):
            return {"type": scalar}
    return {"type": _yaml_value}


def _yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def default_note(job: Job, flag: Flag) -> str:
    """`` (default 256; tiny preset 128)``: the config's default and every preset that changes it."""
    default = lookup(to_dict(job.config_cls()), flag.key)
    parts = []
    if flag.const is not _UNSET:
        parts.append(f"sets {flag.key}={show_value(flag.const)}; default {show_value(default)}")
    elif flag.extend:
        parts.append(f"added to {show_value(default)}")
    elif default not in ("", None, [], {}):
        parts.append(f"default {show_value(default)}")
    for name, values in job.presets.items():
        value = lookup(values, flag.key, _UNSET)
        if value is not _UNSET and value != default:
            parts.append(f"{name} preset {show_value(value)}")
    return f" ({'; '.join(parts)})" if parts else ""


def set_example(config_cls: type, flagged: set[str]) -> str:
    """A ``--set`` example that works for this config: a number field without a flag of its own, nested when the
    config has nested sections (to show the dotted key), at its default value."""
    leaves = list(_leaf_fields(config_cls(), ""))
    numbers = [(k, v) for k, v in leaves if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for pool in ([p for p in numbers if "." in p[0] and p[0] not in flagged],
                 [p for p in numbers if p[0] not in flagged], numbers, leaves):
        if pool:
            key, value = pool[0]
            return f"{key}={show_value(value)}"
    raise ConfigError(f"{config_cls.__name__} has no fields")


def _leaf_fields(obj: Any, prefix: str):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, f"{prefix}{f.name}.")
        elif f.init:
            yield f"{prefix}{f.name}", value


def emit_summary(summary: Mapping[str, Any]) -> None:
    """Print the run summary as the last stdout line (one JSON object)."""
    sys.stdout.flush()
    print(summary_line(summary), flush=True)


def default_exit_code(summary: Mapping[str, Any]) -> int:
    """1 when the run's error rate exceeded ``max_error_rate`` (the Ray Data stages say so in the summary), else 0."""
    return 1 if summary.get("exceeded_error_rate") else 0


def run_stage(
    *,
    config_cls: type,
    args: argparse.Namespace,
    presets: Mapping[str, Mapping[str, Any]],
    explicit: Mapping[str, Any],
    run: Callable[[Any], Mapping[str, Any]],
    extend: Mapping[str, list] | None = None,
    exit_code: Callable[[Mapping[str, Any]], int] | None = None,
) -> int:
    """Resolve the config, run the stage, print the summary; return the process exit code.

    Every expected failure (:func:`pipelines.core.errors.expected_errors`: bad config, lock held or lost, manifest
    missing or malformed, storage unreachable or denied ...) is one ``error:`` line on stderr and exit 2, no
    traceback; when the stage attached the summary it had got to (``exc.summary``), that is still printed. Exit 1 is
    only "error rate exceeded" (a summary whose exit code is not 0 may say why in ``summary["error"]``, printed as
    the one ``error:`` line). An unexpected exception is a bug: its traceback is logged, then the ``error:`` line and
    exit 2 (never 1, which schedulers read as "error rate exceeded")."""
    setup_logging()
    try:
        config = resolve_config(config_cls, presets, preset=getattr(args, "preset", None), config_file=args.config,
                                overrides=args.overrides, explicit=explicit, extend=extend)
    except ConfigError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(config), sort_keys=False))
        return 0
    started = time.time()
    try:
        summary = dict(run(config))
    except Exception as exc:
        if not is_expected(exc):  # a bug: its traceback is the report, but exit 1 stays "error rate exceeded"
            log.exception("unexpected failure (a bug; please report it with this traceback)")
            print(f"error: internal error: {type(exc).__name__}: {error_line(exc)}", file=sys.stderr)
            return 2
        print(f"error: {error_line(exc)}", file=sys.stderr)
        if getattr(exc, "summary", None) is not None:
            emit_summary(exc.summary)
        return 2
    summary.setdefault("wall_s", round(time.time() - started, 3))
    emit_summary(summary)
    code = (exit_code or default_exit_code)(summary)
    if code and summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    return code
