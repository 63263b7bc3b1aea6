"""Reading committed result parts back: junk and foreign files skipped and counted, the done set and the gallery
sample computed from int codes (checked against a plain Python reference), the toy-size benchmark path."""
from __future__ import annotations

import datetime
import json

import numpy as np
import pyarrow as pa
import pytest

from benchmarks import results_scale
from pipelines.core import manifests, parts, storage
from pipelines.stages.catalog_tryon import RESULTS_SCHEMA, CatalogConfig, plan_tiles, rejected_rows, sample_results

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _result_part(uri: str, rows: list[tuple], version: str = "v1") -> None:
    """``rows``: (garment_id, model_id, status, hours after T0)."""
    table = pa.Table.from_pylist([
        {"garment_id": g, "model_id": m, "student_version": version, "status": s,
         "error": None if s == "ok" else f"inference: boom {h}", "image_uri": f"/x/{g}/{m}.jpg" if s == "ok" else None,
         "run_id": f"r{h}", "finished_at": T0 + datetime.timedelta(hours=h)} for g, m, s, h in rows],
        schema=RESULTS_SCHEMA)
    manifests.write_manifest(table, uri)


def _catalog(tmp_path, n_g: int, n_m: int, extra_garments: dict | None = None) -> CatalogConfig:
    g_ids = [f"g{i}" for i in range(n_g)] + list((extra_garments or {}).get("garment_id", []))
    manifests.write_manifest(pa.table({"garment_id": g_ids, "image_uri": [f"{g}.png" for g in g_ids]}),
                             str(tmp_path / "garments.parquet"))
    m_ids = [f"m{i}" for i in range(n_m)]
    manifests.write_manifest(pa.table({"model_id": m_ids, "image_uri": [f"{m}.png" for m in m_ids]}),
                             str(tmp_path / "models.parquet"))
    return CatalogConfig(garments=str(tmp_path / "garments.parquet"), models=str(tmp_path / "models.parquet"),
                         output=str(tmp_path / "out"), student="s.pt", tile_size=2, gallery_size=8)


def test_junk_and_foreign_files_under_results_are_skipped_and_counted(tmp_path):
    config = _catalog(tmp_path, 3, 2)
    results = tmp_path / "out" / "results"
    _result_part(str(results / "part-a-000000.parquet"), [("g0", "m0", "ok", 1), ("g0", "m1", "ok", 1)])
    (results / "junk.parquet").write_bytes(b"this is not parquet")
    truncated = (results / "part-a-000000.parquet").read_bytes()
    (results / "part-b-000000.parquet").write_bytes(truncated[: len(truncated) // 2])
    manifests.write_manifest(pa.table({"sku": ["g1"], "price": [3.5]}), str(results / "sub" / "foreign.parquet"))
    # a result-like table whose status column is a struct cannot be cast: foreign too
    manifests.write_manifest(pa.table({"garment_id": ["g1"], "model_id": ["m0"], "student_version": ["v1"],
                                       "status": [{"a": 1}]}), str(results / "odd.parquet"))

    plan = plan_tiles(config, "v1")
    assert plan.pairs_skipped == 2 and plan.pairs_todo == 4
    assert len(plan.skipped) == 4
    assert {storage.basename(u) for u in plan.skipped.files} == {"junk.parquet", "part-b-000000.parquet",
                                                                 "foreign.parquet", "odd.parquet"}
    assert "no column(s) garment_id" in plan.skipped.files[str(results / "sub" / "foreign.parquet")]


def test_storage_failure_is_not_junk(tmp_path, monkeypatch):
    """An unreadable object (storage down, permission denied) must stop the planning, never look 'not done'."""
    _result_part(str(tmp_path / "results" / "part-a.parquet"), [("g0", "m0", "ok", 1)])

    def refuse(uri, max_bytes=None):
        raise storage.StoragePermissionError("read: permission denied", uri)

    monkeypatch.setattr(storage, "read_bytes", refuse)
    with pytest.raises(storage.StorageError):
        list(parts.scan_parts([(str(tmp_path / "results"), None)], manifests.SPECS["tryon_results"], ["status"]))


def test_newest_ok_row_wins_and_rejected_rows_are_reported_once(tmp_path):
    config = _catalog(tmp_path, 3, 2, extra_garments={"garment_id": ["bad id"]})
    results = tmp_path / "out" / "results"
    _result_part(str(results / "part-1.parquet"), [("g0", "m0", "error", 1), ("g0", "m1", "error", 1),
                                                   ("g1", "m0", "ok", 1), ("g2", "m1", "error", 1)])
    _result_part(str(results / "part-2.parquet"), [("g0", "m0", "ok", 2), ("g2", "m1", "error", 3),
                                                   ("g1", "m0", "error", 3)])
    _result_part(str(results / "part-3.parquet"), [("g2", "m0", "ok", 1)], version="v0")  # another version
    plan = plan_tiles(config, "v1")
    # done: an ok row, whatever came after (a done pair is never retried): g0/m0 and g1/m0
    assert plan.pairs_skipped == 2 and plan.pairs_todo == 4
    todo = {(t["garment_ids"][c // len(t["model_ids"])], t["model_ids"][c % len(t["model_ids"])])
            for t in plan.tiles for c in t["todo"]}
    assert todo == {("g0", "m1"), ("g1", "m1"), ("g2", "m0"), ("g2", "m1")}

    rows = sample_results(config.output, "v1", plan, 8)
    by_pair = {(r["garment_id"], r["model_id"]): r for r in rows}
    assert len(by_pair) == len(rows) == 4, "one card per pair"
    assert by_pair[("g0", "m0")]["status"] == "ok", "an ok row after an error hides the stale error"
    assert by_pair[("g1", "m0")]["status"] == "ok"
    assert by_pair[("g2", "m1")]["error"] == "inference: boom 3", "the newest error row"
    assert [r["status"] for r in rows[:2]] == ["error", "error"], "errors first"

    # the rejected garment's pairs: written once, then not again
    first = rejected_rows(plan, "v1", "run1")
    assert [(r["garment_id"], r["model_id"]) for r in first] == [("bad id", "m0"), ("bad id", "m1")]
    manifests.write_manifest(pa.Table.from_pylist(first, schema=RESULTS_SCHEMA), str(results / "part-rej.parquet"))
    again = plan_tiles(config, "v1")
    assert rejected_rows(again, "v1", "run2") == []
    from pipelines.stages.catalog_tryon import load_status

    status = load_status(config.output, "v1", again.index)
    assert (len(status.ok), len(status.error)) == (2, 4)  # the rejected pairs are failed pairs, once each


def test_gallery_sample_is_stable_and_independent_of_manifest_order(tmp_path):
    index = parts.PairIndex.of(["a", "b", "c"], ["x", "y"])
    status = parts.PairStatus(ok=np.arange(6, dtype=np.int64), error=np.zeros(0, np.int64))
    _, oks = parts.sample_pairs(status, index, 3, salt="s")
    chosen = {(index.a_ids[int(a)].as_py(), index.b_ids[int(b)].as_py()) for a, b in zip(*index.split(oks))}
    shuffled = parts.PairIndex.of(["c", "a", "b", "d"], ["y", "x"])
    _, oks2 = parts.sample_pairs(parts.PairStatus(ok=np.array([0, 1, 2, 3, 4, 5]), error=np.zeros(0, np.int64)),
                                 shuffled, 3, salt="s")
    chosen2 = {(shuffled.a_ids[int(a)].as_py(), shuffled.b_ids[int(b)].as_py()) for a, b in zip(*shuffled.split(oks2))}
    assert len(chosen) == 3 and chosen == chosen2


def test_toy_scale_world_matches_a_python_reference(tmp_path):
    """The benchmark's world at 20k rows through the same code path as the 10M-row measurement."""
    world = results_scale.write_world(str(tmp_path), 140, 140, rows=20_000, parts=4)
    assert world["rows"] == 20_000
    measured = results_scale.measure(world, gallery_size=12, tile_size=16)
    table = parts.scan_parts([(str(tmp_path / "out" / "results"), {"student_version": world["version"]})],
                             manifests.SPECS["tryon_results"], ["garment_id", "model_id", "status"])
    done = {(g, m) for t in table for g, m, s in zip(*(t[c].to_pylist() for c in ("garment_id", "model_id",
                                                                                     "status"))) if s == "ok"}
    assert measured["pairs_done"] == len(done) == 139 * 140
    assert measured["pairs_todo"] == 140 and measured["tiles"] == 9  # the new garment x 140 models in tiles of 16
    assert measured["gallery_cards"] == 12 and measured["gallery_error_cards"] == 0  # every error was retried ok
    assert json.dumps(measured)


def test_tutor_done_set_skips_junk_in_its_manifest_folder(tmp_path):
    from pipelines.stages.tutor_inference import FAKES_SCHEMA, load_done

    rows = [{"model_id": "m0", "worn_garment_id": "g0", "tutor_garment_id": g, "image_uri": f"/f/{g}.png",
             "tutor_version": "t1", "status": "ok", "run_id": "r", "finished_at": T0} for g in ("g1", "g2")]
    manifest = tmp_path / "manifest"
    manifests.write_manifest(pa.Table.from_pylist(rows, schema=FAKES_SCHEMA), str(manifest / "part-r-000000.parquet"))
    (manifest / "part-r-000001.parquet").write_bytes(b"PAR1 truncated")
    skipped = parts.Skipped()
    index = parts.PairIndex.of(["m0", "m1"], ["g0", "g1", "g2"])
    assert load_done(str(tmp_path), "t1", index, skipped).tolist() == [1, 2]
    assert len(skipped) == 1
