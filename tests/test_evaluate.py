"""Evaluation stage on a real in-process Ray: SSIM/PSNR against ground truth (identical, noised, missing), ranking,
error rows, LPIPS/FID skipped without weights and run end to end with random weights, the report, the CLI."""
from __future__ import annotations

import datetime
import io
import json
import math
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

from pfafn.synthetic.world import SyntheticWorld, WorldConfig
from pfafn.perceptual import (
    LPIPS,
    InceptionFeatures,
    build_lpips,
    fid_from_features,
    frechet_distance,
)
from pipelines.core import manifests, storage
from pipelines.stages.evaluate import (
    SCORES_SCHEMA,
    EvaluateConfig,
    load_ground_truth,
    load_scores,
    probe_weights,
    run,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
VERSION = "v1student00"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(table: pa.Table, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


def _noised(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(np.float64) + rng.normal(0, sigma, image.shape), 0, 255).round().astype(np.uint8)


# What each try-on is, relative to its ground truth (None: no image written; "error": a catalog error row).
# paired pairs (mi, gi) have the model's own photo as ground truth; the unpaired ones an exact render.
PAIRS = {
    ("g00000", "m00000"): ("paired", 0.0),
    ("g00001", "m00001"): ("paired", 3.0),
    ("g00002", "m00002"): ("paired", 12.0),
    ("g00003", "m00003"): ("paired", 40.0),
    ("g00001", "m00000"): ("unpaired", 0.0),
    ("g00002", "m00001"): ("unpaired", 6.0),
    ("g00003", "m00002"): ("unpaired", None),  # image missing -> error row
    ("g00000", "m00003"): ("unpaired", "error"),  # the catalog failed this pair -> error row
    ("g00000", "m00001"): ("unpaired", 1.0),  # no ground truth for this pair -> no_ground_truth
}


def write_world(tmp: Path) -> tuple[str, str]:
    """A dataset root (models, garments, train/test pairs, ground truth) and a catalog output with results."""
    root, tryon = str(tmp / "data"), str(tmp / "tryon")
    world = SyntheticWorld(4, 4, WorldConfig(height=SIZE, width=SIZE, seed=5))
    models = {"model_id": [], "image_uri": [], "split": []}
    photos = {}
    for i in range(4):
        mid = world.model_id(i)
        photos[mid] = world.render_person(i).image
        models["model_id"].append(mid)
        models["image_uri"].append(storage.join_uri(root, "images", "models", f"{mid}.png"))
        models["split"].append("test")
        storage.write_bytes(models["image_uri"][-1], _png(photos[mid]))
    garments = {"garment_id": [], "image_uri": []}
    for j in range(4):
        gid = world.garment_id(j)
        garments["garment_id"].append(gid)
        garments["image_uri"].append(storage.join_uri(root, "images", "garments", f"{gid}.png"))
        storage.write_bytes(garments["image_uri"][-1], _png(world.render_garment(j).image))
    test_pairs = {"model_id": [], "garment_id": [], "paired": []}
    gt = {"model_id": [], "garment_id": [], "image_uri": []}
    references = {}
    for (gid, mid), (kind, _) in PAIRS.items():
        if kind == "paired":
            test_pairs["model_id"].append(mid)
            test_pairs["garment_id"].append(gid)
            test_pairs["paired"].append(True)
            references[(gid, mid)] = photos[mid]
        elif (gid, mid) != ("g00000", "m00001"):
            render = world.render_person(int(mid[1:]), int(gid[1:])).image
            uri = storage.join_uri(root, "ground_truth", f"{mid}__{gid}.png")
            storage.write_bytes(uri, _png(render))
            gt["model_id"].append(mid)
            gt["garment_id"].append(gid)
            gt["image_uri"].append(uri)
            references[(gid, mid)] = render
    for name, table in (("models", models), ("garments", garments), ("test_pairs", test_pairs),
                        ("ground_truth", gt)):
        _parquet(pa.table(table), storage.join_uri(root, f"{name}.parquet"))

    now = datetime.datetime.now(datetime.timezone.utc)
    rows = {f.name: [] for f in manifests.SCHEMAS["tryon_results"]}

    def add(gid, mid, status, uri, error, when):
        for name, value in (("garment_id", gid), ("model_id", mid), ("student_version", VERSION), ("status", status),
                            ("error", error), ("image_uri", uri), ("decode_ms", 1.0), ("model_ms", 1.0),
                            ("encode_ms", 1.0), ("run_id", "r1"), ("finished_at", when), ("output_height", None),
                            ("output_width", None)):
            rows[name].append(value)

    # an earlier failed attempt of a pair that later succeeded: the evaluation uses the ok row
    add("g00001", "m00001", "error", None, "inference: RuntimeError: boom", now - datetime.timedelta(hours=1))
    for seed, ((gid, mid), (_, noise)) in enumerate(PAIRS.items()):
        uri = storage.join_uri(tryon, VERSION, gid, f"{mid}.png")
        if noise == "error":
            add(gid, mid, "error", None, "garment image: truncated", now)
            continue
        if noise is not None:
            base = references.get((gid, mid), photos[mid])
            storage.write_bytes(uri, _png(base if noise == 0 else _noised(base, noise, seed)))
        add(gid, mid, "ok", uri, None, now)
    _parquet(pa.table(rows, schema=manifests.SCHEMAS["tryon_results"]),
             storage.join_uri(tryon, "results", "part-r1-000000.parquet"))
    return root, tryon


def _config(results, ground_truth, output, **kw) -> EvaluateConfig:
    base = dict(results=results, ground_truth=ground_truth, output=output, batch_size=4, height=SIZE, width=SIZE,
                examples=2, actors=1, cpus_per_actor=0.5, torch_threads=1)
    base.update(kw)
    return EvaluateConfig(**base)


def _random_lpips_files(tmp: Path) -> tuple[str, str]:
    """A lin-only LPIPS file (non-negative random lin weights) and a torchvision-layout AlexNet backbone file."""
    torch.manual_seed(0)
    model = LPIPS("alex")
    state = model.state_dict()
    lins = {k: torch.rand_like(v) for k, v in state.items() if k.startswith("lin")}
    backbone = {}
    for k, v in state.items():
        if k.startswith("net.slice"):
            backbone["features." + k.split(".", 2)[2]] = v
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # ignored: only features.* are used
    lin_uri, bb_uri = str(tmp / "lpips_lin.pth"), str(tmp / "alexnet.pth")
    torch.save(lins, lin_uri)
    torch.save(backbone, bb_uri)
    return lin_uri, bb_uri


def _random_inception_file(tmp: Path) -> str:
    torch.manual_seed(0)
    state = {f"{k}": v for k, v in InceptionFeatures().inception.state_dict().items()}
    state["AuxLogits.fc.weight"] = torch.zeros(1)  # ignored, as the torchvision file has it
    uri = str(tmp / "inception.pth")
    torch.save(state, uri)
    return uri


# ----------------------------------------------------------------------------------------------------------------------


def test_scores_ranking_errors_report_then_lpips_and_fid(ray_session, tmp_path):
    torch.set_num_threads(1)
    root, tryon = write_world(tmp_path)
    out = str(tmp_path / "eval")

    s1 = run(_config(tryon, root, out))
    assert (s1["pairs"], s1["pairs_ok"], s1["pairs_error"], s1["pairs_no_ground_truth"]) == (9, 6, 2, 1)
    assert s1["lpips"] is None and "not configured" in s1["lpips_note"]
    assert s1["fid"] is None and "not configured" in s1["fid_note"]
    assert s1["psnr_identical"] == 2 and s1["psnr_cap"] == 100.0

    scores = {(r["garment_id"], r["model_id"]): r for r in load_scores(out).to_pylist()}
    assert set(scores) == set(PAIRS), "every result pair has exactly one scores row"
    for key, (kind, noise) in PAIRS.items():
        r = scores[key]
        assert r["pair_kind"] == kind, (key, r["pair_kind"])
        if noise == 0.0:
            assert r["status"] == "ok" and r["ssim"] == pytest.approx(1.0, abs=1e-12) and math.isinf(r["psnr"])
        elif noise is None:
            assert r["status"] == "error" and r["error"].startswith("try-on image") and r["ssim"] is None
        elif noise == "error":
            assert r["status"] == "error" and r["error"] == "try-on image: try-on failed (garment image: truncated)"
        elif key == ("g00000", "m00001"):
            assert r["status"] == "no_ground_truth" and r["ssim"] is None and r["ground_truth_uri"] is None
        else:
            assert r["status"] == "ok" and 0 < r["ssim"] < 0.999 and 10 < r["psnr"] < 60, r
    noised = sorted((n, scores[k]["ssim"], scores[k]["psnr"]) for k, (_, n) in PAIRS.items()
                    if isinstance(n, float) and n > 0 and scores[k]["status"] == "ok")
    assert [s for _, s, _ in noised] == sorted([s for _, s, _ in noised], reverse=True), "more noise, lower SSIM"
    assert [p for _, _, p in noised] == sorted([p for _, _, p in noised], reverse=True), "more noise, lower PSNR"

    report = json.loads(Path(out, "report.json").read_text())
    assert [(e["garment_id"], e["model_id"]) for e in report["worst"]] == [("g00003", "m00003"), ("g00002", "m00002")]
    assert {(e["garment_id"], e["model_id"]) for e in report["best"]} == {("g00000", "m00000"), ("g00001", "m00000")}
    assert all(e["psnr_identical"] and e["psnr"] == 100.0 for e in report["best"])
    assert report["best"][0]["garment_uri"].endswith("g00000.png")
    groups = {(g["pair_kind"], g["student_version"]): g for g in report["groups"]}
    assert groups[("paired", VERSION)]["ok"] == 4 and groups[("unpaired", VERSION)]["ok"] == 2
    assert groups[("unpaired", VERSION)]["error"] == 2 and groups[("unpaired", VERSION)]["no_ground_truth"] == 1
    assert groups[("paired", VERSION)]["psnr_identical"] == 1 and groups[("unpaired", VERSION)]["psnr_identical"] == 1
    assert groups[("paired", VERSION)]["ssim_mean"] < 1.0 and groups[("paired", VERSION)]["psnr_median"] < 100.0
    assert report["overall"]["psnr_mean"] <= 100.0
    html = Path(out, "report.html").read_text()
    assert html.count('class="card') == 4 and "worst #1" in html and "data:image/jpeg;base64," in html
    md = Path(out, "report.md").read_text()
    assert "| paired | v1student00 | 4 | 4 | 0 | 0 |" in md and "identical" in md
    assert json.loads(Path(out, "summary.json").read_text())["run_id"] == s1["run_id"]

    # with (random) LPIPS weights given as lin layers + an AlexNet backbone, and Inception weights for FID
    lin_uri, bb_uri = _random_lpips_files(tmp_path)
    fid_uri = _random_inception_file(tmp_path)
    s2 = run(_config(tryon, root, out, lpips_weights=lin_uri, lpips_backbone_weights=bb_uri, fid_weights=fid_uri))
    assert s2["lpips_note"] is None and s2["lpips"] is not None and s2["lpips"] > 0
    scores = {(r["garment_id"], r["model_id"]): r for r in load_scores(out).to_pylist()}
    assert len(scores) == 9 and {r["run_id"] for r in scores.values()} == {s2["run_id"]}, "earlier scores replaced"
    for key, (_, noise) in PAIRS.items():
        r = scores[key]
        if r["status"] == "ok":
            assert r["lpips"] >= 0
            assert (r["lpips"] == 0.0) == (noise == 0.0), (key, r["lpips"])
        else:
            assert r["lpips"] is None
    # FID: the unpaired try-ons that decoded (3, incl. the one without ground truth) vs the 4 model photos
    fid = json.loads(Path(out, "report.json").read_text())["fid"]["by_version"][VERSION]
    assert (fid["n_fake"], fid["n_real"]) == (3, 4) and fid["fid"] >= 0
    assert s2["fid"] == fid["fid"] and "biased" in s2["fid_note"]


def test_junk_in_results_is_skipped_and_only_this_versions_earlier_scores_are_removed(ray_session, tmp_path):
    """Junk and a foreign table in results/ are skipped and counted; the re-run removes its own version's earlier
    scores only: another version's part, the other version's rows of a mixed part and a foreign file stay."""
    torch.set_num_threads(1)
    root, tryon = write_world(tmp_path)
    (Path(tryon) / "results" / "part-cut-000000.parquet").write_bytes(b"PAR1 cut short")
    _parquet(pa.table({"sku": ["a"], "qty": [1]}), storage.join_uri(tryon, "results", "inventory.parquet"))
    out = tmp_path / "eval"
    now = datetime.datetime.now(datetime.timezone.utc)

    def scores_part(name: str, versions: list[str]) -> None:
        rows = [{"student_version": v, "garment_id": f"g{i}", "model_id": "m0", "status": "ok", "ssim": 0.5,
                 "run_id": "old", "finished_at": now} for i, v in enumerate(versions)]
        _parquet(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), str(out / "scores" / name))

    scores_part("part-old-000000.parquet", [VERSION, VERSION])  # this version's earlier scores: removed
    scores_part("part-old-000001.parquet", ["otherversion"])  # another version's: kept as is
    scores_part("part-old-000002.parquet", [VERSION, "otherversion"])  # mixed: the other version's row stays
    _parquet(pa.table({"notes": ["mine"]}), str(out / "scores" / "notes.parquet"))  # foreign: untouched

    s = run(_config(tryon, root, str(out), student_version=VERSION))
    assert (s["pairs"], s["pairs_ok"], s["pairs_error"], s["results_files_skipped"]) == (9, 6, 2, 3)
    left = sorted(p.name for p in (out / "scores").iterdir())
    assert "part-old-000000.parquet" not in left
    assert {"part-old-000001.parquet", "part-old-000002.parquet", "notes.parquet"} <= set(left)
    assert pq.read_table(out / "scores" / "notes.parquet").to_pylist() == [{"notes": "mine"}]
    scores = load_scores(str(out)).to_pylist()
    assert Counter(r["student_version"] for r in scores) == {VERSION: 9, "otherversion": 2}
    assert len({(r["garment_id"], r["model_id"]) for r in scores if r["student_version"] == VERSION}) == 9


def test_ground_truth_manifest_on_s3(ray_session, s3_bucket):
    torch.set_num_threads(1)
    world = SyntheticWorld(2, 2, WorldConfig(height=SIZE, width=SIZE, seed=9))
    gt_rows = {"model_id": [], "garment_id": [], "image_uri": [], "paired": []}
    results = {f.name: [] for f in manifests.SCHEMAS["tryon_results"]}
    now = datetime.datetime.now(datetime.timezone.utc)
    for i, (noise, paired) in enumerate(((0.0, True), (20.0, False))):
        mid, gid = world.model_id(i), world.garment_id(1 - i if not paired else i)
        reference = world.render_person(i, int(gid[1:])).image
        gt_uri = f"{s3_bucket}/gt/{mid}__{gid}.png"
        storage.write_bytes(gt_uri, _png(reference))
        tryon_uri = f"{s3_bucket}/tryon/{VERSION}/{gid}/{mid}.jpg"
        buf = io.BytesIO()
        Image.fromarray(reference if noise == 0 else _noised(reference, noise, i)).save(buf, "JPEG", quality=95)
        storage.write_bytes(tryon_uri, buf.getvalue())
        for name, value in (("model_id", mid), ("garment_id", gid), ("image_uri", gt_uri), ("paired", paired)):
            gt_rows[name].append(value)
        for name in results:
            results[name].append({"garment_id": gid, "model_id": mid, "student_version": VERSION, "status": "ok",
                                  "image_uri": tryon_uri, "run_id": "r", "finished_at": now}.get(name))
    _parquet(pa.table(gt_rows), f"{s3_bucket}/gt.parquet")
    _parquet(pa.table(results, schema=manifests.SCHEMAS["tryon_results"]), f"{s3_bucket}/tryon/results/part-r.parquet")
    out = f"{s3_bucket}/eval"
    s = run(_config(f"{s3_bucket}/tryon/results", f"{s3_bucket}/gt.parquet", out))
    assert (s["pairs"], s["pairs_ok"], s["pairs_error"]) == (2, 2, 0)
    report = storage.read_json(s["report"])
    assert report["ground_truth_mode"] == "manifest"
    by_kind = report["by_pair_kind"]
    # a JPEG of the exact image: high but finite PSNR, SSIM just below 1; the noised one clearly lower
    assert 0.9 < by_kind["paired"]["ssim_mean"] < 1.0 and by_kind["paired"]["psnr_identical"] == 0
    assert by_kind["unpaired"]["ssim_mean"] < by_kind["paired"]["ssim_mean"] - 0.1
    assert report["best"][0]["pair_kind"] == "paired" and report["worst"][0]["pair_kind"] == "unpaired"
    assert "data:image/jpeg;base64," in storage.read_bytes(s["report_html"]).decode()
    assert len(load_scores(out)) == 2


def test_ground_truth_manifest_probe_and_cli(tmp_path):
    # a ground-truth manifest (not a dataset root): pair kinds from its optional `paired` column, else unknown
    gt_uri = str(tmp_path / "gt.csv")
    Path(gt_uri).write_text("model_id,garment_id,image_uri,paired\nm1,g1,a.png,true\nm1,g2,b.png,false\n"
                            "m2,g1,c.png,\n")
    gt = load_ground_truth(gt_uri)
    assert gt.mode == "manifest" and gt.images[("m1", "g2")] == str(tmp_path / "b.png")
    assert (gt.kind("m1", "g1"), gt.kind("m1", "g2"), gt.kind("m2", "g1"), gt.kind("m9", "g9")) == \
        ("paired", "unpaired", "unknown", "unknown")

    # configured but unusable weights: a note, never a crash
    Path(tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    probe = probe_weights(_config("r", "", "o", lpips_weights=str(tmp_path / "missing.pth"),
                                  fid_weights=str(tmp_path / "junk.pth")))
    assert not probe["lpips"] and probe["lpips_note"].startswith("LPIPS skipped: weights unavailable")
    assert not probe["fid"] and probe["fid_note"].startswith("FID skipped: weights unavailable")
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "lin_only.pth")
    probe = probe_weights(_config("r", "", "o", lpips_weights=str(tmp_path / "lin_only.pth")))
    assert not probe["lpips"] and "lin" in probe["lpips_note"]

    # CLI: a results/ folder with no rows -> an empty report, JSON summary as the last stdout line; usage error -> 2
    results = tmp_path / "tryon" / "results"
    results.mkdir(parents=True)
    pq.write_table(manifests.SCHEMAS["tryon_results"].empty_table(), results / "part-x.parquet")
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--preset", "tiny", "--results", str(results),
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 0 and summary["ssim"] is None and summary["lpips"] is None
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    proc = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--output", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--results is required" in proc.stderr


def test_perceptual_networks_and_frechet_distance():
    torch.set_num_threads(1)
    # FID's closed form: N(0, I) vs N(1, 4I) in 2-D: |1|²·2 + 2 + 8 − 2·Tr(2I) = 4
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)) == pytest.approx(4.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)
    # fewer samples than dimensions: the low-rank form equals sqrtm on the (singular) sample covariances
    from pfafn.perceptual import feature_statistics

    small_a, small_b = rng.normal(size=(5, 12)), rng.normal(1.0, 2.0, size=(7, 12))
    reference = frechet_distance(*feature_statistics(small_a), *feature_statistics(small_b), eps=0.0)
    assert fid_from_features(small_a, small_b) == pytest.approx(reference, rel=1e-6)
    # LPIPS: a full state dict (lpips-package layout, with the `lins.N` aliases) loads; lin weights are clamped >= 0
    torch.manual_seed(1)
    state = LPIPS("vgg").state_dict()
    state = {k: (torch.randn_like(v) if k.startswith("lin") else v) for k, v in state.items()}
    state.update({k.replace("lin", "lins.", 1): v for k, v in list(state.items()) if k.startswith("lin")})
    model = build_lpips(state)
    assert model.net_type == "vgg" and all(getattr(model, f"lin{k}").model[1].weight.min() >= 0 for k in range(5))
    x = torch.rand(2, 3, 48, 48)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    d = model(x, y)
    assert d.shape == (2,) and (d >= 0).all() and (model(x, x) == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        bad = dict(state)
        bad["net.slice1.0.weight"] = torch.zeros(1)
        build_lpips(bad)
