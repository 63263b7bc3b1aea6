"""The fenced run lock (pipelines.core.locking) with real processes, local and on the real SeaweedFS server, and the
part names that never collide (a reused run id)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.core import locking, storage
from pipelines.core.config import ConfigError
from tests.catalog_helpers import SIZE, append_rows, image_files, ok_rows, write_catalog, write_student

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 20

# Each process takes part in every round: at the round's start time it tries to take over that round's stale lock
# and keeps what it won (its pid stays alive, so the other process sees a live holder).
RACER = r"""
import json, sys, time
from pipelines.core import locking
cfg = json.loads(sys.argv[1])
won = []
for r, (output, start) in enumerate(cfg["rounds"]):
    while time.time() < start:
        time.sleep(0.001)
    lock = locking.RunLock(output, f"{cfg['name']}-{r}", ttl_s=90, heartbeat_s=3600)
    try:
        lock.acquire()
        lock.check()
        won.append(lock.generation)
    except locking.LockHeldError:
        won.append(0)
print(json.dumps(won), flush=True)
"""

# Holds the lock with the heartbeat watching it, doing nothing else: only the heartbeat can notice a takeover.
HOLDER = r"""
import sys, time
from pipelines.core import locking
from pipelines.core.errors import error_line
lock = locking.lock_output(sys.argv[1], "victim", ttl_s=90, on_lost=locking.interrupt_driver)
print("held", lock.generation, flush=True)
try:
    with locking.holding(lock):
        while True:
            time.sleep(0.05)
except locking.LockLostError as exc:
    print("error:", error_line(exc), file=sys.stderr)
    sys.exit(2)
"""


def _env(**extra: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def _stale_lock(output: str, *, dead_pid: int | None) -> None:
    """Generation 1 of ``output``'s lock, held by a run that is gone: a dead pid on this host, or a heartbeat far
    older than any ttl from another host."""
    record = ({"run_id": "dead", "host": socket.gethostname(), "pid": dead_pid, "heartbeat": time.time()}
              if dead_pid else {"run_id": "dead", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 10_000})
    storage.makedirs(locking.lock_dir(output))
    assert storage.write_bytes_if_absent(storage.join_uri(locking.lock_dir(output), "000000000001.json"),
                                         json.dumps(record).encode())


def _generations(output: str) -> list[int]:
    return sorted(int(storage.basename(u)[:12]) for u in storage.list_files(locking.lock_dir(output))
                  if storage.basename(u).endswith(".json") and "heartbeat" not in storage.basename(u))


def _race(base: str, spacing_s: float) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    outputs = [storage.join_uri(base, f"round{r:02d}") for r in range(ROUNDS)]
    for r, out in enumerate(outputs):
        _stale_lock(out, dead_pid=int(dead.stdout) if r % 2 else None)
    t0 = time.time() + 15  # both processes are up (imports) before the first round
    rounds = [(out, t0 + r * spacing_s) for r, out in enumerate(outputs)]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, json.dumps({"name": name, "rounds": rounds})],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for r, out in enumerate(outputs):
        won = [results[0][r], results[1][r]]
        assert sorted(won) == [0, 2], f"round {r}: exactly one process must win generation 2, got {won}"
        assert _generations(out) == [1, 2], f"round {r}: {_generations(out)}"


def test_two_processes_take_over_one_stale_lock_exactly_one_wins(tmp_path):
    _race(str(tmp_path / "locks"), 0.3)


@pytest.mark.integration
def test_two_processes_take_over_one_stale_lock_on_s3(s3_bucket):
    _race(storage.join_uri(s3_bucket, "locks"), 0.5)


def test_failed_lock_read_is_never_stale(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    _stale_lock(out, dead_pid=None)  # stale: taken over when it can be read
    real_read = storage.read_bytes

    def timeout_on_record(uri: str, max_bytes: int | None = None) -> bytes:
        if uri.endswith("000000000001.json"):
            raise storage.StorageUnavailableError("read: endpoint unreachable (ReadTimeoutError)", uri)
        return real_read(uri, max_bytes=max_bytes)

    monkeypatch.setattr(locking, "READ_ATTEMPTS", 2)
    monkeypatch.setattr(storage, "read_bytes", timeout_on_record)
    with pytest.raises(locking.LockReadError, match="cannot read the run lock .*endpoint unreachable"):
        locking.RunLock(out, "next").acquire()
    assert _generations(out) == [1], "a failed read must not lead to a takeover"
    monkeypatch.setattr(storage, "read_bytes", real_read)
    lock = locking.RunLock(out, "next").acquire()
    assert lock.generation == 2 and "heartbeat" in lock.took_over
    lock.release()


def test_unreadable_lock_record_stops_the_cli_with_exit_2(tmp_path):
    """A real process: the newest lock record is corrupt (not JSON) — the catalog refuses to run, one line."""
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 1, 1)
    student = str(tmp_path / "student.pt")
    write_student(student)
    out = str(tmp_path / "out")
    storage.makedirs(locking.lock_dir(out))
    storage.write_bytes(storage.join_uri(locking.lock_dir(out), "000000000001.json"), b'{"run_id": "tru')
    res = subprocess.run([sys.executable, "-m", "jobs.catalog_tryon", "--garments", g_uri, "--models", m_uri,
                          "--student", student, "--output", out, "--height", str(SIZE), "--width", str(SIZE)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot read the run lock" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert _generations(out) == [1]


def test_heartbeat_notices_the_takeover_and_the_driver_stops(tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, out], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(**{locking.HEARTBEAT_ENV: "0.3"}))
    try:
        assert proc.stdout.readline().split() == ["held", "1"]
        time.sleep(1.0)  # a few heartbeats of the holder
        intruder = locking.RunLock(out, "intruder").acquire(force=True)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr[-2000:]
    assert time.monotonic() - started < 10, "the loser must stop within a few heartbeats"
    assert "lock lost to run intruder" in stderr and "Traceback" not in stderr
    # the loser wrote nothing of the winner's generation and did not mark its own as released
    names = {storage.basename(u) for u in storage.list_files(locking.lock_dir(out))}
    assert names == {"000000000001.json", "000000000001.heartbeat.json", "000000000002.json"}, names
    intruder.check()  # the winner still holds it
    intruder.release()


def test_commits_after_losing_the_lock_are_refused(tmp_path):
    from pipelines.batch import commit_part, part_uri

    out = str(tmp_path / "out")
    loser = locking.RunLock(out, "loser", heartbeat_s=3600).acquire()
    cfg = {"output": out, "lock_generation": loser.generation, "attempt": f"loser-g{loser.generation}"}
    table = pa.table({"x": [1]})
    commit_part(table, part_uri(out, "results", cfg["attempt"], 0), cfg)
    winner = locking.RunLock(out, "winner", heartbeat_s=3600).acquire(force=True)
    with pytest.raises(locking.LockLostError, match="lock lost to run winner"):
        commit_part(table, part_uri(out, "results", cfg["attempt"], 1), cfg)
    with pytest.raises(locking.LockLostError):
        loser.check()
    loser.release()
    winner.check()
    assert [storage.basename(u) for u in storage.list_files(storage.join_uri(out, "results"))] == [
        "part-loser-g1-000000.parquet"]
    winner.release()


def test_lock_ttl_must_cover_three_heartbeats():
    from pipelines.stages.catalog_tryon import CatalogConfig
    from pipelines.stages.train_tutor import TutorConfig

    with pytest.raises(ConfigError, match=r"lock_ttl_s must be >= 3 x"):
        CatalogConfig(garments="g", models="m", output="o", student="s", lock_ttl_s=2).validate()
    with pytest.raises(ConfigError, match=r"lock_ttl_s must be >= 3 x"):
        TutorConfig(data="d", output="o", lock_ttl_s=60).validate()
    CatalogConfig(garments="g", models="m", output="o", student="s", lock_ttl_s=90).validate()


# ----------------------------------------------------------------------------------------------------------------------
# Catalog runs on one output.


def _catalog_args(g_uri: str, m_uri: str, student: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.catalog_tryon", "--garments", g_uri, "--models", m_uri, "--student", student,
            "--output", out, "--height", str(SIZE), "--width", str(SIZE), "--tile-size", "1", "--batch-size", "4",
            "--precision", "fp32", "--actors", "1", "--set", "cpus_per_actor=0.5", "--set", "torch_threads=1",
            "--set", "gallery_size=0", *extra]


def _exactly_one_ok_row_per_pair(out: str, version: str, pairs: int) -> None:
    ok = ok_rows(out, version)
    keys = Counter((r["garment_id"], r["model_id"]) for r in ok)
    assert len(keys) == pairs and max(keys.values()) == 1, keys
    assert sorted(r["image_uri"] for r in ok) == image_files(out, version)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_catalog_runs_on_one_output_the_loser_exits_2(tmp_path):
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 3, 2)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")
    first = subprocess.Popen(_catalog_args(g_uri, m_uri, student, out), cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the second starts once the first holds the lock (both start together; this only removes the chance that the
    # first finishes before the second got as far as the lock on a loaded machine)
    _wait_for(lambda: _generations(out) == [1] or first.poll() is not None, 120, "the first run's lock")
    second = subprocess.run(_catalog_args(g_uri, m_uri, student, out), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "output is locked by run" in errors[0] and "Traceback" not in second.stderr
    rerun = subprocess.run(_catalog_args(g_uri, m_uri, student, out), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["pairs_skipped"] == 6
    _exactly_one_ok_row_per_pair(out, version, 6)
    assert _generations(out) == [1, 2]  # the loser created nothing


def test_catalog_run_that_loses_its_lock_commits_nothing_more(tmp_path):
    """A takeover while a catalog run is mid-way: its next commit is refused, it exits 2 "lock lost to run X", and
    a re-run completes every pair exactly once."""
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 5, 4)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")
    results = storage.join_uri(out, "results")
    victim = subprocess.Popen(_catalog_args(g_uri, m_uri, student, out), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(storage.list_files(results)) >= 2 or victim.poll() is not None, 180, "two committed tiles")
    intruder = locking.RunLock(out, "intruder").acquire(force=True)
    taken_at = time.time()
    _, stderr = victim.communicate(timeout=180)
    assert victim.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lock lost to run intruder" in errors[0], stderr[-3000:]
    late = [u for u in storage.list_files(results) if os.path.getmtime(u) > taken_at + locking.TAKEOVER_SETTLE_S]
    assert not late, f"parts committed after the takeover: {late}"
    committed = len(storage.list_files(results))
    assert committed < 20, "the run must have been stopped part-way"
    intruder.release()
    rerun = subprocess.run(_catalog_args(g_uri, m_uri, student, out), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _exactly_one_ok_row_per_pair(out, version, 20)


def test_reused_run_id_never_overwrites_a_committed_part(ray_session, tmp_path):
    from pipelines.stages.catalog_tryon import CatalogConfig, run

    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 3, 2)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")

    def catalog():
        return run(CatalogConfig(garments=g_uri, models=m_uri, output=out, student=student, height=SIZE, width=SIZE,
                                 batch_size=4, tile_size=1, precision="fp32", actors=1, cpus_per_actor=0.5,
                                 torch_threads=1, gallery_size=0, channels_last=False, run_id="nightly"))

    done = []
    s1 = catalog()
    done.append(len(ok_rows(out, version)))
    extra_g, _ = write_catalog(str(tmp_path / "data" / "extra"), 1, 2, first_garment=3)  # under the manifest's root
    from pipelines.core.manifests import read_table

    append_rows(g_uri, {k: [v] for k, v in read_table(extra_g).to_pylist()[0].items()})
    s2 = catalog()
    done.append(len(ok_rows(out, version)))
    s3 = catalog()
    done.append(len(ok_rows(out, version)))
    assert s1["run_id"] == s2["run_id"] == s3["run_id"] == "nightly"
    assert (s1["pairs_ok"], s2["pairs_ok"], s2["pairs_skipped"], s3["pairs_ok"]) == (6, 2, 6, 0)
    assert done == [6, 8, 8], "the done count must never go down"
    _exactly_one_ok_row_per_pair(out, version, 8)
    names = [storage.basename(u) for u in storage.list_files(storage.join_uri(out, "results"))]
    assert {n.split("-")[2] for n in names} == {"g1", "g2"}, names  # each attempt its own parts
