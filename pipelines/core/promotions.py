"""Promotion records: which student production (``jobs.nightly``) uses, who decided it and on which evidence.

``jobs.promote`` writes one small JSON record per promotion under ``{prefix}/promotions/``; ``jobs.nightly`` reads
the newest one. A record is never rewritten: each is created exclusively
(:func:`pipelines.core.storage.write_bytes_if_absent`) under a key made of its time and the student's version, so
two promotions — even at the same moment from two machines — never overwrite each other, and the history of what
ran in production stays readable. Rolling back is promoting an older student again: a new, newer record.

A record (``format: pfafn-promotion/1``)::

    {"format": "pfafn-promotion/1", "student": "s3://.../student.pt", "student_version": "3f2a9c0d1b7e",
     "promoted_at": "2026-11-27T09:14:03.512345+00:00", "promoted_by": "alice", "forced": false, "reason": null,
     "evaluation": "s3://.../eval", "scores": {...}, "thresholds": {...}, "missed": [], ...}

"Newest" is the largest ``promoted_at`` (ties: the larger key), read from the record, not from the storage's file
times (an S3 copy or a restore changes those). A record that cannot be read, is not JSON or lacks a field is skipped
with a one-line reason, never chosen.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from pipelines.core import storage

FORMAT = "pfafn-promotion/1"
RECORDS_DIR = "promotions"
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class Promotion:
    """One readable record: where it is, the student it names and when it was promoted."""

    uri: str
    student: str
    student_version: str
    promoted_at: dt.datetime
    record: dict[str, Any]


def records_prefix(prefix: str) -> str:
    return storage.join_uri(prefix, RECORDS_DIR)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO 8601 string as an aware datetime (a missing offset means UTC); None when it is not one."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def record_key(promoted_at: dt.datetime, version: str) -> str:
    """``20261127T091403.512345Z-3f2a9c0d1b7e.json``: sorts by time, names the version, no ':' (safe everywhere)."""
    return f"{promoted_at.astimezone(dt.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}-{version}.json"


def write_record(prefix: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Create a new record under ``{prefix}/promotions/`` with ``promoted_at`` = now (UTC); never overwrites.

    Returns the record's URI and the record as written. Should the key exist already (two promotions of one version
    within the same microsecond), the time is taken again."""
    for _ in range(_CREATE_ATTEMPTS):
        now = dt.datetime.now(dt.timezone.utc)
        full = {**record, "format": FORMAT, "promoted_at": now.isoformat()}
        uri = storage.join_uri(records_prefix(prefix), record_key(now, str(record["student_version"])))
        data = (json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        storage.makedirs(records_prefix(prefix))
        if storage.write_bytes_if_absent(uri, data):
            return uri, full
    raise storage.StorageError("promotion record: the key kept existing; another promoter is writing the same "
                               "version at the same moment", records_prefix(prefix))


def read_record(uri: str) -> Promotion:
    """One record; ValueError with a one-line reason when it is unusable (StorageError when it cannot be read)."""
    data = storage.read_json(uri, max_bytes=1 << 20)  # invalid JSON is a StorageError with the parse position
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
    for key in ("student", "student_version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"no {key!r}")
    promoted_at = parse_time(data.get("promoted_at"))
    if promoted_at is None:
        raise ValueError(f"'promoted_at' {data.get('promoted_at')!r} is not an ISO 8601 time")
    return Promotion(uri, data["student"], data["student_version"], promoted_at, data)


def list_promotions(prefix: str) -> tuple[list[Promotion], list[str]]:
    """Every usable record under ``{prefix}/promotions/``, and ``"{uri}: {reason}"`` for each unusable one."""
    found: list[Promotion] = []
    skipped: list[str] = []
    for uri in storage.list_files(records_prefix(prefix), suffix=".json"):
        try:
            found.append(read_record(uri))
        except storage.StorageError as exc:
            skipped.append(f"{uri}: {exc.reason}")
        except ValueError as exc:
            skipped.append(f"{uri}: {exc}")
    return found, skipped


def newest_promotion(prefix: str) -> tuple[Promotion | None, list[str]]:
    """The newest usable record (largest ``promoted_at``, ties by URI) or None, and the skipped records' reasons."""
    found, skipped = list_promotions(prefix)
    return (max(found, key=lambda p: (p.promoted_at, p.uri)) if found else None), skipped
