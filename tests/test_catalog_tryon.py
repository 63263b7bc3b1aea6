"""Catalog try-on stage on a real in-process Ray: counts, idempotence, incrementality, bad input, kill + re-run, lock."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core import storage
from pipelines.stages.catalog_tryon import CatalogConfig, image_key, load_results, run
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError
from pipelines.core.locking import RunLock
from tests.catalog_helpers import (
    SIZE,
    append_rows,
    image_files,
    ok_rows,
    png_bytes,
    write_catalog,
    write_student,
)

REPO = Path(__file__).resolve().parents[1]


def _config(garments, models, output, student, **kw) -> CatalogConfig:
    base = dict(garments=garments, models=models, output=output, student=student, height=SIZE, width=SIZE,
                batch_size=4, tile_size=3, precision="fp32", actors=1, cpus_per_actor=0.5, torch_threads=1,
                gallery_size=6, channels_last=False)
    base.update(kw)
    return CatalogConfig(**base)


def _assert_accounting(output: str, version: str, expected_pairs: int) -> None:
    ok = ok_rows(output, version)
    keys = Counter((r["garment_id"], r["model_id"]) for r in ok)
    assert len(keys) == expected_pairs, f"{len(keys)} distinct ok pairs, expected {expected_pairs}"
    assert max(keys.values()) == 1, "a pair has more than one ok row"
    images = image_files(output, version)
    assert len(images) == expected_pairs
    assert sorted(r["image_uri"] for r in ok) == images, "every image has exactly one ok row (no orphans)"


def test_catalog_counts_rerun_and_new_garment(ray_session, tmp_path):
    data = str(tmp_path / "data")
    g_uri, m_uri = write_catalog(data, 5, 4)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")

    s1 = run(_config(g_uri, m_uri, out, student))
    assert (s1["pairs_total"], s1["pairs_ok"], s1["pairs_error"], s1["pairs_skipped"]) == (20, 20, 0, 0)
    assert s1["student_version"] == version
    _assert_accounting(out, version, 20)
    # deterministic key layout {output}/{student_version}/{garment_id}/{model_id}.jpg, decodable JPEGs of HxW
    key = image_key(out, version, "g00000", "m00000")
    img = Image.open(io.BytesIO(storage.read_bytes(key)))
    assert img.format == "JPEG" and img.size == (SIZE, SIZE)
    summary_file = json.loads(storage.read_bytes(storage.join_uri(out, "summary.json")))
    assert summary_file["pairs_ok"] == 20 and summary_file["run_id"] == s1["run_id"]
    gallery = storage.read_bytes(s1["gallery"]).decode()
    assert gallery.count('class="card') == 6 and "data:image/jpeg;base64," in gallery

    s2 = run(_config(g_uri, m_uri, out, student))
    assert (s2["pairs_ok"], s2["pairs_error"], s2["pairs_skipped"], s2["tiles"]) == (0, 0, 20, 0)

    extra_g, _ = write_catalog(str(tmp_path / "extra"), 1, 4, first_garment=5)
    from pipelines.core.manifests import read_table

    new_row = read_table(extra_g).to_pylist()[0]
    append_rows(g_uri, {k: [v] for k, v in new_row.items()})
    # the new garment's photo lives outside the manifest's folder: allowed explicitly (default roots: the manifests')
    s3 = run(_config(g_uri, m_uri, out, student, allowed_roots=[str(tmp_path / "extra")]))
    assert (s3["pairs_total"], s3["pairs_ok"], s3["pairs_skipped"]) == (24, 4, 20)
    new_rows = [r for r in ok_rows(out, version) if r["run_id"] == s3["run_id"]]
    assert {r["garment_id"] for r in new_rows} == {new_row["garment_id"]}
    _assert_accounting(out, version, 24)

    # a new student version recomputes everything under its own prefix, the old results stay
    other = str(tmp_path / "student2.pt")
    version2 = write_student(other, seed=1)
    assert version2 != version
    s4 = run(_config(g_uri, m_uri, out, other, allowed_roots=[str(tmp_path / "extra")]))
    assert (s4["pairs_ok"], s4["pairs_skipped"]) == (24, 0)
    _assert_accounting(out, version, 24)
    _assert_accounting(out, version2, 24)


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header declares a huge image (decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_bad_and_unusual_inputs_become_rows(ray_session, tmp_path):
    data = tmp_path / "data"
    g_uri, m_uri = write_catalog(str(data), 2, 3)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    good = np.asarray(Image.open(data / "garments" / "g00000.png").convert("RGB"))
    mask = str(data / "garments" / "g00000_mask.png")

    def put(name: str, payload: bytes) -> str:
        path = data / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(payload)
        return str(path)

    jpeg = io.BytesIO()
    Image.fromarray(good).save(jpeg, format="JPEG")
    cmyk = io.BytesIO()
    Image.fromarray(good).convert("CMYK").save(cmyk, format="JPEG")
    gray16 = io.BytesIO()
    Image.fromarray((good[..., 0].astype(np.uint16) * 257)).save(gray16, format="PNG")
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([good, np.full(good.shape[:2], 255, np.uint8)])).save(rgba, format="PNG")
    wide = np.asarray(Image.fromarray(good).resize((SIZE * 2, SIZE)))
    bad = {
        "corrupt": put("corrupt.png", os.urandom(300)),
        "truncated": put("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        "empty": put("empty.png", b""),
        "text": put("text.png", b"garment_id,image_uri\nnot,an image\n"),
        "bomb": put("bomb.png", _bomb_png()),
        "missing": str(data / "bad" / "does-not-exist.png"),
    }
    unusual = {
        "cmyk": put("cmyk.jpg", cmyk.getvalue()),
        "gray16": put("gray16.png", gray16.getvalue()),
        "rgba": put("rgba.png", rgba.getvalue()),
        "wide": put("wide.png", png_bytes(wide)),  # other aspect ratio: fitted, mask extracted automatically
    }
    rows = {"garment_id": [], "image_uri": [], "mask_uri": []}
    for name, uri in bad.items():
        rows["garment_id"].append(f"bad-{name}")
        rows["image_uri"].append(uri)
        rows["mask_uri"].append(mask)
    for name, uri in unusual.items():
        rows["garment_id"].append(f"ok-{name}")
        rows["image_uri"].append(uri)
        rows["mask_uri"].append(None if name == "wide" else mask)
    rows["garment_id"].append("../escape")  # unsafe id: rejected before it can become a key
    rows["image_uri"].append(str(data / "garments" / "g00001.png"))
    rows["mask_uri"].append(mask)
    append_rows(g_uri, rows)

    out = str(tmp_path / "out")
    s = run(_config(g_uri, m_uri, out, student))
    n_garments = 2 + len(bad) + len(unusual) + 1
    assert s["pairs_total"] == n_garments * 3
    assert s["pairs_ok"] == (2 + len(unusual)) * 3
    assert s["pairs_error"] == (len(bad) + 1) * 3
    assert s["pairs_ok"] + s["pairs_error"] == s["pairs_total"]
    results = load_results(out, version).to_pylist()
    assert len(results) == s["pairs_total"]
    by_garment: dict[str, set] = {}
    for r in results:
        by_garment.setdefault(r["garment_id"], set()).add(r["status"])
        if r["status"] == "error":
            assert r["error"] and "\n" not in r["error"], "error rows carry a one-line reason"
            assert r["image_uri"] is None
    for name in bad:
        assert by_garment[f"bad-{name}"] == {"error"}, name
    for name in unusual:
        assert by_garment[f"ok-{name}"] == {"ok"}, name
    assert by_garment["../escape"] == {"error"}
    reasons = {r["garment_id"]: r["error"] for r in results if r["status"] == "error"}
    assert "large" in reasons["bad-bomb"].lower() or "bomb" in reasons["bad-bomb"].lower()
    assert "empty" in reasons["bad-empty"].lower()
    assert not any(".." in p for p in image_files(out, version))


def test_error_rows_name_the_input_that_failed(ray_session, tmp_path):
    data = tmp_path / "data"
    g_uri, m_uri = write_catalog(str(data), 2, 2)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    (data / "garments" / "g00001_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n not a mask")
    (data / "models" / "m00001.png").write_bytes(os.urandom(200))
    out = str(tmp_path / "out")
    s = run(_config(g_uri, m_uri, out, student))
    assert (s["pairs_ok"], s["pairs_error"]) == (1, 3)
    reasons = {(r["garment_id"], r["model_id"]): r["error"] for r in load_results(out, version).to_pylist()}
    assert reasons[("g00000", "m00000")] is None
    assert reasons[("g00000", "m00001")].startswith("person image: ")
    assert reasons[("g00001", "m00000")].startswith("garment mask: ")
    assert reasons[("g00001", "m00001")].startswith("garment mask: "), "the garment's failure is named first"


def test_decode_garment_tells_the_photo_from_its_mask(tmp_path):
    from pipelines.batch import InputError, decode_garment

    write_catalog(str(tmp_path), 1, 1)
    image, mask = str(tmp_path / "garments" / "g00000.png"), str(tmp_path / "garments" / "g00000_mask.png")
    cfg = {"height": SIZE, "width": SIZE, "max_image_bytes": 1 << 24, "max_image_pixels": 1 << 24,
           "min_mask_confidence": 0.5}
    garment, fitted_mask = decode_garment(image, mask, cfg)
    assert garment.shape == (SIZE, SIZE, 3) and set(np.unique(fitted_mask)) <= {0, 255}
    small = tmp_path / "small_mask.png"
    small.write_bytes(png_bytes(np.zeros((SIZE // 2, SIZE), np.uint8)))  # another aspect ratio (same is resized)
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.full((SIZE, SIZE, 3), 255, np.uint8)))
    cases = {(str(tmp_path / "missing.png"), mask): "garment image: ",
             (image, str(small)): "garment mask: ",  # the mask's aspect ratio does not match the photo's
             (image, str(tmp_path / "missing_mask.png")): "garment mask: ",
             (str(blank), None): "garment mask: "}  # nothing to extract: low confidence or refused
    for (img, msk), prefix in cases.items():
        with pytest.raises(InputError) as err:
            decode_garment(img, msk, cfg)
        assert err.value.reason.startswith(prefix), (img, msk, err.value.reason)


def _cli(args: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jobs.catalog_tryon", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_killed_run_then_rerun_exactly_once(tmp_path):
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 5, 4)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")
    args = ["--garments", g_uri, "--models", m_uri, "--student", student, "--output", out, "--height", str(SIZE),
            "--width", str(SIZE), "--tile-size", "1", "--batch-size", "4", "--precision", "fp32", "--actors", "1",
            "--set", "cpus_per_actor=0.5", "--set", "torch_threads=1"]
    killed = _cli(args, {"PFAFN_FAULT_KILL_AFTER_COMMITS": "2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    # Tasks already in flight on the dead driver's local cluster may still commit for a moment; wait until the
    # results stop changing, then re-run.
    done_before, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 4:
        now = len(ok_rows(out, version))
        if now != done_before:
            done_before, stable_since = now, time.monotonic()
        time.sleep(0.5)
    assert 0 < done_before < 20, "the run must have been killed part-way"
    lock_dir = storage.join_uri(out, "_lock")
    assert not storage.exists(storage.join_uri(lock_dir, "000000000001.released")), "a killed run never released"

    rerun = _cli(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["pairs_skipped"] == done_before
    assert summary["pairs_ok"] == 20 - done_before
    _assert_accounting(out, version, 20)
    assert storage.exists(storage.join_uri(lock_dir, "000000000002.released")), "the re-run took over and released"


def test_cli_error_rate_threshold_and_usage_errors(tmp_path):
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 2, 2)
    student = str(tmp_path / "student.pt")
    write_student(student)
    Path(tmp_path / "data" / "garments" / "g00001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = str(tmp_path / "out")
    common = ["--garments", g_uri, "--models", m_uri, "--student", student, "--output", out, "--height", "64",
              "--width", "64", "--actors", "1", "--set", "cpus_per_actor=0.5", "--precision", "fp32"]
    res = _cli(common + ["--max-error-rate", "0.25"])
    assert res.returncode == 1, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert (summary["pairs_ok"], summary["pairs_error"], summary["exceeded_error_rate"]) == (2, 2, True)

    bad_size = _cli(common + ["--height", "70"])
    assert bad_size.returncode == 2 and "multiples of 32" in bad_size.stderr
    both = _cli(common + ["--official-warp", "w.pth", "--official-gen", "g.pth"])
    assert both.returncode == 2 and "either --student" in both.stderr


def test_lock_refuses_second_run_and_takes_over_stale(ray_session, tmp_path):
    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 1, 1)
    student = str(tmp_path / "student.pt")
    write_student(student)
    out = str(tmp_path / "out")
    storage.makedirs(out)
    holder = RunLock(out, "other-run")
    holder.acquire()
    try:
        with pytest.raises(StageError, match="locked by run other-run"):
            run(_config(g_uri, m_uri, out, student))
    finally:
        holder.release()
    # a lock left by a dead process on this host is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_bytes(storage.join_uri(out, "_lock", "000000000002.json"),
                        json.dumps({"run_id": "dead", "host": os.uname().nodename, "pid": int(dead.stdout),
                                    "heartbeat": 9e18}).encode())
    s = run(_config(g_uri, m_uri, out, student))
    assert s["pairs_ok"] == 1


@pytest.mark.integration
def test_catalog_on_s3(ray_session, s3_bucket, tmp_path):
    data = storage.join_uri(s3_bucket, "catalog")
    g_uri, m_uri = write_catalog(data, 5, 4)
    student = storage.join_uri(s3_bucket, "students", "student.pt")
    local_student = str(tmp_path / "student.pt")
    version = write_student(local_student)
    storage.write_bytes(student, Path(local_student).read_bytes())
    out = storage.join_uri(s3_bucket, "tryon")
    s1 = run(_config(g_uri, m_uri, out, student))
    assert (s1["pairs_ok"], s1["pairs_error"]) == (20, 0)
    _assert_accounting(out, version, 20)
    assert s1["gallery"].startswith("s3://") and storage.exists(s1["gallery"])
    s2 = run(_config(g_uri, m_uri, out, student))
    assert (s2["pairs_ok"], s2["pairs_skipped"]) == (0, 20)
    assert storage.exists(storage.join_uri(out, "_lock", "000000000002.released"))


def test_channels_last_auto_is_nhwc():
    from pipelines.batch import resolve_channels_last

    assert resolve_channels_last("auto") is True
    assert resolve_channels_last(False) is False
    assert resolve_channels_last(True) is True
    cfg = CatalogConfig(garments="g.parquet", models="m.parquet", output="out", student="s.pt", channels_last="yes")
    with pytest.raises(ConfigError, match=r"channels_last must be one of true\|false\|auto"):
        cfg.validate()


def test_junk_and_foreign_files_in_results_do_not_stop_later_runs(ray_session, tmp_path):
    """A truncated upload and another tool's Parquet file under results/ are skipped with a warning and counted;
    the run plans, runs and draws its gallery as if they were not there."""
    import pyarrow as pa

    from pipelines.core import manifests

    g_uri, m_uri = write_catalog(str(tmp_path / "data"), 2, 2)
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")
    results = Path(out) / "results"
    results.mkdir(parents=True)
    (results / "part-junk-000000.parquet").write_bytes(b"PAR1 an upload cut short")
    manifests.write_manifest(pa.table({"garment_id": [1, 2], "price": [9.5, 3.0]}),
                             str(results / "exports" / "prices.parquet"))
    s1 = run(_config(g_uri, m_uri, out, student))
    assert (s1["pairs_ok"], s1["pairs_error"], s1["results_files_skipped"]) == (4, 0, 2)
    assert storage.read_bytes(s1["gallery"]).decode().count('class="card') == 4
    s2 = run(_config(g_uri, m_uri, out, student))
    assert (s2["pairs_ok"], s2["pairs_skipped"], s2["results_files_skipped"]) == (0, 4, 2)
    _assert_accounting(out, version, 4)
