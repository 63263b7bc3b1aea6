"""jobs.import_catalog: folders and tables in, catalog manifests out — exact ids, masks by name, skipped files with
reasons, byte-identical re-runs, extra columns kept, S3 on both sides, exit 2 for an unusable source (issue #14)."""
from __future__ import annotations

import hashlib
import io
import os
import random
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.core import manifests, storage
from pipelines.stages import import_catalog as ic
from pipelines.stages.import_catalog import ImportCatalogConfig, run


def _h(source: str, n: int = 8) -> str:
    """The documented hash suffix, computed here independently of the module."""
    return hashlib.sha256(unicodedata.normalize("NFC", source).encode()).hexdigest()[:n]


def _jpeg(seed: int = 0, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _files(root, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return str(root)


def _config(garments: str, models: str, output: str, **kw) -> ImportCatalogConfig:
    return ImportCatalogConfig(garments=garments, models=models, output=output, executor="local", workers=2, **kw)


def _rows(uri: str) -> list[dict]:
    return pq.read_table(uri).to_pylist()


GARMENT_FILES = {
    "tops/Blue Shirt (1).JPG": _jpeg(1),
    "tops/plain-tee.jpg": _jpeg(2),
    "Shirt.jpg": _jpeg(3),
    "shirt.JPG": _jpeg(4),  # equal to Shirt.jpg up to case
    "Shirt_mask.png": _encode(Image.new("L", (24, 32), 255), "PNG"),  # Shirt.jpg's mask (half its resolution)
    "Jupe Été/Robe.tif": _encode(Image.new("RGB", (48, 64), (200, 10, 10)), "TIFF"),
    "deep16.png": _encode(Image.fromarray(np.full((64, 48), 40000, np.uint16)), "PNG"),
    "notes.txt": b"api_key=do-not-leak\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "orphan_mask.png": _encode(Image.new("L", (8, 8)), "PNG"),
    "anim.gif": _encode(Image.new("RGB", (8, 8)), "GIF"),
}


def test_folder_import_exact_ids_masks_and_skips_then_rerun_is_identical(tmp_path):
    src = _files(tmp_path / "garments", GARMENT_FILES)
    models = _files(tmp_path / "models", {"studio/Anna 01.jpg": _jpeg(5), "ben.png": _encode(Image.new("RGB", (48, 64)),
                                                                                            "PNG")})
    out = str(tmp_path / "catalog")
    s = run(_config(src, models, out))

    garments = _rows(f"{out}/garments.parquet")
    expected = {  # id -> source; hashes where the slug changed the name or ids clash up to case
        f"tops-blue-shirt-1-{_h('tops/Blue Shirt (1).JPG')}": "tops/Blue Shirt (1).JPG",
        "tops-plain-tee": "tops/plain-tee.jpg",
        f"shirt-{_h('Shirt.jpg')}": "Shirt.jpg",
        f"shirt-{_h('shirt.JPG')}": "shirt.JPG",
        f"jupe-ete-robe-{_h('Jupe Été/Robe.tif')}": "Jupe Été/Robe.tif",
        "deep16": "deep16.png",
    }
    assert {r["garment_id"]: r["source"] for r in garments} == expected
    assert [r["garment_id"] for r in garments] == sorted(expected), "rows sorted by id"
    by_source = {r["source"]: r for r in garments}
    assert by_source["Shirt.jpg"]["mask_uri"] == f"{src}/Shirt_mask.png"
    assert all(r["mask_uri"] is None for r in garments if r["source"] != "Shirt.jpg")
    assert by_source["tops/Blue Shirt (1).JPG"]["image_uri"] == f"{src}/tops/Blue Shirt (1).JPG"
    assert {r["model_id"] for r in _rows(f"{out}/models.parquet")} == {f"studio-anna-01-{_h('studio/Anna 01.jpg')}",
                                                                       "ben"}
    skipped = {e["source"]: e["reason"] for e in s["skipped_files"]}
    assert skipped == {
        "notes.txt": "not an image: looks like text (20 bytes)",
        ".DS_Store": "hidden file",
        "orphan_mask.png": "mask without a garment: no orphan.<ext> beside it",
        "anim.gif": skipped["anim.gif"],
    } and skipped["anim.gif"].startswith("unsupported format: GIF")
    assert "do-not-leak" not in repr(s)
    assert (s["garments"], s["models"], s["garments_with_mask"], s["skipped"]) == (6, 2, 1, 4)
    assert s["formats"] == {"JPEG": 5, "PNG": 2, "TIFF": 1} and s["allowed_roots"] == sorted([src, models])
    assert pq.read_schema(f"{out}/garments.parquet").metadata[b"pfafn.producer"] == b"import_catalog"

    # The catalog's loader takes both manifests unchanged: every row ok, nothing rejected.
    for kind in ("garments", "models"):
        loaded = manifests.load_manifest(f"{out}/{kind}.parquet", kind)
        assert loaded.rejected.num_rows == 0 and loaded.rows.num_rows == s[kind]

    before = {k: open(f"{out}/{k}.parquet", "rb").read() for k in ("garments", "models")}
    again = run(_config(src, models, out))
    assert again["manifests_written"] == [] and again["skipped_files"] == s["skipped_files"]
    assert {k: open(f"{out}/{k}.parquet", "rb").read() for k in ("garments", "models")} == before


def test_folder_column_and_worn_pairs_give_match_groups_and_ground_truth(tmp_path):
    """Sub-folders become the ``folder`` column (``--match folder``); a model photo named like a garment shows it:
    a ``test_pairs`` row with ``paired=True``, which evaluation scores against the model's own photo. A table names
    the worn garment in its ``wears`` column."""
    g = _files(tmp_path / "g", {"men/oxford.jpg": _jpeg(1), "women/blouse.jpg": _jpeg(2), "scarf.jpg": _jpeg(3)})
    m = _files(tmp_path / "m", {"men/oxford.jpg": _jpeg(4), "men/tom.jpg": _jpeg(5), "women/ann.jpg": _jpeg(6),
                                "oxford.jpg": _jpeg(7)})  # same stem, other folder: not the men's oxford
    out = str(tmp_path / "catalog")
    s = run(_config(g, m, out))
    assert {r["garment_id"]: r["folder"] for r in _rows(f"{out}/garments.parquet")} == {
        "men-oxford": "men", "women-blouse": "women", "scarf": ""}
    assert {r["model_id"]: r["folder"] for r in _rows(f"{out}/models.parquet")} == {
        "men-oxford": "men", "men-tom": "men", "women-ann": "women", "oxford": ""}
    assert _rows(f"{out}/test_pairs.parquet") == [{"model_id": "men-oxford", "garment_id": "men-oxford",
                                                   "paired": True}]
    assert s["paired_models"] == 1 and s["manifests"]["test_pairs"] == f"{out}/test_pairs.parquet"

    (tmp_path / "models.csv").write_text("model_id,image,wears\nm1,m/men/tom.jpg,men/oxford\n"
                                         "m2,m/women/ann.jpg,no-such-garment\nm3,m/oxford.jpg,\n")
    out2 = str(tmp_path / "catalog2")
    run(_config(g, str(tmp_path / "models.csv"), out2))
    assert _rows(f"{out2}/test_pairs.parquet") == [{"model_id": "m1", "garment_id": "men-oxford", "paired": True}]


def test_ids_are_independent_of_listing_order_and_slugs_are_readable():
    assert ic.slugify("tops/Blue Shirt (1)") == "tops-blue-shirt-1"
    assert ic.slugify("Straße Ærø Łódź") == "strasse-aero-lodz"
    assert ic.slugify("衬衫") == "" and ic.slugify("__x__") == "x"
    names = ["A", "a", "b/c", "b-c", "Ä", "衬衫", "ok_1", "x" * 130]
    cands = [{"name": n, "source": n, "order": n} for n in names]
    ids, losers = ic.assign_ids(cands, "garment")
    by_name = {cands[k]["name"]: v for k, v in ids.items()}
    assert by_name["ok_1"] == "ok_1" and by_name["衬衫"] == f"garment-{_h('衬衫')}"
    assert by_name["A"] == f"a-{_h('A')}" and by_name["a"] == f"a-{_h('a')}" and by_name["Ä"] == f"a-{_h('Ä')}"
    assert by_name["b/c"] == f"b-c-{_h('b/c')}" and by_name["b-c"] == f"b-c-{_h('b-c')}"  # they clashed
    assert by_name["x" * 130] == "x" * 100 + f"-{_h('x' * 130)}" and not losers
    assert all(manifests.is_safe_id(v) for v in ids.values())
    for seed in range(3):
        shuffled = cands[:]
        random.Random(seed).shuffle(shuffled)
        again, _ = ic.assign_ids(shuffled, "garment")
        assert {shuffled[k]["name"]: v for k, v in again.items()} == by_name


def test_csv_source_keeps_extra_columns_resolves_relative_paths_and_skips_bad_rows(tmp_path):
    _files(tmp_path / "photos", {"g1.jpg": _jpeg(1), "g2.jpg": _jpeg(2), "g2-mask.png":
                                 _encode(Image.new("L", (48, 64), 255), "PNG"), "m1.jpg": _jpeg(3)})
    export = tmp_path / "export"
    export.mkdir()
    (export / "garments.csv").write_text(
        "sku,image,mask,gender,season,source\n"
        "007,../photos/g1.jpg,,men,SS26,erp\n"
        "AB 12/X,../photos/g2.jpg,../photos/g2-mask.png,women,AW26,erp\n"
        "008,,,men,SS26,erp\n"
        "007,../photos/g2.jpg,,men,SS26,erp\n"
        "009,../photos/missing.jpg,,men,SS26,erp\n", encoding="utf-8")
    (export / "models.csv").write_text(f"picture,gender\n{tmp_path}/photos/m1.jpg,men\n", encoding="utf-8")
    out = str(tmp_path / "catalog")
    s = run(_config(str(export / "garments.csv"), str(export / "models.csv"), out))

    rows = {r["garment_id"]: r for r in _rows(f"{out}/garments.parquet")}
    assert set(rows) == {"007", f"ab-12-x-{_h('AB 12/X')}"}, "a safe table id is kept as written"
    g2 = rows[f"ab-12-x-{_h('AB 12/X')}"]
    assert g2["image_uri"] == f"{tmp_path}/photos/g2.jpg" and g2["mask_uri"] == f"{tmp_path}/photos/g2-mask.png"
    assert (g2["gender"], g2["season"], g2["source"]) == ("women", "AW26", "AB 12/X")
    assert s["kept_columns"]["garments"] == ["gender", "season"] and s["dropped_columns"]["garments"] == ["source"]
    reasons = {e["source"]: e["reason"] for e in s["skipped_files"]}
    assert reasons["row 3"] == "empty image"
    assert reasons["row 4 (../photos/g2.jpg)"].startswith("duplicate id '007'")
    assert reasons["row 5 (../photos/missing.jpg)"].startswith("unreadable: ")
    assert s["allowed_roots"] == [f"{tmp_path}/photos"]
    models = _rows(f"{out}/models.parquet")
    assert [(m["model_id"], m["gender"]) for m in models] == [("m1", "men")], "no id column: ids from file names"
    loaded = manifests.load_manifest(f"{out}/garments.parquet", "garments")
    assert "gender" in loaded.rows.column_names and loaded.rejected.num_rows == 0, "load_manifest keeps extras"


def test_s3_source_and_output(s3_bucket, tmp_path):
    for rel, data in {"g/tops/Red Top.jpg": _jpeg(1), "g/readme.md": b"# hi\n", "m/m1.jpg": _jpeg(2)}.items():
        storage.write_bytes(f"{s3_bucket}/raw/{rel}", data)
    out = f"{s3_bucket}/catalogs/one"
    s = run(_config(f"{s3_bucket}/raw/g", f"{s3_bucket}/raw/m", out))
    garments = manifests.load_manifest(f"{out}/garments.parquet", "garments").rows.to_pylist()
    assert [(g["garment_id"], g["image_uri"]) for g in garments] == [
        (f"tops-red-top-{_h('tops/Red Top.jpg')}", f"{s3_bucket}/raw/g/tops/Red Top.jpg")]
    assert s["skipped_files"] == [{"manifest": "garments", "source": "readme.md",
                                   "reason": "not an image: looks like text (5 bytes)"}]
    assert run(_config(f"{s3_bucket}/raw/g", f"{s3_bucket}/raw/m", out))["manifests_written"] == []


def test_unusable_sources_exit_2_with_one_line(tmp_path, capsys):
    from jobs.import_catalog import main

    photos = _files(tmp_path / "ok", {"a.jpg": _jpeg(1)})
    (tmp_path / "nocol.csv").write_text("sku,colour\n1,red\n")
    _files(tmp_path / "text", {"a.txt": b"hello"})
    cases = {str(tmp_path / "missing"): "does not exist", str(tmp_path / "nocol.csv"): "has no image column",
             str(tmp_path / "text"): "no images found"}
    for bad, words in cases.items():
        code = main(["--garments", bad, "--models", photos, "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (bad, err)
    assert not os.path.exists(tmp_path / "out" / "garments.parquet")
    assert main(["--garments", photos, "--models", photos, "--output", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    other = _files(tmp_path / "other", {"b.jpg": _jpeg(2)})
    assert main(["--garments", other, "--models", photos, "--output", str(tmp_path / "out")]) == 2
    assert "already holds a different dataset" in capsys.readouterr().err


def test_decode_garment_resizes_a_mask_of_the_same_aspect_and_refuses_another(tmp_path):
    from pipelines.batch import InputError, decode_garment

    _files(tmp_path, {"g.png": _encode(Image.new("RGB", (96, 128), (10, 200, 10)), "PNG"),
                      "half_mask.png": _encode(Image.new("L", (48, 64), 255), "PNG"),
                      "wide_mask.png": _encode(Image.new("L", (64, 64), 255), "PNG")})
    cfg = {"height": 64, "width": 48, "max_image_bytes": 1 << 24, "max_image_pixels": 1 << 24,
           "min_mask_confidence": 0.5, "roots": [str(tmp_path)], "read_timeout_s": 10.0}
    _, mask = decode_garment(str(tmp_path / "g.png"), str(tmp_path / "half_mask.png"), cfg)
    assert mask.shape == (64, 48) and (mask == 255).all()
    with pytest.raises(InputError) as err:
        decode_garment(str(tmp_path / "g.png"), str(tmp_path / "wide_mask.png"), cfg)
    assert err.value.reason.startswith("garment mask: ") and "64x64" in err.value.reason and "96x128" in err.value.reason
