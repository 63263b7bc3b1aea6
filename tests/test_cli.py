"""The job CLIs (``jobs/``): what ``--help`` says is true.

Every option shows its real default (from the stage's config dataclass, and each preset that changes it), the
``--set`` example of every job and every ``python -m jobs.X ...`` example in its help resolve with ``--print-config``,
and a job run without its required input exits 2 with one ``error:`` line and no traceback.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.core.config import lookup, show_value, to_dict

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem not in ("__init__", "cli"))


def _job(name: str):
    import importlib

    return importlib.import_module(f"jobs.{name}").JOB


def _help(name: str) -> str:
    return _job(name).parser().format_help()


def _print_config(name: str, argv: list[str], capsys) -> dict:
    code = _job(name).main([*argv, "--print-config"])
    out, err = capsys.readouterr()
    assert code == 0, f"jobs.{name} {shlex.join(argv)} --print-config exited {code}: {err[-1000:]}"
    return yaml.safe_load(out)


@pytest.mark.parametrize("name", JOBS)
def test_help_shows_the_real_defaults(name):
    job = _job(name)
    text = _help(name)
    assert "(default: None)" not in text and "default None" not in text, text
    defaults = to_dict(job.config_cls())
    helps = {a.option_strings[0]: a.help or "" for a in job.parser()._actions if a.option_strings}
    for flag in job.flags:
        default = lookup(defaults, flag.key)
        if default not in ("", None, [], {}):
            assert f"default {show_value(default)}" in helps[flag.name] or "added to" in helps[flag.name], (
                f"jobs.{name} {flag.name}: help does not show the default {default!r}: {helps[flag.name]!r}")
        for preset, values in job.presets.items():
            value = lookup(values, flag.key, "<unset>")
            if value != "<unset>" and value != default:
                assert f"{preset} preset {show_value(value)}" in helps[flag.name], (flag.name, helps[flag.name])


def test_help_names_the_presets_that_change_a_default():
    assert "(default 256; tiny preset 128" in " ".join(_help("catalog_tryon").split())


@pytest.mark.parametrize("name", JOBS)
def test_the_set_example_in_help_works(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    examples = re.findall(r"e\.g\. --set (\S+)", " ".join(_help(name).split()))
    assert examples, f"jobs.{name} --help has no --set example"
    for example in examples:
        key, value = example.split("=", 1)
        printed = _print_config(name, ["--set", example], capsys)
        assert lookup(printed, key, "<missing>") == yaml.safe_load(value), (example, printed)


def _usage_examples(text: str, name: str) -> list[list[str]]:
    """Every ``python -m jobs.<name> ...`` command in the help text (``\\`` continues a line)."""
    commands, lines = [], iter(text.splitlines())
    for line in lines:
        if line.strip().startswith("python -m jobs."):
            command = line.strip()
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines).strip()
            argv = shlex.split(command)
            assert argv[:3] == ["python", "-m", f"jobs.{name}"], f"jobs.{name} --help shows another job: {command}"
            commands.append(argv[3:])
    return commands


@pytest.mark.parametrize("name", JOBS)
def test_the_usage_examples_in_help_parse(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    examples = _usage_examples(_help(name), name)
    assert examples, f"jobs.{name} --help shows no example command"
    for argv in examples:
        printed = _print_config(name, argv, capsys)
        for flag, value in zip(argv, argv[1:]):
            key = flag[2:].replace("-", "_")
            if flag.startswith("--") and flag not in ("--config", "--set", "--preset") and key in printed:
                assert str(printed[key]) == value, (argv, key, printed[key])


def test_help_of_each_job_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "jobs.train_tutor", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--num-workers" in proc.stdout and "Exit status" in proc.stdout, proc.stderr


# The demo has no required input (it runs everything on its defaults), so it is not here.
MISSING_INPUT = {
    "catalog_tryon": "--garments is required", "distill": "--data is required", "evaluate": "--results is required",
    "generate_synthetic": "--output is required", "import_viton": "--source", "nightly": "--promotions is required",
    "promote": "--student is required", "import_catalog": "--output is required",
    "train_tutor": "--data is required", "tutor_inference": "--data is required",
}


def test_every_job_but_the_demo_is_listed_for_missing_inputs():
    assert set(MISSING_INPUT) == set(JOBS) - {"demo"}


def test_a_missing_required_input_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", AWS_EC2_METADATA_DISABLED="true")
    env.pop("RAY_ADDRESS", None)
    procs = {name: subprocess.Popen([sys.executable, "-m", f"jobs.{name}"], cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in MISSING_INPUT}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, f"jobs.{name}: exit {proc.returncode}\n{err[-2000:]}"
        assert "Traceback" not in err and len(lines) == 1, f"jobs.{name}: stderr is not one line:\n{err[-2000:]}"
        assert lines[0].startswith("error: ") and MISSING_INPUT[name] in lines[0], lines[0]
    assert not list(tmp_path.iterdir()), "a run that cannot start writes nothing"
