"""pipelines.core.manifests: schemas, id rules, structural errors vs rejected rows, CSV/Parquet/directories, S3."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import manifests, storage


# ----------------------------------------------------------------------------------------------------------------------
# Ids


@pytest.mark.parametrize("good", ["a", "A9", "garment_001", "m-1.v2", "0", "x" * 128])
def test_safe_ids_pass(good):
    assert manifests.validate_id(good) == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("../x", r"\.\."),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("", "empty"),
        ("a\x00", "control"),
        ("a..b", r"\.\."),
        (".hidden", "start"),
        ("-x", "start"),
        ("x" * 129, "longer"),
        ("caf\u00e9", "disallowed"),
        ("a b", "disallowed"),
        (7, "string"),
        (None, "missing"),
    ],
)
def test_unsafe_ids_raise_with_a_reason(bad, why):
    with pytest.raises(manifests.UnsafeIdError, match=why) as info:
        manifests.validate_id(bad)
    assert "\n" not in info.value.reason


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def _garments(n=3):
    return pa.table({
        "garment_id": [f"g{i}" for i in range(n)],
        "image_uri": [f"images/garments/g{i}.png" for i in range(n)],
        "mask_uri": [f"images/garment_masks/g{i}.png" for i in range(n)],
    })


def test_parquet_file_loads_and_relative_uris_resolve_against_its_directory(tmp_path):
    uri = str(tmp_path / "data" / "garments.parquet")
    manifests.write_manifest(_garments(), uri)
    load = manifests.load_manifest(uri, "garments")
    assert load.rejected.num_rows == 0 and load.rows.num_rows == 3
    assert load.rows.schema.equals(manifests.SCHEMAS["garments"])
    row = load.rows.to_pylist()[1]
    assert row["image_uri"] == str(tmp_path / "data" / "images" / "garments" / "g1.png")
    assert row["mask_uri"] == str(tmp_path / "data" / "images" / "garment_masks" / "g1.png")


def test_csv_loads_ids_stay_text_and_empty_cells_are_null(tmp_path):
    path = tmp_path / "models.csv"
    path.write_text(
        "model_id,image_uri,split,note\n"
        "007,/abs/007.png,train,keep me\n"
        "008,s3://bkt/008.png,,\n"
        "009,rel/009.png,test,x\n"
    )
    load = manifests.load_manifest(str(path), "models")
    rows = load.rows.to_pylist()
    assert [r["model_id"] for r in rows] == ["007", "008", "009"]
    assert rows[0]["image_uri"] == "/abs/007.png" and rows[1]["image_uri"] == "s3://bkt/008.png"
    assert rows[2]["image_uri"] == str(tmp_path / "rel" / "009.png")
    assert rows[1]["split"] is None and rows[1]["parsing_uri"] is None
    assert rows[0]["note"] == "keep me"  # extra columns are carried along


def test_test_pairs_csv_casts_booleans(tmp_path):
    path = tmp_path / "test_pairs.csv"
    path.write_text("model_id,garment_id,paired\nm1,g1,true\nm2,g2,0\nm3,g3,\n")
    rows = manifests.load_manifest(str(path), "test_pairs").rows.to_pylist()
    assert [r["paired"] for r in rows] == [True, False, None]


def test_directory_of_parquet_parts(tmp_path):
    root = tmp_path / "garments"
    manifests.write_manifest(_garments(2), str(root / "part-0.parquet"))
    extra = pa.table({"garment_id": ["g9"], "image_uri": ["/abs/g9.png"]})  # a part without mask_uri
    manifests.write_manifest(extra, str(root / "part-1.parquet"))
    load = manifests.load_manifest(str(root), "garments")
    assert [r["garment_id"] for r in load.rows.to_pylist()] == ["g0", "g1", "g9"]
    assert load.rows.to_pylist()[0]["image_uri"] == str(root / "images" / "garments" / "g0.png")
    assert load.rows.to_pylist()[2]["mask_uri"] is None


def test_missing_required_column_names_it(tmp_path):
    uri = str(tmp_path / "garments.parquet")
    pq.write_table(pa.table({"garment_id": ["a"], "uri": ["x.png"]}), uri)
    with pytest.raises(manifests.ManifestError, match="image_uri") as info:
        manifests.load_manifest(uri, "garments")
    assert "\n" not in str(info.value) and info.value.uri == uri


@pytest.mark.parametrize("setup", ["missing", "garbage", "empty-dir", "bad-csv"])
def test_structural_problems_are_manifest_errors(tmp_path, setup):
    uri = str(tmp_path / "garments.parquet")
    if setup == "garbage":
        (tmp_path / "garments.parquet").write_bytes(b"this is not parquet")
    elif setup == "empty-dir":
        (tmp_path / "garments.parquet").mkdir()
    elif setup == "bad-csv":
        uri = str(tmp_path / "garments.csv")
        (tmp_path / "garments.csv").write_bytes(b"garment_id,image_uri\na,b,c,d\n\xff\xfe")
    with pytest.raises(manifests.ManifestError):
        manifests.load_manifest(uri, "garments")


def test_uncastable_column_is_a_manifest_error(tmp_path):
    path = tmp_path / "test_pairs.csv"
    path.write_text("model_id,garment_id,paired\nm1,g1,maybe\n")
    with pytest.raises(manifests.ManifestError, match="paired"):
        manifests.load_manifest(str(path), "test_pairs")


def test_bad_rows_are_rejected_with_reasons_and_nothing_is_lost(tmp_path):
    ids = ["ok1", "../x", "a/b", "", "a\x00", "ok1", "ok2", None, "ok3"]
    uris = ["a.png", "b.png", "c.png", "d.png", "e.png", "dup.png", "  ", "n.png", "../escape.png"]
    uri = str(tmp_path / "garments.parquet")
    pq.write_table(pa.table({"garment_id": ids, "image_uri": uris}), uri)
    load = manifests.load_manifest(uri, "garments")
    assert load.rows.num_rows + load.rejected.num_rows == len(ids) == load.input_rows
    assert load.rows.column("garment_id").to_pylist() == ["ok1"]
    assert load.rejected.schema.equals(manifests.ERRORS_SCHEMA)
    reasons = {r["row_index"]: r["error"] for r in load.rejected.to_pylist()}
    assert "'..'" in reasons[1]
    assert "separator" in reasons[2]
    assert "empty" in reasons[3]
    assert "control" in reasons[4]
    assert "duplicate" in reasons[5] and "row 0" in reasons[5]
    assert "empty image_uri" in reasons[6]
    assert "missing garment_id" in reasons[7]
    assert "'..'" in reasons[8]
    for row in load.rejected.to_pylist():
        assert "\n" not in row["error"] and row["manifest"] == "garments" and row["source_uri"] == uri
        assert row["row_json"]  # the original row, for the dead-letter file


def test_enums_and_uri_required_when_ok():
    table = pa.table({
        "garment_id": ["g1", "g2", "g3", "g4"],
        "model_id": ["m1", "m1", "m1", "m1"],
        "student_version": ["v1"] * 4,
        "status": ["ok", "error", "ok", "maybe"],
        "error": [None, "decode: truncated", None, None],
        "image_uri": ["/out/g1.jpg", None, None, "/out/g4.jpg"],
    })
    load = manifests.validate_table(table, "tryon_results")
    assert load.rows.column("garment_id").to_pylist() == ["g1", "g2"]
    reasons = {r["row_index"]: r["error"] for r in load.rejected.to_pylist()}
    assert reasons == {2: "empty image_uri", 3: "status 'maybe' not one of ok, error"}


def test_results_schema_matches_the_catalog_columns():
    names = manifests.SCHEMAS["tryon_results"].names
    assert names[:6] == ["garment_id", "model_id", "student_version", "status", "error", "image_uri"]
    assert {"decode_ms", "model_ms", "encode_ms", "finished_at"} <= set(names)
    assert manifests.SCHEMAS["fakes"].names[:6] == ["model_id", "worn_garment_id", "tutor_garment_id", "image_uri",
                                                      "tutor_version", "status"]


# ----------------------------------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("name", ["pairs.parquet", "pairs.csv"])
def test_write_manifest_round_trip_with_kind(tmp_path, name):
    uri = str(tmp_path / "out" / name)
    manifests.write_manifest(pa.table({"garment_id": ["g1"], "model_id": ["m1"]}), uri, kind="test_pairs")
    rows = manifests.load_manifest(uri, "test_pairs").rows.to_pylist()
    assert rows == [{"model_id": "m1", "garment_id": "g1", "paired": None}]
    manifests.write_manifest(pa.table({"model_id": ["m2"], "garment_id": ["g2"], "paired": [True]}), uri)
    assert manifests.load_manifest(uri, "test_pairs").rows.to_pylist()[0]["model_id"] == "m2"  # replaced whole
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]  # no temp files left


@pytest.mark.integration
def test_s3_manifest_directory_with_relative_uris(s3_bucket):
    root = s3_bucket + "/dataset/models"
    table = pa.table({"model_id": ["m1", "m2", "bad/id"], "image_uri": ["img/m1.png", "s3://other/m2.png", "x.png"]})
    manifests.write_manifest(table, root + "/part-000.parquet")
    load = manifests.load_manifest(root, "models")
    assert load.rows.column("image_uri").to_pylist() == [root + "/img/m1.png", "s3://other/m2.png"]
    assert load.rejected.column("id").to_pylist() == ["bad/id"]
    single = s3_bucket + "/dataset/garments.csv"
    storage.write_bytes(single, b"garment_id,image_uri\ng1,images/g1.png\n")
    assert manifests.load_manifest(single, "garments").rows.column("image_uri").to_pylist() == [
        s3_bucket + "/dataset/images/g1.png"
    ]
    with pytest.raises(manifests.ManifestError, match="not found"):
        manifests.load_manifest(s3_bucket + "/dataset/nothing.parquet", "garments")


@pytest.mark.parametrize("kind, rows, key", [
    ("garments", {"garment_id": ["Shirt1", "shirt1", "SHIRT1", "Shirt1"], "image_uri": ["a", "b", "c", "d"]},
     "garment_id"),
    ("models", {"model_id": ["m1", "M1"], "image_uri": ["a", "b"]}, "model_id"),
    ("test_pairs", {"model_id": ["m1", "M1", "M1"], "garment_id": ["g1", "G1", "g2"]}, "model_id"),
])
def test_ids_equal_up_to_case_are_duplicates(kind, rows, key):
    """``Shirt1`` and ``shirt1`` are one file on a case-insensitive file system: the first wins, the others are
    rejected with a reason naming the first."""
    loaded = manifests.validate_table(pa.table(rows), kind)
    first = rows[key][0]
    assert loaded.rows.column(key).to_pylist()[0] == first
    rejected = loaded.rejected.to_pylist()
    n = len(rows[key])
    assert loaded.rows.num_rows + len(rejected) == n
    if kind == "test_pairs":  # (M1, g2) is a new pair; (M1, G1) repeats (m1, g1) up to case
        assert [r["row_index"] for r in rejected] == [1]
    else:
        assert [r["row_index"] for r in rejected] == list(range(1, n))
    for r in rejected:
        assert r["error"].startswith("duplicate") and "first at row 0" in r["error"] and repr(first) in r["error"]
