"""Multi-node, for real: a three-node Ray cluster on this machine (tests/fixtures/ray_cluster.py: a head and two
workers, each its own ``ray start`` with its own temp dir and custom resource), data on SeaweedFS, jobs through
``ray job submit``. The nodes share nothing but S3.

Placement is made certain by the CPUs the nodes advertise, not left to chance: the head advertises 0 CPUs and each
worker 2, so
- (a) a 1-CPU model actor (``actors=2 cpus_per_actor=1``) fits once per worker beside its 0.5-CPU decode/write
  tasks. Ray Data creates the pool's actors with its default ``SPREAD`` strategy when the stage starts, before any
  task; the job sets ``RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S`` so no tile is handed out before both actors are up
  (otherwise the first actor to load could take every tile and the other would never show in the summary).
- (b) a 1.5-CPU Ray Train worker (``train.cpus_per_worker=1.5``) fits once per worker (2 < 3), so Ray Train's PACK
  placement group must put the two workers on the two worker nodes; their 0.5-CPU decode tasks take the rest.
- (c) one model actor; the worker node that hosts it loses its raylet (SIGKILL by pid) after the first tile is
  committed; the job then fails or finishes (Ray Data restarts the actor on the other node), and a re-run ends with
  exactly one ``ok`` row per pair.
The cluster fixture is module-scoped and (c) kills a node, so (c) runs last (pytest keeps the file's order).
"""
from __future__ import annotations

import collections
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.catalog_helpers import ok_rows, write_catalog
from tests.test_job_submit import last_json_line

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SIZE = 64
pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def _entrypoint(module: str, *args: str) -> list[str]:
    return ["python", "-m", module, *args]


def _submit_cmd(cluster, submission_id: str, entrypoint: list[str], *, wait: bool = True) -> list[str]:
    runtime_env = {"excludes": [".git", ".venv", "runs", "/data"],
                   "env_vars": {"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}}
    return [RAY, "job", "submit", "--address", cluster.address, "--submission-id", submission_id,
            "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env),
            *([] if wait else ["--no-wait"]), "--", *entrypoint]


def _client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.address)


def run_job(cluster, name: str, entrypoint: list[str], timeout: int = 300) -> dict:
    """Submit and wait; return the job's summary (its last JSON line). Fails with the job's log tail otherwise."""
    submission_id = f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(_submit_cmd(cluster, submission_id, entrypoint), env=cluster.client_env(),
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish in {timeout}s; logs:\n{_client(cluster).get_job_logs(submission_id)[-4000:]}")
    logs = _client(cluster).get_job_logs(submission_id)
    status = str(_client(cluster).get_job_status(submission_id).value)
    assert status == "SUCCEEDED" and proc.returncode == 0, (
        f"{name}: {status}, exit {proc.returncode}\njob logs:\n{logs[-6000:]}\nCLI stderr:\n{proc.stderr[-2000:]}")
    return last_json_line(logs)


def _catalog_args(uris: dict, output: str, actors: int) -> list[str]:
    return ["--garments", uris["garments"], "--models", uris["models"], "--student", uris["student"],
            "--output", output, "--height", str(SIZE), "--width", str(SIZE), "--tile-size", "1", "--batch-size", "4",
            "--set", f"actors={actors}", "--set", "cpus_per_actor=1", "--set", "gallery_size=0"]


# ----------------------------------------------------------------------------------------------------------------------
# inputs (written from the test process straight to S3)


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return f"s3://{s3_server.make_bucket('multinode')}"


@pytest.fixture(scope="module")
def catalog(bucket) -> dict:
    """4 garments x 3 models (12 one-pair tiles) and a tiny random student."""
    from tests.catalog_helpers import TINY

    import torch

    from pfafn.checkpoint import save_checkpoint
    from pfafn.tryon import TryOnModel
    from pipelines.core import storage

    garments, models = write_catalog(f"{bucket}/catalog", 4, 3)
    torch.manual_seed(0)
    model = TryOnModel(TINY).eval()
    buf = io.BytesIO()
    version = save_checkpoint(buf, warp=model.warp, gen=model.gen, kind="student", meta={"test": "multinode"})
    storage.write_bytes(f"{bucket}/student.pt", buf.getvalue())
    return {"garments": garments, "models": models, "student": f"{bucket}/student.pt", "version": version,
            "pairs": {(f"g{g:05d}", f"m{m:05d}") for g in range(4) for m in range(3)}}


# ----------------------------------------------------------------------------------------------------------------------
# (a) catalog: two model actors on two nodes


def test_catalog_actors_run_on_two_nodes(ray_cluster, catalog, bucket):
    summary = run_job(ray_cluster, "mn-catalog", _entrypoint("jobs.catalog_tryon",
                                                              *_catalog_args(catalog, f"{bucket}/tryon-a", 2)))
    assert summary["pairs_ok"] == 12 and summary["pairs_error"] == 0, summary
    nodes = summary["model_actor_nodes"]
    names = sorted(ray_cluster.node_name(n) for n in nodes)
    assert len(set(nodes)) == 2 and names == ["a", "b"], (
        f"model actors ran on {names} ({nodes}); expected one on each worker node")


# ----------------------------------------------------------------------------------------------------------------------
# (b) distillation: two Ray Train workers on two nodes


@pytest.fixture(scope="module")
def distill_inputs(bucket, ray_cluster) -> dict:
    """A dataset root and a random tiny tutor on S3; the tutor's fakes made by a tutor-inference job."""
    import torch

    from pfafn.checkpoint import save_checkpoint
    from pfafn.tutor import TutorModel
    from pipelines.core import storage
    from pipelines.training.config import TINY_WIDTHS, WidthsConfig
    from tests.dataset_helpers import write_dataset_root

    data = write_dataset_root(f"{bucket}/root", persons=10, garments=10, test=2, height=SIZE, width=SIZE)
    torch.manual_seed(0)
    tutor = TutorModel(WidthsConfig(**TINY_WIDTHS).build())
    buf = io.BytesIO()
    save_checkpoint(buf, warp=tutor.warp, gen=tutor.gen, kind="tutor")
    storage.write_bytes(f"{bucket}/tutor.pt", buf.getvalue())
    fakes = run_job(ray_cluster, "mn-fakes", _entrypoint(
        "jobs.tutor_inference", "--preset", "tiny", "--data", data, "--tutor", f"{bucket}/tutor.pt",
        "--output", f"{bucket}/fakes", "--height", str(SIZE), "--width", str(SIZE),
        "--set", "actors=1", "--set", "cpus_per_actor=1", "--set", "gallery_size=0"))["fakes"]
    return {"data": data, "tutor": f"{bucket}/tutor.pt", "fakes": fakes}


@pytest.mark.slow  # the catalog's two-node tests are the default suite's toy version of placement
def test_distill_workers_run_on_two_nodes(ray_cluster, distill_inputs, bucket):
    summary = run_job(ray_cluster, "mn-distill", _entrypoint(
        "jobs.distill", "--preset", "tiny", "--data", distill_inputs["data"], "--fakes", distill_inputs["fakes"],
        "--tutor", distill_inputs["tutor"], "--output", f"{bucket}/distill",
        "--set", "train.num_workers=2", "--set", "train.cpus_per_worker=1.5", "--set", "train.decode_cpus=0.5",
        "--set", "warp.max_steps=2", "--set", "e2e.max_steps=2"))
    assert summary["steps"] == {"student_warp": 2, "student_e2e": 2}, summary
    nodes = summary["worker_nodes"]
    names = sorted(ray_cluster.node_name(n) for n in nodes)
    assert len(set(nodes)) == 2 and names == ["a", "b"], f"Ray Train workers ran on {names} ({nodes})"
    for phase in summary["phases"].values():  # each phase: one worker per rank, on two nodes
        assert len(phase["worker_nodes"]) == 2 and len(set(phase["worker_nodes"])) == 2, phase["worker_nodes"]


# ----------------------------------------------------------------------------------------------------------------------
# (c) a worker node dies mid-run (runs last: the node stays dead)


def _actor_node(cluster) -> str | None:
    """The worker node (``a``/``b``) hosting the live Ray Data model actor, if the state API shows one."""
    from ray.util.state import list_actors

    for actor in list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], limit=1000):
        if "MapWorker" in (actor.class_name or ""):
            name = cluster.node_name(actor.node_id)
            if name in cluster.workers:
                return name
    return None


def _parts(output: str) -> int:
    from pipelines.core import storage

    root = f"{output}/results"
    return len(storage.list_files(root, suffix=".parquet")) if storage.exists(root) else 0


@pytest.mark.slow  # ~75 s; test_catalog_tryon's killed-run test is the default suite's toy version
def test_node_killed_mid_catalog_run_then_rerun_is_exactly_once(ray_cluster, catalog, bucket, s3_server):
    output = f"{bucket}/tryon-c"
    client = _client(ray_cluster)
    submission_id = f"mn-kill-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(_submit_cmd(ray_cluster, submission_id,
                                      _entrypoint("jobs.catalog_tryon", *_catalog_args(catalog, output, 1)),
                                      wait=False),
                          env=ray_cluster.client_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    deadline = time.monotonic() + 240
    while _parts(output) == 0:  # wait for the first committed tile
        status = str(client.get_job_status(submission_id).value)
        assert status in ("PENDING", "RUNNING"), f"job ended before any tile: {status}\n" \
                                                 f"{client.get_job_logs(submission_id)[-4000:]}"
        assert time.monotonic() < deadline, "no tile committed in 240 s"
        time.sleep(0.2)
    victim = _actor_node(ray_cluster) or "b"
    pid = ray_cluster.kill_raylet(victim)
    parts_at_kill = _parts(output)
    assert parts_at_kill < 12, "the run was over before the node was killed: make the catalog bigger"

    deadline = time.monotonic() + 300
    while (status := str(client.get_job_status(submission_id).value)) in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, (f"after killing node {victim}'s raylet (pid {pid}) the job neither "
                                             f"failed nor finished in 300 s:\n"
                                             f"{client.get_job_logs(submission_id)[-4000:]}")
        time.sleep(1)
    assert status in ("SUCCEEDED", "FAILED"), status

    summary = run_job(ray_cluster, "mn-rerun", _entrypoint("jobs.catalog_tryon", *_catalog_args(catalog, output, 1)))
    assert summary["pairs_total"] == 12, summary
    assert summary["pairs_skipped"] + summary["pairs_ok"] == 12 and summary["pairs_error"] == 0, summary
    assert victim not in {ray_cluster.node_name(n) for n in summary["model_actor_nodes"]}
    counts = collections.Counter((r["garment_id"], r["model_id"]) for r in ok_rows(output, catalog["version"]))
    assert set(counts) == catalog["pairs"], sorted(counts)
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n != 1}
