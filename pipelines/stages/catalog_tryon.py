"""Stage 3: catalog try-on — every garment on every model, tiled, incremental, idempotent, with a QA gallery.

A :class:`pipelines.batch.BatchStage` (the shared skeleton runs it); what is particular to the catalog::

    manifests (+ the selection: every pair, --pairs FILE, --match COLUMN) ──► done set (ok rows of this student
        version) ──► tiles of (garment block × model block) with the selected pairs still to do
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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipelines.batch import (BatchRun, BatchStage, BatchStageConfig, InputError, UnitActor, blame, commit_part,
                             decode_garment, decode_photo, error_reason, first_errors, part_uri, peak_rss_mb,
                             read_garment, read_image, read_parts, reason_for, result_row, rows_table, run_batch_stage,
                             store_image)
from pipelines.core import manifests, parts, storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError
from pipelines.stages import catalog_pairs

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
    expect_version: str = ""  # refuse (exit 2) a student whose weights are another version (nightly: the promoted one)
    pairs: str = ""  # --pairs FILE: only these (garment_id, model_id) pairs; "" = every pair
    match: str = ""  # --match COLUMN[,COLUMN]: only pairs whose rows have equal values there; "" = every pair
    output_size: Literal["auto", "original", "model"] = "auto"
    format: Literal["jpeg", "png", "webp"] = "jpeg"

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
        columns = catalog_pairs.match_columns(self.match)
        if not all(columns) or len(set(columns)) != len(columns):
            raise ConfigError(f"catalog: match must be COLUMN[,COLUMN...] with distinct names, got {self.match!r}")


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
# Planning: manifests, pair selection, done set, tiles.

@dataclass
class Plan:
    garments: list[dict]  # valid rows, in the selection's order (sorted by --match group)
    models: list[dict]
    rejected_garments: list[tuple[str, str]]
    rejected_models: list[tuple[str, str]]
    tiles: list[dict]
    pairs_total: int  # selected pairs of valid rows + error pairs (rejected or unknown rows) in the selection
    pairs_skipped: int  # selected pairs of valid rows done before
    pairs_todo: int
    index: parts.PairIndex  # garment ids (valid, then rejected) × model ids (valid, then rejected)
    status: parts.PairStatus  # this student version's done and failed pairs, codes of ``index``
    skipped: parts.Skipped  # files under results/ that are not result parts
    rejected_pairs: list[tuple[str | None, str | None, str]] = field(default_factory=list)  # (gid, mid, reason)
    selection: catalog_pairs.Selection | None = None


def _sources(output: str, student_version: str | None) -> list[parts.Source]:
    where = {"student_version": student_version} if student_version is not None else None
    return [(storage.join_uri(output, RESULTS_DIR), where)]


def load_results(output: str, student_version: str | None = None, skipped: parts.Skipped | None = None) -> pa.Table:
    """All result rows under ``{output}/results/`` (optionally of one student version), materialised: for tests,
    tools and small outputs; planning and the gallery read :mod:`pipelines.core.parts`' codes instead."""
    ((root, where),) = _sources(output, student_version)
    return read_parts(root, "tryon_results", where=where, skipped=skipped)


def result_index(garments: list[dict], models: list[dict], rejected_garments: list[tuple[str, str]],
                 rejected_models: list[tuple[str, str]],
                 rejected_pairs: list[tuple[str | None, str | None, str]] = ()) -> parts.PairIndex:
    """Pair codes over the manifests' ids, the rejected rows' ids (and the ids of the error pairs, e.g. a pairs
    file's unknown ids) after the valid ones: their error rows are pairs too, reported once."""
    return parts.PairIndex.of(
        [g["garment_id"] for g in garments] + [gid for gid, _ in rejected_garments] + [p[0] for p in rejected_pairs],
        [m["model_id"] for m in models] + [mid for mid, _ in rejected_models] + [p[1] for p in rejected_pairs])


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


# ``original`` output hands the write step ~1.5 MB of fp32 model outputs per pair at 256×192 (pfafn.fullres
# .pack_lowres): 8×8 tiles keep a tile's payload near 100 MB in the object store where the published preset's 32×32
# would need 1.6 GB; composing at full size costs more per pair than the encoders the larger tile would share.
ORIGINAL_TILE_MAX = 8


def tile_side(config: CatalogConfig) -> int:
    """The tile side used: ``tile_size``, at most :data:`ORIGINAL_TILE_MAX` when the output is at original size."""
    if resolve_output_size(config) == "original":
        return min(config.tile_size, ORIGINAL_TILE_MAX)
    return config.tile_size


def plan_tiles(config: CatalogConfig, student_version: str) -> Plan:
    """Select the pairs (every garment × model, or ``--pairs`` / ``--match``) and cut them into tiles of at most
    ``tile_size`` × ``tile_size`` without the done pairs. Neither the pair table nor the result rows are
    materialised: done pairs are a sorted int64 array of codes ``g·M + m`` (three columns read per result part, ids
    turned into codes in Arrow), a ``--match`` selection is one range of garments and of models per group, a
    ``--pairs`` selection a sorted int64 array of codes."""
    g_load = manifests.load_manifest(config.garments, "garments")
    m_load = manifests.load_manifest(config.models, "models")
    columns = catalog_pairs.match_columns(config.match)
    catalog_pairs.check_match(g_load.rows, m_load.rows, columns)
    sel, garments, models, rejected_g, rejected_m = catalog_pairs.grouped(g_load, m_load, columns)
    if config.pairs:
        sel.codes, rejected_pairs = catalog_pairs.pair_codes(config.pairs, sel, garments, models, rejected_g, rejected_m)
    else:
        rejected_pairs = catalog_pairs.rejected_pairs(sel, garments, models, rejected_g, rejected_m)
    rejected_g, rejected_m = [r[:2] for r in rejected_g], [r[:2] for r in rejected_m]
    index, skipped = result_index(garments, models, rejected_g, rejected_m, rejected_pairs), parts.Skipped()
    status = load_status(config.output, student_version, index, skipped)
    tiles = catalog_pairs.blocks(garments, models, _codes(status.ok, index, len(garments), len(models)), tile_side(config), sel)
    selected, todo = sel.size(), sum(len(tile["todo"]) for tile in tiles)
    return Plan(garments=garments, models=models, rejected_garments=rejected_g, rejected_models=rejected_m,
                tiles=tiles, pairs_total=selected + len(rejected_pairs), pairs_skipped=selected - todo,
                pairs_todo=todo, index=index, status=status, skipped=skipped, rejected_pairs=rejected_pairs,
                selection=sel)


def rejected_rows(plan: Plan, version: str, run_id: str) -> list[dict]:
    """Error rows for every selected pair whose garment or model row was rejected by manifest validation (or, with
    ``--pairs``, names an unsafe or unknown id), except pairs that already have a row of this version: a rejected
    row is reported once, not again by every run."""
    pairs = plan.rejected_pairs
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
            "garment_uris": list(row["garment_uris"]), "mask_uris": list(row["mask_uris"]),
            "model_uris": list(row["model_uris"]),
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
        self.original = cfg.get("output_size") == "original"  # hand over pfafn.fullres' low-res arrays, not images
        self.node_id = ray.get_runtime_context().get_node_id()  # where this actor runs: the summary's actor nodes

    def run_unit(self, meta: dict, garments, masks, persons) -> tuple[dict, np.ndarray]:
        started = time.perf_counter()
        n_m = len(meta["model_ids"])
        todo = np.asarray(meta["todo"], dtype=np.int64)
        pair_errors, runnable = first_errors([divmod(int(c), n_m) for c in todo], meta["garment_errors"],
                                             meta["model_errors"])
        h, w = persons.shape[1:3]
        if self.original:
            from pfafn.fullres import LOWRES_CHANNELS

            images = np.zeros((len(runnable), h, w, LOWRES_CHANNELS), np.float32)
        else:
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
        encoded once (``pfafn.tiling``), the flow network and generator run per pair batch. For ``--output-size
        original`` ``images`` is float32 N×H×W×8, what :func:`pfafn.fullres.compose_fullres` needs per pair
        (:func:`pfafn.fullres.pack_lowres`); else uint8 N×H×W×3 try-ons."""
        import torch

        from pfafn import fullres, imageio
        from pfafn.tiling import encode_tile, tryon_pairs

        g_used, g_local = np.unique(g_idx, return_inverse=True)
        m_used, m_local = np.unique(m_idx, return_inverse=True)
        dev = self.device

        def to_t(a):
            return self.mode.input(torch.from_numpy(np.ascontiguousarray(a)), dev)

        person_t = to_t(imageio.to_model_tensor(persons[m_used]))
        garment_t = to_t(imageio.to_model_tensor(garments[g_used]))
        mask_t = to_t(masks[g_used, None].astype(np.float32) / 255.0)
        with self.mode.autocast(dev):
            tile = encode_tile(self.model, person_t, garment_t, mask_t, chunk=self.batch_size)
            for sl, out in tryon_pairs(self.model, tile, g_local, m_local, batch_size=self.batch_size):
                tryon = out.tryon.float()
                if not (torch.isfinite(tryon).all() and torch.isfinite(out.flow).all()):
                    raise FloatingPointError("non-finite try-on output")
                if self.original:
                    g = torch.as_tensor(g_local[sl], device=dev)
                    region = fullres.change_region(tryon, tile.persons.index_select(
                        0, torch.as_tensor(m_local[sl], device=dev)), out.composite_mask)
                    images[sl] = fullres.pack_lowres(out.flow, out.rendered, out.blend_mask, region,
                                                     tile.garment_masks.index_select(0, g))
                    continue
                images[sl] = (((tryon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                              .permute(0, 2, 3, 1).cpu().numpy())


# ----------------------------------------------------------------------------------------------------------------------
# Write (CPU tasks): images, then the tile's result rows (the commit point).


#: The file extension of each ``--format``.
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def image_key(output: str, student_version: str, garment_id: str, model_id: str, fmt: str = "jpeg") -> str:
    """``{output}/{student_version}/{garment_id}/{model_id}.{jpg|png|webp}`` — ids are validated before they get
    here."""
    manifests.validate_id(garment_id)
    manifests.validate_id(model_id)
    return storage.join_uri(output, student_version, garment_id, f"{model_id}.{EXTENSIONS[fmt]}")


def encode_output(image: np.ndarray, cfg: dict) -> bytes:
    """One output image in ``cfg["format"]`` (``jpeg_quality`` is the lossy quality of JPEG and WebP)."""
    from pfafn import imageio

    fmt = cfg.get("format", "jpeg")
    if fmt == "png":
        return imageio.encode_png(image)
    if fmt == "webp":
        return imageio.encode_webp(image, quality=cfg["jpeg_quality"])
    return imageio.encode_jpeg(image, quality=cfg["jpeg_quality"])


class OriginalPhotos:
    """The tile's original person and garment photos for ``--output-size original``, each read and decoded once
    (on first use, with the decode step's input roots and limits); a failure is kept and raised again as the same
    one-line :class:`pipelines.batch.InputError` for every pair that needs it."""

    def __init__(self, meta: dict, cfg: dict):
        self.meta, self.cfg, self.cache = meta, cfg, {}

    def _get(self, key: tuple[str, int], load):
        if key not in self.cache:
            try:
                self.cache[key] = load()
            except InputError as exc:
                self.cache[key] = exc
        value = self.cache[key]
        if isinstance(value, InputError):
            raise value
        return value

    def person(self, m: int) -> np.ndarray:
        def load():
            with blame("person image"):
                return read_image(self.meta["model_uris"][m], self.cfg)
        return self._get(("person", m), load)

    def garment(self, g: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(photo, mask or None)`` as the decode step read them (:func:`pipelines.batch.read_garment`: a mask of
        another resolution resized to the photo); None without a mask file (the model canvas' mask is resized back)."""
        return self._get(("garment", g), lambda: read_garment(self.meta["garment_uris"][g], self.meta["mask_uris"][g],
                                                              self.cfg))

    def compose(self, g: int, m: int, lowres: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """The pair's try-on at the person photo's size, or ``(None, one-line reason)``."""
        from pfafn.fullres import compose_fullres

        try:
            person = self.person(m)
            garment, mask = self.garment(g)
        except InputError as exc:
            return None, exc.reason
        try:
            return compose_fullres(person, garment, mask, lowres), None
        except Exception as exc:  # one pair's failure is its error row
            return None, error_reason("write", exc)


def write_tile(meta: dict, images: np.ndarray, cfg: dict) -> dict:
    """Encode and store the tile's images (``--output-size original``: composed at each person photo's size first),
    then commit the tile's result rows."""
    n_m = len(meta["model_ids"])
    version, fmt = meta["student_version"], cfg.get("format", "jpeg")
    originals = OriginalPhotos(meta, cfg) if cfg.get("output_size") == "original" else None
    todo = meta["todo"]
    n_pairs = max(1, len(todo))
    decode_ms, model_ms = meta["decode_ms"] / n_pairs, meta["model_ms"] / n_pairs
    rows, k_image, encode_total = [], 0, 0.0
    for code, error in zip(todo, meta["pair_errors"]):
        g, m = divmod(code, n_m)
        gid, mid = meta["garment_ids"][g], meta["model_ids"][m]
        uri, encode_ms, size = None, 0.0, {}
        if error is None:
            started, image = time.perf_counter(), images[k_image]
            k_image += 1
            if originals is not None:
                image, error = originals.compose(g, m, image)
        if error is None:
            uri, error, _ = store_image(lambda: image_key(cfg["output"], version, gid, mid, fmt),
                                        lambda: encode_output(image, cfg))
            encode_ms = (time.perf_counter() - started) * 1e3
            size = {"output_height": image.shape[0], "output_width": image.shape[1]} if error is None else {}
        encode_total += encode_ms
        rows.append(_result(gid, mid, version, error, cfg["run_id"], uri, decode_ms, model_ms, encode_ms) | size)
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

#: Parquet schema metadata key naming the job that wrote a manifest; ``jobs.import_catalog`` writes "import_catalog".
PRODUCER_KEY = b"pfafn.producer"


def manifest_producer(uri: str) -> str | None:
    """The ``pfafn.producer`` of a Parquet manifest file's schema metadata; None for CSV, a folder of parts, other
    writers or an unreadable file."""
    import pyarrow.parquet as pq

    if uri.lower().endswith(".csv"):
        return None
    try:
        fs, path = storage.pyarrow_filesystem(uri)
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    except Exception:  # unreadable here: planning reports it properly
        return None
    value = metadata.get(PRODUCER_KEY)
    return value.decode("utf-8", "replace") if value is not None else None


def resolve_output_size(config: CatalogConfig) -> str:
    """``auto`` is ``original`` for catalogs imported with ``jobs.import_catalog`` (their users bring their own photos
    and want them back at their size), ``model`` for any other models manifest (today's output, unchanged)."""
    if config.output_size != "auto":
        return config.output_size
    return "original" if manifest_producer(config.models) == "import_catalog" else "model"


class CatalogTryOn(BatchStage):
    """The catalog try-on's hooks for :func:`pipelines.batch.run_batch_stage`."""

    name = "catalog_tryon"
    unit_name = "tile"
    item_name = "pair"
    path_fields = ("garments", "models", "output", "student", "official_warp", "official_gen", "pairs")
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
        version = self.spec().version()
        if self.config.expect_version and version != self.config.expect_version:
            raise StageError(f"catalog: the student {self.config.student} is version {version}, expected "
                             f"{self.config.expect_version} (was the checkpoint replaced after it was promoted?)")
        return version

    def plan(self, run: BatchRun) -> list[dict]:
        p = self.planned = plan_tiles(self.config, run.version)
        log.info("catalog %s: %d garments x %d models (+%d/%d rejected rows), %s: %d pairs, %d done before, %d to "
                 "do in %d tiles", run.run_id, len(p.garments), len(p.models), len(p.rejected_garments),
                 len(p.rejected_models), self.selection(), p.pairs_total, p.pairs_skipped, p.pairs_todo, len(p.tiles))
        return p.tiles

    def unit_items(self, unit: dict) -> int:
        return len(unit["todo"])

    def selection(self) -> str:
        """Which pairs the run covers, in words (the summary's ``selection``)."""
        c = self.config
        chosen = ([f"pairs in {c.pairs}"] if c.pairs else []) + ([f"match {c.match}"] if c.match else [])
        return " and ".join(chosen) or "every garment x every model"

    def write_planned(self, run: BatchRun) -> int:
        rows = rejected_rows(self.planned, run.version, run.run_id)
        if rows:
            dest = part_uri(self.config.output, RESULTS_DIR, run.attempt, "rejected")
            commit_part(results_table(rows), dest, run.cfg)
        return len(rows)

    def model_kwargs(self, cfg: dict) -> dict:
        return {"spec": self.spec(), "cfg": cfg}

    def output_size(self) -> str:
        """``--output-size`` with ``auto`` resolved (:func:`resolve_output_size`), once per run."""
        if getattr(self, "_output_size", None) is None:
            self._output_size = resolve_output_size(self.config)
        return self._output_size

    def worker_extras(self, run: BatchRun) -> dict:
        return {"output_size": self.output_size()}

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
            "selection": self.selection(),
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
            "output_size": self.output_size(),  # "original": each image at its person photo's size
            "format": self.config.format,
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
        size = "each photo's own size" if self.output_size() == "original" else "the model size"
        meta = (f"student {run.version} · run {run.run_id} · {summary['pairs_ok']} ok / {summary['pairs_error']} "
                f"error this run, {summary['pairs_skipped']} done before · model {c.height}x{c.width}, output at "
                f"{size}")
        return Sheet(title=f"Catalog try-on QA · {run.version}", meta=meta, card=card,
                     sample=lambda size, salt: sample_results(c.output, run.version, self.planned, size, salt))


def run(config: CatalogConfig) -> dict[str, Any]:
    """Run the catalog stage; returns (and writes under the output) the run summary."""
    return run_batch_stage(CatalogTryOn(config))
