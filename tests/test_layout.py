"""The layout is the architecture: ``jobs -> pipelines -> pfafn``, one stage module per job, typed choice fields.

- every ``jobs/X.py`` is a thin CLI (a flag table, no functions of its own) for ``pipelines/stages/X.py``, which has
  ``run`` and its config class; every stage module with a ``run`` has its job;
- ``pfafn`` imports neither Ray nor ``pipelines`` (read from the source, and from ``sys.modules`` after importing
  every pfafn module in a fresh interpreter); ``pipelines`` imports no ``jobs``;
- every choice field (a ``Literal``, nested configs included) of every stage config rejects a value outside its
  choices with a message that lists them, both when the config is built from YAML / ``--set`` and in ``validate()``
  (a config built in Python skips the YAML conversion).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from pipelines.core.config import ConfigError, build_config

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem not in ("__init__", "cli"))
STAGE_FILES = sorted(p for p in (ROOT / "pipelines" / "stages").glob("*.py") if p.stem != "__init__")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (anywhere in it, lazy imports in functions included)."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top_level_functions(path: Path) -> set[str]:
    return {n.name for n in _tree(path).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _job(name: str):
    return importlib.import_module(f"jobs.{name}").JOB


# ----------------------------------------------------------------------------------------------------------------------
# one stage module per job, same name


def test_there_are_jobs_and_stages():
    assert len(JOBS) >= 9 and "nightly" in JOBS and "demo" in JOBS, JOBS


@pytest.mark.parametrize("name", JOBS)
def test_job_has_its_stage_module(name):
    stage_file = ROOT / "pipelines" / "stages" / f"{name}.py"
    assert stage_file.is_file(), f"jobs/{name}.py has no stage module pipelines/stages/{name}.py"
    job_file = ROOT / "jobs" / f"{name}.py"
    assert f"pipelines.stages.{name}" in _imported_modules(job_file), f"jobs/{name}.py must import its stage"
    tree = _tree(job_file)
    defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not defined, f"jobs/{name}.py is a flag table, not logic: it defines {defined}"

    stage = importlib.import_module(f"pipelines.stages.{name}")
    job = _job(name)
    assert job.run is stage.run and callable(stage.run), f"jobs.{name} must run pipelines.stages.{name}.run"
    cls = job.config_cls
    assert dataclasses.is_dataclass(cls) and cls.__name__.endswith("Config"), cls
    assert cls.__module__ == stage.__name__, f"{cls.__name__} is defined in {cls.__module__}, not in its stage"
    assert callable(getattr(cls, "validate", None)), f"{cls.__name__} has no validate()"
    assert job.presets is stage.PRESETS
    assert job.prog == f"jobs.{name}"


def test_every_stage_module_with_a_run_has_its_job():
    """A stage module is one with a ``run()``; the others (evaluate_report) are helpers of one."""
    stages = [p.stem for p in STAGE_FILES if "run" in _top_level_functions(p)]
    assert len(stages) >= len(JOBS) - 1, stages
    orphans = [s for s in stages if s not in JOBS]
    assert not orphans, f"pipelines/stages/{orphans}.py have a run() but no jobs/ module"


# ----------------------------------------------------------------------------------------------------------------------
# jobs -> pipelines -> pfafn


def _py_files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    return files


@pytest.mark.parametrize("package, forbidden", [("pfafn", ("ray", "pipelines", "jobs")), ("pipelines", ("jobs",))])
def test_imports_point_down_statically(package, forbidden):
    bad = []
    for path in _py_files(package):
        for module in _imported_modules(path):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}: import {module}")
    assert not bad, "\n".join(bad)


def test_importing_every_pfafn_module_loads_no_ray_and_no_pipelines():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in _py_files("pfafn"))
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(modules) <= set(loaded)
    for top in ("ray", "pipelines", "jobs"):
        assert not [m for m in loaded if m == top or m.startswith(top + ".")], f"importing pfafn loaded {top}"


# ----------------------------------------------------------------------------------------------------------------------
# choice fields


def _choices(tp) -> tuple | None:
    """The allowed values of a choice type: Literal[...], or a union of Literals with None / bool."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if not any(typing.get_origin(a) is typing.Literal for a in args):
            return None
        out: list = []
        for arg in args:
            out += [None] if arg is type(None) else [True, False] if arg is bool else list(_choices(arg) or ())
        return tuple(out)
    return None


def _choice_fields(cls, prefix: str = ""):
    """(dotted field, allowed values) for every choice field of dataclass ``cls``, nested dataclasses included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _choice_fields(tp, f"{prefix}{f.name}.")
        elif _choices(tp) is not None:
            yield f"{prefix}{f.name}", _choices(tp)


def _yaml_word(value) -> str:
    return {None: "null", True: "true", False: "false"}.get(value, value) if not isinstance(value, str) else value


def test_choice_fields_are_found():
    assert ("preset", ("tiny", "cpu", "published")) in list(_choice_fields(_job("demo").config_cls))


def _valid_config(cls):
    """The defaults with every required input filled in: each time validate() names an empty ``--input`` (``--data
    is required``, ``give either --student or ...``), that field gets a path."""
    config = cls()
    for _ in range(12):
        try:
            config.validate()
            return config
        except (ConfigError, ValueError, RuntimeError) as exc:
            names = [n.replace("-", "_") for n in re.findall(r"--([a-z0-9-]+)", str(exc))]
            empty = [n for n in names if getattr(config, n, None) == ""]
            assert empty, f"{cls.__name__}() fails validate() for another reason than a missing input: {exc}"
            config = dataclasses.replace(config, **{empty[0]: f"/nonexistent/{empty[0]}"})
    raise AssertionError(f"{cls.__name__}: could not fill its required inputs")


def _replace(config, dotted: str, value):
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(config, **{head: _replace(getattr(config, head), rest, value) if rest else value})


def _assert_lists(message: str, options: tuple):
    missing = [o for o in options if str(_yaml_word(o)) not in message]
    assert not missing, f"the message does not list {missing}: {message}"


# nightly's settings are addresses, prefixes and times, promote's URIs and thresholds: no choice field to test
@pytest.mark.parametrize("name", [n for n in JOBS if n not in ("nightly", "promote")])
def test_choice_fields_reject_a_value_outside_their_choices(name):
    cls = _job(name).config_cls
    fields = list(_choice_fields(cls))
    assert fields, f"{cls.__name__} has no choice field: is a choice written as a plain str?"
    for field, options in fields:
        with pytest.raises(ConfigError) as built:
            build_config(cls, overrides=[f"{field}=not-a-choice"])
        assert field.rsplit(".", 1)[-1] in str(built.value)
        _assert_lists(str(built.value), options)

        config = _replace(_valid_config(cls), field, "not-a-choice")
        with pytest.raises(ConfigError) as validated:
            config.validate()
        assert "not-a-choice" in str(validated.value), (field, str(validated.value))
        _assert_lists(str(validated.value), options)
