"""A fenced run lock on an output location: two runs never both hold it, and a run that lost it commits nothing more.

Layout (every object is created once and never rewritten by anyone but its own generation's holder)::

    {output}/_lock/000000000001.json            generation 1: run id, host, pid, acquire time  (created exclusively)
    {output}/_lock/000000000001.heartbeat.json  generation 1's heartbeat, rewritten by its holder only
    {output}/_lock/000000000001.released        generation 1 ended normally
    {output}/_lock/000000000002.json            the next run ...

The holder is the run that created the **highest** generation ``g``. A run acquires by creating ``g + 1`` with a
create-exclusive write (``storage.write_bytes_if_absent``: local ``link``/``O_EXCL``, S3 ``If-None-Match: *``), which
it does only when ``g`` is released, stale (heartbeat older than ``ttl_s``, or its pid on this host is gone) or the
operator forces it. Of two runs that read the same ``g`` exactly one creates ``g + 1``; the other re-reads and finds a
live holder. Because nothing ever deletes a generation, a lower one can never be re-created, so "the highest
generation" cannot go backwards — this is the fencing token of Kleppmann's "How to do distributed locking" (2016):
heartbeat and release write only keys of their own generation, and every commit first checks that ``g + 1`` does not
exist (:func:`check_fence`), so a run that was taken over — its driver, or the tasks of a dead driver still running on
the cluster (they carry ``g`` in their worker config) — stops committing. The holder's heartbeat thread makes the same
check and marks the lock lost, so the driver stops too.

A read of the lock state that fails (an S3 timeout) is never taken as "stale": it is retried, then the run stops
with :class:`LockReadError` (exit 2). The old single ``{output}/_lock.json`` of earlier versions is not read.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pipelines.core import storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

LOCK_DIR = "_lock"
#: The holder rewrites its heartbeat this often. ``PFAFN_LOCK_HEARTBEAT_S`` shortens it for tests only (a lost lock is
#: then noticed within a second); ``lock_ttl_s`` must still be >= 3 x this.
HEARTBEAT_ENV = "PFAFN_LOCK_HEARTBEAT_S"
HEARTBEAT_S = float(os.environ.get(HEARTBEAT_ENV, "") or 30.0)
TTL_HEARTBEATS = 3  # lock_ttl_s must cover at least this many heartbeats, so one slow beat never loses the lock
READ_ATTEMPTS = 4  # a lock-state read (or a fence check) is retried this often before the run stops
#: After taking over a live-looking or stale generation, wait this long before planning: a task of the old run that
#: passed its fence check just before the takeover has finished writing its part by then, so planning sees it.
TAKEOVER_SETTLE_S = 3.0
_GEN = re.compile(r"^(\d{12})\.json$")


class LockHeldError(StageError):
    """Another live run holds the output's lock."""


class LockLostError(StageError):
    """This run's lock was taken over by another run; it must commit nothing more."""


class LockReadError(StageError):
    """The lock state could not be read (never treated as stale)."""


def check_ttl(where: str, ttl_s: float, heartbeat_s: float = HEARTBEAT_S) -> None:
    """The one ``lock_ttl_s`` rule of every stage config: at least :data:`TTL_HEARTBEATS` heartbeats."""
    if ttl_s < TTL_HEARTBEATS * heartbeat_s:
        raise ConfigError(f"{where}: lock_ttl_s must be >= {TTL_HEARTBEATS} x the {heartbeat_s:g} s lock heartbeat "
                          f"({TTL_HEARTBEATS * heartbeat_s:g}), got {ttl_s:g}")


def lock_dir(output: str) -> str:
    return storage.join_uri(output, LOCK_DIR)


def _key(directory: str, generation: int, suffix: str = "json") -> str:
    return storage.join_uri(directory, f"{generation:012d}.{suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _retrying(what: str, uri: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` retried on storage or parse errors; then :class:`LockReadError` naming the reason."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return fn()
        except (storage.StorageError, ValueError, KeyError, TypeError) as exc:
            last = exc
            time.sleep(0.2 * 2**attempt)
    raise LockReadError(f"cannot {what} the run lock {uri} ({' '.join(str(last).split())[:200]}); not taking it "
                        "over — retry when the storage answers")


@dataclass
class LockState:
    """The highest generation (0: none yet), its record, and whether it was released."""

    generation: int
    record: dict
    released: bool
    heartbeat: float  # the newest of the record's acquire time and its heartbeat object's time


def read_state(directory: str) -> LockState:
    """The lock state under ``directory`` (raises storage errors / ValueError; :func:`_retrying` wraps it)."""
    names = {storage.basename(u) for u in storage.list_files(directory)}
    gens = [int(m.group(1)) for m in map(_GEN.match, names) if m]
    if not gens:
        return LockState(0, {}, True, 0.0)
    g = max(gens)
    record = json.loads(storage.read_bytes(_key(directory, g), max_bytes=1 << 16).decode())
    if not isinstance(record, dict) or "run_id" not in record:
        raise ValueError(f"malformed lock record {g:012d}.json")
    released = f"{g:012d}.released" in names or storage.exists(_key(directory, g, "released"))
    beat = float(record.get("heartbeat", 0.0))
    try:
        beat = max(beat, float(json.loads(storage.read_bytes(_key(directory, g, "heartbeat.json"),
                                                            max_bytes=1 << 16).decode())["heartbeat"]))
    except storage.ObjectNotFoundError:
        pass  # no beat yet: the acquire time counts
    return LockState(g, record, released, beat)


def _holder(record: dict) -> str:
    return f"run {record.get('run_id')} (host {record.get('host')}, pid {record.get('pid')})"


def check_fence(output: str, generation: int) -> None:
    """Raise :class:`LockLostError` when generation ``generation`` of ``output``'s lock has been superseded (``g + 1``
    exists). Every commit calls it first; a check that cannot be made is retried, then refuses the commit."""
    directory = lock_dir(output)
    nxt = _key(directory, generation + 1)
    if not _retrying("check", nxt, lambda: storage.exists(nxt)):
        return
    try:
        winner = json.loads(storage.read_bytes(nxt, max_bytes=1 << 16).decode()).get("run_id", "?")
    except Exception:  # the message only; the loss itself is certain
        winner = "?"
    raise LockLostError(f"lock lost to run {winner} (generation {generation + 1} of {directory}); this run "
                        f"(generation {generation}) commits nothing more")


class RunLock:
    """The run lock on ``output`` for run ``run_id``; :meth:`acquire`, then :meth:`check` before commits."""

    def __init__(self, output: str, run_id: str, ttl_s: float = 600.0, heartbeat_s: float = HEARTBEAT_S,
                 on_lost: Callable[[str], None] | None = None):
        self.output, self.run_id, self.ttl_s, self.heartbeat_s = output, run_id, ttl_s, heartbeat_s
        self.dir = lock_dir(output)
        self.on_lost = on_lost  # called once from the heartbeat thread when the lock is found lost
        self.generation = 0
        self.took_over: str | None = None  # why the previous generation was taken over (None: it was released)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": time.time(), "generation": self.generation}).encode()

    def stale_reason(self, state: LockState) -> str | None:
        age = time.time() - state.heartbeat
        if age > self.ttl_s:
            return f"heartbeat {age:.0f}s old (ttl {self.ttl_s:.0f}s)"
        rec = state.record
        if rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid", -1))):
            return f"holder pid {rec.get('pid')} on this host is gone"
        return None

    def acquire(self, *, force: bool = False) -> "RunLock":
        """Create the next generation; :class:`LockHeldError` while a live run holds the lock. ``force`` takes over
        the generation seen first even when it looks live (never one created by a racing run after that)."""
        storage.makedirs(self.dir)
        forced_gen = None
        for _attempt in range(5):
            state = _retrying("read", self.dir, lambda: read_state(self.dir))
            reason = None
            if not state.released:
                if forced_gen is None and force:
                    forced_gen = state.generation
                reason = "forced" if state.generation == forced_gen else self.stale_reason(state)
                if reason is None:
                    raise LockHeldError(
                        f"output is locked by {_holder(state.record)}; wait for it to finish, or pass "
                        f"--force-unlock if it is dead ({_key(self.dir, state.generation)})")
            self.generation = state.generation + 1
            if storage.write_bytes_if_absent(_key(self.dir, self.generation), self._payload()):
                if reason is not None:
                    self.took_over = f"{_holder(state.record)}: {reason}"
                    log.warning("took over the run lock of %s (now generation %d)", self.took_over, self.generation)
                self._start_heartbeat()
                return self
        self.generation = 0
        raise LockHeldError(f"could not acquire {self.dir}: other runs keep taking it")

    def check(self) -> None:
        """:class:`LockLostError` when this run no longer holds the lock."""
        if self.lost:
            raise LockLostError(self.lost)
        try:
            check_fence(self.output, self.generation)
        except LockLostError as exc:
            self.lost = str(exc)
            raise

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.check()
                    storage.write_bytes(_key(self.dir, self.generation, "heartbeat.json"), self._payload())
                except LockLostError as exc:
                    log.error("%s", exc)
                    if self.on_lost is not None:
                        self.on_lost(str(exc))
                    return
                except Exception as exc:  # keep beating; a missed beat only risks a takeover after ttl
                    log.warning("lock heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and mark this generation released (only this run's own key; a lost lock is left)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.generation or self.lost:
            return
        try:
            storage.write_bytes(_key(self.dir, self.generation, "released"), self.run_id.encode())
        except storage.StorageError as exc:  # the next run takes the lock over after ttl (or at once on this host)
            log.warning("could not release the run lock: %s", exc)

    def __enter__(self) -> "RunLock":
        if not self.generation:  # lock_output() hands out an acquired lock; a bare RunLock acquires here
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_id(requested: str = "") -> str:
    """The run id: ``requested`` when given (validated), else a UTC timestamp plus a random suffix."""
    from pipelines.core.manifests import validate_id

    run_id = requested or time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()
    return validate_id(run_id)


def lock_output(output: str, run_id: str, *, ttl_s: float = 600.0, force: bool = False,
                on_lost: Callable[[str], None] | None = None) -> RunLock:
    """Create the output location and take its run lock (released by ``.release()`` or a ``with`` block). After a
    takeover it waits :data:`TAKEOVER_SETTLE_S` so the old run's last in-flight commit is visible to planning."""
    storage.makedirs(output)
    lock = RunLock(output, run_id, ttl_s=ttl_s, on_lost=on_lost).acquire(force=force)
    if lock.took_over:
        time.sleep(TAKEOVER_SETTLE_S)
    return lock


def interrupt_driver(reason: str) -> None:
    """An ``on_lost`` for drivers: interrupt the main thread wherever it waits (a Ray Data iteration, a Ray Train
    ``fit``), so a run that lost its lock stops at once; :func:`holding` turns the interrupt into LockLostError. Only
    for a driver that runs the stage in its main thread (every job CLI does)."""
    import _thread

    _thread.interrupt_main()


@contextlib.contextmanager
def holding(lock: RunLock) -> Iterator[RunLock]:
    """Hold ``lock`` for the block and release it after; any failure inside (the heartbeat's interrupt, a task's
    commit refused by :func:`check_fence` and wrapped by Ray) leaves as :class:`LockLostError` when the lock was
    lost, so the operator reads "lock lost to run X" rather than the symptom."""
    try:
        with lock:
            yield lock
    except BaseException as exc:
        lost = lock.lost
        if lost is None:
            try:
                lock.check()
            except LockLostError as lost_exc:
                lost = str(lost_exc)
            except Exception:  # cannot tell: the original failure is the story
                pass
        if lost is None or type(exc) is LockLostError:
            raise
        raise LockLostError(lost) from None


def write_run_summary(output: str, run_id: str, summary: dict, lock: RunLock | None = None) -> None:
    """Write the summary to ``{output}/runs/{run_id}.json`` (history) and ``{output}/summary.json`` (latest), after
    checking that ``lock`` (when given) is still held."""
    if lock is not None:
        lock.check()
    storage.write_json(storage.join_uri(output, "runs", f"{run_id}.json"), summary)
    storage.write_json(storage.join_uri(output, "summary.json"), summary)
