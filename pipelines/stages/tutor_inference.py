"""Stage 1: tutor inference — the parser-based tutor renders each training person in *other* garments ("fakes").

A :class:`pipelines.batch.BatchStage` (the shared skeleton runs it); what is particular to tutor inference::

    dataset root (models, garments, train_pairs) ──► k tutor garments g' per person (seeded, never the worn one)
        ──► done set (ok fakes of this tutor version) ──► chunks of persons with the fakes still to do
        ──► decode (CPU tasks: person photo, parsing, DensePose, pose JSON, garments + masks, fitted to H×W)
        ──► tutor (model actor pool: person representation, TutorModel(cloth_region="warped"), fp32 or autocast)
        ──► write (CPU tasks: one PNG per fake at {output}/fakes/{tutor_version}/{model_id}/{garment_id}.png, then
            the chunk's rows as Parquet: ok rows under {output}/manifest/ — the commit point — and error rows
            under {output}/errors/)
        ──► summary JSON + QA gallery

The fakes manifest (``pipelines.core.manifests`` kind ``fakes``) under ``{output}/manifest/`` holds one ``ok`` row per
(model_id, tutor_garment_id, tutor_version) and is what ``jobs.distill --fakes`` reads (``summary["fakes"]``).
Error rows (same schema, ``status='error'`` with a one-line reason) go to ``{output}/errors/``: a re-run retries them,
and keeping them out of the manifest keeps its key unique (``load_manifest`` rejects later duplicates of a key).
Rows stay ids/URIs until the decode stage. Fakes with an ``ok`` row for this tutor version are removed before any
pixel is decoded, so a re-run does no model work for them. Images are written before their rows: a killed run
leaves at most images without rows, which the re-run recomputes and overwrites at the same keys.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.batch import (BatchRun, BatchStage, BatchStageConfig, UnitActor, blame, commit_part, decode_garment,
                             error_reason, first_errors, one_line, part_uri, read_image, read_input, read_parts, reason_for,
                             result_row, rows_table, run_batch_stage, store_image)
from pipelines.core import manifests, parts, storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
ERRORS_DIR = "errors"
FAKES_DIR = "fakes"
REJECTED_DIR = "rejected"
FAKES_SCHEMA = manifests.SCHEMAS["fakes"]
FAKES_SPEC = manifests.SPECS["fakes"]
FAKE_COLUMNS = tuple(FAKES_SCHEMA.names)


@dataclass
class TutorInferenceConfig(BatchStageConfig):
    """Config of the tutor inference stage (``jobs.tutor_inference``); fields documented in
    jobs/configs/tutor_inference.yaml."""

    data: str = ""
    tutor: str = ""
    k: int = 1
    seed: int = 0
    chunk_size: int = 16
    png_compress_level: int = 6
    # 0 x 0: the tutor checkpoint's training size (the meta pipelines.training.stage.save_model records), so fakes
    # line up with the persons the student is distilled on (issue 12, item 9); set both to run at another size.
    height: int = 0
    width: int = 0

    def validate(self) -> None:
        if (self.height == 0) != (self.width == 0):
            raise ConfigError("tutor_inference: set both height and width, or neither (0 x 0 = the tutor's training "
                              f"size), got {self.height}x{self.width}")
        # 0 x 0 passes the size rule here; the tutor's own size is checked once read (TutorInference.model_version)
        sized = self if self.height else dataclasses.replace(self, height=64, width=64)
        sized.validate_common("tutor_inference", ("data", "tutor", "output"))
        if self.k < 1:
            raise ConfigError(f"tutor_inference: k must be >= 1, got {self.k}")
        if self.seed < 0:
            raise ConfigError(f"tutor_inference: seed must be >= 0, got {self.seed}")
        if self.chunk_size < 1:
            raise ConfigError("tutor_inference: chunk_size must be >= 1")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError("tutor_inference: png_compress_level must be within 0..9")


#: No preset sets height/width: the size is the tutor's (see TutorInferenceConfig.height) unless given explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 4, "chunk_size": 4, "precision": "fp32", "channels_last": False, "png_compress_level": 1,
             "gallery_size": 8},
    "cpu": {"batch_size": 8, "chunk_size": 8},
    "published": {"batch_size": 32, "chunk_size": 64},
}


# ----------------------------------------------------------------------------------------------------------------------
# Keys, the deterministic garment choice, manifests.


def fake_key(output: str, tutor_version: str, model_id: str, garment_id: str) -> str:
    """``{output}/fakes/{tutor_version}/{model_id}/{garment_id}.png`` — ids validated before they become keys.

    (A flat ``{model_id}__{garment_id}.png`` would be ambiguous: ids may contain ``__``.)
    """
    manifests.validate_id(tutor_version)
    manifests.validate_id(model_id)
    manifests.validate_id(garment_id)
    return storage.join_uri(output, FAKES_DIR, tutor_version, model_id, f"{garment_id}.png")


def choose_tutor_garments(model_id: str, worn_garment_id: str, garment_ids: list[str], k: int, seed: int) -> list[str]:
    """``min(k, candidates)`` distinct garments other than the worn one, chosen from ``(seed, model_id)`` only.

    The choice depends on the *set* of garment ids (sorted here), not on manifest order or on other persons, so any
    worker, any run and any chunking picks the same garments.
    """
    candidates = sorted(g for g in set(garment_ids) if g != worn_garment_id)
    n = min(int(k), len(candidates))
    if n <= 0:
        return []
    digest = hashlib.sha256(f"pfafn.tutor_garments/1:{seed}:{model_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    picks = rng.choice(len(candidates), size=n, replace=False)
    return [candidates[int(i)] for i in picks]


def fakes_table(rows: list[dict]) -> pa.Table:
    return rows_table(rows, FAKES_SCHEMA)


def _fake(mid: str, worn: str, gid: str, uri: str | None, version: str, error: str | None, run_id: str) -> dict:
    return result_row(error, model_id=mid, worn_garment_id=worn, tutor_garment_id=gid, image_uri=uri or None,
                      tutor_version=version, run_id=run_id)


def load_fakes(output: str, tutor_version: str | None = None, *, errors: bool = False,
               skipped: parts.Skipped | None = None) -> pa.Table:
    """Rows under ``{output}/manifest/`` (or ``{output}/errors/`` with ``errors=True``), optionally of one version,
    materialised (tests, small outputs); planning and the gallery read codes (:mod:`pipelines.core.parts`)."""
    where = {"tutor_version": tutor_version} if tutor_version is not None else None
    return read_parts(storage.join_uri(output, ERRORS_DIR if errors else MANIFEST_DIR), "fakes", where=where,
                      skipped=skipped)


def _sources(output: str, tutor_version: str, errors_of_run: str | None = None) -> list[parts.Source]:
    """The fakes manifest of one tutor version, plus (``errors_of_run``) that run's error rows."""
    sources: list[parts.Source] = [(storage.join_uri(output, MANIFEST_DIR), {"tutor_version": tutor_version})]
    if errors_of_run is not None:
        sources.append((storage.join_uri(output, ERRORS_DIR), {"tutor_version": tutor_version,
                                                                "run_id": errors_of_run}))
    return sources


def load_done(output: str, tutor_version: str, index: parts.PairIndex,
              skipped: parts.Skipped | None = None) -> np.ndarray:
    """Sorted codes (of ``index``: persons × garments) of the fakes with an ``ok`` row for this tutor version."""
    return parts.pair_status(_sources(output, tutor_version), FAKES_SPEC, index, "model_id", "tutor_garment_id",
                             skipped=skipped).ok


# ----------------------------------------------------------------------------------------------------------------------
# Planning.


@dataclass
class Plan:
    persons: int  # train persons (valid train_pairs rows)
    fakes_total: int  # persons × chosen garments
    fakes_skipped: int
    chunks: list[dict]
    pre_errors: dict[str, list]  # error rows decided without decoding (missing model row, missing URIs ...), columns
    rejected: pa.Table  # manifest rows rejected by validation (ERRORS_SCHEMA)
    fewer_than_k: int  # persons that got fewer than k garments (too few garments in the dataset)
    models: dict[str, dict]
    garments: dict[str, dict]
    index: parts.PairIndex  # persons (train_pairs' model ids) × garment ids
    skipped: parts.Skipped  # files under manifest/ or errors/ that are not fakes parts


def _load_root(data: str) -> tuple[manifests.ManifestLoad, manifests.ManifestLoad, manifests.ManifestLoad]:
    loads = []
    for name, kind in (("models.parquet", "models"), ("garments.parquet", "garments"),
                       ("train_pairs.parquet", "train_pairs")):
        uri = storage.join_uri(data, name)
        try:
            loads.append(manifests.load_manifest(uri, kind))
        except manifests.ManifestError as exc:
            raise StageError(f"tutor_inference: dataset root {data}: {exc}") from None
    return tuple(loads)  # type: ignore[return-value]


#: The tutor's per-person inputs beside the photo: manifest column -> error source.
PERSON_INPUTS = {"parsing_uri": "parsing", "densepose_uri": "densepose", "pose_uri": "pose"}


def _unusable(mid: str, model: dict | None, rejected_models: dict[str, str]) -> str | None:
    """Why a person cannot be decoded at all (decided at planning), or None."""
    if model is None:
        return (f"model row rejected: {rejected_models[mid]}" if mid in rejected_models
                else f"model {mid} is not in models.parquet")
    missing = [c for c in PERSON_INPUTS if not model.get(c)]
    if missing:
        return (f"{PERSON_INPUTS[missing[0]]}: model {mid} has no {', '.join(missing)} (the tutor needs parsing, "
                "DensePose and pose)")
    return None


def _chunk(index: int, block: list[str], todo_by_person: dict[str, list[tuple[str, str]]], models: dict,
           garments: dict) -> dict:
    """One unit: a block of persons, the garments they get and the rows ``[person, garment, worn]`` to render."""
    g_index: dict[str, int] = {}
    rows = []
    for p, mid in enumerate(block):
        for worn, gid in todo_by_person[mid]:
            rows.append([p, g_index.setdefault(gid, len(g_index)), worn])
    spec = {
        "chunk": index,
        "persons": [{k: models[mid].get(k) for k in ("model_id", "image_uri", *PERSON_INPUTS)} for mid in block],
        "garments": [{"garment_id": gid, "image_uri": garments[gid]["image_uri"],
                      "mask_uri": garments[gid].get("mask_uri") or ""} for gid in g_index],
        "rows": rows,
    }
    return {"chunk": index, "spec": json.dumps(spec)}


def plan_chunks(config: TutorInferenceConfig, tutor_version: str, run_id: str) -> Plan:
    m_load, g_load, p_load = _load_root(config.data)
    models = {r["model_id"]: r for r in m_load.rows.to_pylist()}
    garments = {r["garment_id"]: r for r in g_load.rows.to_pylist()}
    rejected_models = {r["id"]: r["error"] for r in m_load.rejected.to_pylist() if r["id"]}
    garment_ids = sorted(garments)
    pairs = p_load.rows.to_pylist()
    index, junk = parts.PairIndex.of([r["model_id"] for r in pairs], garment_ids), parts.Skipped()
    choices = [choose_tutor_garments(r["model_id"], r["garment_id"], garment_ids, config.k, config.seed)
               for r in pairs]
    wanted = index.codes(pa.array([r["model_id"] for r, c in zip(pairs, choices) for _ in c], pa.string()),
                         pa.array([g for c in choices for g in c], pa.string()))
    is_done = iter(np.isin(wanted, load_done(config.output, tutor_version, index, junk)).tolist())

    pre: list[dict] = []
    todo_by_person: dict[str, list[tuple[str, str]]] = {}  # model_id -> [(worn, g')]
    total = skipped = fewer = 0
    for row, chosen in zip(pairs, choices):
        mid, worn = row["model_id"], row["garment_id"]
        fewer += len(chosen) < config.k
        reason = _unusable(mid, models.get(mid), rejected_models)
        for gid in chosen:
            total += 1
            if next(is_done):
                skipped += 1
            elif reason is not None:
                pre.append(_fake(mid, worn, gid, None, tutor_version, reason, run_id))
            else:
                todo_by_person.setdefault(mid, []).append((worn, gid))

    person_ids, n = list(todo_by_person), config.chunk_size
    chunks = [_chunk(i, person_ids[s:s + n], todo_by_person, models, garments)
              for i, s in enumerate(range(0, len(person_ids), n))]
    rejected_parts = [t for t in (m_load.rejected, g_load.rejected, p_load.rejected) if t.num_rows]
    rejected = pa.concat_tables(rejected_parts) if rejected_parts else manifests.ERRORS_SCHEMA.empty_table()
    return Plan(persons=len(pairs), fakes_total=total, fakes_skipped=skipped, chunks=chunks,
                pre_errors=fakes_table(pre).to_pydict(), rejected=rejected, fewer_than_k=fewer, models=models,
                garments=garments, index=index, skipped=junk)


# ----------------------------------------------------------------------------------------------------------------------
# Decode (CPU tasks): a chunk's persons and garments.


def decode_label_map(data: bytes, *, max_pixels: int, num_labels: int) -> np.ndarray:
    """A PNG label map (8-bit gray or palette indices) → ``uint8 H×W``; values must be < ``num_labels``."""
    import io

    from PIL import Image

    from pfafn import imageio

    fmt = imageio.sniff_format(data) if data else None
    if fmt != "PNG":
        raise imageio.NotAnImageError(f"expected a PNG label map, got {fmt or 'no image'}")
    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"])
        w, h = im.size
        if w * h > max_pixels:
            raise imageio.ImageTooLargeError(f"{w}x{h} pixels > limit {max_pixels}")
        if im.mode in ("P", "L"):
            arr = np.asarray(im)
        elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im.convert("I")).astype(np.int64)
        elif im.mode == "RGB":
            rgb = np.asarray(im)
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise imageio.UnsupportedImageError("colour PNG is not a label map")
            arr = rgb[..., 0]
        else:
            raise imageio.UnsupportedImageError(f"unsupported label map mode {im.mode}")
    except imageio.ImageDecodeError:
        raise
    except Exception as exc:
        raise imageio.TruncatedImageError(f"truncated or corrupt PNG: {one_line(exc)}") from None
    if arr.size and int(arr.max()) >= num_labels:
        raise ValueError(f"label {int(arr.max())} out of range 0..{num_labels - 1}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _fit_labels(labels: np.ndarray, geometry) -> np.ndarray:
    """Nearest-neighbour resize with :func:`pfafn.imageio.fit_image`'s geometry, padded with 0 (background)."""
    from PIL import Image

    g = geometry
    if (g.new_height, g.new_width) == labels.shape and not g.padded:
        return labels
    resized = np.asarray(Image.fromarray(labels, "L").resize((g.new_width, g.new_height), Image.Resampling.NEAREST))
    out = np.zeros((g.height, g.width), np.uint8)
    out[g.top:g.top + g.new_height, g.left:g.left + g.new_width] = resized
    return out


def _read_labels(uri: str, cfg: dict, num_labels: int, photo: np.ndarray) -> np.ndarray:
    """A label map that must have the photo's size (parsing: 14 classes, DensePose: 25 part ids)."""
    labels = decode_label_map(read_input(uri, cfg), max_pixels=cfg["max_image_pixels"], num_labels=num_labels)
    if labels.shape != photo.shape[:2]:
        raise ValueError(f"label map is {labels.shape[1]}x{labels.shape[0]} but the photo is "
                         f"{photo.shape[1]}x{photo.shape[0]}")
    return labels


def _decode_person(person: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Photo, parsing, DensePose and keypoints of one person, fitted to H×W; failures name the input."""
    from pfafn import imageio
    from pfafn.synthetic.openpose import decode_openpose

    h, w = cfg["height"], cfg["width"]
    with blame("person image"):
        image = read_image(person["image_uri"], cfg)
    with blame("parsing"):
        parsing = _read_labels(person["parsing_uri"], cfg, 14, image)
    with blame("densepose"):
        densepose = _read_labels(person["densepose_uri"], cfg, 25, image)
    with blame("pose"):
        keypoints = decode_openpose(read_input(person["pose_uri"], cfg))
    geometry = imageio.fit_geometry(image.shape[0], image.shape[1], h, w)
    if geometry.padded or (geometry.new_height, geometry.new_width) != image.shape[:2]:
        present = (keypoints[:, 0] > 0) | (keypoints[:, 1] > 0)
        mapped = geometry.map_points(keypoints[:, :2])
        keypoints = keypoints.copy()
        keypoints[present, :2] = mapped[present]
        with blame("person image"):
            image = imageio.fit_image(image, h, w)
        parsing = _fit_labels(parsing, geometry)
        densepose = _fit_labels(densepose, geometry)
    return image, parsing, densepose, keypoints.astype(np.float32)


def decode_chunk(row: dict, cfg: dict) -> dict:
    """Read and decode one chunk's persons and garments; a bad input becomes an error string, never an exception."""
    started = time.perf_counter()
    spec = json.loads(row["spec"])
    h, w = cfg["height"], cfg["width"]
    n_p, n_g = len(spec["persons"]), len(spec["garments"])
    out = {"persons": np.zeros((n_p, h, w, 3), np.uint8), "parsing": np.zeros((n_p, h, w), np.uint8),
           "densepose": np.zeros((n_p, h, w), np.uint8), "keypoints": np.zeros((n_p, 18, 3), np.float32),
           "garments": np.zeros((n_g, h, w, 3), np.uint8), "masks": np.zeros((n_g, h, w), np.uint8)}
    p_errors: list[str | None] = [None] * n_p
    g_errors: list[str | None] = [None] * n_g
    for i, person in enumerate(spec["persons"]):
        try:
            decoded = _decode_person(person, cfg)
        except Exception as exc:  # every failure becomes this person's error rows
            p_errors[i] = reason_for(exc, "person image")
            continue
        for key, value in zip(("persons", "parsing", "densepose", "keypoints"), decoded):
            out[key][i] = value
    for j, garment in enumerate(spec["garments"]):
        try:
            out["garments"][j], out["masks"][j] = decode_garment(garment["image_uri"], garment["mask_uri"], cfg)
        except Exception as exc:
            g_errors[j] = reason_for(exc, "garment image")
    meta = {"chunk": int(spec["chunk"]), "model_ids": [p["model_id"] for p in spec["persons"]],
            "garment_ids": [g["garment_id"] for g in spec["garments"]], "rows": spec["rows"],
            "person_errors": p_errors, "garment_errors": g_errors, "decode_ms": (time.perf_counter() - started) * 1e3}
    return {"meta": json.dumps(meta), **out}


# ----------------------------------------------------------------------------------------------------------------------
# Model (actor pool): the tutor.


def render_fakes(model, persons: np.ndarray, parsing: np.ndarray, densepose: np.ndarray, keypoints: np.ndarray,
                 garments: np.ndarray, masks: np.ndarray, person_index, garment_index, *, device: str = "cpu",
                 mode=None):
    """The tutor's fakes (B×3×H×W fp32 in [-1, 1], on the CPU) of ``persons[person_index[b]]`` wearing
    ``garments[garment_index[b]]``. Inputs are the decoded arrays of :func:`decode_chunk` (uint8 images / labels,
    uint8 0/255 masks, 18×3 keypoints)."""
    import torch

    from pfafn import imageio
    from pfafn.person import tutor_warp_input

    p = np.asarray(person_index, dtype=np.int64)
    g = np.asarray(garment_index, dtype=np.int64)
    dev = torch.device(device)
    rep = tutor_warp_input(parsing[p], densepose[p], keypoints[p]).to(dev)
    image = torch.from_numpy(imageio.to_model_tensor(persons[p])).to(dev)
    parsing_t = torch.from_numpy(np.ascontiguousarray(parsing[p])).to(dev).long()
    densepose_t = torch.from_numpy(np.ascontiguousarray(densepose[p])).to(dev).long()
    garment = torch.from_numpy(imageio.to_model_tensor(garments[g])).to(dev)
    mask = torch.from_numpy(masks[g].astype(np.float32) / 255.0).to(dev).unsqueeze(1)
    context = mode.autocast(dev) if mode is not None else torch.autocast(dev.type, enabled=False)
    with torch.inference_mode(), context:
        out = model(rep, image, parsing_t, densepose_t, garment, mask, cloth_region="warped")
    return out.tryon.float().cpu()


class TutorActor(UnitActor):
    """Holds one tutor on one device; turns a decoded chunk into fake images (uint8) and per-row errors."""

    inputs = ("persons", "parsing", "densepose", "keypoints", "garments", "masks")

    def __init__(self, tutor: str, cfg: dict):
        from pfafn import checkpoint
        from pfafn.tutor import TutorModel

        super().__init__(cfg)
        loaded = checkpoint.load_checkpoint(tutor, map_location="cpu")
        if loaded.kind != "tutor":
            raise StageError(f"{tutor} is a {loaded.kind} checkpoint, not a tutor")
        self.version = loaded.version
        self.mode = self.inference_mode(cfg)
        self.model = self.mode.prepare(TutorModel.from_checkpoint(loaded).to(self.device).eval())

    def run_unit(self, meta: dict, *arrays: np.ndarray) -> tuple[dict, np.ndarray]:
        from pfafn import imageio

        started = time.perf_counter()
        rows = meta["rows"]
        row_errors, runnable = first_errors([(p, g) for p, g, _worn in rows], meta["person_errors"],
                                            meta["garment_errors"])
        h, w = arrays[0].shape[1:3]
        images = np.zeros((len(runnable), h, w, 3), np.uint8)
        keep = np.ones(len(runnable), bool)
        for start in range(0, len(runnable), self.batch_size):
            idx = runnable[start:start + self.batch_size]
            try:
                fakes = render_fakes(self.model, *arrays, [rows[k][0] for k in idx], [rows[k][1] for k in idx],
                                     device=self.device, mode=self.mode)
                if not bool(fakes.isfinite().all()):
                    raise FloatingPointError("non-finite tutor output")
                images[start:start + len(idx)] = imageio.from_model_tensor(fakes)
            except Exception as exc:  # a model failure fails this forward batch's rows, not the job
                reason = error_reason("inference", exc)
                for k in idx:
                    row_errors[k] = reason
                keep[start:start + len(idx)] = False
        meta.update(row_errors=row_errors, model_ms=(time.perf_counter() - started) * 1e3,
                    tutor_version=self.version, precision=self.precision)
        return meta, images[keep]


# ----------------------------------------------------------------------------------------------------------------------
# Write (CPU tasks): PNGs, then the chunk's rows (the ok part is the commit point).


def write_chunk(meta: dict, images: np.ndarray, cfg: dict) -> dict:
    from pfafn import imageio

    version = meta["tutor_version"]
    rows, k_image, encode_total = [], 0, 0.0
    for (p, g, worn), error in zip(meta["rows"], meta["row_errors"]):
        mid, gid = meta["model_ids"][p], meta["garment_ids"][g]
        uri = None
        if error is None:
            image = images[k_image]
            uri, error, encode_ms = store_image(
                lambda: fake_key(cfg["output"], version, mid, gid),
                lambda: imageio.encode_png(image, compress_level=cfg["png_compress_level"]))
            encode_total += encode_ms
            k_image += 1
        rows.append(_fake(mid, worn, gid, uri, version, error, cfg["run_id"]))
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        commit_part(fakes_table(errors), part_uri(cfg["output"], ERRORS_DIR, cfg["attempt"], meta["chunk"]), cfg)
    if ok:
        commit_part(fakes_table(ok), part_uri(cfg["output"], MANIFEST_DIR, cfg["attempt"], meta["chunk"]), cfg)
    return {"chunk": meta["chunk"], "ok": len(ok), "error": len(errors), "decode_ms": meta["decode_ms"],
            "model_ms": meta["model_ms"], "encode_ms": encode_total}


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def read_tutor(uri: str):
    """The tutor checkpoint (``pfafn.checkpoint.LoadedCheckpoint``); :class:`StageError` when it is not a readable
    *tutor* checkpoint."""
    from pfafn import checkpoint

    try:
        loaded = checkpoint.load_checkpoint(uri, map_location="cpu", verify=False)
    except (checkpoint.CheckpointError, OSError, ValueError) as exc:
        raise StageError(f"tutor_inference: cannot load the tutor checkpoint {uri}: {one_line(exc)}") from None
    if loaded.kind != "tutor":
        raise StageError(f"tutor_inference: {uri} is a {loaded.kind} checkpoint, not a tutor")
    return loaded


def resolve_size(config: TutorInferenceConfig, meta: dict) -> None:
    """Height and width 0 become the tutor's training size (its checkpoint meta); a tutor that records none needs
    them given (:class:`ConfigError`, exit 2). A size given that differs from the tutor's is kept, with a warning."""
    from pipelines.core.config import check_size

    trained = (meta.get("height"), meta.get("width"))
    if config.height == 0:
        if not all(isinstance(v, int) and v > 0 for v in trained):
            raise ConfigError(f"tutor_inference: the tutor checkpoint {config.tutor} records no training size; set "
                              "height and width")
        config.height, config.width = trained
        check_size("tutor_inference", config.height, config.width)
    elif trained[0] and trained != (config.height, config.width):
        log.warning("tutor_inference: running at %dx%d but the tutor was trained at %sx%s; distill at %dx%d",
                    config.height, config.width, trained[0], trained[1], config.height, config.width)


class TutorInference(BatchStage):
    """Tutor inference's hooks for :func:`pipelines.batch.run_batch_stage`."""

    name = "tutor_inference"
    unit_name = "chunk"
    item_name = "sample"
    path_fields = ("data", "tutor", "output")
    model_cls = TutorActor
    decode = staticmethod(decode_chunk)
    write = staticmethod(write_chunk)

    def model_version(self) -> str:
        loaded = read_tutor(self.config.tutor)
        resolve_size(self.config, loaded.meta)  # before the lock, the plan and the worker cfg use the size
        return loaded.version

    def plan(self, run: BatchRun) -> list[dict]:
        p = self.planned = plan_chunks(self.config, run.version, run.run_id)
        n_pre = len(p.pre_errors["model_id"])
        log.info("tutor_inference %s: %d persons x k=%d: %d fakes, %d done before, %d in %d chunks, %d error rows "
                 "before decoding", run.run_id, p.persons, self.config.k, p.fakes_total, p.fakes_skipped,
                 p.fakes_total - p.fakes_skipped - n_pre, len(p.chunks), n_pre)
        return p.chunks

    def unit_items(self, unit: dict) -> int:
        return len(json.loads(unit["spec"])["rows"])

    def write_planned(self, run: BatchRun) -> int:
        out, p = self.config.output, self.planned
        if p.rejected.num_rows:
            commit_part(p.rejected, storage.join_uri(out, REJECTED_DIR, f"rejected-{run.attempt}.parquet"), run.cfg)
        n_pre = len(p.pre_errors["model_id"])
        if n_pre:
            commit_part(pa.Table.from_pydict(p.pre_errors, schema=FAKES_SCHEMA),
                        part_uri(out, ERRORS_DIR, run.attempt, "planned"), run.cfg)
        return n_pre

    def model_kwargs(self, cfg: dict) -> dict:
        return {"tutor": self.config.tutor, "cfg": cfg}

    def summary(self, run: BatchRun) -> dict[str, Any]:
        c, p, out = self.config, self.planned, self.config.output
        execute_s = run.timings.get("execute_s", 0.0)
        return {
            "tutor_version": run.version,
            "data": c.data,
            "fakes": storage.join_uri(out, MANIFEST_DIR),
            "fakes_images": storage.join_uri(out, FAKES_DIR, run.version),
            "errors": storage.join_uri(out, ERRORS_DIR),
            "persons": p.persons,
            "k": c.k,
            "persons_with_fewer_than_k": p.fewer_than_k,
            "rejected_rows": p.rejected.num_rows,
            "fakes_total": p.fakes_total,
            "fakes_skipped": p.fakes_skipped,
            "fakes_written": run.ok,
            "fakes_error": run.error,
            "fakes_attempted": run.ok + run.error,
            "results_files_skipped": len(p.skipped),
            "chunks": len(p.chunks),
            "height": c.height,
            "width": c.width,
            "timings": {"fakes_per_s": round(run.ok / execute_s, 3) if run.ok and execute_s > 0 else 0.0},
        }

    def gallery(self, run: BatchRun, summary: dict):
        from pipelines.core.gallery import GalleryItem, Sheet

        c, p = self.config, self.planned
        sources = _sources(c.output, run.version, errors_of_run=run.run_id)

        def sample(size: int, salt: str) -> list[dict]:
            """This run's failed fakes and the manifest's fakes, each pair's row that counts (an ok fake hides its
            earlier errors), sampled by a stable hash of the pair."""
            status = parts.pair_status(sources, FAKES_SPEC, p.index, "model_id", "tutor_garment_id", skipped=p.skipped)
            errors, oks = parts.sample_pairs(status, p.index, size, salt)
            return parts.best_rows(sources, FAKES_SPEC, p.index, "model_id", "tutor_garment_id",
                                   np.concatenate([errors, oks]), skipped=p.skipped)

        def card(r: dict) -> GalleryItem:
            return GalleryItem(
                caption=f"{r['model_id']} in {r['tutor_garment_id']} (wears {r['worn_garment_id']})",
                status=r["status"],
                images=[("person", (p.models.get(r["model_id"]) or {}).get("image_uri")),
                        ("garment", (p.garments.get(r["tutor_garment_id"]) or {}).get("image_uri")),
                        ("tutor fake", r.get("image_uri"))],
                note=r.get("error") or "")

        meta = (f"tutor {run.version} · run {run.run_id} · {summary['fakes_written']} written / "
                f"{summary['fakes_error']} error this run, {summary['fakes_skipped']} done before · k={c.k} · "
                f"{c.height}x{c.width}")
        return Sheet(title=f"Tutor fakes · {run.version}", meta=meta, card=card, sample=sample)


def run(config: TutorInferenceConfig) -> dict[str, Any]:
    """Run tutor inference; returns (and writes under the output) the run summary."""
    return run_batch_stage(TutorInference(config))
