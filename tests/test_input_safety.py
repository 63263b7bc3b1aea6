"""Manifests cannot make a worker read (or leak) files outside the allowed roots, nor hang it on a FIFO."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pipelines.core import storage
from pipelines.stages.catalog_tryon import CatalogConfig, load_results, run
from tests.catalog_helpers import SIZE, append_rows, write_catalog, write_student

SECRET = "pfafn-test-secret-7f3a9c line of a credentials file"


def _config(garments, models, output, student, **kw) -> CatalogConfig:
    base = dict(garments=garments, models=models, output=output, student=student, height=SIZE, width=SIZE,
                batch_size=4, tile_size=4, precision="fp32", actors=1, cpus_per_actor=0.5, torch_threads=1,
                gallery_size=12, channels_last=False, read_timeout_s=20.0)
    base.update(kw)
    return CatalogConfig(**base)


def _all_output_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------------------
# storage.read_input / read_bytes


def test_read_input_refuses_outside_roots_without_touching_the_file(tmp_path):
    inside = tmp_path / "root" / "a.txt"
    inside.parent.mkdir()
    inside.write_bytes(b"ok")
    assert storage.read_input(str(inside), roots=[str(tmp_path / "root")]) == b"ok"
    assert storage.read_input(f"file://{inside}", roots=[f"file://{tmp_path}/root/"]) == b"ok"
    for uri in ("/etc/passwd", "file:///etc/passwd", str(tmp_path / "root" / ".." / "x"), str(tmp_path / "rootx")):
        with pytest.raises(storage.OutsideRootsError, match="outside allowed roots"):
            storage.read_input(uri, roots=[str(tmp_path / "root")])
    # a link inside the root to a file outside it is outside
    os.symlink("/etc/passwd", tmp_path / "root" / "link.png")
    with pytest.raises(storage.OutsideRootsError):
        storage.read_input(str(tmp_path / "root" / "link.png"), roots=[str(tmp_path / "root")])
    # S3 roots are key prefixes; a local root never admits an S3 URI
    assert storage.within_roots("s3://bucket/data/x.png", ["s3://bucket/data"])
    assert not storage.within_roots("s3://bucket/data2/x.png", ["s3://bucket/data"])
    assert not storage.within_roots("s3://bucket/data/x.png", [str(tmp_path)])


def test_read_bytes_refuses_fifo_and_directory_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(storage.NotARegularFileError, match="not a regular file"):
        storage.read_bytes(str(fifo), max_bytes=100)
    with pytest.raises(storage.NotARegularFileError):
        storage.read_bytes(str(tmp_path))
    assert time.monotonic() - started < 5


def test_not_an_image_reason_quotes_no_content():
    from pfafn import imageio

    with pytest.raises(imageio.NotAnImageError) as info:
        imageio.decode_image(SECRET.encode() * 3)
    assert "secret" not in str(info.value) and "looks like text" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------------
# A catalog run with hostile URIs


def test_catalog_rejects_outside_and_fifo_inputs_and_leaks_nothing(ray_session, tmp_path):
    data = tmp_path / "data"
    g_uri, m_uri = write_catalog(str(data), 2, 2)
    secret = tmp_path / "elsewhere" / "secret.txt"  # stands in for /etc/passwd or a mounted token
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    inside_text = data / "models" / "notes.png"  # inside the root: read, but its content is never quoted either
    inside_text.write_text(SECRET + "\n")
    fifo = data / "garments" / "pipe.png"
    os.mkfifo(fifo)
    append_rows(g_uri, {"garment_id": ["gpasswd", "gsecret", "gfifo"],
                        "image_uri": ["file:///etc/passwd", str(secret), str(fifo)], "mask_uri": [None] * 3})
    append_rows(m_uri, {"model_id": ["mtext"], "image_uri": [str(inside_text)]})
    student = str(tmp_path / "student.pt")
    write_student(student)
    out = tmp_path / "out"

    # A reader blocked on the FIFO would hang the run: after 300 s open and close its write end, so such a reader
    # gets end-of-file and the test fails on its assertions instead of hanging the suite.
    timer = threading.Timer(300, lambda: os.close(os.open(fifo, os.O_WRONLY)))
    timer.daemon = True
    timer.start()
    try:
        summary = run(_config(g_uri, m_uri, str(out), student))
    finally:
        timer.cancel()

    rows = load_results(str(out)).to_pylist()
    errors = {(r["garment_id"], r["model_id"]): r["error"] for r in rows if r["status"] == "error"}
    for gid in ("gpasswd", "gsecret"):
        assert all("outside allowed roots" in errors[(gid, f"m0000{i}")] for i in range(2)), errors
    assert all("not a regular file" in errors[("gfifo", f"m0000{i}")] for i in range(2)), errors
    assert all("not an image" in errors[(f"g0000{i}", "mtext")] for i in range(2)), errors
    assert summary["pairs_ok"] == 4 and summary["pairs_error"] == 5 * 3 - 4
    dumped = _all_output_bytes(out)
    passwd = Path("/etc/passwd").read_bytes().split(b"\n")[0]
    assert b"pfafn-test-secret" not in dumped and (not passwd or passwd not in dumped)


def test_catalog_allowed_roots_admit_another_folder(ray_session, tmp_path):
    data = tmp_path / "data"
    g_uri, m_uri = write_catalog(str(data), 1, 1)
    extra_g, _ = write_catalog(str(tmp_path / "extra"), 1, 1, first_garment=1)
    from pipelines.core.manifests import read_table

    append_rows(g_uri, {k: [v] for k, v in read_table(extra_g).to_pylist()[0].items()})
    student = str(tmp_path / "student.pt")
    write_student(student)
    s1 = run(_config(g_uri, m_uri, str(tmp_path / "o1"), student))
    assert (s1["pairs_ok"], s1["pairs_error"]) == (1, 1)
    s2 = run(_config(g_uri, m_uri, str(tmp_path / "o2"), student, allowed_roots=[str(tmp_path / "extra")]))
    assert (s2["pairs_ok"], s2["pairs_error"]) == (2, 0)
