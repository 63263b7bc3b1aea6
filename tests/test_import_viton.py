"""pipelines.stages.import_viton / jobs.import_viton: a VITON-layout folder (written here from the synthetic world) becomes a dataset
root; bad files and pair lines end as import_errors rows, nothing is lost; local and s3:// alike."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfafn import imageio
from pfafn.synthetic import SyntheticWorld, WorldConfig, encode_openpose_json
from pipelines.core import manifests, storage
from pipelines.core.errors import StageError
from pipelines.stages.import_viton import VitonImportConfig, run

H, W = 64, 64
N_TRAIN, N_TEST = 4, 2
CORRUPT = "000005_0"  # train person whose label is truncated
PALETTE = "000007_0"  # train person whose label is a palette PNG (converted to an 'L' PNG)
UNSAFE = "bad name"  # person 'bad name_0.jpg' + garment 'bad name_1.jpg': stems are not safe ids


def _stem(k: int) -> str:
    return f"{3 + 2 * k:06d}"


def _gray_jpeg(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _palette_png(labels: np.ndarray) -> bytes:
    im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def build_viton_files(world: SyntheticWorld) -> dict[str, bytes]:
    """``relative path -> bytes`` of a small VITON-layout dataset rendered from ``world``."""
    files: dict[str, bytes] = {}

    def person(split: str, stem: str, i: int, *, label: bytes | None = None) -> None:
        p = world.render_person(i)
        g = world.render_garment(world.worn_garment(i))
        files[f"{split}_img/{stem}_0.jpg"] = imageio.encode_jpeg(p.image, 95)
        files[f"{split}_{'color' if split == 'train' else 'clothes'}/{stem}_1.jpg"] = imageio.encode_jpeg(g.image, 95)
        files[f"{split}_edge/{stem}_1.jpg"] = _gray_jpeg(g.mask)
        if split == "train":
            files[f"train_label/{stem}_0.png"] = label if label is not None else imageio.encode_png(p.parsing)
            files[f"train_pose/{stem}_0_keypoints.json"] = encode_openpose_json(
                p.keypoints, keys=("pose_keypoints",)).encode()
            buf = io.BytesIO()
            np.save(buf, p.densepose.astype(np.float32), allow_pickle=False)  # float, as DensePose dumps often are
            files[f"train_densepose/{stem}_0.npy"] = buf.getvalue()

    for k in range(N_TRAIN):
        stem = _stem(k)
        i = k
        label = None
        if f"{stem}_0" == CORRUPT:
            label = imageio.encode_png(world.render_person(i).parsing)[:60]
        elif f"{stem}_0" == PALETTE:
            label = _palette_png(world.render_person(i).parsing)
        person("train", stem, i, label=label)
    person("train", UNSAFE, N_TRAIN + N_TEST)
    test_stems = [f"{100 + k:06d}" for k in range(N_TEST)]
    for k, stem in enumerate(test_stems):
        person("test", stem, N_TRAIN + k)
    files["test_pairs_same.txt"] = "".join(f"{s}_0.jpg {s}_1.jpg\n" for s in test_stems).encode()
    files["test_pairs.txt"] = (
        "".join(f"{s}_0.jpg {test_stems[(k + 1) % N_TEST]}_1.jpg\n" for k, s in enumerate(test_stems))
        + f"{test_stems[0]}_0.jpg 999999_1.jpg\n"  # names a garment that does not exist
    ).encode()
    return files


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(N_TRAIN + N_TEST + 1, N_TRAIN + N_TEST + 1, WorldConfig(height=H, width=W, seed=3))


@pytest.fixture(scope="module")
def viton_files(world):
    return build_viton_files(world)


def write_local(root: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _load(root: str, kind: str) -> manifests.ManifestLoad:
    load = manifests.load_manifest(storage.join_uri(root, f"{kind}.parquet"), kind)
    assert load.rejected.num_rows == 0, load.rejected.to_pylist()
    return load


def check_import(summary: dict, root: str, world: SyntheticWorld) -> dict:
    assert summary["data"] == root
    models = _load(root, "models").rows.to_pylist()
    garments = _load(root, "garments").rows.to_pylist()
    train = _load(root, "train_pairs").rows.to_pylist()
    test = _load(root, "test_pairs").rows.to_pylist()
    errors = manifests.read_table(storage.join_uri(root, "import_errors.parquet")).to_pylist()

    ids = {m["model_id"]: m for m in models}
    good_train = [f"{_stem(k)}_0" for k in range(N_TRAIN) if f"{_stem(k)}_0" != CORRUPT]
    test_ids = [f"{100 + k:06d}_0" for k in range(N_TEST)]
    assert sorted(ids) == sorted(good_train + test_ids)
    assert {m["model_id"] for m in models if m["split"] == "train"} == set(good_train)
    assert sorted(g["garment_id"] for g in garments) == sorted(
        [f"{_stem(k)}_1" for k in range(N_TRAIN)] + [f"{100 + k:06d}_1" for k in range(N_TEST)])
    # Position pairing over the sorted folders (no train_pairs.txt): 000003_0 <-> 000003_1 etc.
    assert {(r["model_id"], r["garment_id"]) for r in train} == {(m, m[:-1] + "1") for m in good_train}
    assert sorted((r["model_id"], r["garment_id"], r["paired"]) for r in test) == sorted(
        [(t, t[:-1] + "1", True) for t in test_ids]
        + [(t, test_ids[(k + 1) % N_TEST][:-1] + "1", False) for k, t in enumerate(test_ids)])

    # Nothing lost: every photo is a row or an error row; every pair position / line too.
    reasons = {(e["manifest"], e["id"]): e["error"] for e in errors}
    assert "truncated or corrupt PNG" in reasons[("models", CORRUPT)] and "train_label" in reasons[("models", CORRUPT)]
    assert "not a safe model id" in reasons[("models", f"{UNSAFE}_0")]
    assert "not a safe garment id" in reasons[("garments", f"{UNSAFE}_1")]
    assert "rejected" in reasons[("train_pairs", CORRUPT)]
    assert "rejected" in reasons[("train_pairs", f"{UNSAFE}_0")]
    bad_line = reasons[("test_pairs", test_ids[0])]
    assert "999999_1" in bad_line and "test_pairs.txt:3" in bad_line
    assert len(errors) == 6, errors
    assert all(e["error"] and "\n" not in e["error"] for e in errors)
    assert summary["models"] + summary["models_rejected"] == summary["person_files"] == N_TRAIN + 1 + N_TEST
    assert summary["garments"] + summary["garments_rejected"] == summary["garment_files"] == N_TRAIN + 1 + N_TEST
    assert summary["train_pairs"] + sum(1 for e in errors if e["manifest"] == "train_pairs") == N_TRAIN + 1
    assert summary["test_pairs"] + sum(1 for e in errors if e["manifest"] == "test_pairs") == 2 * N_TEST + 1

    # Every URI exists; DensePose and palette labels were converted into the root, the rest is usable as is.
    for row in models + garments:
        for key, uri in row.items():
            if key.endswith("_uri") and uri is not None:
                assert storage.exists(uri), uri
    for m in models:
        if m["split"] == "train":
            i = [j for j in range(N_TRAIN) if f"{_stem(j)}_0" == m["model_id"]][0]
            truth = world.render_person(i)
            assert m["densepose_uri"] == storage.join_uri(root, f"densepose/{m['model_id']}.png")
            dp = np.asarray(Image.open(io.BytesIO(storage.read_bytes(m["densepose_uri"]))))
            assert dp.dtype == np.uint8 and np.array_equal(dp, truth.densepose)
            parsing = Image.open(io.BytesIO(storage.read_bytes(m["parsing_uri"])))
            assert parsing.mode == "L" and np.array_equal(np.asarray(parsing), truth.parsing)
            if m["model_id"] == PALETTE:
                assert m["parsing_uri"] == storage.join_uri(root, f"parsing/{PALETTE}.png")
            from pfafn.synthetic import decode_openpose

            kp = decode_openpose(storage.read_bytes(m["pose_uri"]))
            assert np.allclose(kp, truth.keypoints, atol=1e-3)
        else:
            assert m["parsing_uri"] is None and m["pose_uri"] is None and m["densepose_uri"] is None
    for g in garments:
        assert g["mask_uri"] is not None
        mask = imageio.decode_mask(storage.read_bytes(g["mask_uri"]))
        assert mask.shape == (H, W) and 0.05 < (mask > 0.5).mean() < 0.95
    return {"models": models, "garments": garments, "errors": errors}


def test_import_local_reference_mode(tmp_path, world, viton_files):
    src = write_local(tmp_path / "VITON", viton_files)
    out = str(tmp_path / "data")
    summary = run(VitonImportConfig(source=src, output=out, executor="local"))
    got = check_import(summary, out, world)
    # Reference mode: photos, edges, 'L' labels and poses stay where they are.
    by_id = {m["model_id"]: m for m in got["models"]}
    assert by_id["000003_0"]["image_uri"] == os.path.join(src, "train_img", "000003_0.jpg")
    assert by_id["000003_0"]["parsing_uri"] == os.path.join(src, "train_label", "000003_0.png")
    assert by_id["000003_0"]["pose_uri"] == os.path.join(src, "train_pose", "000003_0_keypoints.json")
    assert summary["orphan_files"] == 4  # the unsafe-name person's label, pose, DensePose and its garment's edge
    assert json.loads((tmp_path / "data" / "world.json").read_text())["counts"]["models"] == N_TRAIN - 1 + N_TEST
    # Re-import: same manifests, nothing new; a different source into the same root is refused.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.parquet")}
    again = run(VitonImportConfig(source=src, output=out, executor="local"))
    assert again["manifests_written"] == []
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").glob("*.parquet")} == mtimes
    with pytest.raises(StageError, match="different dataset"):
        run(VitonImportConfig(source=str(tmp_path), output=out, executor="local"))


def test_import_copy_mode_with_train_pairs_file_as_ray_tasks(tmp_path, world, viton_files, ray_session):
    files = dict(viton_files)
    # With train_pairs.txt the file decides (no position pairing); a malformed line is an error row.
    files["train_pairs.txt"] = (
        "".join(f"{_stem(k)}_0.jpg {_stem(k)}_1.jpg\n" for k in range(N_TRAIN)) + "only-one-field\n"
        + f"{UNSAFE}_0.jpg {UNSAFE}_1.jpg\n"
    ).encode()
    src = write_local(tmp_path / "VITON", files)
    out = str(tmp_path / "data")
    summary = run(VitonImportConfig(source=src, output=out, mode="copy", executor="ray", chunk_size=3))
    assert summary["executor"] == "ray"
    models = _load(out, "models").rows.to_pylist()
    garments = _load(out, "garments").rows.to_pylist()
    for row in models + garments:
        for key, uri in row.items():
            if key.endswith("_uri") and uri is not None:
                assert uri.startswith(out + "/") and storage.exists(uri), uri
    errors = manifests.read_table(storage.join_uri(out, "import_errors.parquet")).to_pylist()
    train_errors = sorted(e["error"] for e in errors if e["manifest"] == "train_pairs")
    assert len(train_errors) == 3, train_errors
    assert any("expected 'person garment'" in e for e in train_errors)
    assert summary["train_pairs"] == N_TRAIN - 1 and summary["pairing"]["train"]["pairing"] == "file"
    # Copied photos are byte-identical to the source.
    m = next(r for r in models if r["model_id"] == "000003_0")
    assert storage.read_bytes(m["image_uri"]) == files["train_img/000003_0.jpg"]


def test_import_s3_source_to_s3_root(s3_bucket, world, viton_files):
    src = f"{s3_bucket}/raw/VITON"
    for rel, data in viton_files.items():
        storage.write_bytes(storage.join_uri(src, rel), data)
    out = f"{s3_bucket}/datasets/viton"
    summary = run(VitonImportConfig(source=src, output=out, executor="local"))
    got = check_import(summary, out, world)
    assert all(m["image_uri"].startswith(src + "/") for m in got["models"])


def test_cli_and_missing_layout(tmp_path, world, viton_files):
    import subprocess
    import sys

    src = write_local(tmp_path / "VITON", viton_files)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "jobs.import_viton", "--source", src, "--output",
                           str(tmp_path / "data"), "--executor", "local"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stage"] == "import_viton" and summary["models"] == N_TRAIN - 1 + N_TEST
    assert json.loads((tmp_path / "data" / "summary.json").read_text())["run_id"] == summary["run_id"]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "jobs.import_viton", "--source", str(empty), "--output",
                           str(tmp_path / "other")], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train_img" in proc.stderr
