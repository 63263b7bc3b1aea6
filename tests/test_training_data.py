"""Training ingest: deterministic sample order and unpaired garments, CPU decode with error rows (real Ray Data)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.core import storage
from pipelines.training import data as tdata
from tests.dataset_helpers import write_dataset_root


@pytest.fixture(scope="module")
def root_uri(tmp_path_factory):
    return write_dataset_root(str(tmp_path_factory.mktemp("train-data") / "root"), persons=8, garments=8, test=2,
                      height=64, width=64)


def test_unpaired_garment_is_deterministic_and_never_worn():
    ids = [f"g{i:05d}" for i in range(6)]
    seen = set()
    for epoch in range(40):
        g = tdata.choose_unpaired(ids, "g00002", "m00002__g00002", epoch, seed=3)
        assert g != "g00002" and g in ids
        assert g == tdata.choose_unpaired(ids, "g00002", "m00002__g00002", epoch, seed=3)
        seen.add(g)
    assert seen == set(ids) - {"g00002"}  # uniform over the others: all of them show up in 40 epochs
    assert tdata.choose_unpaired(["g00000"], "g00000", "k", 0, 0) is None


def test_epoch_table_resumes_at_a_step(root_uri):
    root = tdata.load_root(root_uri)
    train, val = tdata.split_train_val(root, 8, 0.1, 0, [])
    assert {r["model_id"] for r in val} == {"m00006", "m00007"}  # the test split's paired rows
    plan = tdata.plan_epochs(len(train), batch_size=1, workers=2, epochs=3)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 9
    full = tdata.epoch_table(train, plan, seed=5, unpaired_garments=root).to_pylist()
    assert len(full) == 18
    resumed = tdata.epoch_table(train, plan, seed=5, start_step=4, unpaired_garments=root).to_pylist()
    assert resumed == full[4 * plan.global_batch:]
    assert all(r["unpaired_id"] != r["garment_id"] for r in full)
    # each epoch is a permutation of distinct samples
    for e in range(3):
        keys = [r["sample_key"] for r in full if r["epoch"] == e]
        assert len(keys) == len(set(keys)) == 6


def test_decode_drops_bad_rows_and_writes_error_rows(ray_session, root_uri, tmp_path):
    root = tdata.load_root(root_uri)
    train, _ = tdata.split_train_val(root, 0, 0.0, 0, [])
    assert len(train) == 6
    bad = [dict(train[0]), dict(train[1])]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    bad[0]["image_uri"] = str(corrupt)
    bad[1]["parsing_uri"] = str(tmp_path / "missing.png")
    rows = train[2:] + bad
    out = str(tmp_path / "out")
    spec = tdata.DecodeSpec(64, 64, ("person", "keypoints", "parsing", "densepose", "garment", "garment_mask"),
                            storage.join_uri(out, tdata.ERROR_ROWS_DIR), "train_pairs")
    ds = tdata.build_dataset(tdata.sample_table(rows), spec, block_rows=2, decode_cpus=0.5)
    got = ds.take_all()
    assert len(got) == 4
    first = got[0]
    assert first["person"].shape == (64, 64, 3) and first["person"].dtype == np.uint8
    assert first["parsing"].shape == (64, 64) and first["parsing"].dtype == np.uint8
    assert first["garment_mask"].shape == (64, 64) and first["keypoints"].shape == (18, 3)
    assert first["keypoints"].dtype == np.float32
    n = tdata.collect_error_rows(out, [tdata.error_row("train_pairs", "x__y", "model x is not in models.parquet")])
    assert n == 3
    import pyarrow.parquet as pq

    errors = pq.read_table(os.path.join(out, tdata.ERRORS_FILE)).to_pylist()
    reasons = {e["id"]: e["error"] for e in errors}
    # the reason names the input that failed (pipelines.batch.error_reason's vocabulary)
    assert reasons[bad[0]["sample_key"]].startswith("person image: ")
    assert reasons[bad[1]["sample_key"]].startswith("parsing: ")
    missing = reasons[bad[1]["sample_key"]].lower()
    assert "no such object" in missing or "not found" in missing
    rows = {e["id"]: e["row_json"] for e in errors}  # the row's URIs say which file
    assert "missing.png" in rows[bad[1]["sample_key"]]
    assert reasons["x__y"] == "model x is not in models.parquet"


def test_decode_limits_bytes_and_pixels_separately(root_uri, tmp_path):
    """``max_image_bytes`` bounds the file, ``max_image_pixels`` the decoded size: a small file of many pixels (a
    plain 200×200 PNG) passes a byte limit below its pixel count, and only the pixel limit can refuse it."""
    from PIL import Image

    root = tdata.load_root(root_uri)
    train, _ = tdata.split_train_val(root, 0, 0.0, 0, [])
    plain = tmp_path / "plain.png"
    Image.new("RGB", (200, 200), (200, 180, 160)).save(plain)
    size = plain.stat().st_size
    assert size < 10_000 < 200 * 200
    row = dict(train[0], image_uri=str(plain))
    decoded = tdata.decode_row(row, tdata.DecodeSpec(64, 64, ("person",), max_image_bytes=10_000))
    assert decoded["person"].shape == (64, 64, 3)
    with pytest.raises(tdata.SampleDecodeError, match=r"^person image: image too large"):
        tdata.decode_row(row, tdata.DecodeSpec(64, 64, ("person",), max_image_pixels=200 * 200 - 1))
    with pytest.raises(tdata.SampleDecodeError, match=r"^person image: "):
        tdata.decode_row(row, tdata.DecodeSpec(64, 64, ("person",), max_image_bytes=size - 1))
    with pytest.raises(tdata.SampleDecodeError, match=r"^garment mask: "):  # masks obey the pixel limit too
        tdata.decode_row(dict(row, garment_mask_uri=str(plain)),
                         tdata.DecodeSpec(64, 64, ("garment_mask",), max_image_pixels=200 * 200 - 1))


def test_decode_reads_only_inside_the_input_roots(root_uri, tmp_path):
    """A sample whose image URI is outside the roots (dataset root + ``allowed_roots``) is an error row "outside allowed
    roots" — unread, nothing of the file quoted — and the other samples still decode (no crash)."""
    import pyarrow.parquet as pq

    root = tdata.load_root(root_uri)
    train, _ = tdata.split_train_val(root, 0, 0.0, 0, [])
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"TOKEN=abc123")
    rows = [dict(train[0], image_uri=str(secret)), dict(train[1])]
    out = str(tmp_path / "out")
    spec = tdata.DecodeSpec(64, 64, ("person", "garment"), storage.join_uri(out, tdata.ERROR_ROWS_DIR), "train_pairs",
                            roots=(root_uri,), read_timeout_s=10.0)
    batch = {k: np.asarray(v, dtype=object) for k, v in tdata.sample_table(rows).to_pydict().items()}
    decoded = tdata.decode_batch(batch, spec)
    assert decoded["person"].shape == (1, 64, 64, 3)
    assert tdata.collect_error_rows(out) == 1
    error = pq.read_table(os.path.join(out, tdata.ERRORS_FILE)).to_pylist()[0]
    assert error["id"] == rows[0]["sample_key"]
    assert error["error"].startswith("person image: ") and "outside allowed roots" in error["error"]
    assert "TOKEN" not in error["error"] and "TOKEN" not in error["row_json"]
    # the folder in allowed_roots makes it readable (then it fails as what it is: not an image)
    with pytest.raises(tdata.SampleDecodeError) as info:
        tdata.decode_row(rows[0], tdata.DecodeSpec(64, 64, ("person",), roots=(root_uri, str(tmp_path))))
    assert "outside allowed roots" not in info.value.reason


def test_training_configs_check_and_derive_the_input_roots(tmp_path):
    from pipelines.core.config import ConfigError, build_config
    from pipelines.stages.distill import DistillConfig
    from pipelines.stages.train_tutor import TutorConfig

    paths = {"data": "/d/root", "output": "/o"}
    with pytest.raises(ConfigError, match="allowed_roots"):
        build_config(TutorConfig, explicit=dict(paths, allowed_roots=["relative/dir"])).validate()
    with pytest.raises(ConfigError, match="read_timeout_s"):
        build_config(TutorConfig, explicit=dict(paths, read_timeout_s=0)).validate()
    tutor = build_config(TutorConfig, explicit=dict(paths, allowed_roots=["s3://b/extra"]))
    assert set(tutor.input_roots()) == {"s3://b/extra", "/d/root"}
    fakes = tmp_path / "fakes" / "manifest"  # a tutor-inference output's manifest folder: images are beside it
    fakes.mkdir(parents=True)
    (fakes / "part-r1-g1-00000.parquet").write_bytes(b"")  # tutor inference's parts sit here
    distill = build_config(DistillConfig, explicit=dict(paths, fakes=str(fakes), tutor="/t.pt"))
    assert set(distill.input_roots()) == {"/d/root", str(tmp_path / "fakes")}
