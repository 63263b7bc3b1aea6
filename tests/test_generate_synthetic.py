"""pipelines.stages.generate_synthetic / jobs.generate_synthetic: a tiny synthetic world written as a dataset root, locally and
on S3 (SeaweedFS); manifests valid, counts right, every URI present, ground truth exact, re-runs idempotent."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfafn import imageio
from pfafn.synthetic import SyntheticWorld, WorldConfig, decode_openpose
from pipelines.core import manifests, storage
from pipelines.core.errors import StageError
from pipelines.stages.generate_synthetic import SyntheticDatasetConfig, plan_world, run

PERSONS, GARMENTS, SIZE, K = 6, 5, 64, 4
ROOT = Path(__file__).resolve().parents[1]


def tiny(output: str, **overrides) -> SyntheticDatasetConfig:
    cfg = dict(output=output, persons=PERSONS, garments=GARMENTS, height=SIZE, width=SIZE, seed=0,
               ground_truth_pairs=K, test_fraction=0.34, executor="local", workers=2)
    cfg.update(overrides)
    return SyntheticDatasetConfig(**cfg)


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))))


def check_dataset(root: str, summary: dict) -> dict[str, list[dict]]:
    """Validate every manifest, the counts, the existence of every URI and the exactness of the renders."""
    assert summary["data"] == root and summary["output"] == root
    tables = {}
    for kind in ("models", "garments", "train_pairs", "test_pairs", "ground_truth"):
        load = manifests.load_manifest(storage.join_uri(root, f"{kind}.parquet"), kind)
        assert load.rejected.num_rows == 0, load.rejected.to_pylist()
        tables[kind] = load.rows.to_pylist()
    models, garments = tables["models"], tables["garments"]
    n_test = 2  # round(6 * 0.34)
    assert len(models) == PERSONS and len(garments) == GARMENTS
    assert [m["split"] for m in models] == ["train"] * (PERSONS - n_test) + ["test"] * n_test
    assert tables["train_pairs"] == [{"model_id": f"m{i:05d}", "garment_id": f"g{i % GARMENTS:05d}"}
                                     for i in range(PERSONS - n_test)]
    test_pairs = tables["test_pairs"]
    paired = [(r["model_id"], r["garment_id"]) for r in test_pairs if r["paired"]]
    unpaired = [(r["model_id"], r["garment_id"]) for r in test_pairs if not r["paired"]]
    assert paired == [(f"m{i:05d}", f"g{i % GARMENTS:05d}") for i in range(PERSONS - n_test, PERSONS)]
    assert len(unpaired) == K and all(g != f"g{int(m[1:]) % GARMENTS:05d}" for m, g in unpaired)
    assert {m for m, _ in unpaired} == {f"m{i:05d}" for i in range(PERSONS - n_test, PERSONS)}  # round-robin
    gt = tables["ground_truth"]
    assert [(r["model_id"], r["garment_id"]) for r in gt] == unpaired[:K]
    assert summary["test_pairs_unpaired"] == K and summary["ground_truth_pairs"] == K
    assert summary["files_total"] == 4 * PERSONS + 2 * GARMENTS + K

    # Absolute URIs under the root, and every one of them exists.
    for rows in tables.values():
        for row in rows:
            for key, uri in row.items():
                if key.endswith("_uri"):
                    assert uri.startswith(root + "/") and storage.exists(uri), uri
    world_json = storage.read_json(storage.join_uri(root, "world.json"))
    assert world_json["persons"] == PERSONS and world_json["generator"] == "pfafn.synthetic/1"
    assert storage.read_json(storage.join_uri(root, "summary.json"))["run_id"] == summary["run_id"]

    # The files are the world's renders, exactly (PNG is lossless).
    world = SyntheticWorld(PERSONS, GARMENTS, WorldConfig(height=SIZE, width=SIZE, seed=0))
    m0 = world.render_person(0)
    assert np.array_equal(_decode(models[0]["image_uri"]), m0.image)
    assert np.array_equal(_decode(models[0]["parsing_uri"]), m0.parsing)
    assert np.array_equal(_decode(models[0]["densepose_uri"]), m0.densepose)
    assert _decode(models[0]["densepose_uri"]).dtype == np.uint8
    assert np.allclose(decode_openpose(storage.read_bytes(models[0]["pose_uri"])), m0.keypoints, atol=1e-3)
    g = world.render_garment(1)
    assert np.array_equal(_decode(garments[1]["image_uri"]), g.image)
    assert np.array_equal(imageio.decode_mask(storage.read_bytes(garments[1]["mask_uri"])) > 0.5, g.mask)
    row = gt[0]
    i, j = int(row["model_id"][1:]), int(row["garment_id"][1:])
    truth = _decode(row["image_uri"])
    assert np.array_equal(truth, world.render_person(i, j).image)
    own = _decode(models[i]["image_uri"])
    assert not np.array_equal(truth, own)  # the model wears another garment...
    garment_img = _decode(garments[j]["image_uri"])
    assert np.abs(truth.astype(int) - garment_img.astype(int)).mean() > 5  # ...and is not the product photo
    outside = ~(world.render_person(i).garment_mask | world.render_person(i, j).garment_mask)
    assert (truth == own).all(axis=2)[outside].mean() > 0.9  # body, face, background: the model's own photo
    return tables


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name != "summary.json" and "runs" not in p.relative_to(root).parts}


def test_local_dataset_is_valid_exact_and_idempotent(tmp_path):
    out = tmp_path / "synth"
    summary = run(tiny(str(out)))
    assert summary["created"] and summary["files_written"] == summary["files_total"]
    assert summary["executor"] == "local"
    check_dataset(str(out), summary)
    before = _mtimes(out)
    assert len(before) == summary["files_total"] + 6  # + 5 manifests + world.json

    again = run(tiny(str(out), workers=1))  # executor settings are not part of the world
    assert again["files_written"] == 0 and again["files_skipped"] == summary["files_total"]
    assert again["manifests_written"] == [] and not again["created"]
    assert _mtimes(out) == before  # nothing rewritten

    # A killed run leaves some files missing: the re-run writes exactly those.
    victim = out / "ground_truth" / os.listdir(out / "ground_truth")[0]
    data = victim.read_bytes()
    victim.unlink()
    (out / "models.parquet").unlink()
    resumed = run(tiny(str(out)))
    assert resumed["files_written"] == 1 and resumed["manifests_written"] == ["models"]
    assert victim.read_bytes() == data

    with pytest.raises(StageError, match=r"different dataset.*seed: 0 \(existing\) != 1"):
        run(tiny(str(out), seed=1))
    with pytest.raises(StageError, match="ground_truth_pairs"):
        run(tiny(str(out), ground_truth_pairs=3))


def test_s3_dataset_is_valid_and_rerun_writes_nothing(s3_bucket):
    out = f"{s3_bucket}/datasets/tiny"
    summary = run(tiny(out))
    check_dataset(out, summary)
    fs, path = storage.filesystem_for(out)
    before = {k: (v["ETag"], v["LastModified"]) for k, v in fs.find(path, detail=True).items()
              if not k.endswith("summary.json") and "/runs/" not in k}
    assert len(before) == summary["files_total"] + 6
    again = run(tiny(out))
    assert again["files_written"] == 0 and again["manifests_written"] == []
    after = {k: (v["ETag"], v["LastModified"]) for k, v in fs.find(path, detail=True).items()
             if not k.endswith("summary.json") and "/runs/" not in k}
    assert after == before
    with pytest.raises(StageError, match="persons"):
        run(tiny(out, persons=PERSONS + 1))


def test_ray_tasks_write_the_same_bytes_as_in_process(tmp_path, ray_session):
    local = tmp_path / "local"
    remote = tmp_path / "ray"
    run(tiny(str(local)))
    summary = run(tiny(str(remote), executor="ray", chunk_size=4))
    assert summary["executor"] == "ray" and summary["chunks"] > 1
    check_dataset(str(remote), summary)
    # Everything but the run logs and the manifests (they hold their root's absolute URIs) is byte-identical.
    files = sorted(set(_mtimes(local)) - {"models.parquet", "garments.parquet", "ground_truth.parquet"})
    assert set(files) | {"models.parquet", "garments.parquet", "ground_truth.parquet"} == set(_mtimes(remote))
    assert len(files) == summary["files_total"] + 3  # + world.json, train_pairs, test_pairs
    for rel in files:
        assert (local / rel).read_bytes() == (remote / rel).read_bytes(), rel


def test_plan_prefers_unseen_garments_and_caps_ground_truth():
    # 4 train models wear g0..g3; g4..g9 are worn by nobody in training: test garments come from there first.
    plan = plan_world(SyntheticDatasetConfig(output="x", persons=6, garments=10, test_fraction=0.34,
                                             ground_truth_pairs=6))
    assert plan.test_models == (4, 5)
    assert len(plan.unpaired) == 6 and all(g >= 4 and g != i for i, g in plan.unpaired)
    assert plan.ground_truth == plan.unpaired
    assert [i for i, _ in plan.unpaired] == [4, 5, 4, 5, 4, 5]
    # More ground truth than possible pairs: capped at test models x (garments - 1).
    capped = plan_world(SyntheticDatasetConfig(output="x", persons=4, garments=3, test_fraction=0.25,
                                               ground_truth_pairs=50))
    assert len(capped.ground_truth) == 2 and len(set(capped.ground_truth)) == 2


def test_cli_prints_the_summary_last_and_rejects_bad_sizes(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    py = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    out = tmp_path / "cli"
    proc = subprocess.run(
        [py, "-m", "jobs.generate_synthetic", "--output", str(out), "--persons", "3", "--garments", "3",
         "--height", "64", "--width", "64", "--ground-truth-pairs", "2", "--seed", "5", "--parsing-noise", "0.5",
         "--set", "test_fraction=0.34"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["data"] == str(out) and summary["ground_truth_pairs"] == 2 and summary["test_models"] == 1
    assert summary["seed"] == 5 and summary["parsing_noise"] == 0.5
    assert json.loads((out / "world.json").read_text())["parsing_noise"] == 0.5
    # parsing/ holds the noisy parsing: not the exact one, but close to it.
    world = SyntheticWorld(3, 3, WorldConfig(height=64, width=64, seed=5, parsing_noise=0.5))
    noisy = np.asarray(Image.open(out / "parsing" / "m00000.png"))
    exact = world.render_person(0).parsing
    assert np.array_equal(noisy, world.noisy_parsing(0)) and not np.array_equal(noisy, exact)
    assert (noisy == exact).mean() > 0.8

    bad = subprocess.run([py, "-m", "jobs.generate_synthetic", "--output", str(tmp_path / "bad"), "--persons", "2",
                          "--garments", "2", "--height", "48"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "multiples of 32" in bad.stderr
    helped = subprocess.run([py, "-m", "jobs.generate_synthetic", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "--ground-truth-pairs" in helped.stdout
