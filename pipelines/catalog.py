"""Stage 3: catalog try-on — every garment on every model, tiled, incremental, idempotent, with a QA gallery.

Pipeline (reads top to bottom)::

    manifests ──► done set (results of earlier runs) ──► tiles of (garment block × model block) with the pairs to do
        ──► decode (CPU tasks: read bytes, decode, fit to H×W, garment masks)
        ──► try-on (model actor pool: encode garments and models once per tile, flow + generator per pair batch)
        ──► write (CPU tasks: JPEG per pair at {output}/{student_version}/{garment_id}/{model_id}.jpg, then the tile's
            result rows as one Parquet file under {output}/results/ — the commit point)
        ──► summary JSON + QA gallery

Rows stay ids/URIs until the decode stage. A pair is *done* when an ``ok`` row for it and this student version exists
under ``{output}/results/``; done pairs are removed before any pixel is decoded. Images are written before their
result rows, so a killed run leaves at most images without rows, and the re-run recomputes exactly those pairs and
overwrites the same keys: one ``ok`` row per pair, no orphans. A run lock on the output keeps two runs apart.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import manifests, storage
from pipelines.config import absolute_paths
from pipelines.batch import (BatchStageConfig, decode_garment, decode_photo, error_reason, peak_rss_mb, progress,
                             resolve_channels_last, resolve_precision, stack_ragged, stream_units)
from pipelines.errors import StageError

log = logging.getLogger(__name__)

RESULTS_DIR = "results"


@dataclass
class CatalogConfig(BatchStageConfig):
    """Config of the catalog try-on stage (``jobs.catalog_tryon``); every field is documented in jobs/configs/catalog.yaml."""

    garments: str = ""
    models: str = ""
    output: str = ""
    student: str = ""
    official_warp: str = ""
    official_gen: str = ""
    tile_size: int = 16
    jpeg_quality: int = 95
    gallery_size: int = 36

    def validate(self) -> None:
        self.validate_common("catalog", ("garments", "models", "output"))
        if bool(self.student) == bool(self.official_warp or self.official_gen):
            raise StageError("catalog: give either --student or both --official-warp and --official-gen")
        if not self.student and not (self.official_warp and self.official_gen):
            raise StageError("catalog: --official-warp and --official-gen must be given together")
        if self.tile_size < 1:
            raise StageError("catalog: tile_size must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise StageError("catalog: jpeg_quality must be within 1..100")


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"height": 128, "width": 96, "batch_size": 8, "tile_size": 4, "gallery_size": 12},
    "cpu": {"height": 256, "width": 192, "batch_size": 8, "tile_size": 8},
    "published": {"height": 256, "width": 192, "batch_size": 32, "tile_size": 32},
}


# ----------------------------------------------------------------------------------------------------------------------
# Student model: a project checkpoint or the two published-format files.


@dataclass(frozen=True)
class StudentSpec:
    student: str = ""
    official_warp: str = ""
    official_gen: str = ""

    def load(self, map_location: str = "cpu"):
        """Return ``(TryOnModel in eval mode, version)``; the version is the weights' content id."""
        from pfafn import checkpoint, load_official

        if self.student:
            loaded = checkpoint.load_checkpoint(self.student, map_location=map_location)
            if loaded.kind != "student":
                raise StageError(f"{self.student} is a {loaded.kind} checkpoint; catalog try-on needs a student")
            return loaded.tryon_model().eval(), loaded.version
        model = load_official(self.official_warp, self.official_gen, map_location=map_location)
        return model, checkpoint.weights_version(model.warp, model.gen)

    def version(self) -> str:
        try:
            return self.load()[1]
        except StageError:
            raise
        except Exception as exc:  # unreadable or invalid checkpoint: the whole run cannot start
            raise StageError(f"cannot load the student: {exc}") from exc


# ----------------------------------------------------------------------------------------------------------------------
# Planning: manifests, done set, tiles.


@dataclass
class Plan:
    garments: list[dict]
    models: list[dict]
    rejected_garments: list[tuple[str, str]]
    rejected_models: list[tuple[str, str]]
    tiles: list[dict]
    pairs_total: int
    pairs_skipped: int
    pairs_todo: int


def load_done_pairs(output: str, student_version: str) -> pa.Table:
    """The ``(garment_id, model_id)`` pairs with an ``ok`` row for this student version under ``{output}/results/``."""
    import pyarrow.compute as pc

    results = load_results(output, student_version)
    return results.filter(pc.equal(results["status"], "ok")).select(["garment_id", "model_id"])


def _codes(done: pa.Table, g_index: dict[str, int], m_index: dict[str, int], n_models: int) -> np.ndarray:
    g = np.fromiter((g_index.get(x, -1) for x in done["garment_id"].to_pylist()), dtype=np.int64, count=done.num_rows)
    m = np.fromiter((m_index.get(x, -1) for x in done["model_id"].to_pylist()), dtype=np.int64, count=done.num_rows)
    keep = (g >= 0) & (m >= 0)
    return np.unique(g[keep] * n_models + m[keep])


def plan_tiles(config: CatalogConfig, student_version: str) -> Plan:
    g_load = manifests.load_manifest(config.garments, "garments")
    m_load = manifests.load_manifest(config.models, "models")
    garments = g_load.rows.to_pylist()
    models = m_load.rows.to_pylist()
    rejected_g = [(r["id"], r["error"]) for r in g_load.rejected.to_pylist()]
    rejected_m = [(r["id"], r["error"]) for r in m_load.rejected.to_pylist()]
    n_g, n_m = len(garments), len(models)
    g_index = {row["garment_id"]: i for i, row in enumerate(garments)}
    m_index = {row["model_id"]: i for i, row in enumerate(models)}
    done_codes = _codes(load_done_pairs(config.output, student_version), g_index, m_index, n_m)

    tiles = []
    t = config.tile_size
    m_blocks = [list(range(s, min(s + t, n_m))) for s in range(0, n_m, t)]
    for g_start in range(0, n_g, t):
        g_block = list(range(g_start, min(g_start + t, n_g)))
        for m_block in m_blocks:
            codes = np.asarray(g_block, dtype=np.int64)[:, None] * n_m + np.asarray(m_block, dtype=np.int64)[None, :]
            todo = ~np.isin(codes.ravel(), done_codes)
            if not todo.any():
                continue
            tiles.append(
                {
                    "tile": len(tiles),
                    "garment_ids": [garments[i]["garment_id"] for i in g_block],
                    "garment_uris": [garments[i]["image_uri"] for i in g_block],
                    "mask_uris": [garments[i].get("mask_uri") or "" for i in g_block],
                    "model_ids": [models[i]["model_id"] for i in m_block],
                    "model_uris": [models[i]["image_uri"] for i in m_block],
                    "todo": np.flatnonzero(todo).astype(np.int64).tolist(),
                }
            )
    pairs_total = (n_g + len(rejected_g)) * (n_m + len(rejected_m))
    pairs_todo = sum(len(tile["todo"]) for tile in tiles)
    return Plan(
        garments=garments,
        models=models,
        rejected_garments=rejected_g,
        rejected_models=rejected_m,
        tiles=tiles,
        pairs_total=pairs_total,
        pairs_skipped=len(done_codes),
        pairs_todo=pairs_todo,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1 (CPU tasks): decode a tile.


def decode_tile(row: dict, cfg: dict) -> dict:
    """Read and decode one tile's images; a bad image becomes an error string, never an exception."""
    started = time.perf_counter()
    h, w = cfg["height"], cfg["width"]
    n_g, n_m = len(row["garment_ids"]), len(row["model_ids"])
    garments = np.zeros((n_g, h, w, 3), np.uint8)
    masks = np.zeros((n_g, h, w), np.uint8)
    persons = np.zeros((n_m, h, w, 3), np.uint8)
    g_errors: list[str | None] = [None] * n_g
    m_errors: list[str | None] = [None] * n_m
    todo = np.asarray(row["todo"], dtype=np.int64)
    needed_g = set((todo // n_m).tolist())
    needed_m = set((todo % n_m).tolist())
    for i in sorted(needed_g):
        try:
            garments[i], masks[i] = decode_garment(row["garment_uris"][i], row["mask_uris"][i], cfg)
        except Exception as exc:  # every failure becomes this garment's error rows
            g_errors[i] = error_reason("garment", exc)
    for i in sorted(needed_m):
        try:
            persons[i] = decode_photo(row["model_uris"][i], cfg)
        except Exception as exc:
            m_errors[i] = error_reason("model", exc)
    meta = {"tile": int(row["tile"]), "garment_ids": [str(x) for x in row["garment_ids"]],
            "model_ids": [str(x) for x in row["model_ids"]]}
    meta.update(todo=todo.tolist(), garment_errors=g_errors, model_errors=m_errors,
                decode_ms=(time.perf_counter() - started) * 1e3)
    return {"meta": json.dumps(meta), "garments": garments, "masks": masks, "persons": persons}


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2 (actor pool): the model.


class TryOnActor:
    """Holds one student on one device; turns a decoded tile into try-on images (uint8) and per-pair errors."""

    def __init__(self, spec: StudentSpec, cfg: dict):
        import torch

        from pfafn.inference import InferenceMode

        self.device = cfg["device"]
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg["torch_threads"]))
        model, self.version = spec.load(map_location="cpu")
        precision = resolve_precision(cfg["precision"], self.device)
        channels_last = resolve_channels_last(cfg["channels_last"], self.device, precision)
        self.mode = InferenceMode(dtype=precision, channels_last=channels_last, compile=cfg["compile"])
        self.model = self.mode.prepare(model.to(self.device).eval())
        self.batch_size = cfg["batch_size"]
        self.precision = precision

    def __call__(self, batch: dict) -> dict:
        out_meta, out_images = [], []
        for meta_json, garments, masks, persons in zip(batch["meta"], batch["garments"], batch["masks"], batch["persons"]):
            meta, images = self._tile(json.loads(meta_json), garments, masks, persons)
            out_meta.append(json.dumps(meta))
            out_images.append(images)
        return {"meta": np.array(out_meta, dtype=object), "images": stack_ragged(out_images)}

    def _tile(self, meta: dict, garments, masks, persons) -> tuple[dict, np.ndarray]:
        import torch

        from pfafn import imageio
        from pfafn.tiling import encode_tile, tryon_pairs

        started = time.perf_counter()
        n_m = len(meta["model_ids"])
        todo = np.asarray(meta["todo"], dtype=np.int64)
        g_err, m_err = meta["garment_errors"], meta["model_errors"]
        pair_errors: list[str | None] = []
        runnable = []
        for code in todo.tolist():
            g, m = divmod(code, n_m)
            reason = g_err[g] or m_err[m]
            pair_errors.append(reason)
            if reason is None:
                runnable.append(len(pair_errors) - 1)
        h, w = persons.shape[1:3]
        images = np.zeros((len(runnable), h, w, 3), np.uint8)
        if runnable:
            g_idx = (todo[runnable] // n_m)
            m_idx = (todo[runnable] % n_m)
            g_used, g_local = np.unique(g_idx, return_inverse=True)
            m_used, m_local = np.unique(m_idx, return_inverse=True)
            dev = self.device
            to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)
            person_t = torch.stack([to_t(imageio.to_model_tensor(persons[i])) for i in m_used])
            garment_t = torch.stack([to_t(imageio.to_model_tensor(garments[i])) for i in g_used])
            mask_t = to_t(masks[g_used].astype(np.float32) / 255.0).unsqueeze(1)
            try:
                with self.mode.autocast(dev):
                    tile = encode_tile(self.model, person_t, garment_t, mask_t, chunk=self.batch_size)
                    for sl, out in tryon_pairs(self.model, tile, g_local, m_local, batch_size=self.batch_size):
                        tryon = out.tryon.float()
                        if not torch.isfinite(tryon).all():
                            raise FloatingPointError("non-finite try-on output")
                        images[sl] = ((tryon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            except Exception as exc:  # a model failure fails this tile's pairs, not the job
                reason = error_reason("model", exc)
                for k in runnable:
                    pair_errors[k] = reason
                runnable = []
                images = images[:0]
        meta.update(pair_errors=pair_errors, model_ms=(time.perf_counter() - started) * 1e3,
                    student_version=self.version, precision=self.precision, actor_peak_rss_mb=peak_rss_mb())
        return meta, images


# ----------------------------------------------------------------------------------------------------------------------
# Stage 3 (CPU tasks): write images, then the tile's result rows (the commit point).


def image_key(output: str, student_version: str, garment_id: str, model_id: str) -> str:
    """``{output}/{student_version}/{garment_id}/{model_id}.jpg`` — ids are validated before they get here."""
    manifests.validate_id(garment_id)
    manifests.validate_id(model_id)
    return storage.join_uri(output, student_version, garment_id, f"{model_id}.jpg")


def write_tile(meta: dict, images: np.ndarray, cfg: dict) -> dict:
    from pfafn import imageio

    n_m = len(meta["model_ids"])
    version = meta["student_version"]
    todo = meta["todo"]
    n_pairs = max(1, len(todo))
    decode_ms = meta["decode_ms"] / n_pairs
    model_ms = meta["model_ms"] / n_pairs
    rows: dict[str, list] = {k: [] for k in RESULT_COLUMNS}
    k_image = 0
    for code, error in zip(todo, meta["pair_errors"]):
        g, m = divmod(code, n_m)
        gid, mid = meta["garment_ids"][g], meta["model_ids"][m]
        uri, encode_ms = "", 0.0
        if error is None:
            t0 = time.perf_counter()
            try:
                uri = image_key(cfg["output"], version, gid, mid)
                storage.write_bytes(uri, imageio.encode_jpeg(images[k_image], quality=cfg["jpeg_quality"]))
            except Exception as exc:
                error, uri = error_reason("write", exc), ""
            encode_ms = (time.perf_counter() - t0) * 1e3
            k_image += 1
        _append_row(rows, gid, mid, version, error, uri, decode_ms, model_ms, encode_ms, cfg["run_id"])
    table = results_table(rows)
    dest = storage.join_uri(cfg["output"], RESULTS_DIR, f"part-{cfg['run_id']}-{meta['tile']:06d}.parquet")
    manifests.write_manifest(table, dest)
    n_ok = sum(1 for s in rows["status"] if s == "ok")
    return {"tile": meta["tile"], "ok": n_ok, "error": len(todo) - n_ok, "results": dest,
            "actor_peak_rss_mb": meta.get("actor_peak_rss_mb", 0.0), "precision": meta.get("precision", "")}


RESULT_COLUMNS = ("garment_id", "model_id", "student_version", "status", "error", "image_uri",
                  "decode_ms", "model_ms", "encode_ms", "run_id", "finished_at")


def _append_row(rows, gid, mid, version, error, uri, decode_ms, model_ms, encode_ms, run_id) -> None:
    rows["garment_id"].append(gid)
    rows["model_id"].append(mid)
    rows["student_version"].append(version)
    rows["status"].append("ok" if error is None else "error")
    rows["error"].append(error)
    rows["image_uri"].append(uri or None)
    rows["decode_ms"].append(float(decode_ms))
    rows["model_ms"].append(float(model_ms))
    rows["encode_ms"].append(float(encode_ms))
    rows["run_id"].append(run_id)
    rows["finished_at"].append(datetime.datetime.now(datetime.timezone.utc))


def results_table(rows: dict[str, list]) -> pa.Table:
    """Result rows as a table with the documented ``tryon_results`` schema."""
    return pa.table({k: rows[k] for k in RESULT_COLUMNS}, schema=manifests.SCHEMAS["tryon_results"])


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def _rejected_rows(plan: Plan, version: str, run_id: str) -> dict[str, list]:
    """Error rows for every pair whose garment or model row was rejected by manifest validation."""
    rows: dict[str, list] = {k: [] for k in RESULT_COLUMNS}
    all_models = [(m["model_id"], None) for m in plan.models] + [(mid, f"model row rejected: {why}") for mid, why in plan.rejected_models]
    for gid, why in plan.rejected_garments:
        for mid, _ in all_models:
            _append_row(rows, gid, mid, version, f"garment row rejected: {why}", "", 0, 0, 0, run_id)
    for g in plan.garments:
        for mid, why in plan.rejected_models:
            _append_row(rows, g["garment_id"], mid, version, f"model row rejected: {why}", "", 0, 0, 0, run_id)
    return rows


def run(config: CatalogConfig) -> dict[str, Any]:
    """Run the catalog stage; returns (and writes under the output) the run summary."""

    from pipelines.locking import lock_output, new_run_id, write_run_summary
    from pipelines.ray_env import ensure_ray, model_actor_plan

    config.validate()
    config = absolute_paths(config, "garments", "models", "output", "student", "official_warp", "official_gen")
    started = time.time()
    run_id = new_run_id(config.run_id)
    spec = StudentSpec(config.student, config.official_warp, config.official_gen)
    version = spec.version()
    lock = lock_output(config.output, run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock)
    try:
        plan = plan_tiles(config, version)
        log.info("catalog %s: %d garments x %d models (+%d/%d rejected rows): %d pairs, %d done before, %d to do in %d tiles",
                 run_id, len(plan.garments), len(plan.models), len(plan.rejected_garments), len(plan.rejected_models),
                 plan.pairs_total, plan.pairs_skipped, plan.pairs_todo, len(plan.tiles))
        pairs_ok = pairs_error = 0
        actor_plan = None
        executed: dict[str, Any] = {}
        rejected = _rejected_rows(plan, version, run_id)
        if rejected["garment_id"]:
            manifests.write_manifest(results_table(rejected),
                                     storage.join_uri(config.output, RESULTS_DIR, f"part-{run_id}-rejected.parquet"))
            pairs_error += len(rejected["garment_id"])
        if plan.tiles:
            ensure_ray()
            actor_plan = model_actor_plan(config.device, config.actors, config.cpus_per_actor)
            cfg = dataclasses.asdict(config) | {"run_id": run_id, "device": actor_plan.device}
            if not cfg["torch_threads"] and actor_plan.device == "cpu":
                cfg["torch_threads"] = max(1, int(round(actor_plan.num_cpus * 2)))
            executed = _execute(plan, spec, cfg, actor_plan)
            pairs_ok = executed["ok"]
            pairs_error += executed["error"]
        elapsed = time.time() - started
        attempted = pairs_ok + pairs_error
        summary: dict[str, Any] = {
            "stage": "catalog_tryon",
            "run_id": run_id,
            "student_version": version,
            "output": config.output,
            "results": storage.join_uri(config.output, RESULTS_DIR),
            "garments": len(plan.garments) + len(plan.rejected_garments),
            "models": len(plan.models) + len(plan.rejected_models),
            "rejected_rows": len(plan.rejected_garments) + len(plan.rejected_models),
            "pairs_total": plan.pairs_total,
            "pairs_skipped": plan.pairs_skipped,
            "pairs_ok": pairs_ok,
            "pairs_error": pairs_error,
            "pairs_attempted": attempted,
            "error_rate": round(pairs_error / attempted, 6) if attempted else 0.0,
            "tiles": len(plan.tiles),
            "wall_s": round(elapsed, 3),
            "pairs_per_s": round(pairs_ok / elapsed, 3) if elapsed > 0 else 0.0,
            "height": config.height,
            "width": config.width,
            "actors": actor_plan.size if actor_plan else 0,
            "device": actor_plan.device if actor_plan else None,
            "precision": executed.get("precision") or None,
            "actor_peak_rss_mb": executed.get("actor_peak_rss_mb"),
        }
        summary["gallery"] = _write_gallery(config, plan, version, run_id, summary)
        summary["exceeded_error_rate"] = bool(attempted and pairs_error / attempted > config.max_error_rate)
        write_run_summary(config.output, run_id, summary)
        return summary
    finally:
        lock.release()


def load_results(output: str, student_version: str | None = None) -> pa.Table:
    """All result rows under ``{output}/results/`` (optionally of one student version)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = storage.join_uri(output, RESULTS_DIR)
    files = storage.list_files(root, suffix=".parquet") if storage.exists(root) else []
    schema = manifests.SCHEMAS["tryon_results"]
    parts = []
    for uri in files:
        fs, path = storage.pyarrow_filesystem(uri)
        t = pq.read_table(path, filesystem=fs)
        if student_version is not None:
            t = t.filter(pc.equal(t["student_version"], student_version))
        parts.append(t.cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _write_gallery(config: CatalogConfig, plan: Plan, version: str, run_id: str, summary: dict) -> str | None:
    from pipelines import gallery

    if config.gallery_size <= 0:
        return None
    results = load_results(config.output, version)
    items = gallery.catalog_gallery_items(
        results,
        {g["garment_id"]: g["image_uri"] for g in plan.garments},
        {m["model_id"]: m["image_uri"] for m in plan.models},
        config.gallery_size,
        salt=version,
    )
    meta = (f"student {version} · run {run_id} · {summary['pairs_ok']} ok / {summary['pairs_error']} error this run, "
            f"{summary['pairs_skipped']} done before · {config.height}x{config.width}")
    page = gallery.render_html(f"Catalog try-on QA · {version}", items, meta)
    gallery.write_html(storage.join_uri(config.output, "gallery", f"{run_id}.html"), page)
    return gallery.write_html(storage.join_uri(config.output, "gallery", "index.html"), page)


def _execute(plan: Plan, spec: StudentSpec, cfg: dict, actor_plan) -> dict[str, Any]:
    ok = err = done = 0
    peak_rss, precision = 0.0, ""
    total = len(plan.tiles)
    for row in stream_units(
        plan.tiles,
        decode=lambda row: decode_tile(row, cfg),
        write=lambda meta, images: write_tile(meta, images, cfg),
        actor_plan=actor_plan,
        model_cls=TryOnActor,
        model_kwargs={"spec": spec, "cfg": cfg},
    ):
        ok += int(row["ok"])
        err += int(row["error"])
        done += 1
        peak_rss = max(peak_rss, float(row["actor_peak_rss_mb"]))
        precision = str(row["precision"])
        if progress(done, total):
            log.info("tiles %d/%d written: %d ok, %d error pairs", done, total, ok, err)
    return {"ok": ok, "error": err, "actor_peak_rss_mb": round(peak_rss, 1), "precision": precision}
