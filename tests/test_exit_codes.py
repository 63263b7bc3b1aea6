"""Every stage CLI turns every expected failure into exit 2 with one ``error:`` line and no traceback (real processes);
exit 1 stays "error rate exceeded" (tests/test_catalog_tryon.py checks that one)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tests.catalog_helpers import TINY, SIZE, write_catalog, write_parquet, write_student

REPO = Path(__file__).resolve().parents[1]


def _tutor(dest: str) -> str:
    from pfafn.checkpoint import save_checkpoint
    from pfafn.tutor import TutorModel

    model = TutorModel(TINY).eval()
    save_checkpoint(dest, warp=model.warp, gen=model.gen, kind="tutor", meta={"test": True})
    return dest


def _cases(tmp: Path) -> dict[str, tuple[list[str], str, dict]]:
    """name -> (argv after ``-m``, text the error line must contain, extra env)."""
    g_uri, m_uri = write_catalog(str(tmp / "data"), 1, 1)
    student = str(tmp / "student.pt")
    write_student(student)
    tutor = _tutor(str(tmp / "tutor.pt"))
    wrong = str(tmp / "wrong.parquet")
    write_parquet(pa.table({"sku": ["a"], "picture": ["x.png"]}), wrong)
    missing = str(tmp / "missing")
    size = ["--height", str(SIZE), "--width", str(SIZE)]
    catalog = ["jobs.catalog_tryon", "--models", m_uri, "--student", student, *size]
    unreachable = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                   "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"}
    return {
        "catalog, manifest missing": (
            [*catalog, "--garments", f"{missing}.parquet", "--output", str(tmp / "o1")], "missing", {}),
        "catalog, manifest with wrong columns": (
            [*catalog, "--garments", wrong, "--output", str(tmp / "o2")], "garment_id", {}),
        "catalog, storage unreachable": (
            [*catalog, "--garments", "s3://nowhere/garments.parquet", "--output", str(tmp / "o3")], "nowhere",
            unreachable),
        "catalog, lock_ttl_s below 3 heartbeats": (
            [*catalog, "--garments", g_uri, "--output", str(tmp / "o4"), "--set", "lock_ttl_s=2"], "lock_ttl_s", {}),
        "tutor_inference, dataset root missing": (
            ["jobs.tutor_inference", "--data", missing, "--tutor", tutor, "--output", str(tmp / "o5"), *size],
            "missing", {}),
        "evaluate, results missing": (
            ["jobs.evaluate", "--results", missing, "--output", str(tmp / "o6")], "missing", {}),
        "train_tutor, dataset root missing": (
            ["jobs.train_tutor", "--preset", "tiny", "--data", missing, "--output", str(tmp / "o7")], "missing", {}),
        "distill, dataset root missing": (
            ["jobs.distill", "--preset", "tiny", "--data", missing, "--tutor", tutor, "--fakes", f"{missing}-fakes",
             "--output", str(tmp / "o8")],
            "missing", {}),
        "import_viton, source missing": (
            ["jobs.import_viton", "--source", missing, "--output", str(tmp / "o9")], "missing", {}),
    }


def test_every_stage_cli_exits_2_with_one_line(tmp_path):
    cases = _cases(tmp_path)
    procs = {}
    for name, (argv, _, extra) in cases.items():
        env = dict(os.environ, RAY_AUTH_MODE="disabled", PFAFN_LOG_LEVEL="WARNING", **extra)
        env.pop("RAY_ADDRESS", None)
        procs[name] = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    failures = []
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        wanted = cases[name][1]
        if proc.returncode != 2 or len(errors) != 1 or "Traceback" in stderr or wanted not in errors[0]:
            failures.append(f"{name}: exit {proc.returncode}, stderr tail:\n{stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_expected_errors_cover_ray_wrapped_causes():
    """A failure raised inside a Ray task reaches the driver wrapped (RayTaskError, an instance of the cause's class
    whose text is the remote traceback): the CLI still prints the cause's one line."""
    from pipelines.core import storage
    from pipelines.core.errors import error_line, is_expected

    class Wrapped(storage.StorageUnavailableError):
        def __init__(self, cause):
            self.cause = cause
            super().__init__("Traceback (most recent call last):\n  File ...\nray remote text")

    cause = storage.StorageUnavailableError("read: endpoint unreachable (ReadTimeoutError)", "s3://b/k")
    assert is_expected(Wrapped(cause))
    assert error_line(Wrapped(cause)) == "read: endpoint unreachable (ReadTimeoutError): s3://b/k"
    assert not is_expected(KeyError("a bug"))


@pytest.mark.parametrize("module", ["catalog_tryon", "tutor_inference", "evaluate", "train_tutor", "distill"])
def test_every_stage_config_checks_the_lock_ttl(module):
    import importlib

    from pipelines.core.config import ConfigError

    stage = importlib.import_module(f"pipelines.stages.{module}")
    config_cls = next(v for k, v in vars(stage).items() if k.endswith("Config") and hasattr(v, "lock_ttl_s")
                      and v.__module__ == stage.__name__)
    fields = {f: "x" for f in ("garments", "models", "output", "student", "data", "tutor", "results", "fakes")
              if f in config_cls.__dataclass_fields__}
    with pytest.raises(ConfigError, match="lock_ttl_s must be >= 3 x"):
        config_cls(**fields, lock_ttl_s=60).validate()
