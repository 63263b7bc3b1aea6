"""Choosing pairs in the catalog (``--pairs FILE``, ``--match COLUMN[,COLUMN]``): exactly the selected pairs, tiles that
share encodings inside a group, error rows for bad pair rows (once), resumability across selections, exit 2 for an
unusable selection. Planning tests call ``plan_tiles`` without Ray; one end-to-end run goes through ``run()``."""
from __future__ import annotations

import json
import math
import tracemalloc
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from jobs.catalog_tryon import main as catalog_main
from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError
from pipelines.stages.catalog_tryon import (RESULTS_SCHEMA, CatalogConfig, load_results, plan_tiles, rejected_rows,
                                            run)
from tests.catalog_helpers import SIZE, image_files, ok_rows, write_catalog, write_parquet, write_student

GENDERS = ["M", "M", "F", "F", None, "M", "F"]  # garments g0..g6: g4 has no value and matches nothing
SEASONS = ["ss", "aw", "ss", "ss", "ss", "ss", "aw"]
M_GENDERS = ["F", "M", "M", "F", "F", None]  # models m0..m5
M_SEASONS = ["ss", "ss", "aw", "ss", "aw", "ss"]


def _manifests(tmp_path, *, extra_garments: list[dict] = (), extra_models: list[dict] = ()) -> tuple[str, str]:
    """Garment and model manifests with gender/season columns (planning never reads the images)."""
    g = [{"garment_id": f"g{i}", "image_uri": f"g{i}.png", "gender": x, "season": s}
         for i, (x, s) in enumerate(zip(GENDERS, SEASONS))] + list(extra_garments)
    m = [{"model_id": f"m{i}", "image_uri": f"m{i}.png", "gender": x, "season": s}
         for i, (x, s) in enumerate(zip(M_GENDERS, M_SEASONS))] + list(extra_models)
    g_uri, m_uri = str(tmp_path / "garments.parquet"), str(tmp_path / "models.parquet")
    manifests.write_manifest(pa.Table.from_pylist(g), g_uri)
    manifests.write_manifest(pa.Table.from_pylist(m), m_uri)
    return g_uri, m_uri


def _config(g_uri: str, m_uri: str, out: str, **kw) -> CatalogConfig:
    return CatalogConfig(garments=g_uri, models=m_uri, output=out, student="s.pt", **kw)


def _pairs(plan) -> list[tuple[str, str]]:
    """The plan's pairs to do, from the tiles, in tile order (duplicates kept: a pair in two tiles would show)."""
    out = []
    for t in plan.tiles:
        n_m = len(t["model_ids"])
        out += [(t["garment_ids"][c // n_m], t["model_ids"][c % n_m]) for c in np.asarray(t["todo"]).tolist()]
    return out


def _expected(*columns: str, pairs: set | None = None) -> set[tuple[str, str]]:
    """A plain-Python reference: pairs whose rows have equal, non-null values in ``columns``."""
    g_vals = {"gender": GENDERS, "season": SEASONS}
    m_vals = {"gender": M_GENDERS, "season": M_SEASONS}
    chosen = set()
    for i in range(len(GENDERS)):
        for j in range(len(M_GENDERS)):
            a = [g_vals[c][i] for c in columns]
            b = [m_vals[c][j] for c in columns]
            if None not in a and a == b:
                chosen.add((f"g{i}", f"m{j}"))
    return chosen if pairs is None else chosen & pairs


def _assert_tiles_share_encodings(plan, t: int) -> None:
    """Every garment and model a tile lists has a pair to do in it (it is decoded and encoded once there, for a
    reason), no tile exceeds t × t, and no pair is in two tiles."""
    for tile in plan.tiles:
        n_g, n_m = len(tile["garment_ids"]), len(tile["model_ids"])
        todo = np.asarray(tile["todo"])
        assert todo.dtype == np.int64 and list(todo) == sorted(set(todo.tolist()))
        assert n_g <= t and n_m <= t
        assert set((todo // n_m).tolist()) == set(range(n_g)), "a garment without a pair in the tile"
        assert set((todo % n_m).tolist()) == set(range(n_m)), "a model without a pair in the tile"
    pairs = _pairs(plan)
    assert len(pairs) == len(set(pairs)) == plan.pairs_todo


def test_match_selects_equal_values_in_contiguous_groups(tmp_path):
    g_uri, m_uri = _manifests(tmp_path)
    plan = plan_tiles(_config(g_uri, m_uri, str(tmp_path / "out"), match="gender", tile_size=2), "v1")
    want = _expected("gender")
    assert set(_pairs(plan)) == want and plan.pairs_total == plan.pairs_todo == len(want) == 15
    _assert_tiles_share_encodings(plan, 2)
    gender = {f"g{i}": x for i, x in enumerate(GENDERS)} | {f"m{i}": x for i, x in enumerate(M_GENDERS)}
    for tile in plan.tiles:  # tiles are built inside groups
        assert len({gender[i] for i in tile["garment_ids"] + tile["model_ids"]}) == 1
    # M: 3 garments x 2 models, F: 3 garments x 3 models -> ceil(3/2)*ceil(2/2) + ceil(3/2)*ceil(3/2) tiles
    assert len(plan.tiles) == 2 * 1 + 2 * 2
    # the null-valued rows (g4, m5) are in no pair; every row stays in the plan (the gallery's URIs)
    assert not any("g4" in p or "m5" in p for p in _pairs(plan)) and len(plan.garments) == 7

    both = plan_tiles(_config(g_uri, m_uri, str(tmp_path / "out"), match="gender, season", tile_size=2), "v1")
    assert set(_pairs(both)) == _expected("gender", "season") and both.pairs_total == 8
    _assert_tiles_share_encodings(both, 2)

    everything = plan_tiles(_config(g_uri, m_uri, str(tmp_path / "out"), tile_size=4), "v1")
    assert everything.pairs_total == 42 and len(everything.tiles) == 2 * 2  # the full product, fixed 4x4 blocks
    assert [(t["garment_ids"], t["model_ids"]) for t in everything.tiles][0] == (
        ["g0", "g1", "g2", "g3"], ["m0", "m1", "m2", "m3"]), "no --match: manifest order, as before"


def test_pairs_file_duplicates_and_bad_ids_end_as_error_rows_once(tmp_path):
    g_uri, m_uri = _manifests(tmp_path, extra_garments=[{"garment_id": "bad id", "image_uri": "b.png"}])
    pairs_csv = tmp_path / "pairs.csv"
    pairs_csv.write_text("garment_id,model_id,note\n"
                         "g0,m1,x\ng0,m1,again\ng3,m0,\ng6,m4,\ng6,m0,\n"  # g0/m1 twice: once
                         "g9,m0,\n"  # unknown garment
                         "g1,../m1,\n"  # unsafe model id
                         "bad id,m2,\n"  # the manifest rejected this garment row
                         ",m3,\n"  # no garment id
                         "g9,m0,dup of an error\n")
    out = str(tmp_path / "out")
    plan = plan_tiles(_config(g_uri, m_uri, out, pairs=str(pairs_csv), tile_size=2), "v1")
    assert sorted(_pairs(plan)) == [("g0", "m1"), ("g3", "m0"), ("g6", "m0"), ("g6", "m4")]
    _assert_tiles_share_encodings(plan, 2)
    # g0 and g3 share a garment block (the garments with pairs, in manifest order), g6 is alone
    assert [(t["garment_ids"], t["model_ids"]) for t in plan.tiles] == [
        (["g0", "g3"], ["m0", "m1"]), (["g6"], ["m0", "m4"])]
    reasons = {(g, m): why for g, m, why in plan.rejected_pairs}
    assert reasons == {
        ("g9", "m0"): "pairs file: garment_id 'g9' is not in the garments manifest",
        ("g1", "../m1"): "pairs file: model_id: unsafe id '../m1': contains '..'",
        ("bad id", "m2"): reasons[("bad id", "m2")],
        (None, "m3"): "pairs file: garment_id: unsafe id None: missing",
    }
    assert reasons[("bad id", "m2")].startswith("garment row rejected: ")
    assert plan.pairs_total == 4 + 4

    first = rejected_rows(plan, "v1", "run1")
    assert sorted((r["garment_id"] or "", r["model_id"]) for r in first) == [
        ("", "m3"), ("bad id", "m2"), ("g1", "../m1"), ("g9", "m0")]
    assert all(r["status"] == "error" and "\n" not in r["error"] for r in first)
    manifests.write_manifest(pa.Table.from_pylist(first, schema=RESULTS_SCHEMA),
                             storage.join_uri(out, "results", "part-run1-rejected.parquet"))
    again = plan_tiles(_config(g_uri, m_uri, out, pairs=str(pairs_csv), tile_size=2), "v1")
    assert rejected_rows(again, "v1", "run2") == [], "each bad pair is reported once across runs"

    # Parquet works as well; without --pairs the rejected garment pairs with every model, as before
    manifests.write_manifest(pa.table({"model_id": ["m1"], "garment_id": ["g0"]}), str(tmp_path / "p.parquet"))
    assert _pairs(plan_tiles(_config(g_uri, m_uri, out, pairs=str(tmp_path / "p.parquet")), "v1")) == [("g0", "m1")]
    assert len(plan_tiles(_config(g_uri, m_uri, out), "v1").rejected_pairs) == 6


def test_pairs_and_match_combined_and_done_pairs_skipped(tmp_path):
    g_uri, m_uri = _manifests(tmp_path)
    chosen = {(f"g{i}", f"m{j}") for i in range(7) for j in range(6) if (i + j) % 2 == 0}
    manifests.write_manifest(pa.table({"garment_id": [g for g, _ in sorted(chosen)],
                                       "model_id": [m for _, m in sorted(chosen)]}), str(tmp_path / "pairs.parquet"))
    out = str(tmp_path / "out")
    config = _config(g_uri, m_uri, out, pairs=str(tmp_path / "pairs.parquet"), match="gender", tile_size=2)
    plan = plan_tiles(config, "v1")
    want = _expected("gender", pairs=chosen)
    assert set(_pairs(plan)) == want and plan.pairs_total == len(want) and not plan.rejected_pairs
    _assert_tiles_share_encodings(plan, 2)

    # done pairs (ok rows of this version, some outside the selection) are skipped; error rows are retried
    done = sorted(want)[:3] + [("g0", "m1")]  # g0 x m1: M x M but not in the pairs file
    rows = [{"garment_id": g, "model_id": m, "student_version": "v1", "status": "ok", "image_uri": f"/x/{g}/{m}.jpg"}
            for g, m in done] + [{"garment_id": g, "model_id": m, "student_version": "v1", "status": "error",
                                  "error": "inference: boom"} for g, m in sorted(want)[3:4]]
    manifests.write_manifest(pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA),
                             storage.join_uri(out, "results", "part-a.parquet"))
    again = plan_tiles(config, "v1")
    assert set(_pairs(again)) == want - set(done[:3])
    assert (again.pairs_total, again.pairs_skipped, again.pairs_todo) == (len(want), 3, len(want) - 3)
    _assert_tiles_share_encodings(again, 2)
    # a run with another selection only computes its new pairs
    wider = plan_tiles(_config(g_uri, m_uri, out, match="gender", tile_size=2), "v1")
    assert set(_pairs(wider)) == _expected("gender") - set(done)
    assert wider.pairs_skipped == 4


def test_rejected_rows_under_match_pair_with_their_group_only(tmp_path):
    g_uri, m_uri = _manifests(tmp_path, extra_garments=[{"garment_id": "bad/1", "image_uri": "x.png", "gender": "F"},
                                                        {"garment_id": "bad/2", "image_uri": "y.png"}],
                              extra_models=[{"model_id": "bad/m", "image_uri": "z.png", "gender": "M"}])
    plan = plan_tiles(_config(g_uri, m_uri, str(tmp_path / "out"), match="gender"), "v1")
    got = Counter((g, m) for g, m, _ in plan.rejected_pairs)
    # bad/1 (F) with the F models; bad/2 (no gender) with none; the M garments with the rejected M model
    assert set(got) == {("bad/1", m) for m in ("m0", "m3", "m4")} | {(g, "bad/m") for g in ("g0", "g1", "g5")}
    assert max(got.values()) == 1
    assert plan.pairs_total == 15 + 6


def test_unusable_selection_is_exit_2_with_one_line(tmp_path, capsys):
    g_uri, m_uri = _manifests(tmp_path)
    out = str(tmp_path / "out")
    with pytest.raises(StageError, match="'shoe_size' is not in the garments and models manifest"):
        plan_tiles(_config(g_uri, m_uri, out, match="gender,shoe_size"), "v1")
    with pytest.raises(ConfigError, match="distinct names"):
        _config(g_uri, m_uri, out, match="gender,,season").validate()
    manifests.write_manifest(pa.table({"model_id": ["m0"], "image_uri": ["m0.png"], "gender": [1]}),
                             str(tmp_path / "numeric.parquet"))
    with pytest.raises(StageError, match="plain values of one kind"):
        plan_tiles(_config(g_uri, str(tmp_path / "numeric.parquet"), out, match="gender"), "v1")
    (tmp_path / "nocol.csv").write_text("garment_id,model\ng0,m0\n")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(manifests.ManifestError, match="missing required column"):
        plan_tiles(_config(g_uri, m_uri, out, pairs=str(tmp_path / "nocol.csv")), "v1")

    student = str(tmp_path / "student.pt")
    write_student(student)
    base = ["--garments", g_uri, "--models", m_uri, "--student", student, "--output", out]
    for extra, words in ((["--match", "shoe_size"], "shoe_size"),
                         (["--pairs", str(tmp_path / "missing.csv")], "not found"),
                         (["--pairs", str(tmp_path / "junk.parquet")], "unreadable Parquet")):
        assert catalog_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert load_results(out).num_rows == 0, "nothing was written"


def test_match_plan_memory_has_no_python_object_per_pair(tmp_path):
    """1000 x 1000 rows in 2 groups: 500k selected pairs. A Python int per pair needs >= 36 bytes (int + list slot;
    measured 39 bytes/pair when the tiles held lists); the plan holds int64 codes (8 bytes each) plus per-tile id
    lists (measured ~12.5 bytes/pair in all)."""
    n = 1000
    g = pa.table({"garment_id": [f"g{i}" for i in range(n)], "image_uri": [f"g{i}.png" for i in range(n)],
                  "gender": ["MF"[i % 2] for i in range(n)]})
    m = pa.table({"model_id": [f"m{i}" for i in range(n)], "image_uri": [f"m{i}.png" for i in range(n)],
                  "gender": ["MF"[i % 3 % 2] for i in range(n)]})
    manifests.write_manifest(g, str(tmp_path / "g.parquet"))
    manifests.write_manifest(m, str(tmp_path / "m.parquet"))
    config = _config(str(tmp_path / "g.parquet"), str(tmp_path / "m.parquet"), str(tmp_path / "out"),
                     match="gender", tile_size=50)
    tracemalloc.start()
    try:
        plan = plan_tiles(config, "v1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_mm = sum(1 for i in range(n) if i % 3 % 2 == 0)
    assert plan.pairs_todo == plan.pairs_total == n // 2 * n_mm + n // 2 * (n - n_mm)
    assert len(plan.tiles) == 10 * math.ceil(n_mm / 50) + 10 * math.ceil((n - n_mm) / 50)
    assert peak < 20 * plan.pairs_total, f"peak {peak / 1e6:.1f} MB for {plan.pairs_total} pairs"


def _add_column(uri: str, name: str, values: list) -> None:
    table = manifests.read_table(uri)
    write_parquet(table.append_column(name, pa.array(values, pa.string())), uri)


def test_catalog_run_with_pairs_and_match(ray_session, tmp_path):
    data = str(tmp_path / "data")
    g_uri, m_uri = write_catalog(data, 4, 3)
    _add_column(g_uri, "gender", ["M", "F", "M", None])
    _add_column(m_uri, "gender", ["F", "M", "M"])
    student = str(tmp_path / "student.pt")
    version = write_student(student)
    out = str(tmp_path / "out")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("garment_id,model_id\n"
                     "g00000,m00001\ng00000,m00000\ng00001,m00000\ng00003,m00001\ng00002,m00002\ng00002,m00002\n"
                     "g00007,m00000\n")  # g00000 x m00000 and g00003 (no gender) fail --match; g00007 is unknown
    config = CatalogConfig(garments=g_uri, models=m_uri, output=out, student=student, height=SIZE, width=SIZE,
                           batch_size=4, tile_size=2, precision="fp32", actors=1, cpus_per_actor=0.5, torch_threads=1,
                           gallery_size=4, channels_last=False, pairs=str(pairs), match="gender")
    s1 = run(config)
    assert (s1["pairs_total"], s1["pairs_ok"], s1["pairs_error"], s1["pairs_skipped"]) == (4, 3, 1, 0)
    assert s1["tiles"] == 2, "one tile per --match group: M (g00000, g00002 x m00001, m00002) and F"
    assert s1["selection"] == f"pairs in {pairs} and match gender"
    rows = load_results(out, version).to_pylist()
    assert {(r["garment_id"], r["model_id"]) for r in rows if r["status"] == "ok"} == {
        ("g00000", "m00001"), ("g00001", "m00000"), ("g00002", "m00002")}
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert (bad["garment_id"], bad["error"]) == ("g00007", "pairs file: garment_id 'g00007' is not in the garments "
                                                           "manifest")
    assert len(image_files(out, version)) == 3, "images only for the selected pairs"

    s2 = run(config)  # nothing left: done pairs skipped, the bad pair not reported again
    assert (s2["pairs_ok"], s2["pairs_error"], s2["pairs_skipped"], s2["tiles"]) == (0, 0, 3, 0)
    assert load_results(out, version).num_rows == 4 and len(ok_rows(out, version)) == 3
