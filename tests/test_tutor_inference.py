"""Tutor inference (stage 1) on a real in-process Ray: counts, garment choice, idempotence, bad input, exactness
against a direct TutorModel forward, S3, lock and CLI."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pfafn.checkpoint import save_checkpoint
from pfafn.synthetic.openpose import decode_openpose
from pfafn.synthetic.world import SyntheticWorld, WorldConfig
from pfafn.nn.afwm import NetworkWidths
from pfafn.person import tutor_warp_input
from pfafn.tutor import TutorModel
from pipelines.core import manifests, storage
from pipelines.core.errors import StageError
from pipelines.core.locking import LockHeldError, RunLock
from pipelines.stages.tutor_inference import (
    TutorInferenceConfig,
    choose_tutor_garments,
    decode_chunk,
    fake_key,
    load_fakes,
    plan_chunks,
    render_fakes,
    run,
)

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)
SIZE = 64


# ----------------------------------------------------------------------------------------------------------------------
# A small dataset root written by the synthetic generator stage (docs/datasets.md layout).


def write_dataset_root(root: str, n_models: int, n_garments: int, seed: int = 0) -> SyntheticWorld:
    """A synthetic dataset root with every model in the train split; returns the world (for ids and pairing)."""
    from pipelines.stages.generate_synthetic import SyntheticDatasetConfig
    from pipelines.stages.generate_synthetic import run as generate

    generate(SyntheticDatasetConfig(output=root, persons=n_models, garments=n_garments, height=SIZE, width=SIZE,
                                    seed=seed, ground_truth_pairs=0, test_fraction=0.0, executor="local", workers=2))
    return SyntheticWorld(n_models, n_garments, WorldConfig(height=SIZE, width=SIZE, seed=seed))


def write_tutor(dest: str, seed: int = 0) -> tuple[str, TutorModel]:
    torch.manual_seed(seed)
    model = TutorModel(TINY).eval()
    version = save_checkpoint(dest, warp=model.warp, gen=model.gen, kind="tutor", meta={"test": True})
    return version, model


def _config(data: str, tutor: str, output: str, **kw) -> TutorInferenceConfig:
    base = dict(data=data, tutor=tutor, output=output, height=SIZE, width=SIZE, batch_size=3, chunk_size=2,
                precision="fp32", channels_last=False, actors=1, cpus_per_actor=0.5, torch_threads=1,
                png_compress_level=1, gallery_size=4)
    base.update(kw)
    return TutorInferenceConfig(**base)


def _manifest_rows(fakes: str) -> list[dict]:
    loaded = manifests.load_manifest(fakes, "fakes")
    assert loaded.rejected.num_rows == 0, loaded.rejected.to_pylist()
    return loaded.rows.to_pylist()


def _direct_fake(model: TutorModel, data: str, mid: str, gid: str) -> torch.Tensor:
    """The tutor's fake computed in-process straight from the dataset files (no pipeline code)."""
    def arr(path: str) -> np.ndarray:
        return np.array(Image.open(path))

    person = arr(f"{data}/images/models/{mid}.png")
    parsing = arr(f"{data}/parsing/{mid}.png")
    densepose = arr(f"{data}/densepose/{mid}.png")
    keypoints = decode_openpose(Path(f"{data}/pose/{mid}.json").read_text())
    garment = arr(f"{data}/images/garments/{gid}.png")
    mask = arr(f"{data}/images/garment_masks/{gid}.png")
    image_t = torch.from_numpy(person).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    garment_t = torch.from_numpy(garment).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    mask_t = torch.from_numpy(mask).float()[None, None] / 255.0
    rep = tutor_warp_input(parsing[None], densepose[None], keypoints[None])
    with torch.no_grad():
        out = model(rep, image_t, torch.from_numpy(parsing)[None].long(), torch.from_numpy(densepose)[None].long(),
                    garment_t, mask_t, cloth_region="warped")
    return out.tryon


def _quantize(t: torch.Tensor) -> np.ndarray:
    return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------------------------------


def test_fakes_counts_choice_bad_person_retry_and_exactness(ray_session, tmp_path, caplog):
    torch.set_num_threads(1)
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    world = write_dataset_root(data, n_models=4, n_garments=5)
    tutor = str(tmp_path / "tutor.pt")
    version, model = write_tutor(tutor)
    k = 2
    bad = world.model_id(1)
    photo = Path(data, "images", "models", f"{bad}.png")
    good_photo = photo.read_bytes()
    photo.write_bytes(good_photo[: len(good_photo) // 3])  # truncated PNG

    with caplog.at_level(logging.INFO, logger="pipelines.batch"):
        s1 = run(_config(data, tutor, out, k=k, progress_every_s=0))
    assert (s1["fakes_total"], s1["fakes_written"], s1["fakes_error"], s1["fakes_skipped"]) == (8, 6, 2, 0)
    # progress lines count samples (not chunks: 2 persons x k per chunk here) and end with the run's totals
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.batch" and " samples " in r.getMessage()]
    assert len(lines) == 2, lines  # progress_every_s=0: one per committed chunk
    assert lines[-1].startswith(f"tutor_inference {s1['run_id']}: samples 8/8 (100.0%), chunks 2/2, ")
    assert lines[-1].endswith(", 6 ok, 2 error") and " done in " in lines[-1]
    assert "samples 4/8 (50.0%), chunks 1/2" in lines[0] and "ETA " in lines[0]
    assert s1["fakes_attempted"] == 8
    assert s1["tutor_version"] == version and s1["fakes"] == storage.join_uri(out, "manifest")
    assert json.loads(Path(out, "summary.json").read_text())["run_id"] == s1["run_id"]
    errors = load_fakes(out, version, errors=True).to_pylist()
    assert len(errors) == k and {r["model_id"] for r in errors} == {bad}
    assert all(r["status"] == "error" and r["error"].startswith("person image: ") and "\n" not in r["error"]
               for r in errors)

    rows = _manifest_rows(s1["fakes"])
    assert len(rows) == 3 * k and bad not in {r["model_id"] for r in rows}
    assert all(r["status"] == "ok" and r["tutor_version"] == version and r["error"] is None for r in rows)
    pngs = storage.list_files(storage.join_uri(out, "fakes", version), suffix=".png")
    assert sorted(pngs) == sorted(r["image_uri"] for r in rows)

    # one fake equals a direct in-process forward: exactly after uint8 quantisation (up to rounding flips of values
    # that sit on a .5 boundary, where batched vs single-sample convolutions differ by ~1e-7)
    target = rows[0]
    direct = _direct_fake(model, data, target["model_id"], target["tutor_garment_id"])
    written = np.asarray(Image.open(target["image_uri"]).convert("RGB"))
    expected = _quantize(direct)
    diff = np.abs(written.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    # ... and the float output of the pipeline's decode + render path matches it to 1e-5 (fp32), in a batch of 3
    plan = plan_chunks(_config(data, tutor, str(tmp_path / "fresh"), k=k, chunk_size=4), version, "t")
    decoded = decode_chunk(plan.chunks[0], {"height": SIZE, "width": SIZE, "max_image_bytes": 1 << 24,
                                            "max_image_pixels": 1 << 24, "min_mask_confidence": 0.5})
    meta = json.loads(decoded["meta"])
    assert meta["person_errors"][meta["model_ids"].index(bad)].startswith("person image: ")
    p = meta["model_ids"].index(target["model_id"])
    g = meta["garment_ids"].index(target["tutor_garment_id"])
    others = [row for row in meta["rows"] if row[:2] != [p, g] and meta["model_ids"][row[0]] != bad][:2]
    p_idx, g_idx = [p] + [r[0] for r in others], [g] + [r[1] for r in others]
    fakes = render_fakes(model, decoded["persons"], decoded["parsing"], decoded["densepose"], decoded["keypoints"],
                         decoded["garments"], decoded["masks"], p_idx, g_idx)
    assert fakes.shape == (3, 3, SIZE, SIZE)
    torch.testing.assert_close(fakes[:1], direct, atol=1e-5, rtol=0)

    # fix the photo: the re-run retries exactly the error rows; then every person has k distinct fakes, none worn
    photo.write_bytes(good_photo)
    s2 = run(_config(data, tutor, out, k=k))
    assert (s2["fakes_written"], s2["fakes_error"], s2["fakes_skipped"]) == (2, 0, 6)
    rows = _manifest_rows(s2["fakes"])
    assert len(rows) == 4 * k
    assert Counter((r["model_id"], r["tutor_garment_id"]) for r in rows).most_common(1)[0][1] == 1
    garment_ids = [world.garment_id(j) for j in range(5)]
    by_person: dict[str, list[str]] = {}
    for r in rows:
        assert r["tutor_garment_id"] != r["worn_garment_id"], r
        assert r["worn_garment_id"] == world.garment_id(world.worn_garment(int(r["model_id"][1:])))
        assert r["image_uri"] == fake_key(out, version, r["model_id"], r["tutor_garment_id"])
        by_person.setdefault(r["model_id"], []).append(r["tutor_garment_id"])
    assert set(by_person) == {world.model_id(i) for i in range(4)}
    for mid, chosen in by_person.items():
        worn = world.garment_id(world.worn_garment(int(mid[1:])))
        assert sorted(chosen) == sorted(choose_tutor_garments(mid, worn, garment_ids, k, seed=0))
        assert len(set(chosen)) == k
    # the choice is a function of (seed, model_id, garment set) only, and the seed matters
    assert choose_tutor_garments("m00001", "g00001", list(reversed(garment_ids)), 2, 0) == \
        choose_tutor_garments("m00001", "g00001", garment_ids, 2, 0)
    assert any(choose_tutor_garments(f"m{i:05d}", "g00000", garment_ids, 2, 0)
               != choose_tutor_garments(f"m{i:05d}", "g00000", garment_ids, 2, 1) for i in range(8))

    # the CLI on the finished output: no model work (no Ray started), nothing written, JSON summary last on stdout
    parts_before = storage.list_files(out)
    proc = subprocess.run([sys.executable, "-m", "jobs.tutor_inference", "--preset", "tiny", "--data", data,
                           "--tutor", tutor, "--output", out, "--set", f"height={SIZE}", "--set", f"width={SIZE}",
                           "--k", str(k), "--set", "gallery_size=0"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (cli["fakes_written"], cli["fakes_error"], cli["fakes_skipped"], cli["tutor_version"]) == (0, 0, 8, version)
    new_files = {f for f in set(storage.list_files(out)) - set(parts_before) if "/_lock/" not in f}
    assert {storage.basename(f) for f in new_files} == {f"{cli['run_id']}.json"}, new_files


def test_on_s3(ray_session, s3_bucket, tmp_path):
    torch.set_num_threads(1)
    data, out = f"{s3_bucket}/data", f"{s3_bucket}/fakes"
    write_dataset_root(data, n_models=3, n_garments=4, seed=3)
    tutor = f"{s3_bucket}/tutor.pt"
    local_tutor = str(tmp_path / "tutor.pt")
    version, _ = write_tutor(local_tutor, seed=1)
    storage.write_bytes(tutor, Path(local_tutor).read_bytes())

    s1 = run(_config(data, tutor, out, k=1))
    assert (s1["fakes_total"], s1["fakes_written"], s1["fakes_error"]) == (3, 3, 0)
    rows = _manifest_rows(s1["fakes"])
    assert len(rows) == 3 and all(r["image_uri"].startswith(f"{out}/fakes/{version}/") for r in rows)
    img = Image.open(io.BytesIO(storage.read_bytes(rows[0]["image_uri"])))
    assert img.format == "PNG" and img.size == (SIZE, SIZE)
    assert storage.read_json(storage.join_uri(out, "summary.json"))["fakes_written"] == 3
    assert "data:image/jpeg;base64," in storage.read_bytes(s1["gallery"]).decode()
    s2 = run(_config(data, tutor, out, k=1))
    assert (s2["fakes_written"], s2["fakes_skipped"]) == (0, 3)


def test_usage_errors_lock_and_missing_inputs(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_dataset_root(data, n_models=2, n_garments=1)
    tutor = str(tmp_path / "tutor.pt")
    write_tutor(tutor)
    # one garment only: the worn one, so there is nothing else to put on; persons_with_fewer_than_k reports it
    plan = plan_chunks(_config(data, tutor, out, k=1), "v", "t")
    assert (plan.fakes_total, plan.fewer_than_k, len(plan.chunks)) == (0, 2, 0)

    # a model row without parsing/pose becomes k error rows before any decoding
    table = pq.read_table(f"{data}/models.parquet")
    table = table.set_column(table.schema.get_field_index("pose_uri"), "pose_uri",
                             pa.array([None] + table["pose_uri"].to_pylist()[1:], pa.string()))
    pq.write_table(table, f"{data}/models.parquet")
    world = write_dataset_root(str(tmp_path / "more"), n_models=2, n_garments=3)
    g = pq.read_table(str(tmp_path / "more" / "garments.parquet"))
    pq.write_table(g, f"{data}/garments.parquet")
    plan = plan_chunks(_config(data, tutor, out, k=2), "v", "t")
    assert plan.fakes_total == 4 and len(plan.pre_errors["model_id"]) == 2
    assert all("pose_uri" in e for e in plan.pre_errors["error"])

    # a student checkpoint is refused with a clear message; a held lock refuses a second run
    from pfafn.tryon import TryOnModel

    student = str(tmp_path / "student.pt")
    s = TryOnModel(TINY)
    save_checkpoint(student, warp=s.warp, gen=s.gen, kind="student")
    with pytest.raises(StageError, match="not a tutor"):
        run(_config(data, student, out))
    lock = RunLock(out, "other-run")
    lock.acquire()
    try:
        with pytest.raises(LockHeldError):
            run(_config(data, tutor, out))
    finally:
        lock.release()

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "jobs.tutor_inference", "--data", data, "--output", out],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "--tutor is required" in proc.stderr
    assert world.n_models == 2
