"""A run lock on an output location, so two runs on the same output never interleave their writes.

The lock is an object ``{output}/_lock.json`` created exclusively (local: ``O_EXCL``; S3: a conditional put), holding
the run id, host, pid and a heartbeat time that the holder refreshes. A second run refuses to start while the lock is
live. A lock is stale (and taken over) when its heartbeat is older than ``ttl_s`` or when it was written on this host
by a process that no longer exists — which is what a killed run leaves behind.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from pipelines.core import storage
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

LOCK_NAME = "_lock.json"


class LockHeldError(StageError):
    """Another live run holds the output's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunLock:
    uri: str
    run_id: str
    ttl_s: float = 600.0
    heartbeat_s: float = 30.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def _is_stale(self, info: dict) -> str | None:
        age = time.time() - float(info.get("heartbeat", 0))
        if age > self.ttl_s:
            return f"heartbeat {age:.0f}s old (ttl {self.ttl_s:.0f}s)"
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return f"holder pid {info.get('pid')} on this host is gone"
        return None

    def acquire(self, *, force: bool = False) -> None:
        payload = self._payload()
        for _attempt in range(3):
            if storage.write_bytes_if_absent(self.uri, payload):
                self._start_heartbeat()
                return
            try:
                info = json.loads(storage.read_bytes(self.uri).decode())
            except (storage.StorageError, ValueError):
                info = {}
            reason = "forced" if force else self._is_stale(info)
            if reason is None:
                raise LockHeldError(
                    f"output is locked by run {info.get('run_id')} (host {info.get('host')}, pid {info.get('pid')}); "
                    f"wait for it to finish, or pass --force-unlock if it is dead ({self.uri})"
                )
            log.warning("taking over stale lock %s: %s", self.uri, reason)
            storage.delete(self.uri)
        raise LockHeldError(f"could not acquire {self.uri}: another run keeps re-creating it")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    storage.write_bytes(self.uri, self._payload())
                except Exception as exc:  # keep running; a missed beat only risks a takeover after ttl
                    log.warning("lock heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            info = json.loads(storage.read_bytes(self.uri).decode())
        except Exception:
            return
        if info.get("run_id") == self.run_id:
            storage.delete(self.uri)

    def __enter__(self) -> "RunLock":
        if self._thread is None:  # lock_output() hands out an acquired lock; a bare RunLock acquires here
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_id(requested: str = "") -> str:
    """The run id: ``requested`` when given (validated), else a UTC timestamp plus a random suffix."""
    from pipelines.core.manifests import validate_id

    run_id = requested or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()
    return validate_id(run_id)


def lock_output(output: str, run_id: str, *, ttl_s: float = 600.0, force: bool = False) -> RunLock:
    """Create the output location and take its run lock (released by ``.release()`` or a ``with`` block)."""
    storage.makedirs(output)
    lock = RunLock(storage.join_uri(output, LOCK_NAME), run_id, ttl_s=ttl_s)
    lock.acquire(force=force)
    return lock


def write_run_summary(output: str, run_id: str, summary: dict) -> None:
    """Write the summary to ``{output}/runs/{run_id}.json`` (history) and ``{output}/summary.json`` (latest)."""
    storage.write_json(storage.join_uri(output, "runs", f"{run_id}.json"), summary)
    storage.write_json(storage.join_uri(output, "summary.json"), summary)
