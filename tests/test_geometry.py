"""Geometry travels with the data (issue 12, item 9), and the input roots of tutor inference's person reads:

- tutor inference runs at the tutor checkpoint's training size unless height/width are set (a ``--preset`` does not
  set them: a 64×64 tutor with ``--preset tiny`` writes 64×64 fakes, not the preset's old 128×96);
- distillation refuses fakes of another size than its own (exit 2, both sizes named) instead of letterboxing them;
- evaluation refuses a ground truth whose size differs from the try-on's (an error row naming both sizes);
- tutor inference reads parsing / DensePose / pose only inside the input roots (an error row otherwise)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pfafn.checkpoint import save_checkpoint
from pfafn.tutor import TutorModel
from pipelines.core import manifests
from pipelines.core.config import ConfigError, build_config
from pipelines.training.config import TINY_WIDTHS, WidthsConfig
from tests.dataset_helpers import write_dataset_root

REPO = Path(__file__).resolve().parents[1]


def _tutor(dest: str, meta: dict) -> str:
    torch.manual_seed(0)
    tutor = TutorModel(WidthsConfig(**TINY_WIDTHS).build()).eval()
    return save_checkpoint(dest, warp=tutor.warp, gen=tutor.gen, kind="tutor", meta=meta)


def test_tutor_inference_defaults_to_the_tutors_training_size(ray_session, tmp_path):
    from pipelines.stages import tutor_inference

    data = write_dataset_root(str(tmp_path / "root"), persons=2, garments=2, test=0)
    tutor = str(tmp_path / "tutor.pt")
    _tutor(tutor, {"height": 64, "width": 64})  # what pipelines.training.stage.save_model records
    summary = tutor_inference.run(build_config(
        tutor_inference.TutorInferenceConfig, preset=tutor_inference.PRESETS["tiny"],
        explicit={"data": data, "tutor": tutor, "output": str(tmp_path / "fakes"), "actors": 1,
                  "cpus_per_actor": 0.5, "gallery_size": 0}))
    assert (summary["height"], summary["width"]) == (64, 64)
    rows = manifests.load_manifest(summary["fakes"], "fakes").rows.to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        with Image.open(r["image_uri"]) as im:
            assert im.size == (64, 64)  # PIL: (width, height)

    # a tutor that records no size needs height/width given: a config error (exit 2), not a guess
    bare = str(tmp_path / "bare.pt")
    _tutor(bare, {})
    cfg = build_config(tutor_inference.TutorInferenceConfig, preset=tutor_inference.PRESETS["tiny"],
                       explicit={"data": data, "tutor": bare, "output": str(tmp_path / "bare-out")})
    with pytest.raises(ConfigError, match="records no training size"):
        tutor_inference.run(cfg)
    # one of height/width alone is refused before anything runs
    with pytest.raises(ConfigError, match="height and width"):
        build_config(tutor_inference.TutorInferenceConfig,
                     explicit={"data": data, "tutor": bare, "output": "o", "height": 64}).validate()


def test_distill_refuses_fakes_of_another_size(tmp_path):
    """Fakes at 64×64 and distillation at 128×96 → exit 2, one line naming both sizes, no traceback."""
    data = write_dataset_root(str(tmp_path / "root"), persons=2, garments=2, test=0)
    tutor = str(tmp_path / "tutor.pt")
    version = _tutor(tutor, {"height": 64, "width": 64})
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(fakes / "m00000-g00001.png")
    pairs = {r["model_id"]: r["garment_id"]
             for r in manifests.load_manifest(f"{data}/train_pairs.parquet", "train_pairs").rows.to_pylist()}
    worn = pairs["m00000"]
    other = "g00001" if worn != "g00001" else "g00000"
    rows = [{"model_id": "m00000", "worn_garment_id": worn, "tutor_garment_id": other,
             "image_uri": str(fakes / "m00000-g00001.png"), "tutor_version": version, "status": "ok"}]
    manifests.write_manifest(pa.Table.from_pylist(rows), str(fakes / "fakes.parquet"), kind="fakes")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "jobs.distill", "--preset", "tiny", "--data", data,
                           "--fakes", str(fakes / "fakes.parquet"), "--tutor", tutor, "--output", str(tmp_path / "out"),
                           "--set", "height=128", "--set", "width=96"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "64x64" in proc.stderr and "128x96" in proc.stderr, proc.stderr[-2000:]


def test_evaluate_refuses_a_ground_truth_of_another_size(tmp_path):
    from pipelines.stages.evaluate import _score_pairs

    tryon, gt, same = tmp_path / "tryon.png", tmp_path / "gt.png", tmp_path / "same.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tryon)
    Image.new("RGB", (96, 128), (10, 20, 30)).save(gt)  # 128 high, 96 wide
    Image.new("RGB", (64, 64), (10, 20, 30)).save(same)
    items = [{"result_status": "ok", "result_error": None, "image_uri": str(tryon), "ground_truth_uri": str(g)}
             for g in (gt, same)]
    cfg = {"height": 64, "width": 64, "max_image_pixels": 10**7, "max_image_bytes": 10**7}
    empty = np.zeros((0, 64, 64, 3), np.uint8)
    decoded = np.zeros(2, bool)
    _score_pairs(items, cfg, empty, empty, decoded)
    assert items[0]["status"] == "error" and items[0]["error"].startswith("ground truth image: ")
    assert "128x96" in items[0]["error"] and "64x64" in items[0]["error"]
    assert items[1]["status"] == "ok" and items[1]["ssim"] == pytest.approx(1.0)


def test_tutor_inference_reads_person_inputs_only_inside_the_roots(tmp_path):
    """Parsing, DensePose and pose go through the input-root check like the photo: a parsing URI outside the dataset
    root (and ``allowed_roots``) is that person's error row "outside allowed roots", with nothing of the file quoted."""
    from pipelines.stages.tutor_inference import decode_chunk

    data = write_dataset_root(str(tmp_path / "root"), persons=1, garments=2, test=0)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"TOKEN=abc123 not a png at all")
    person = {"model_id": "m00000", "image_uri": f"{data}/images/models/m00000.png",
              "parsing_uri": str(secret), "densepose_uri": f"{data}/densepose/m00000.png",
              "pose_uri": f"{data}/pose/m00000.json"}
    spec = {"chunk": 0, "persons": [person], "garments": [], "rows": []}
    cfg = {"height": 64, "width": 64, "max_image_pixels": 10**7, "max_image_bytes": 10**7, "read_timeout_s": 10.0,
           "allowed_roots": [], "data": data, "min_mask_confidence": 0.5}
    meta = json.loads(decode_chunk({"spec": json.dumps(spec)}, cfg)["meta"])
    error = meta["person_errors"][0]
    assert error.startswith("parsing: ") and "outside allowed roots" in error and "TOKEN" not in error
    # the same person with the file inside an allowed root decodes as far as the parsing (then fails as no PNG)
    meta = json.loads(decode_chunk({"spec": json.dumps(spec)}, dict(cfg, allowed_roots=[str(tmp_path)]))["meta"])
    assert "outside allowed roots" not in meta["person_errors"][0] and "TOKEN" not in meta["person_errors"][0]
    person.update(parsing_uri=f"{data}/parsing/m00000.png", pose_uri="/etc/hostname")
    meta = json.loads(decode_chunk({"spec": json.dumps(spec)}, cfg)["meta"])
    assert meta["person_errors"][0].startswith("pose: ") and "outside allowed roots" in meta["person_errors"][0]
