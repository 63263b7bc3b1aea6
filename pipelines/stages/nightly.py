"""Nightly catalog run: submit the catalog stage for the promoted student to a Ray cluster, once per day
(``jobs.nightly`` is its CLI; its help lists the exit codes).

What :func:`run` does, top to bottom:

1. finds the student production uses: the newest promotion record under ``{promotions}/promotions/`` (written by
   ``jobs.promote``; newest by the record's ``promoted_at``, ties by key; an unreadable record is skipped with a
   logged reason — :mod:`pipelines.core.promotions`). A training run that finished later is not used until someone
   promotes it, so a smoke-test student written next to the real ones never goes live by itself;
2. builds the entrypoint ``python -m jobs.catalog_tryon --config ... --student ... --garments ... --models ...
   --output ...`` (plus ``--set`` overrides from ``catalog_overrides``);
3. submits it with ``ray.job_submission.JobSubmissionClient`` under the submission id
   ``{submission_prefix}-YYYY-MM-DD`` (the date in ``timezone``, or ``date``), with a runtime_env of the working
   dir (minus ``excludes``) and non-secret ``env_vars``. Ray refuses a second job with the same id on a cluster, so a
   second run the same day ends with exit code 3 instead of running the catalog twice;
4. waits (unless ``wait`` is false), streaming the job's logs to stderr, and takes the job's status.

The summary holds ``submission_id``, ``status``, ``student`` (+ ``student_version`` and the ``promotion`` record),
``exit_code`` (:func:`exit_code`; see :func:`_exit_for`), ``error`` (why, when the exit code is not 0) and, when it
waited, the catalog's own summary (``job_summary``) parsed from the job's last log line. A ConfigError / StageError
raised by :func:`run` carries the summary it had got to as ``exc.summary``.

Credentials never go into the runtime_env (it is stored in the cluster and shown in the dashboard): the cluster's
pods get S3 access from a Secret or IRSA, and the client authenticates with ``RAY_AUTH_MODE=token`` +
``RAY_AUTH_TOKEN`` from the environment.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from pipelines.core.config import ConfigError, require
from pipelines.core.errors import StageError
from pipelines.core.promotions import Promotion, newest_promotion, records_prefix

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_CONFIG = 2
EXIT_ALREADY_SUBMITTED = 3
EXIT_TIMEOUT = 4

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Environment variable names that must never travel in a runtime_env (it is stored in the cluster's job table).
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY)", re.I)
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class NightlyConfig:
    """Config of ``jobs.nightly``; every field is documented in jobs/configs/nightly.yaml (no choice fields)."""

    address: str = ""
    promotions: str = ""
    garments: str = ""
    models: str = ""
    output: str = ""
    catalog_config: str = "jobs/configs/catalog.yaml"
    catalog_overrides: list[str] = field(default_factory=list)
    submission_prefix: str = "catalog-nightly"
    submission_id: str = ""
    date: str = ""
    timezone: str = "UTC"
    working_dir: str = "."
    excludes: list[str] = field(
        # gitignore-style: "/data" is the top-level folder only; a bare "data" would also drop any package folder
        # named data
        default_factory=lambda: [".git", ".venv", "/runs", "/data", "__pycache__", "*.egg-info", ".pytest_cache"]
    )
    env_vars: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float = 0.0
    wait: bool = True
    timeout_s: float = 0.0
    dry_run: bool = False

    def validate(self) -> None:
        require(self, "nightly", "promotions", "garments", "models", "output")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}", self.submission_prefix or ""):
            raise ConfigError(f"nightly: submission_prefix {self.submission_prefix!r} must match [A-Za-z0-9][A-Za-z0-9_.-]*")
        if self.submission_id and not _SUBMISSION_ID.fullmatch(self.submission_id):
            raise ConfigError(f"nightly: submission_id {self.submission_id!r} must match {_SUBMISSION_ID.pattern}")
        if self.timeout_s < 0:
            raise ConfigError("nightly: timeout_s must be >= 0 (0 = wait without a limit)")
        if self.entrypoint_num_cpus < 0:
            raise ConfigError("nightly: entrypoint_num_cpus must be >= 0")
        for key, value in self.env_vars.items():
            if _SECRET_NAME.search(key):
                raise ConfigError(
                    f"nightly: env_vars.{key} looks like a credential; runtime_env is stored in the cluster and shown "
                    "in the dashboard — give the cluster's pods credentials through a Secret or IRSA instead"
                )
            if not isinstance(value, str):
                raise ConfigError(f"nightly: env_vars.{key} must be a string")
        for item in self.catalog_overrides:
            if "=" not in item:
                raise ConfigError(f"nightly: catalog_overrides item {item!r} must be dotted.key=value")


PRESETS: dict[str, dict[str, Any]] = {}


# ----------------------------------------------------------------------------------------------------------------------
# The promoted student


def promoted_student(prefix: str) -> tuple[Promotion, list[str]]:
    """The newest promotion under ``prefix`` and the skipped records' reasons; ConfigError (exit 2) when there is
    none or its checkpoint is gone (never a silent fall-back to an older student)."""
    from pipelines.core import storage

    best, skipped = newest_promotion(prefix)
    if best is None:
        detail = f" ({len(skipped)} unusable: {skipped[0]}{' ...' if len(skipped) > 1 else ''})" if skipped else ""
        raise ConfigError(f"nightly: no promotion record under {records_prefix(prefix)}{detail}; promote a student "
                          f"first: python -m jobs.promote --student URI --evaluation URI --to {prefix}")
    if not storage.exists(best.student):
        raise ConfigError(f"nightly: the promoted student {best.student} (from {best.uri}) does not exist")
    return best, skipped


# ----------------------------------------------------------------------------------------------------------------------
# Submission


def run_date(config: NightlyConfig) -> dt.date:
    if config.date:
        try:
            return dt.date.fromisoformat(config.date)
        except ValueError:
            raise ConfigError(f"nightly: --date must be YYYY-MM-DD, got {config.date!r}") from None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(config.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"nightly: unknown time zone {config.timezone!r} (use an IANA name such as Europe/Berlin)") from None
    return dt.datetime.now(zone).date()


def submission_id_for(config: NightlyConfig, date: dt.date) -> str:
    return config.submission_id or f"{config.submission_prefix}-{date.isoformat()}"


def catalog_entrypoint(config: NightlyConfig, student: str, version: str = "") -> str:
    """The catalog's command line; ``version`` (the promoted weights' content id) makes the catalog refuse a
    checkpoint replaced after its promotion."""
    argv = ["python", "-m", "jobs.catalog_tryon"]
    if config.catalog_config:
        argv += ["--config", config.catalog_config]
    argv += ["--student", student, "--garments", config.garments, "--models", config.models, "--output", config.output]
    if version:
        argv += ["--expect-version", version]
    for item in config.catalog_overrides:
        argv += ["--set", item]
    return shlex.join(argv)


def runtime_env(config: NightlyConfig) -> dict[str, Any]:
    env: dict[str, Any] = {}
    if config.working_dir:
        wd = os.path.abspath(config.working_dir) if "://" not in config.working_dir else config.working_dir
        if "://" not in wd and not os.path.isfile(os.path.join(wd, "jobs", "catalog_tryon.py")):
            raise ConfigError(
                f"nightly: working_dir {wd} does not look like the project (no jobs/catalog_tryon.py); pass "
                "--working-dir REPO, or --working-dir '' to run the code baked into the cluster's image"
            )
        env["working_dir"] = wd
        if config.excludes and "://" not in wd:
            env["excludes"] = list(config.excludes)
    if config.env_vars:
        env["env_vars"] = dict(config.env_vars)
    return env


def _public_address(address: str) -> str:
    """The address without any user:password part (for logs and the summary)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    text = urlunsplit(parts)
    return text[2:] if text.startswith("//") else text


@contextlib.contextmanager
def _address_env(address: str) -> Iterator[None]:
    """Make ``address`` win: JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its argument."""
    names = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
    saved = {n: os.environ.get(n) for n in names}
    try:
        if address.startswith(("http://", "https://")):
            os.environ["RAY_API_SERVER_ADDRESS"] = address
        else:  # a GCS address (host:port) or ray://: let Ray look the dashboard up through the GCS
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            os.environ["RAY_ADDRESS"] = address
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def connect(address: str):
    from ray.job_submission import JobSubmissionClient

    with _address_env(address):
        return JobSubmissionClient(address)


def _existing_status(client, submission_id: str) -> str | None:
    """The status of an existing job with this submission id, or None when there is none."""
    try:
        return _status_str(client.get_job_status(submission_id))
    except RuntimeError as exc:
        text = str(exc)
        if "404" in text or "does not exist" in text or "not found" in text.lower():
            return None
        raise


def _status_str(status: Any) -> str:
    return str(getattr(status, "value", status))


def _already_message(submission_id: str, status: str | None) -> str:
    if status in ("PENDING", "RUNNING"):
        state = f"is running (status {status})"
    elif status:
        state = f"already ran (status {status})"
    else:
        state = "already ran or is running"
    return (f"{submission_id} was already submitted and {state}; nothing submitted. Re-run on purpose with "
            f"--submission-id {submission_id}-rerun1 (the catalog skips pairs already done)")


async def _tail(client, submission_id: str) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        sys.stderr.write(chunk)
        sys.stderr.flush()


def stream_logs(client, submission_id: str, timeout_s: float | None) -> bool:
    """Stream the job's logs to stderr until it ends; False when ``timeout_s`` expired first."""
    try:
        asyncio.run(asyncio.wait_for(_tail(client, submission_id), timeout=timeout_s or None))
    except (asyncio.TimeoutError, TimeoutError):
        return False
    except Exception as exc:  # a dropped log stream is not a failed job: fall back to polling the status
        log.warning("log stream for %s ended early (%s: %s); polling the status", submission_id, type(exc).__name__, exc)
    return True


def wait_terminal(client, submission_id: str, deadline: float | None) -> str:
    while True:
        status = _status_str(client.get_job_status(submission_id))
        if status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(1.0)


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _exit_for(status: str, driver_exit_code: int | None) -> int:
    """The exit code for the job's final (or, after the timeout, current) status: 0 SUCCEEDED, 4 still running, else
    the catalog's own non-zero exit code (1 error rate exceeded, 2 config error or held lock), else 1."""
    if status == "SUCCEEDED":
        return EXIT_OK
    if status in ("PENDING", "RUNNING"):
        return EXIT_TIMEOUT
    if driver_exit_code and driver_exit_code > 0:
        return int(driver_exit_code)
    return EXIT_JOB_FAILED


def exit_code(summary: dict[str, Any]) -> int:
    """The process exit code of a finished :func:`run` (0 submitted or succeeded, 1 job failed, 3 already submitted,
    4 still running at the timeout; 2, a run that could not start, is raised as ConfigError / StageError)."""
    return int(summary.get("exit_code", EXIT_OK))


# ----------------------------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Submission:
    """Tonight's job: where it goes, under which id, and what it runs."""

    submission_id: str
    date: dt.date
    address: str
    student: Promotion
    entrypoint: str
    runtime_env: dict[str, Any]
    entrypoint_num_cpus: float | None = None


def run(config: NightlyConfig) -> dict[str, Any]:
    """Submit (and by default wait for) tonight's catalog job; returns the summary (``exit_code`` included).

    ConfigError / StageError (exit 2: bad config, no student, cluster unreachable) carry the summary so far as
    ``exc.summary``, so the caller still reports the submission id and the student it had got to."""
    started = time.monotonic()
    summary: dict[str, Any] = {"stage": "nightly", "status": None, "submission_id": None, "student": None}
    try:
        code = _run(config, summary, started)
    except (ConfigError, StageError) as exc:
        raise _with_summary(exc, summary)
    except (RuntimeError, OSError) as exc:  # storage and job-API failures: one line for the on-call reader
        one_line = " ".join(str(exc).split())[:300]
        raise _with_summary(StageError(f"nightly: {type(exc).__name__}: {one_line}"), summary) from None
    summary.update(exit_code=code, wall_s=round(time.monotonic() - started, 3))
    return summary


def _with_summary(exc: Exception, summary: dict[str, Any]) -> Exception:
    summary.update(status="ERROR", exit_code=EXIT_CONFIG, error=str(exc))
    exc.summary = summary  # type: ignore[attr-defined]
    return exc


def _run(config: NightlyConfig, summary: dict[str, Any], started: float) -> int:
    job = plan(config, summary)
    if config.dry_run:
        summary.update(status="DRY_RUN", runtime_env=job.runtime_env)
        return EXIT_OK
    try:
        client = connect(job.address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"nightly: cannot reach the Ray job API at {_public_address(job.address)}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    if not submit(client, job, summary):
        return EXIT_ALREADY_SUBMITTED
    if not config.wait:
        summary["status"] = _status_str(client.get_job_status(job.submission_id))
        return EXIT_OK
    return wait(client, job.submission_id, started, config.timeout_s, summary)


def plan(config: NightlyConfig, summary: dict[str, Any]) -> Submission:
    """Validate, pick the date, the submission id and the newest student, and build the job; fills ``summary``."""
    config.validate()
    address = config.address or os.environ.get("RAY_ADDRESS", "")
    if not address and not config.dry_run:
        raise ConfigError("nightly: no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    date = run_date(config)
    submission_id = submission_id_for(config, date)
    summary.update(submission_id=submission_id, date=date.isoformat())
    student, skipped = promoted_student(config.promotions)
    for reason in skipped:
        log.warning("ignored promotion record %s", reason)
    job = Submission(submission_id, date, address, student, catalog_entrypoint(config, student.student, student.student_version),
                     runtime_env(config), config.entrypoint_num_cpus or None)
    summary.update({
        "student": student.student,
        "student_version": student.student_version,
        "promotion": student.uri,
        "promoted_at": student.promoted_at.isoformat(),
        "promoted_by": student.record.get("promoted_by"),
        "promotion_forced": bool(student.record.get("forced")),
        "address": _public_address(address) if address else None,
        "entrypoint": job.entrypoint,
        "output": config.output,
    })
    log.info("nightly %s: student %s (version %s, promoted %s by %s)", submission_id, student.student,
             student.student_version, student.promoted_at.isoformat(), student.record.get("promoted_by"))
    return job


def submit(client, job: Submission, summary: dict[str, Any]) -> bool:
    """Submit ``job`` unless its submission id exists (then fill ``summary`` with the refusal and return False)."""
    existing = _existing_status(client, job.submission_id)
    if existing is None:
        metadata = {"stage": "catalog", "trigger": "nightly", "date": job.date.isoformat(),
                    "student": job.student.student, "student_version": job.student.student_version}
        try:
            client.submit_job(entrypoint=job.entrypoint, submission_id=job.submission_id,
                              runtime_env=job.runtime_env or None, metadata=metadata,
                              entrypoint_num_cpus=job.entrypoint_num_cpus)
            log.info("submitted %s to %s", job.submission_id, _public_address(job.address))
            return True
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            existing = _existing_status(client, job.submission_id)  # lost a race with another submitter
    summary.update(status="ALREADY_SUBMITTED", existing_status=existing,
                   error=_already_message(job.submission_id, existing))
    return False


def wait(client, submission_id: str, started: float, timeout_s: float, summary: dict[str, Any]) -> int:
    """Stream the job's logs until it ends or ``timeout_s`` after ``started`` (monotonic; 0 = no limit); fill
    ``summary``; return the exit code."""
    deadline = started + timeout_s if timeout_s else None
    remaining = (deadline - time.monotonic()) if deadline else None
    stream_logs(client, submission_id, max(1.0, remaining) if remaining is not None else None)
    status = wait_terminal(client, submission_id, deadline)
    info = client.get_job_info(submission_id)
    driver_exit_code = getattr(info, "driver_exit_code", None)
    message = " ".join(str(getattr(info, "message", "") or "").split())
    job_summary = None
    if status in TERMINAL:
        try:
            job_summary = last_json_line(client.get_job_logs(submission_id))
        except RuntimeError as exc:
            log.warning("could not read the logs of %s: %s", submission_id, exc)
    code = _exit_for(status, driver_exit_code)
    summary.update(status=status, job_exit_code=driver_exit_code, job_message=getattr(info, "message", None),
                   job_summary=job_summary)
    if code == EXIT_TIMEOUT:
        summary["error"] = (f"{submission_id} is still {status} after {timeout_s:.0f}s; it keeps running "
                            f"(ray job logs --follow {submission_id})")
    elif code != EXIT_OK:
        summary["error"] = f"{submission_id} ended {status} (driver exit code {driver_exit_code}): {message[:300]}"
    return code
