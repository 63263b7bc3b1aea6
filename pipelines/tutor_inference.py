"""Stage 1: tutor inference — the parser-based tutor renders each training person in *other* garments ("fakes").

Pipeline (reads top to bottom)::

    dataset root (models, garments, train_pairs) ──► k tutor garments g' per person (seeded, never the worn one)
        ──► done set (ok fakes of this tutor version) ──► chunks of persons with the fakes still to do
        ──► decode (CPU tasks: person photo, parsing, DensePose, pose JSON, garments + masks, fitted to H×W)
        ──► tutor (model actor pool: person representation, TutorModel(cloth_region="warped"), fp32 or autocast)
        ──► write (CPU tasks: one PNG per fake at {output}/fakes/{tutor_version}/{model_id}/{garment_id}.png, then
            the chunk's rows as Parquet: ok rows under {output}/manifest/ — the commit point — and error rows
            under {output}/errors/)
        ──► summary JSON + QA gallery

The fakes manifest (``pipelines.manifests`` kind ``fakes``) under ``{output}/manifest/`` holds one ``ok`` row per
(model_id, tutor_garment_id, tutor_version) and is what ``jobs.distill --fakes`` reads (``summary["fakes"]``).
Error rows (same schema, ``status='error'`` with a one-line reason) go to ``{output}/errors/``: a re-run retries them,
and keeping them out of the manifest keeps its key unique (``load_manifest`` rejects later duplicates of a key).
Rows stay ids/URIs until the decode stage. Fakes with an ``ok`` row for this tutor version are removed before any
pixel is decoded, so a re-run does no model work for them. Images are written before their rows: a killed run
leaves at most images without rows, which the re-run recomputes and overwrites at the same keys.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import manifests, storage
from pipelines.config import absolute_paths
from pipelines.batch import (BatchStageConfig, decode_garment, error_reason, one_line, progress, resolve_channels_last,
                             resolve_precision, stack_ragged, stream_units)
from pipelines.errors import StageError

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
ERRORS_DIR = "errors"
FAKES_DIR = "fakes"
REJECTED_DIR = "rejected"


@dataclass
class TutorInferenceConfig(BatchStageConfig):
    """Config of the tutor inference stage (``jobs.tutor_inference``); fields documented in
    jobs/configs/tutor_inference.yaml."""

    data: str = ""
    tutor: str = ""
    output: str = ""
    k: int = 1
    seed: int = 0
    chunk_size: int = 16
    png_compress_level: int = 6

    def validate(self) -> None:
        self.validate_common("tutor_inference", ("data", "tutor", "output"))
        if self.k < 1:
            raise StageError(f"tutor_inference: k must be >= 1, got {self.k}")
        if self.seed < 0:
            raise StageError(f"tutor_inference: seed must be >= 0, got {self.seed}")
        if self.chunk_size < 1:
            raise StageError("tutor_inference: chunk_size must be >= 1")
        if not 0 <= self.png_compress_level <= 9:
            raise StageError("tutor_inference: png_compress_level must be within 0..9")


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"height": 128, "width": 96, "batch_size": 4, "chunk_size": 4, "precision": "fp32",
             "channels_last": False, "png_compress_level": 1, "gallery_size": 8},
    "cpu": {"height": 256, "width": 192, "batch_size": 8, "chunk_size": 8},
    "published": {"height": 256, "width": 192, "batch_size": 32, "chunk_size": 64},
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


FAKE_COLUMNS = tuple(manifests.SCHEMAS["fakes"].names)


def fakes_table(rows: dict[str, list]) -> pa.Table:
    schema = manifests.SCHEMAS["fakes"]
    return pa.table({k: pa.array(rows[k], schema.field(k).type) for k in FAKE_COLUMNS}, schema=schema)


def _append_row(rows: dict[str, list], mid: str, worn: str, gid: str, uri: str | None, version: str,
                error: str | None, run_id: str) -> None:
    rows["model_id"].append(mid)
    rows["worn_garment_id"].append(worn)
    rows["tutor_garment_id"].append(gid)
    rows["image_uri"].append(uri or None)
    rows["tutor_version"].append(version)
    rows["status"].append("ok" if error is None else "error")
    rows["error"].append(error)
    rows["run_id"].append(run_id)
    rows["finished_at"].append(datetime.datetime.now(datetime.timezone.utc))


def _empty_rows() -> dict[str, list]:
    return {k: [] for k in FAKE_COLUMNS}


def load_fakes(output: str, tutor_version: str | None = None, *, errors: bool = False) -> pa.Table:
    """Rows under ``{output}/manifest/`` (or ``{output}/errors/`` with ``errors=True``), optionally of one version."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = storage.join_uri(output, ERRORS_DIR if errors else MANIFEST_DIR)
    files = storage.list_files(root, suffix=".parquet") if storage.exists(root) else []
    schema = manifests.SCHEMAS["fakes"]
    parts = []
    for uri in files:
        fs, path = storage.pyarrow_filesystem(uri)
        t = pq.read_table(path, filesystem=fs)
        if tutor_version is not None:
            t = t.filter(pc.equal(t["tutor_version"], tutor_version))
        parts.append(manifests.conform(t, "fakes").select(list(FAKE_COLUMNS)).cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def load_done(output: str, tutor_version: str) -> set[tuple[str, str]]:
    """``(model_id, tutor_garment_id)`` with an ``ok`` row for this tutor version."""
    t = load_fakes(output, tutor_version)
    return {(m, g) for m, g, s in zip(t["model_id"].to_pylist(), t["tutor_garment_id"].to_pylist(),
                                      t["status"].to_pylist()) if s == "ok"}


# ----------------------------------------------------------------------------------------------------------------------
# Planning.


@dataclass
class Plan:
    persons: int  # train persons (valid train_pairs rows)
    fakes_total: int  # persons × chosen garments
    fakes_skipped: int
    chunks: list[dict]
    pre_errors: dict[str, list]  # error rows decided without decoding (missing model row, missing URIs ...)
    rejected: pa.Table  # manifest rows rejected by validation (ERRORS_SCHEMA)
    fewer_than_k: int  # persons that got fewer than k garments (too few garments in the dataset)
    models: dict[str, dict]
    garments: dict[str, dict]


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


def plan_chunks(config: TutorInferenceConfig, tutor_version: str, run_id: str) -> Plan:
    m_load, g_load, p_load = _load_root(config.data)
    models = {r["model_id"]: r for r in m_load.rows.to_pylist()}
    garments = {r["garment_id"]: r for r in g_load.rows.to_pylist()}
    rejected_models = {r["id"]: r["error"] for r in m_load.rejected.to_pylist() if r["id"]}
    garment_ids = sorted(garments)
    done = load_done(config.output, tutor_version)

    pre = _empty_rows()
    todo_by_person: dict[str, list[tuple[str, str]]] = {}  # model_id -> [(worn, g')]
    total = skipped = fewer = 0
    pairs = p_load.rows.to_pylist()
    for row in pairs:
        mid, worn = row["model_id"], row["garment_id"]
        chosen = choose_tutor_garments(mid, worn, garment_ids, config.k, config.seed)
        if len(chosen) < config.k:
            fewer += 1
        model = models.get(mid)
        reason = None
        if model is None:
            reason = (f"model row rejected: {rejected_models[mid]}" if mid in rejected_models
                      else f"model {mid} is not in models.parquet")
        else:
            missing = [c for c in ("parsing_uri", "densepose_uri", "pose_uri") if not model.get(c)]
            if missing:
                reason = f"model {mid} has no {', '.join(missing)} (the tutor needs parsing, DensePose and pose)"
        for gid in chosen:
            total += 1
            if (mid, gid) in done:
                skipped += 1
                continue
            if reason is not None:
                _append_row(pre, mid, worn, gid, None, tutor_version, reason, run_id)
            else:
                todo_by_person.setdefault(mid, []).append((worn, gid))

    chunks = []
    person_ids = list(todo_by_person)
    for start in range(0, len(person_ids), config.chunk_size):
        block = person_ids[start:start + config.chunk_size]
        g_index: dict[str, int] = {}
        rows = []
        for p, mid in enumerate(block):
            for worn, gid in todo_by_person[mid]:
                g = g_index.setdefault(gid, len(g_index))
                rows.append([p, g, worn])
        spec = {
            "chunk": len(chunks),
            "persons": [{k: models[mid].get(k) for k in ("model_id", "image_uri", "parsing_uri", "densepose_uri",
                                                        "pose_uri")} for mid in block],
            "garments": [{"garment_id": gid, "image_uri": garments[gid]["image_uri"],
                          "mask_uri": garments[gid].get("mask_uri") or ""} for gid in g_index],
            "rows": rows,
        }
        chunks.append({"chunk": spec["chunk"], "spec": json.dumps(spec)})

    rejected_parts = [t for t in (m_load.rejected, g_load.rejected, p_load.rejected) if t.num_rows]
    rejected = pa.concat_tables(rejected_parts) if rejected_parts else manifests.ERRORS_SCHEMA.empty_table()
    return Plan(persons=len(pairs), fakes_total=total, fakes_skipped=skipped, chunks=chunks, pre_errors=pre,
                rejected=rejected, fewer_than_k=fewer, models=models, garments=garments)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1 (CPU tasks): decode a chunk.


def decode_label_map(data: bytes, *, max_pixels: int, num_labels: int, what: str) -> np.ndarray:
    """A PNG label map (8-bit gray or palette indices) → ``uint8 H×W``; values must be < ``num_labels``."""
    import io

    from PIL import Image

    from pfafn import imageio

    fmt = imageio.sniff_format(data) if data else None
    if fmt != "PNG":
        raise imageio.NotAnImageError(f"{what}: expected a PNG label map, got {fmt or 'no image'}")
    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"])
        w, h = im.size
        if w * h > max_pixels:
            raise imageio.ImageTooLargeError(f"{what}: {w}x{h} pixels > limit {max_pixels}")
        if im.mode in ("P", "L"):
            arr = np.asarray(im)
        elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im.convert("I")).astype(np.int64)
        elif im.mode == "RGB":
            rgb = np.asarray(im)
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise imageio.UnsupportedImageError(f"{what}: colour PNG is not a label map")
            arr = rgb[..., 0]
        else:
            raise imageio.UnsupportedImageError(f"{what}: unsupported label map mode {im.mode}")
    except imageio.ImageDecodeError:
        raise
    except Exception as exc:
        raise imageio.TruncatedImageError(f"{what}: truncated or corrupt PNG: {one_line(exc)}") from None
    if arr.size and int(arr.max()) >= num_labels:
        raise ValueError(f"{what}: label {int(arr.max())} out of range 0..{num_labels - 1}")
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


def _decode_person(person: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from pfafn import imageio
    from pfafn.data.openpose import decode_openpose

    h, w = cfg["height"], cfg["width"]
    limit, pixels = cfg["max_image_bytes"], cfg["max_image_pixels"]
    image = imageio.decode_image(storage.read_bytes(person["image_uri"], max_bytes=limit), max_pixels=pixels)
    parsing = decode_label_map(storage.read_bytes(person["parsing_uri"], max_bytes=limit), max_pixels=pixels,
                               num_labels=14, what="parsing")
    densepose = decode_label_map(storage.read_bytes(person["densepose_uri"], max_bytes=limit), max_pixels=pixels,
                                 num_labels=25, what="densepose")
    keypoints = decode_openpose(storage.read_bytes(person["pose_uri"], max_bytes=limit))
    for name, labels in (("parsing", parsing), ("densepose", densepose)):
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{name} is {labels.shape[1]}x{labels.shape[0]} but the photo is "
                             f"{image.shape[1]}x{image.shape[0]}")
    geometry = imageio.fit_geometry(image.shape[0], image.shape[1], h, w)
    if geometry.padded or (geometry.new_height, geometry.new_width) != image.shape[:2]:
        present = (keypoints[:, 0] > 0) | (keypoints[:, 1] > 0)
        mapped = geometry.map_points(keypoints[:, :2])
        keypoints = keypoints.copy()
        keypoints[present, :2] = mapped[present]
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
    persons = np.zeros((n_p, h, w, 3), np.uint8)
    parsing = np.zeros((n_p, h, w), np.uint8)
    densepose = np.zeros((n_p, h, w), np.uint8)
    keypoints = np.zeros((n_p, 18, 3), np.float32)
    garments = np.zeros((n_g, h, w, 3), np.uint8)
    masks = np.zeros((n_g, h, w), np.uint8)
    p_errors: list[str | None] = [None] * n_p
    g_errors: list[str | None] = [None] * n_g
    for i, person in enumerate(spec["persons"]):
        try:
            persons[i], parsing[i], densepose[i], keypoints[i] = _decode_person(person, cfg)
        except Exception as exc:  # every failure becomes this person's error rows
            p_errors[i] = error_reason("person", exc)
    for j, garment in enumerate(spec["garments"]):
        try:
            garments[j], masks[j] = decode_garment(garment["image_uri"], garment["mask_uri"], cfg)
        except Exception as exc:
            g_errors[j] = error_reason("garment", exc)
    meta = {
        "chunk": int(spec["chunk"]),
        "model_ids": [p["model_id"] for p in spec["persons"]],
        "garment_ids": [g["garment_id"] for g in spec["garments"]],
        "rows": spec["rows"],
        "person_errors": p_errors,
        "garment_errors": g_errors,
        "decode_ms": (time.perf_counter() - started) * 1e3,
    }
    return {"meta": json.dumps(meta), "persons": persons, "parsing": parsing, "densepose": densepose,
            "keypoints": keypoints, "garments": garments, "masks": masks}


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2 (actor pool): the tutor.


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


class TutorActor:
    """Holds one tutor on one device; turns a decoded chunk into fake images (uint8) and per-row errors."""

    def __init__(self, tutor: str, cfg: dict):
        import torch

        from pfafn import checkpoint
        from pfafn.inference import InferenceMode
        from pfafn.tutor import TutorModel

        self.device = cfg["device"]
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg["torch_threads"]))
        loaded = checkpoint.load_checkpoint(tutor, map_location="cpu")
        if loaded.kind != "tutor":
            raise StageError(f"{tutor} is a {loaded.kind} checkpoint, not a tutor")
        self.version = loaded.version
        self.precision = resolve_precision(cfg["precision"], self.device)
        channels_last = resolve_channels_last(cfg["channels_last"], self.device, self.precision)
        self.mode = InferenceMode(dtype=self.precision, channels_last=channels_last, compile=cfg["compile"])
        self.model = self.mode.prepare(TutorModel.from_checkpoint(loaded).to(self.device).eval())
        self.batch_size = int(cfg["batch_size"])

    def __call__(self, batch: dict) -> dict:

        out_meta, out_images = [], []
        for i, meta_json in enumerate(batch["meta"]):
            meta, images = self._chunk(json.loads(meta_json), *(batch[k][i] for k in (
                "persons", "parsing", "densepose", "keypoints", "garments", "masks")))
            out_meta.append(json.dumps(meta))
            out_images.append(images)
        return {"meta": np.array(out_meta, dtype=object), "images": stack_ragged(out_images)}

    def _chunk(self, meta: dict, persons, parsing, densepose, keypoints, garments, masks) -> tuple[dict, np.ndarray]:
        from pfafn import imageio

        started = time.perf_counter()
        row_errors: list[str | None] = []
        runnable: list[int] = []
        for k, (p, g, _worn) in enumerate(meta["rows"]):
            reason = meta["person_errors"][p] or meta["garment_errors"][g]
            row_errors.append(reason)
            if reason is None:
                runnable.append(k)
        h, w = persons.shape[1:3]
        images = np.zeros((len(runnable), h, w, 3), np.uint8)
        keep = np.ones(len(runnable), bool)
        for start in range(0, len(runnable), self.batch_size):
            idx = runnable[start:start + self.batch_size]
            p_idx = [meta["rows"][k][0] for k in idx]
            g_idx = [meta["rows"][k][1] for k in idx]
            try:
                fakes = render_fakes(self.model, persons, parsing, densepose, keypoints, garments, masks, p_idx,
                                     g_idx, device=self.device, mode=self.mode)
                if not bool(fakes.isfinite().all()):
                    raise FloatingPointError("non-finite tutor output")
                images[start:start + len(idx)] = imageio.from_model_tensor(fakes)
            except Exception as exc:  # a model failure fails this forward batch's rows, not the job
                reason = error_reason("model", exc)
                for k in idx:
                    row_errors[k] = reason
                keep[start:start + len(idx)] = False
        meta.update(row_errors=row_errors, model_ms=(time.perf_counter() - started) * 1e3,
                    tutor_version=self.version, precision=self.precision)
        return meta, images[keep]


# ----------------------------------------------------------------------------------------------------------------------
# Stage 3 (CPU tasks): write PNGs, then the chunk's rows (the ok part is the commit point).


def write_chunk(meta: dict, images: np.ndarray, cfg: dict) -> dict:
    from pfafn import imageio

    version = meta["tutor_version"]
    rows = _empty_rows()
    k_image = 0
    encode_ms = 0.0
    for (p, g, worn), error in zip(meta["rows"], meta["row_errors"]):
        mid, gid = meta["model_ids"][p], meta["garment_ids"][g]
        uri = None
        if error is None:
            t0 = time.perf_counter()
            try:
                uri = fake_key(cfg["output"], version, mid, gid)
                storage.write_bytes(uri, imageio.encode_png(images[k_image], compress_level=cfg["png_compress_level"]))
            except Exception as exc:
                error, uri = error_reason("write", exc), None
            encode_ms += (time.perf_counter() - t0) * 1e3
            k_image += 1
        _append_row(rows, mid, worn, gid, uri, version, error, cfg["run_id"])
    table = fakes_table(rows)
    import pyarrow.compute as pc

    name = f"part-{cfg['run_id']}-{meta['chunk']:06d}.parquet"
    errors = table.filter(pc.equal(table["status"], "error"))
    if errors.num_rows:
        manifests.write_manifest(errors, storage.join_uri(cfg["output"], ERRORS_DIR, name))
    ok = table.filter(pc.equal(table["status"], "ok"))
    if ok.num_rows:
        manifests.write_manifest(ok, storage.join_uri(cfg["output"], MANIFEST_DIR, name))
    return {"chunk": meta["chunk"], "ok": ok.num_rows, "error": errors.num_rows, "decode_ms": meta["decode_ms"],
            "model_ms": meta["model_ms"], "encode_ms": encode_ms}


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def tutor_version_of(uri: str) -> str:
    """The tutor checkpoint's version; :class:`StageError` when it is not a readable *tutor* checkpoint."""
    from pfafn import checkpoint

    try:
        loaded = checkpoint.load_checkpoint(uri, map_location="cpu", verify=False)
    except (checkpoint.CheckpointError, OSError, ValueError) as exc:
        raise StageError(f"tutor_inference: cannot load the tutor checkpoint {uri}: {one_line(exc)}") from None
    if loaded.kind != "tutor":
        raise StageError(f"tutor_inference: {uri} is a {loaded.kind} checkpoint, not a tutor")
    return loaded.version


def run(config: TutorInferenceConfig) -> dict[str, Any]:
    """Run tutor inference; returns (and writes under the output) the run summary."""
    from pipelines.locking import lock_output, new_run_id, write_run_summary
    from pipelines.ray_env import ensure_ray, model_actor_plan

    config.validate()
    config = absolute_paths(config, "data", "tutor", "output")
    started = time.time()
    run_id = new_run_id(config.run_id)
    version = tutor_version_of(config.tutor)
    lock = lock_output(config.output, run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock)
    try:
        plan = plan_chunks(config, version, run_id)
        plan_s = time.time() - started
        n_pre = len(plan.pre_errors["model_id"])
        log.info("tutor_inference %s: %d persons x k=%d: %d fakes, %d done before, %d in %d chunks, %d error rows "
                 "before decoding", run_id, plan.persons, config.k, plan.fakes_total, plan.fakes_skipped,
                 plan.fakes_total - plan.fakes_skipped - n_pre, len(plan.chunks), n_pre)
        if plan.rejected.num_rows:
            manifests.write_manifest(plan.rejected,
                                     storage.join_uri(config.output, REJECTED_DIR, f"rejected-{run_id}.parquet"))
        ok = err = 0
        timings = {"decode_ms": 0.0, "model_ms": 0.0, "encode_ms": 0.0}
        if n_pre:
            manifests.write_manifest(fakes_table(plan.pre_errors),
                                     storage.join_uri(config.output, ERRORS_DIR, f"part-{run_id}-planned.parquet"))
            err += n_pre
        actor_plan = None
        exec_started = time.time()
        if plan.chunks:
            ensure_ray()
            actor_plan = model_actor_plan(config.device, config.actors, config.cpus_per_actor)
            cfg = dataclasses.asdict(config) | {"run_id": run_id, "device": actor_plan.device}
            if not cfg["torch_threads"] and actor_plan.device == "cpu":
                cfg["torch_threads"] = max(1, int(round(actor_plan.num_cpus * 2)))
            ok, e, timings = _execute(plan, config.tutor, cfg, actor_plan)
            err += e
        execute_s = time.time() - exec_started
        elapsed = time.time() - started
        attempted = ok + err
        summary: dict[str, Any] = {
            "stage": "tutor_inference",
            "run_id": run_id,
            "tutor_version": version,
            "data": config.data,
            "output": config.output,
            "fakes": storage.join_uri(config.output, MANIFEST_DIR),
            "fakes_images": storage.join_uri(config.output, FAKES_DIR, version),
            "errors": storage.join_uri(config.output, ERRORS_DIR),
            "persons": plan.persons,
            "k": config.k,
            "persons_with_fewer_than_k": plan.fewer_than_k,
            "rejected_rows": plan.rejected.num_rows,
            "fakes_total": plan.fakes_total,
            "fakes_skipped": plan.fakes_skipped,
            "fakes_written": ok,
            "fakes_error": err,
            "fakes_attempted": attempted,
            "error_rate": round(err / attempted, 6) if attempted else 0.0,
            "chunks": len(plan.chunks),
            "height": config.height,
            "width": config.width,
            "actors": actor_plan.size if actor_plan else 0,
            "device": actor_plan.device if actor_plan else None,
            "timings": {
                "plan_s": round(plan_s, 3),
                "execute_s": round(execute_s, 3),
                "wall_s": round(elapsed, 3),
                "fakes_per_s": round(ok / execute_s, 3) if ok and execute_s > 0 else 0.0,
                **{k: round(v, 1) for k, v in timings.items()},
            },
            "wall_s": round(elapsed, 3),
        }
        summary["gallery"] = _write_gallery(config, plan, version, run_id, summary)
        summary["exceeded_error_rate"] = bool(attempted and err / attempted > config.max_error_rate)
        write_run_summary(config.output, run_id, summary)
        return summary
    finally:
        lock.release()


def _execute(plan: Plan, tutor: str, cfg: dict, actor_plan) -> tuple[int, int, dict[str, float]]:
    ok = err = done = 0
    timings = {"decode_ms": 0.0, "model_ms": 0.0, "encode_ms": 0.0}
    total = len(plan.chunks)
    for row in stream_units(
        plan.chunks,
        decode=lambda row: decode_chunk(row, cfg),
        write=lambda meta, images: write_chunk(meta, images, cfg),
        actor_plan=actor_plan,
        model_cls=TutorActor,
        model_kwargs={"tutor": tutor, "cfg": cfg},
    ):
        ok += int(row["ok"])
        err += int(row["error"])
        for key in timings:
            timings[key] += float(row[key])
        done += 1
        if progress(done, total):
            log.info("chunks %d/%d written: %d ok, %d error fakes", done, total, ok, err)
    return ok, err, timings


def _write_gallery(config: TutorInferenceConfig, plan: Plan, version: str, run_id: str, summary: dict) -> str | None:
    from pipelines import gallery

    if config.gallery_size <= 0:
        return None
    fakes = load_fakes(config.output, version).to_pylist()
    errors = [r for r in load_fakes(config.output, version, errors=True).to_pylist() if r["run_id"] == run_id]
    rows = errors[: max(1, config.gallery_size // 4)] if errors else []
    keys = [f"{r['model_id']}/{r['tutor_garment_id']}" for r in fakes]
    rows += [fakes[i] for i in gallery.stable_sample(keys, config.gallery_size - len(rows), salt=version)]
    items = [
        gallery.GalleryItem(
            caption=f"{r['model_id']} in {r['tutor_garment_id']} (wears {r['worn_garment_id']})",
            status=r["status"],
            images=[("person", (plan.models.get(r["model_id"]) or {}).get("image_uri")),
                    ("garment", (plan.garments.get(r["tutor_garment_id"]) or {}).get("image_uri")),
                    ("tutor fake", r.get("image_uri"))],
            note=r.get("error") or "",
        )
        for r in rows
    ]
    meta = (f"tutor {version} · run {run_id} · {summary['fakes_written']} written / {summary['fakes_error']} error "
            f"this run, {summary['fakes_skipped']} done before · k={config.k} · {config.height}x{config.width}")
    page = gallery.render_html(f"Tutor fakes · {version}", items, meta)
    gallery.write_html(storage.join_uri(config.output, "gallery", f"{run_id}.html"), page)
    return gallery.write_html(storage.join_uri(config.output, "gallery", "index.html"), page)
