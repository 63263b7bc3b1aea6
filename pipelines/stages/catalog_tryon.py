"""Stage 3: catalog try-on — every garment on every model, tiled, incremental, idempotent, with a QA gallery.

A :class:`pipelines.batch.BatchStage` (the shared skeleton runs it); what is particular to the catalog::

    manifests ──► done set (ok rows of this student version) ──► tiles of (garment block × model block) with the
        pairs still to do
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

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.batch import (BatchRun, BatchStage, BatchStageConfig, UnitActor, commit_part, decode_garment,
                             decode_photo, error_reason, first_errors, part_uri, peak_rss_mb, read_parts, reason_for,
                             result_row, rows_table, run_batch_stage, store_image)
from pipelines.core import manifests, parts, storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
RESULTS_SCHEMA = manifests.SCHEMAS["tryon_results"]
RESULTS_SPEC = manifests.SPECS["tryon_results"]


@dataclass
class CatalogConfig(BatchStageConfig):
    """Config of the catalog try-on stage (``jobs.catalog_tryon``); every field is documented in
    jobs/configs/catalog.yaml."""

    garments: str = ""
    models: str = ""
    student: str = ""
    official_warp: str = ""
    official_gen: str = ""
    tile_size: int = 16
    jpeg_quality: int = 95
    gallery_size: int = 36

    def validate(self) -> None:
        self.validate_common("catalog", ("garments", "models", "output"))
        if bool(self.student) == bool(self.official_warp or self.official_gen):
            raise ConfigError("catalog: give either --student or both --official-warp and --official-gen")
        if not self.student and not (self.official_warp and self.official_gen):
            raise ConfigError("catalog: --official-warp and --official-gen must be given together")
        if self.tile_size < 1:
            raise ConfigError("catalog: tile_size must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("catalog: jpeg_quality must be within 1..100")


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
    index: parts.PairIndex  # garment ids (valid, then rejected) × model ids (valid, then rejected)
    status: parts.PairStatus  # this student version's done and failed pairs, codes of ``index``
    skipped: parts.Skipped  # files under results/ that are not result parts


def _sources(output: str, student_version: str | None) -> list[parts.Source]:
    where = {"student_version": student_version} if student_version is not None else None
    return [(storage.join_uri(output, RESULTS_DIR), where)]


def load_results(output: str, student_version: str | None = None, skipped: parts.Skipped | None = None) -> pa.Table:
    """All result rows under ``{output}/results/`` (optionally of one student version), materialised: for tests,
    tools and small outputs; planning and the gallery read :mod:`pipelines.core.parts`' codes instead."""
    ((root, where),) = _sources(output, student_version)
    return read_parts(root, "tryon_results", where=where, skipped=skipped)


def result_index(garments: list[dict], models: list[dict], rejected_garments: list[tuple[str, str]],
                 rejected_models: list[tuple[str, str]]) -> parts.PairIndex:
    """Pair codes over the manifests' ids, the rejected rows' ids after the valid ones (their error rows are pairs
    too, reported once)."""
    return parts.PairIndex.of([g["garment_id"] for g in garments] + [gid for gid, _ in rejected_garments],
                              [m["model_id"] for m in models] + [mid for mid, _ in rejected_models])


def load_status(output: str, student_version: str, index: parts.PairIndex,
                skipped: parts.Skipped | None = None) -> parts.PairStatus:
    """The done set (pairs with an ``ok`` row of this student version) and the failed pairs, as codes of ``index``;
    junk under results/ is skipped and recorded in ``skipped``."""
    return parts.pair_status(_sources(output, student_version), RESULTS_SPEC, index, "garment_id", "model_id",
                             skipped=skipped)


def _codes(codes: np.ndarray, index: parts.PairIndex, n_garments: int, n_models: int) -> np.ndarray:
    """``index`` codes of valid × valid pairs as the tiles' codes ``g·M + m`` (sorted: the map keeps the order)."""
    g, m = index.split(codes)
    keep = (g < n_garments) & (m < n_models)
    return g[keep] * n_models + m[keep]


def _tile(garments: list[dict], models: list[dict], g_block: range, m_block: range, todo: np.ndarray,
          index: int) -> dict:
    """One unit: the ids and URIs of a garment block × model block and the pair codes (``g·M + m``) still to do."""
    return {
        "tile": index,
        "garment_ids": [garments[i]["garment_id"] for i in g_block],
        "garment_uris": [garments[i]["image_uri"] for i in g_block],
        "mask_uris": [garments[i].get("mask_uri") or "" for i in g_block],
        "model_ids": [models[i]["model_id"] for i in m_block],
        "model_uris": [models[i]["image_uri"] for i in m_block],
        "todo": np.flatnonzero(todo).astype(np.int64).tolist(),
    }


def _blocks(garments: list[dict], models: list[dict], done: np.ndarray, t: int) -> list[dict]:
    """Tiles of ``t`` × ``t`` with their pairs not in ``done`` (sorted codes ``g·M + m``). A garment block's codes are
    one contiguous range, so its done pairs are one ``searchsorted`` slice: no per-pair work for done blocks."""
    n_g, n_m = len(garments), len(models)
    tiles: list[dict] = []
    for g_start in range(0, n_g, t):
        g_end = min(g_start + t, n_g)
        lo, hi = g_start * n_m, g_end * n_m
        a, b = np.searchsorted(done, [lo, hi])
        if b - a == hi - lo:
            continue
        todo = np.ones(hi - lo, bool)
        todo[done[a:b] - lo] = False
        todo = todo.reshape(g_end - g_start, n_m)
        for m_start in range(0, n_m, t):
            block = todo[:, m_start:m_start + t]
            if block.any():
                tiles.append(_tile(garments, models, range(g_start, g_end), range(m_start, min(m_start + t, n_m)),
                                   block.ravel(), len(tiles)))
    return tiles


def plan_tiles(config: CatalogConfig, student_version: str) -> Plan:
    """Cut the garment × model product into tiles of ``tile_size`` × ``tile_size`` without the done pairs. Neither
    the pair table nor the result rows are materialised: done pairs are a sorted int64 array of codes ``g·M + m``
    (three columns read per result part, ids turned into codes in Arrow)."""
    g_load = manifests.load_manifest(config.garments, "garments")
    m_load = manifests.load_manifest(config.models, "models")
    garments, models = g_load.rows.to_pylist(), m_load.rows.to_pylist()
    rejected_g = [(r["id"], r["error"]) for r in g_load.rejected.to_pylist()]
    rejected_m = [(r["id"], r["error"]) for r in m_load.rejected.to_pylist()]
    n_g, n_m = len(garments), len(models)
    index, skipped = result_index(garments, models, rejected_g, rejected_m), parts.Skipped()
    status = load_status(config.output, student_version, index, skipped)
    done = _codes(status.ok, index, n_g, n_m)
    tiles = _blocks(garments, models, done, config.tile_size)
    return Plan(garments=garments, models=models, rejected_garments=rejected_g, rejected_models=rejected_m,
                tiles=tiles, pairs_total=(n_g + len(rejected_g)) * (n_m + len(rejected_m)),
                pairs_skipped=len(done), pairs_todo=sum(len(tile["todo"]) for tile in tiles), index=index,
                status=status, skipped=skipped)


def rejected_rows(plan: Plan, version: str, run_id: str) -> list[dict]:
    """Error rows for every pair whose garment or model row was rejected by manifest validation, except pairs that
    already have a row of this version: a rejected row is reported once, not again by every run."""
    pairs: list[tuple[str, str, str]] = []
    models = [(m["model_id"], None) for m in plan.models] + list(plan.rejected_models)
    for gid, why in plan.rejected_garments:
        pairs += [(gid, mid, f"garment row rejected: {why}") for mid, _ in models]
    for g in plan.garments:
        pairs += [(g["garment_id"], mid, f"model row rejected: {why}") for mid, why in plan.rejected_models]
    if not pairs:
        return []
    codes = plan.index.codes(pa.array([p[0] for p in pairs], pa.string()), pa.array([p[1] for p in pairs], pa.string()))
    new = ~plan.status.recorded(codes)
    return [_result(gid, mid, version, why, run_id) for (gid, mid, why), keep in zip(pairs, new) if keep]


def sample_results(output: str, version: str, plan: Plan, size: int, salt: str = "") -> list[dict]:
    """The gallery's rows: a stable sample of ``size`` pairs of the manifests (failed pairs first), each pair's row
    that counts (its newest ok row, else its newest error row); two passes over three columns, then the sampled
    pairs' rows only."""
    sources = _sources(output, version)
    status = load_status(output, version, plan.index, plan.skipped)
    errors, oks = parts.sample_pairs(status, plan.index, size, salt)
    return parts.best_rows(sources, RESULTS_SPEC, plan.index, "garment_id", "model_id",
                           np.concatenate([errors, oks]), skipped=plan.skipped)


def _result(gid: str, mid: str, version: str, error: str | None, run_id: str, uri: str | None = None,
            decode_ms: float = 0.0, model_ms: float = 0.0, encode_ms: float = 0.0) -> dict:
    return result_row(error, garment_id=gid, model_id=mid, student_version=version, image_uri=uri or None,
                      decode_ms=float(decode_ms), model_ms=float(model_ms), encode_ms=float(encode_ms), run_id=run_id)


# ----------------------------------------------------------------------------------------------------------------------
# Decode (CPU tasks): a tile's images.


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
    for i in sorted(set((todo // n_m).tolist())):
        try:
            garments[i], masks[i] = decode_garment(row["garment_uris"][i], row["mask_uris"][i], cfg)
        except Exception as exc:  # every failure becomes this garment's error rows
            g_errors[i] = reason_for(exc, "garment image")
    for i in sorted(set((todo % n_m).tolist())):
        try:
            persons[i] = decode_photo(row["model_uris"][i], cfg)
        except Exception as exc:
            m_errors[i] = reason_for(exc, "person image")
    meta = {"tile": int(row["tile"]), "garment_ids": [str(x) for x in row["garment_ids"]],
            "model_ids": [str(x) for x in row["model_ids"]], "todo": todo.tolist(), "garment_errors": g_errors,
            "model_errors": m_errors, "decode_ms": (time.perf_counter() - started) * 1e3}
    return {"meta": json.dumps(meta), "garments": garments, "masks": masks, "persons": persons}


# ----------------------------------------------------------------------------------------------------------------------
# Model (actor pool): the student.


class TryOnActor(UnitActor):
    """Holds one student on one device; turns a decoded tile into try-on images (uint8) and per-pair errors."""

    inputs = ("garments", "masks", "persons")

    def __init__(self, spec: StudentSpec, cfg: dict):
        import ray

        super().__init__(cfg)
        model, self.version = spec.load(map_location="cpu")
        self.mode = self.inference_mode(cfg)
        self.model = self.mode.prepare(model.to(self.device).eval())
        self.node_id = ray.get_runtime_context().get_node_id()  # where this actor runs: the summary's actor nodes

    def run_unit(self, meta: dict, garments, masks, persons) -> tuple[dict, np.ndarray]:
        started = time.perf_counter()
        n_m = len(meta["model_ids"])
        todo = np.asarray(meta["todo"], dtype=np.int64)
        pair_errors, runnable = first_errors([divmod(int(c), n_m) for c in todo], meta["garment_errors"],
                                             meta["model_errors"])
        h, w = persons.shape[1:3]
        images = np.zeros((len(runnable), h, w, 3), np.uint8)
        if runnable:
            try:
                self._tryon(todo[runnable] // n_m, todo[runnable] % n_m, garments, masks, persons, images)
            except Exception as exc:  # a model failure fails this tile's pairs, not the job
                reason = error_reason("inference", exc)
                for k in runnable:
                    pair_errors[k] = reason
                images = images[:0]
        meta.update(pair_errors=pair_errors, model_ms=(time.perf_counter() - started) * 1e3,
                    student_version=self.version, precision=self.precision, actor_peak_rss_mb=peak_rss_mb(),
                    actor_node=self.node_id)
        return meta, images

    def _tryon(self, g_idx, m_idx, garments, masks, persons, images: np.ndarray) -> None:
        """Fill ``images`` with the try-ons of pairs ``(g_idx[k], m_idx[k])``: each garment and model of the tile is
        encoded once (``pfafn.tiling``), the flow network and generator run per pair batch."""
        import torch

        from pfafn import imageio
        from pfafn.tiling import encode_tile, tryon_pairs

        g_used, g_local = np.unique(g_idx, return_inverse=True)
        m_used, m_local = np.unique(m_idx, return_inverse=True)
        dev = self.device

        def to_t(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        person_t = torch.stack([to_t(imageio.to_model_tensor(persons[i])) for i in m_used])
        garment_t = torch.stack([to_t(imageio.to_model_tensor(garments[i])) for i in g_used])
        mask_t = to_t(masks[g_used].astype(np.float32) / 255.0).unsqueeze(1)
        with self.mode.autocast(dev):
            tile = encode_tile(self.model, person_t, garment_t, mask_t, chunk=self.batch_size)
            for sl, out in tryon_pairs(self.model, tile, g_local, m_local, batch_size=self.batch_size):
                tryon = out.tryon.float()
                if not torch.isfinite(tryon).all():
                    raise FloatingPointError("non-finite try-on output")
                images[sl] = (((tryon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                              .permute(0, 2, 3, 1).cpu().numpy())


# ----------------------------------------------------------------------------------------------------------------------
# Write (CPU tasks): images, then the tile's result rows (the commit point).


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
    decode_ms, model_ms = meta["decode_ms"] / n_pairs, meta["model_ms"] / n_pairs
    rows, k_image, encode_total = [], 0, 0.0
    for code, error in zip(todo, meta["pair_errors"]):
        g, m = divmod(code, n_m)
        gid, mid = meta["garment_ids"][g], meta["model_ids"][m]
        uri, encode_ms = None, 0.0
        if error is None:
            image = images[k_image]
            uri, error, encode_ms = store_image(lambda: image_key(cfg["output"], version, gid, mid),
                                               lambda: imageio.encode_jpeg(image, quality=cfg["jpeg_quality"]))
            k_image += 1
        encode_total += encode_ms
        rows.append(_result(gid, mid, version, error, cfg["run_id"], uri, decode_ms, model_ms, encode_ms))
    dest = part_uri(cfg["output"], RESULTS_DIR, cfg["attempt"], meta["tile"])
    commit_part(results_table(rows), dest, cfg)
    n_ok = sum(1 for r in rows if r["status"] == "ok")
    return {"tile": meta["tile"], "ok": n_ok, "error": len(todo) - n_ok, "results": dest,
            "decode_ms": meta["decode_ms"], "model_ms": meta["model_ms"], "encode_ms": encode_total,
            "actor_peak_rss_mb": meta.get("actor_peak_rss_mb", 0.0), "precision": meta.get("precision", ""),
            "actor_node": meta.get("actor_node", "")}


def results_table(rows: list[dict]) -> pa.Table:
    """Result rows as a table with the documented ``tryon_results`` schema."""
    return rows_table(rows, RESULTS_SCHEMA)


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


class CatalogTryOn(BatchStage):
    """The catalog try-on's hooks for :func:`pipelines.batch.run_batch_stage`."""

    name = "catalog_tryon"
    unit_name = "tile"
    path_fields = ("garments", "models", "output", "student", "official_warp", "official_gen")
    model_cls = TryOnActor
    decode = staticmethod(decode_tile)
    write = staticmethod(write_tile)

    def __init__(self, config: CatalogConfig):
        super().__init__(config)
        self.peak_rss, self.precision = 0.0, ""
        self.actor_nodes: set[str] = set()  # Ray node ids of the model actors that wrote this run's tiles

    def spec(self) -> StudentSpec:
        return StudentSpec(self.config.student, self.config.official_warp, self.config.official_gen)

    def model_version(self) -> str:
        return self.spec().version()

    def plan(self, run: BatchRun) -> list[dict]:
        p = self.planned = plan_tiles(self.config, run.version)
        log.info("catalog %s: %d garments x %d models (+%d/%d rejected rows): %d pairs, %d done before, %d to do in "
                 "%d tiles", run.run_id, len(p.garments), len(p.models), len(p.rejected_garments),
                 len(p.rejected_models), p.pairs_total, p.pairs_skipped, p.pairs_todo, len(p.tiles))
        return p.tiles

    def write_planned(self, run: BatchRun) -> int:
        rows = rejected_rows(self.planned, run.version, run.run_id)
        if rows:
            dest = part_uri(self.config.output, RESULTS_DIR, run.attempt, "rejected")
            commit_part(results_table(rows), dest, run.cfg)
        return len(rows)

    def model_kwargs(self, cfg: dict) -> dict:
        return {"spec": self.spec(), "cfg": cfg}

    def collect(self, row: dict, run: BatchRun) -> None:
        self.peak_rss = max(self.peak_rss, float(row["actor_peak_rss_mb"]))
        self.precision = str(row["precision"])
        if row.get("actor_node"):
            self.actor_nodes.add(str(row["actor_node"]))

    def summary(self, run: BatchRun) -> dict[str, Any]:
        p, elapsed = self.planned, run.elapsed()
        return {
            "student_version": run.version,
            "results": storage.join_uri(self.config.output, RESULTS_DIR),
            "garments": len(p.garments) + len(p.rejected_garments),
            "models": len(p.models) + len(p.rejected_models),
            "rejected_rows": len(p.rejected_garments) + len(p.rejected_models),
            "pairs_total": p.pairs_total,
            "pairs_skipped": p.pairs_skipped,
            "pairs_ok": run.ok,
            "pairs_error": run.error,
            "pairs_attempted": run.ok + run.error,
            "results_files_skipped": len(p.skipped),
            "tiles": len(p.tiles),
            "pairs_per_s": round(run.ok / elapsed, 3) if elapsed > 0 else 0.0,
            "height": self.config.height,
            "width": self.config.width,
            "precision": self.precision or None,
            "actor_peak_rss_mb": round(self.peak_rss, 1) if p.tiles else None,
            "model_actor_nodes": sorted(self.actor_nodes),
        }

    def gallery(self, run: BatchRun, summary: dict):
        from pipelines.core.gallery import GalleryItem, Sheet

        garment_uris = {g["garment_id"]: g["image_uri"] for g in self.planned.garments}
        model_uris = {m["model_id"]: m["image_uri"] for m in self.planned.models}

        def card(r: dict) -> GalleryItem:
            return GalleryItem(caption=f"{r['garment_id']} × {r['model_id']}", status=r["status"],
                               images=[("garment", garment_uris.get(r["garment_id"])),
                                       ("model", model_uris.get(r["model_id"])), ("try-on", r.get("image_uri"))],
                               note=r.get("error") or "")

        c = self.config
        meta = (f"student {run.version} · run {run.run_id} · {summary['pairs_ok']} ok / {summary['pairs_error']} "
                f"error this run, {summary['pairs_skipped']} done before · {c.height}x{c.width}")
        return Sheet(title=f"Catalog try-on QA · {run.version}", meta=meta, card=card,
                     sample=lambda size, salt: sample_results(c.output, run.version, self.planned, size, salt))


def run(config: CatalogConfig) -> dict[str, Any]:
    """Run the catalog stage; returns (and writes under the output) the run summary."""
    return run_batch_stage(CatalogTryOn(config))
