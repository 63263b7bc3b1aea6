"""Catalog planning and the QA gallery over 10M result rows: wall time and peak RSS (issue 12, item 5).

Writes a catalog output the way the catalog stage leaves it after months of nightly runs, then measures, in a fresh
subprocess (so ``ru_maxrss`` is the measured part's own peak, imports included):

* **plan** — ``plan_tiles``: both manifests, the done set of the current student version from every result part,
  and the tiles of what is left (one new garment);
* **gallery** — the catalog's gallery hook and ``write_gallery``: the stable sample over all pairs, the sampled pairs'
  rows, the HTML (thumbnails of images that do not exist here are placeholders: the rows are what is measured).

The world: ``garments × models`` manifests with realistic ids; result parts of ``parts`` equal files holding, in
order, every pair of all garments but the last for the current version (every ``error_every``-th an error row),
a later ``ok`` row for each of those errors (a retry), and rows of two older student versions up to ``rows`` rows.
Targets: <= 60 s and <= 2 GB (issue 12). Prints one JSON object.

    .venv/bin/python benchmarks/results_scale.py                      # 10M rows, 3000 x 3000, 100 parts
    .venv/bin/python benchmarks/results_scale.py --rows 20000 --garments 140 --models 140 --parts 4
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VERSION = "5f0c3a9be21d"  # the current student version (a weights content id looks like this)
OLD_VERSIONS = ("0a4471c2d9e8", "93be00f1a7c4")
ERROR = "inference: RuntimeError: CUDA error: an illegal memory access was encountered"


def garment_ids(n: int) -> list[str]:
    return [f"SKU-{i:06d}-{hashlib.sha1(str(i).encode()).hexdigest()[:6].upper()}" for i in range(n)]


def model_ids(n: int) -> list[str]:
    return [f"model_{i:05d}_{'fm'[i % 2]}" for i in range(n)]


def _plan_rows(n_g: int, n_m: int, rows: int, error_every: int, seed: int) -> dict[str, np.ndarray]:
    """The whole row sequence as index arrays: garment, model, version (0 = current), ok."""
    base = np.arange((n_g - 1) * n_m, dtype=np.int64)  # every pair but the new garment's
    ok = (base % error_every) != 7 % error_every
    retry = base[~ok]
    n_old = max(0, rows - len(base) - len(retry))
    rng = np.random.default_rng(seed)
    old = rng.integers(0, n_g * n_m, n_old, dtype=np.int64)
    codes = np.concatenate([base, retry, old])
    return {"g": (codes // n_m).astype(np.int32), "m": (codes % n_m).astype(np.int32),
            "version": np.concatenate([np.zeros(len(base) + len(retry), np.int8),
                                       1 + (np.arange(n_old) % 2).astype(np.int8)]),
            "ok": np.concatenate([ok, np.ones(len(retry) + n_old, bool)])}


def write_world(root: str, n_garments: int, n_models: int, *, rows: int, parts: int, error_every: int = 100,
                seed: int = 0) -> dict:
    """Manifests and result parts under ``root``; returns what the measurement needs."""
    from pipelines.core import manifests, storage
    from pipelines.stages.catalog_tryon import RESULTS_SCHEMA

    g_ids, m_ids = garment_ids(n_garments), model_ids(n_models)
    manifests.write_manifest(pa.table({"garment_id": g_ids, "image_uri": [f"garments/{g}.jpg" for g in g_ids]}),
                             storage.join_uri(root, "garments.parquet"))
    manifests.write_manifest(pa.table({"model_id": m_ids, "image_uri": [f"models/{m}.jpg" for m in m_ids]}),
                             storage.join_uri(root, "models.parquet"))
    plan = _plan_rows(n_garments, n_models, rows, error_every, seed)
    out = storage.join_uri(root, "out")
    g_arr, m_arr = pa.array(g_ids), pa.array(m_ids)
    versions = pa.array((VERSION, *OLD_VERSIONS))
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    total = len(plan["g"])
    bounds = np.linspace(0, total, parts + 1).astype(np.int64)
    for p in range(parts):
        sl = slice(int(bounds[p]), int(bounds[p + 1]))
        n = sl.stop - sl.start
        gid, mid = g_arr.take(pa.array(plan["g"][sl])), m_arr.take(pa.array(plan["m"][sl]))
        version = versions.take(pa.array(plan["version"][sl]))
        ok = pa.array(plan["ok"][sl])
        uri = pc.binary_join_element_wise(out, version, gid, pc.binary_join_element_wise(mid, ".jpg", ""), "/")
        table = pa.table({
            "garment_id": gid, "model_id": mid, "student_version": version,
            "status": pc.if_else(ok, "ok", "error"),
            "error": pc.if_else(ok, pa.scalar(None, pa.string()), ERROR),
            "image_uri": pc.if_else(ok, uri, pa.scalar(None, pa.string())),
            "decode_ms": np.full(n, 3.5), "model_ms": np.full(n, 11.0), "encode_ms": np.full(n, 1.5),
            "run_id": pa.array([f"2026{p:04d}T010000-{p:04x}"] * n),
            "finished_at": pa.array([t0 + datetime.timedelta(hours=p)] * n, pa.timestamp("ms", tz="UTC")),
            "output_height": pc.if_else(ok, pa.scalar(256, pa.int32()), pa.scalar(None, pa.int32())),
            "output_width": pc.if_else(ok, pa.scalar(192, pa.int32()), pa.scalar(None, pa.int32())),
        }, schema=RESULTS_SCHEMA)
        manifests.write_manifest(table, storage.join_uri(out, "results", f"part-{p:04d}-000000.parquet"))
    return {"root": root, "output": out, "version": VERSION, "rows": int(total), "parts": parts,
            "garments": n_garments, "models": n_models, "current_version_rows": int((plan["version"] == 0).sum()),
            "error_rows": int((~plan["ok"]).sum())}


def measure(world: dict, gallery_size: int = 36, tile_size: int = 16) -> dict:
    """Plan and gallery in this process, as the catalog stage runs them; times and peak RSS."""
    from pipelines.batch import BatchRun
    from pipelines.core import gallery, storage
    from pipelines.stages.catalog_tryon import CatalogConfig, CatalogTryOn, plan_tiles

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = CatalogConfig(garments=storage.join_uri(world["root"], "garments.parquet"),
                           models=storage.join_uri(world["root"], "models.parquet"), output=world["output"],
                           student="unused.pt", tile_size=tile_size, gallery_size=gallery_size)
    started = time.perf_counter()
    plan = plan_tiles(config, world["version"])
    plan_s = time.perf_counter() - started
    stage = CatalogTryOn(config)
    stage.planned = plan
    run = BatchRun(run_id="bench", started=time.time(), version=world["version"])
    summary = {"pairs_ok": 0, "pairs_error": 0, "pairs_skipped": plan.pairs_skipped}
    started = time.perf_counter()
    index = gallery.write_gallery(world["output"], run.run_id, stage.gallery(run, summary), gallery_size,
                                  salt=run.version)
    gallery_s = time.perf_counter() - started
    page = storage.read_bytes(index).decode()
    return {"plan_s": round(plan_s, 2), "gallery_s": round(gallery_s, 2), "total_s": round(plan_s + gallery_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(rss_start, 1), "pairs_done": plan.pairs_skipped,
            "pairs_todo": plan.pairs_todo, "tiles": len(plan.tiles), "gallery_cards": page.count('class="card'),
            "gallery_error_cards": page.count('class="card error"'), "results_files_skipped": len(plan.skipped)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--garments", type=int, default=3000)
    ap.add_argument("--models", type=int, default=3000)
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--root", default="", help="where to write the world (default: a temporary folder, removed); "
                    "a folder holding a world of the same arguments (its world.json) is measured again, not rewritten")
    ap.add_argument("--measure", default="", help=argparse.SUPPRESS)  # internal: the subprocess's world JSON
    args = ap.parse_args(argv)
    if args.measure:
        result = measure(json.loads(args.measure))
        print(json.dumps(result))
        return result
    root = args.root or tempfile.mkdtemp(prefix="results_scale_")
    try:
        started = time.perf_counter()
        saved, asked = Path(root, "world.json"), [args.garments, args.models, args.rows, args.parts]
        world = json.loads(saved.read_text()) if saved.is_file() else {}
        if world.get("args") != asked:
            world = write_world(root, args.garments, args.models, rows=args.rows, parts=args.parts) | {"args": asked}
            saved.write_text(json.dumps(world))
        write_s = time.perf_counter() - started
        proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(world)], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    from benchmarks.machine import cpu_name

    result = {"world": {k: v for k, v in world.items() if k not in ("root", "output", "args")},
              "write_s": round(write_s, 1),
              **measured, "targets": {"total_s": 60, "peak_rss_mb": 2048},
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}}
    result["meets_targets"] = result["total_s"] <= 60 and result["peak_rss_mb"] <= 2048
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
