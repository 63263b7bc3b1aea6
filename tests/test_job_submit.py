"""`ray job submit` end to end, and the nightly submitter.

Integration (marked ``integration``): a real Ray head started with ``ray start --head`` (tests/fixtures/ray_head.py)
whose environment points at the session's SeaweedFS (tests/fixtures/s3.py). A 3-garment x 2-model catalog and a
tiny student checkpoint go to a fresh bucket; ``ray job submit --working-dir <repo>`` runs ``jobs.catalog_tryon``
on the head; the job's last stdout line (its JSON summary) and the objects in S3 are checked. Then ``jobs.nightly``
submits the catalog for the promoted student under a fake date (an idempotent re-run: every pair already done) and a
second submission for the same date is refused.

Fast (unmarked): the nightly submitter's logic without a cluster (promoted student, entrypoint, runtime_env, dates,
exit codes, refusals).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

# tests/conftest.py registers fixture modules; until it lists tests.fixtures.ray_head, import its fixtures here.
try:
    from tests import conftest as _conftest

    _REGISTERED = "tests.fixtures.ray_head" in getattr(_conftest, "pytest_plugins", [])
except ImportError:  # pragma: no cover
    _REGISTERED = False
if not _REGISTERED:
    from tests.fixtures.ray_head import ray_head, ray_head_info  # noqa: F401

GARMENT_COLOURS = {"g-red": (200, 30, 40), "g-green": (30, 160, 60), "g-blue": (40, 60, 200)}
MODELS = ("m-one", "m-two")
H = W = 64


# ----------------------------------------------------------------------------------------------------------------------
# test data


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def garment_images(colour: tuple[int, int, int], size: int = 96) -> tuple[bytes, bytes]:
    """A coloured T-shirt-like shape on white, and its mask (white = garment)."""
    img = np.full((size, size, 3), 255, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y, x = np.mgrid[0:size, 0:size]
    body = (x > size * 0.3) & (x < size * 0.7) & (y > size * 0.25) & (y < size * 0.9)
    sleeves = (y > size * 0.25) & (y < size * 0.45) & (x > size * 0.12) & (x < size * 0.88)
    shape = body | sleeves
    img[shape] = colour
    mask[shape] = 255
    return _png(img), _png(mask)


def model_image(seed: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 235, np.uint8)
    y, x = np.mgrid[0:size, 0:size]
    head = (x - size / 2) ** 2 + (y - size * 0.18) ** 2 < (size * 0.1) ** 2
    torso = (abs(x - size / 2) < size * 0.2) & (y > size * 0.3) & (y < size * 0.95)
    img[head] = (220, 180, 150)
    img[torso] = rng.integers(60, 200, 3, dtype=np.uint8)
    return _png(img)


def tiny_student_bytes() -> tuple[bytes, str]:
    import torch

    from pfafn.checkpoint import save_checkpoint
    from pfafn.nn.afwm import NetworkWidths
    from pfafn.tryon import TryOnModel

    torch.manual_seed(0)
    model = TryOnModel(NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8))
    buf = io.BytesIO()
    version = save_checkpoint(buf, warp=model.warp, gen=model.gen, kind="student", meta={"test": "job_submit"})
    return buf.getvalue(), version


def upload_catalog(s3_server, bucket: str) -> dict:
    """Write garments/models manifests + images, three distill runs with summaries and a promotion of run-new (the
    newer run-newest is not promoted); return URIs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = s3_server.s3fs()
    base = f"s3://{bucket}"
    g_rows = []
    for gid, colour in GARMENT_COLOURS.items():
        image, mask = garment_images(colour)
        fs.pipe(f"{bucket}/catalog/garments/{gid}.png", image)
        fs.pipe(f"{bucket}/catalog/masks/{gid}.png", mask)
        g_rows.append({"garment_id": gid, "image_uri": f"{base}/catalog/garments/{gid}.png",
                       "mask_uri": f"{base}/catalog/masks/{gid}.png"})
    m_rows = []
    for i, mid in enumerate(MODELS):
        fs.pipe(f"{bucket}/catalog/models/{mid}.png", model_image(i))
        m_rows.append({"model_id": mid, "image_uri": f"{base}/catalog/models/{mid}.png"})
    for name, rows in (("garments", g_rows), ("models", m_rows)):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        fs.pipe(f"{bucket}/catalog/{name}.parquet", buf.getvalue())

    student, version = tiny_student_bytes()
    fs.pipe(f"{bucket}/distill/run-new/student.pt", student)
    fs.pipe(f"{bucket}/distill/run-old/student.pt", student)
    # The older run's summary is written *last* (newest file time): finished_at must win over the file time.
    fs.pipe(f"{bucket}/distill/run-new/summary.json", json.dumps(
        {"stage": "distill", "student_checkpoint": f"{base}/distill/run-new/student.pt",
         "finished_at": "2026-11-26T02:00:00Z", "student_version": version}).encode())
    fs.pipe(f"{bucket}/distill/run-old/summary.json", json.dumps(
        {"stage": "distill", "student_checkpoint": "student.pt", "finished_at": "2026-11-20T02:00:00+00:00"}).encode())
    fs.pipe(f"{bucket}/distill/run-broken/summary.json", b"{not json")
    # Only a promotion makes a student production's: run-newest finished later but nobody promoted it.
    fs.pipe(f"{bucket}/distill/run-newest/student.pt", student)
    fs.pipe(f"{bucket}/distill/run-newest/summary.json", json.dumps(
        {"stage": "distill", "student_checkpoint": "student.pt", "finished_at": "2026-11-27T02:00:00Z"}).encode())
    fs.pipe(f"{bucket}/production/promotions/20261126T100000.000000Z-{version}.json", json.dumps(
        {"format": "pfafn-promotion/1", "student": f"{base}/distill/run-new/student.pt", "student_version": version,
         "promoted_at": "2026-11-26T10:00:00+00:00", "promoted_by": "test"}).encode())
    fs.pipe(f"{bucket}/production/promotions/broken.json", b"{not json")
    return {
        "garments": f"{base}/catalog/garments.parquet",
        "models": f"{base}/catalog/models.parquet",
        "student": f"{base}/distill/run-new/student.pt",
        "promotions": f"{base}/production",
        "output": f"{base}/tryon",
        "version": version,
    }


def last_json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise AssertionError(f"no JSON summary line in:\n{text[-3000:]}")


def job_logs(address: str, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).get_job_logs(submission_id)


def job_status(address: str, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(submission_id).value)


# ----------------------------------------------------------------------------------------------------------------------
# integration: ray job submit + jobs.nightly against a real head and real S3


@pytest.fixture(scope="module")
def catalog_run(s3_server, ray_head_info):
    """Upload the catalog and run jobs.catalog_tryon once through `ray job submit`; shared by the checks below."""
    bucket = s3_server.make_bucket("jobsubmit")
    uris = upload_catalog(s3_server, bucket)
    submission_id = f"catalog-it-{uuid.uuid4().hex[:8]}"
    cmd = [
        RAY, "job", "submit",
        "--address", ray_head_info.address,
        "--submission-id", submission_id,
        "--working-dir", str(ROOT),
        "--runtime-env-json", json.dumps({"excludes": [".git", ".venv", "runs", "/data"]}),
        "--",
        "python", "-m", "jobs.catalog_tryon",
        "--garments", uris["garments"], "--models", uris["models"], "--student", uris["student"],
        "--output", uris["output"], "--height", str(H), "--width", str(W), "--tile-size", "2", "--batch-size", "4",
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=ray_head_info.client_env(), capture_output=True, text=True, timeout=240,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`ray job submit` did not finish in 240 s; job logs:\n"
                    f"{job_logs(ray_head_info.address, submission_id)[-4000:]}")
    wall = time.monotonic() - started
    logs = job_logs(ray_head_info.address, submission_id)
    return {"uris": uris, "bucket": bucket, "submission_id": submission_id, "proc": proc, "logs": logs,
            "status": job_status(ray_head_info.address, submission_id), "wall_s": wall}


@pytest.mark.integration
def test_ray_job_submit_catalog_succeeds(catalog_run):
    proc, logs = catalog_run["proc"], catalog_run["logs"]
    detail = f"exit {proc.returncode}; job logs (tail):\n{logs[-6000:]}\nCLI stderr:\n{proc.stderr[-2000:]}"
    assert catalog_run["status"] == "SUCCEEDED", detail
    assert proc.returncode == 0, detail
    summary = last_json_line(logs)
    assert summary["pairs_total"] == 6, summary
    assert summary["pairs_ok"] == 6, summary
    assert summary["pairs_error"] == 0 and summary["pairs_skipped"] == 0, summary
    assert summary["student_version"] == catalog_run["uris"]["version"]
    assert summary["height"] == H and summary["width"] == W


@pytest.mark.integration
def test_catalog_outputs_in_s3(catalog_run, s3_server):
    import pyarrow.parquet as pq
    from PIL import Image

    assert catalog_run["status"] == "SUCCEEDED", catalog_run["logs"][-3000:]
    fs = s3_server.s3fs()
    bucket, version = catalog_run["bucket"], catalog_run["uris"]["version"]
    expected = {f"{bucket}/tryon/{version}/{g}/{m}.jpg" for g in GARMENT_COLOURS for m in MODELS}
    images = {p for p in fs.find(f"{bucket}/tryon/{version}") if p.endswith(".jpg")}
    assert images == expected, f"images under the documented keys: got {sorted(images)}"
    for key in sorted(expected)[:2]:
        with Image.open(io.BytesIO(fs.cat(key))) as im:
            assert im.size == (W, H) and im.format == "JPEG"
    parts = [p for p in fs.find(f"{bucket}/tryon/results") if p.endswith(".parquet")]
    assert parts, "no results parquet written"
    rows = []
    for p in parts:
        rows += pq.read_table(io.BytesIO(fs.cat(p))).to_pylist()
    assert len(rows) == 6, rows
    assert all(r["status"] == "ok" and r["error"] is None for r in rows), rows
    assert {(r["garment_id"], r["model_id"]) for r in rows} == {(g, m) for g in GARMENT_COLOURS for m in MODELS}
    assert {r["image_uri"] for r in rows} == {f"s3://{k}" for k in expected}
    assert {r["student_version"] for r in rows} == {version}
    assert fs.exists(f"{bucket}/tryon/summary.json") and fs.exists(f"{bucket}/tryon/gallery/index.html")
    assert fs.exists(f"{bucket}/tryon/_lock/000000000001.released"), "the run lock must be released"


def _nightly(ray_head_info, uris: dict, date: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "jobs.nightly",
        "--config", "jobs/configs/nightly.yaml",
        "--address", ray_head_info.address,
        "--promotions", uris["promotions"], "--garments", uris["garments"], "--models", uris["models"],
        "--output", uris["output"], "--date", date, "--working-dir", str(ROOT),
        "--catalog-set", f"height={H}", "--catalog-set", f"width={W}", "--catalog-set", "tile_size=2",
        "--catalog-set", "batch_size=4", "--timeout", "180",
    ]
    env = ray_head_info.client_env()
    env.pop("RAY_ADDRESS", None)  # --address must be enough
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.integration
def test_nightly_submits_promoted_student_once_per_date(catalog_run, ray_head_info):
    assert catalog_run["status"] == "SUCCEEDED", "the catalog run this re-runs failed"
    uris = catalog_run["uris"]
    date = "1999-12-31"
    first = _nightly(ray_head_info, uris, date)
    detail = f"exit {first.returncode}\nstdout:\n{first.stdout[-3000:]}\nstderr:\n{first.stderr[-4000:]}"
    assert first.returncode == 0, detail
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["submission_id"] == f"catalog-nightly-{date}", summary
    assert summary["status"] == "SUCCEEDED", detail
    assert summary["student"] == uris["student"], "must pick the promoted student, not the newest distill run"
    assert summary["student_version"] == uris["version"] and summary["promotion"].endswith(f"-{uris['version']}.json")
    job = summary["job_summary"]
    assert job and job["pairs_total"] == 6 and job["pairs_skipped"] == 6 and job["pairs_ok"] == 0, summary
    assert job_status(ray_head_info.address, f"catalog-nightly-{date}") == "SUCCEEDED"

    second = _nightly(ray_head_info, uris, date)
    assert second.returncode == 3, f"a second submission for {date} must be refused: {second.stdout}\n{second.stderr}"
    refused = json.loads(second.stdout.strip().splitlines()[-1])
    assert refused["status"] == "ALREADY_SUBMITTED" and refused["existing_status"] == "SUCCEEDED", refused
    messages = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(messages) == 1 and "already" in messages[0] and f"catalog-nightly-{date}" in messages[0], second.stderr


# ----------------------------------------------------------------------------------------------------------------------
# fast: the nightly submitter without a cluster


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _promotion(root: Path, key: str, student: str, promoted_at: str, version: str = "v") -> None:
    from pipelines.core.promotions import FORMAT

    _write_json(root / "promotions" / key, {"format": FORMAT, "student": student, "student_version": version,
                                            "promoted_at": promoted_at, "promoted_by": "test"})


@pytest.fixture
def students(tmp_path):
    """A promotions prefix: a is promoted last (by promoted_at, its -02:00 offset counting), b before it; c is a
    newer distill run that nobody promoted."""
    root = tmp_path / "production"
    for run in ("a", "b", "c"):
        (tmp_path / "distill" / run).mkdir(parents=True)
        (tmp_path / "distill" / run / "student.pt").write_bytes(b"x")
    _promotion(root, "2-b.json", str(tmp_path / "distill" / "b" / "student.pt"), "2026-11-26T00:30:00Z", "bbb")
    _promotion(root, "1-a.json", str(tmp_path / "distill" / "a" / "student.pt"), "2026-11-25T23:30:00-02:00", "aaa")
    _write_json(tmp_path / "distill" / "c" / "summary.json", {"stage": "distill", "checkpoint": "student.pt",
                                                               "finished_at": "2027-01-01T00:00:00Z"})
    return root


def test_promoted_student_is_the_newest_promotion(students):
    from pipelines.stages.nightly import promoted_student

    best, skipped = promoted_student(str(students))
    # a: 2026-11-26T01:30Z beats b: 00:30Z although b's key sorts later; c (never promoted) is not a candidate
    assert best.student == str(students.parent / "distill" / "a" / "student.pt") and best.student_version == "aaa"
    assert not skipped


def test_promoted_student_errors(tmp_path, students):
    from pipelines.stages.nightly import promoted_student
    from pipelines.core.config import ConfigError

    with pytest.raises(ConfigError, match="no promotion record under .*jobs.promote"):
        promoted_student(str(tmp_path / "empty"))
    (students.parent / "distill" / "a" / "student.pt").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        promoted_student(str(students))


def _run_main(argv, capsys) -> tuple[int, dict, str]:
    from jobs.nightly import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def test_nightly_dry_run_builds_the_submission(students, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, summary, _ = _run_main([
        "--config", "jobs/configs/nightly.yaml", "--promotions", str(students), "--garments", "s3://b/g.parquet",
        "--models", "s3://b/m.parquet", "--output", "s3://b/out", "--date", "2026-03-01", "--dry-run",
        "--exclude", "/scratch",
    ], capsys)
    assert code == 0 and summary["status"] == "DRY_RUN"
    assert summary["submission_id"] == "catalog-nightly-2026-03-01"
    assert summary["entrypoint"] == (
        "python -m jobs.catalog_tryon --config jobs/configs/catalog.yaml "
        f"--student {students.parent}/distill/a/student.pt "
        "--garments s3://b/g.parquet --models s3://b/m.parquet --output s3://b/out --expect-version aaa "
        "--set device=cuda")
    env = summary["runtime_env"]
    assert env["working_dir"] == str(ROOT) and ".git" in env["excludes"] and "/scratch" in env["excludes"]
    assert env["env_vars"]["PFAFN_LOG_LEVEL"] == "INFO"


def test_nightly_date_follows_the_time_zone():
    from pipelines.stages.nightly import NightlyConfig, run_date

    day = run_date(NightlyConfig(timezone="Pacific/Kiritimati"))  # UTC+14
    assert day == dt.datetime.now(dt.timezone(dt.timedelta(hours=14))).date()
    assert run_date(NightlyConfig(date="2026-02-03")) == dt.date(2026, 2, 3)


@pytest.mark.parametrize("args, message", [
    (["--timezone", "Mars/Olympus"], "unknown time zone"),
    (["--date", "31.12.1999"], "YYYY-MM-DD"),
    (["--set", "env_vars.AWS_SECRET_ACCESS_KEY=abc"], "looks like a credential"),
    (["--working-dir", "/"], "does not look like the project"),
    (["--submission-prefix", "bad id"], "submission_prefix"),
])
def test_nightly_refuses_bad_config(students, capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    code, summary, err = _run_main([
        "--promotions", str(students), "--garments", "g.parquet", "--models", "m.parquet", "--output", "o",
        "--address", "http://127.0.0.1:9", *args,
    ], capsys)
    assert code == 2 and summary["status"] == "ERROR", (summary, err)
    assert message in err


def test_nightly_needs_an_address(students, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, summary, err = _run_main(["--promotions", str(students), "--garments", "g", "--models", "m", "--output", "o"],
                                   capsys)
    assert code == 2 and "no cluster address" in err


def test_nightly_unreachable_cluster_is_one_line(students, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, summary, err = _run_main([
        "--promotions", str(students), "--garments", "g", "--models", "m", "--output", "o",
        "--address", "http://127.0.0.1:9", "--date", "2026-01-01",
    ], capsys)
    assert code == 2 and summary["submission_id"] == "catalog-nightly-2026-01-01"
    assert summary["student"] == str(students.parent / "distill" / "a" / "student.pt")
    assert [l for l in err.splitlines() if l.startswith("error:")] == [
        l for l in err.splitlines() if "cannot reach the Ray job API" in l]


class FakeClient:
    """Stands in for JobSubmissionClient: records submissions, refuses a known id like the job server does."""

    def __init__(self, existing: dict[str, str] | None = None, race: bool = False):
        self.jobs = dict(existing or {})
        self.race = race
        self.submitted = []

    def get_job_status(self, sid):
        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return self.jobs[sid]

    def submit_job(self, *, entrypoint, submission_id, **kwargs):
        if self.race:
            self.jobs[submission_id] = "RUNNING"
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists. Please use a different one.")
        self.submitted.append((submission_id, entrypoint, kwargs))
        self.jobs[submission_id] = "PENDING"
        return submission_id


@pytest.mark.parametrize("existing, race, status_word", [
    ({"catalog-nightly-2026-01-01": "RUNNING"}, False, "is running"),
    ({"catalog-nightly-2026-01-01": "FAILED"}, False, "already ran"),
    ({}, True, "is running"),  # lost the race between the check and the submit
])
def test_nightly_refuses_a_second_submission(students, capsys, monkeypatch, existing, race, status_word):
    import pipelines.stages.nightly as nightly

    fake = FakeClient(existing, race)
    monkeypatch.setattr(nightly, "connect", lambda address: fake)
    monkeypatch.chdir(ROOT)
    code, summary, err = _run_main([
        "--promotions", str(students), "--garments", "g", "--models", "m", "--output", "o",
        "--address", "http://head:8265", "--date", "2026-01-01", "--no-wait",
    ], capsys)
    assert code == 3 and summary["status"] == "ALREADY_SUBMITTED"
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and status_word in lines[0] and "catalog-nightly-2026-01-01" in lines[0]
    assert not fake.submitted


def test_nightly_no_wait_submits_once(students, capsys, monkeypatch):
    import pipelines.stages.nightly as nightly

    fake = FakeClient()
    monkeypatch.setattr(nightly, "connect", lambda address: fake)
    monkeypatch.chdir(ROOT)
    code, summary, _ = _run_main([
        "--promotions", str(students), "--garments", "g", "--models", "m", "--output", "o",
        "--address", "http://head:8265", "--date", "2026-01-02", "--no-wait", "--submission-prefix", "cat",
    ], capsys)
    assert code == 0 and summary["status"] == "PENDING" and summary["submission_id"] == "cat-2026-01-02"
    (sid, entrypoint, kwargs), = fake.submitted
    assert sid == "cat-2026-01-02" and entrypoint.startswith("python -m jobs.catalog_tryon ")
    assert kwargs["runtime_env"]["working_dir"] == str(ROOT)
    assert kwargs["metadata"]["trigger"] == "nightly"


class FinishingClient(FakeClient):
    """A FakeClient whose submitted job ends with ``final`` (and the given driver exit code and last log line)."""

    def __init__(self, final: str, driver_exit_code: int | None, log_line: str):
        super().__init__()
        self.final, self.driver_exit_code, self.log_line = final, driver_exit_code, log_line

    def get_job_status(self, sid):
        super().get_job_status(sid)
        return self.final

    async def tail_job_logs(self, sid):
        yield f"catalog log line of {sid}\n"

    def get_job_info(self, sid):
        import types

        return types.SimpleNamespace(driver_exit_code=self.driver_exit_code, message=f"job {self.final.lower()}")

    def get_job_logs(self, sid):
        return f"some log\n{self.log_line}\n"


@pytest.mark.parametrize("final, driver_code, expected", [("SUCCEEDED", 0, 0), ("FAILED", 1, 1), ("RUNNING", None, 4)])
def test_nightly_waits_and_exits_with_the_jobs_status(students, capsys, monkeypatch, final, driver_code, expected):
    import pipelines.stages.nightly as nightly

    fake = FinishingClient(final, driver_code, json.dumps({"pairs_total": 6, "pairs_ok": 6}))
    monkeypatch.setattr(nightly, "connect", lambda address: fake)
    monkeypatch.chdir(ROOT)
    code, summary, err = _run_main([
        "--promotions", str(students), "--garments", "g", "--models", "m", "--output", "o",
        "--address", "http://head:8265", "--date", "2026-01-03", "--timeout", "1",
    ], capsys)
    assert code == expected and summary["exit_code"] == expected and summary["status"] == final
    assert "catalog log line of catalog-nightly-2026-01-03" in err, "the job's logs are streamed to stderr"
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    if expected == 0:
        assert not errors and summary["job_summary"] == {"pairs_total": 6, "pairs_ok": 6} and "error" not in summary
    else:
        assert len(errors) == 1 and errors[0] == f"error: {summary['error']}"
        assert ("still RUNNING" if final == "RUNNING" else "ended FAILED (driver exit code 1)") in errors[0]


@pytest.mark.parametrize("status, driver_code, expected", [
    ("SUCCEEDED", 0, 0), ("FAILED", 1, 1), ("FAILED", 2, 2), ("FAILED", None, 1), ("STOPPED", None, 1),
    ("RUNNING", None, 4),
])
def test_nightly_exit_codes(status, driver_code, expected):
    from pipelines.stages.nightly import _exit_for

    assert _exit_for(status, driver_code) == expected


def test_nightly_explicit_address_beats_the_environment(monkeypatch):
    from pipelines.stages.nightly import _address_env

    monkeypatch.setenv("RAY_ADDRESS", "http://other:8265")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with _address_env("http://mine:8265"):
        from ray.dashboard.utils import get_address_for_submission_client

        assert get_address_for_submission_client("http://mine:8265") == "http://mine:8265"
    assert os.environ["RAY_ADDRESS"] == "http://other:8265" and "RAY_API_SERVER_ADDRESS" not in os.environ


def test_nightly_help():
    proc = subprocess.run([sys.executable, "-m", "jobs.nightly", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "--promotions" in proc.stdout and "Exit status" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------------
# integration: stages 0-2 (Ray Train + Ray Data) through `ray job submit`, data and outputs on S3


def _submit(ray_head_info, module: str, args: list[str], timeout: int = 420) -> dict:
    submission_id = f"{module.split('.')[-1].replace('_', '-')}-it-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", ray_head_info.address, "--submission-id", submission_id,
           "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"excludes": [".git", ".venv", "runs", "/data"]}),
           "--", "python", "-m", module, *args]
    try:
        proc = subprocess.run(cmd, env=ray_head_info.client_env(), capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} did not finish in {timeout} s; job logs:\n"
                    f"{job_logs(ray_head_info.address, submission_id)[-4000:]}")
    logs = job_logs(ray_head_info.address, submission_id)
    status = job_status(ray_head_info.address, submission_id)
    assert status == "SUCCEEDED" and proc.returncode == 0, f"{module}: {status}, exit {proc.returncode}\n{logs[-6000:]}"
    return last_json_line(logs)


@pytest.mark.integration
@pytest.mark.slow  # the catalog's job-submit test is the default suite's toy version
def test_ray_job_submit_training_stages_on_s3(s3_server, ray_head_info):
    from pipelines.core import storage
    from tests.dataset_helpers import write_dataset_root

    bucket = s3_server.make_bucket("trainsubmit")
    base = f"s3://{bucket}"
    data = write_dataset_root(f"{base}/world", persons=10, garments=10, test=2, height=H, width=W)
    short = ["--preset", "tiny", "--set", "warp.max_steps=2", "--set", "e2e.max_steps=2"]

    tutor = _submit(ray_head_info, "jobs.train_tutor", ["--data", data, "--output", f"{base}/tutor", *short])
    assert tutor["checkpoint"] == f"{base}/tutor/tutor.pt" and storage.exists(tutor["checkpoint"])
    assert tutor["trained_steps"] == 4, tutor

    fakes = _submit(ray_head_info, "jobs.tutor_inference", [
        "--data", data, "--tutor", tutor["checkpoint"], "--output", f"{base}/fakes", "--preset", "tiny",
        "--height", str(H), "--width", str(W)])
    assert fakes["fakes_written"] == 8 and fakes["fakes_error"] == 0, fakes  # 8 train persons x k=1

    student = _submit(ray_head_info, "jobs.distill", [
        "--data", data, "--fakes", fakes["fakes"], "--tutor", tutor["checkpoint"], "--output", f"{base}/student",
        *short])
    for key in ("student_checkpoint", "official_warp", "official_gen"):
        assert student[key].startswith(f"{base}/student/") and storage.exists(student[key]), (key, student)
    assert student["trained_steps"] == 4 and student["finished_at"], student
