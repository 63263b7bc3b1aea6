"""Evaluate a try-on run: per-pair SSIM / PSNR (/ LPIPS) against ground truth, FID, and a report with examples.

Pipeline (reads top to bottom)::

    results (catalog {output} or its results/) ──► one row per (student_version, garment_id, model_id)
        ──► ground truth: a dataset root (ground_truth.parquet for unpaired pairs; the model's own photo for
            test_pairs rows with paired=true) or a ground-truth manifest (model_id, garment_id, image_uri[, paired])
        ──► units of pairs (URIs only)
        ──► score (CPU tasks: decode the try-on and its ground truth, SSIM and PSNR batched per unit)
        ──► features (model actor pool, only when LPIPS or FID weights are available: LPIPS per pair, Inception
            pool3 features of the try-ons and of the real photos for FID)
        ──► write (CPU tasks: the unit's per-pair scores as Parquet under {output}/scores/ — the commit point)
        ──► FID per student version, report.json / report.md / report.html (best and worst pairs as pictures)

Every result row ends as one scores row: ``ok`` (scored), ``no_ground_truth`` (decoded, nothing to compare to; still
used for FID) or ``error`` with a one-line reason (try-on error row, missing or corrupt try-on or ground-truth image).
A re-run evaluates the results as they are then and replaces the scores of earlier runs once its own are complete.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import manifests, storage
from pipelines.config import absolute_paths
from pipelines.batch import error_reason, one_line, stream_units
from pipelines.errors import StageError

log = logging.getLogger(__name__)

SCORES_DIR = "scores"
PAIR_KINDS = ("paired", "unpaired", "unknown")


@dataclass
class EvaluateConfig:
    """Config of the evaluation stage (``jobs.evaluate``); fields documented in jobs/configs/evaluate.yaml."""

    results: str = ""
    ground_truth: str = ""
    output: str = ""
    garments: str = ""
    student_version: str = ""
    batch_size: int = 16
    height: int = 256
    width: int = 192
    lpips_weights: str = ""
    lpips_backbone_weights: str = ""
    fid_weights: str = ""
    psnr_cap: float = 100.0
    rank_by: str = "ssim"
    examples: int = 6
    device: str = "auto"
    actors: int = 0
    cpus_per_actor: float = 0.0
    torch_threads: int = 0
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 50 * 1024 * 1024
    lock_ttl_s: float = 600.0
    force_unlock: bool = False
    run_id: str = ""

    def validate(self) -> None:
        for name in ("results", "output"):
            if not getattr(self, name):
                raise StageError(f"evaluate: --{name.replace('_', '-')} is required")
        if self.batch_size < 1:
            raise StageError("evaluate: batch_size must be >= 1")
        if self.height < 32 or self.width < 32:
            raise StageError(f"evaluate: height and width must be >= 32, got {self.height}x{self.width}")
        if not self.psnr_cap > 0:
            raise StageError("evaluate: psnr_cap must be > 0 (dB)")
        if self.rank_by not in ("ssim", "psnr", "lpips"):
            raise StageError(f"evaluate: rank_by must be ssim|psnr|lpips, got {self.rank_by!r}")
        if self.examples < 0:
            raise StageError("evaluate: examples must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise StageError(f"evaluate: device must be auto|cpu|cuda, got {self.device!r}")


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 8, "height": 128, "width": 96, "examples": 4},
    "cpu": {"batch_size": 16, "height": 256, "width": 192},
    "published": {"batch_size": 64, "height": 256, "width": 192, "examples": 8},
}

SCORES_SCHEMA = pa.schema(
    [
        ("student_version", pa.string()),
        ("garment_id", pa.string()),
        ("model_id", pa.string()),
        ("pair_kind", pa.string()),
        ("status", pa.string()),  # ok | no_ground_truth | error
        ("error", pa.string()),
        ("image_uri", pa.string()),
        ("ground_truth_uri", pa.string()),
        ("garment_uri", pa.string()),
        ("ssim", pa.float64()),
        ("psnr", pa.float64()),  # dB; +inf for a pixel-identical pair (the report caps it at psnr_cap)
        ("lpips", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("run_id", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs: results and ground truth.


def _resolve_results(uri: str) -> str:
    """The results manifest location: ``{uri}/results`` when ``uri`` is a catalog output root, else ``uri``."""
    nested = storage.join_uri(uri, "results")
    try:
        if storage.exists(nested):
            return nested
    except storage.StorageError:
        pass
    return uri


def load_result_pairs(uri: str, student_version: str = "") -> tuple[list[dict], pa.Table]:
    """One row per (student_version, garment_id, model_id): the newest ``ok`` row, else the newest error row;
    plus the rows the manifest validation rejected (ERRORS_SCHEMA)."""
    try:
        loaded = manifests.load_manifest(_resolve_results(uri), "tryon_results")
    except manifests.ManifestError as exc:
        raise StageError(f"evaluate: results {uri}: {exc}") from None
    best: dict[tuple, dict] = {}
    for row in loaded.rows.to_pylist():
        if student_version and row["student_version"] != student_version:
            continue
        key = (row["student_version"] or "", row["garment_id"], row["model_id"])
        when = row["finished_at"] or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        rank = (row["status"] == "ok", when)
        old = best.get(key)
        if old is None or rank >= old["_rank"]:
            best[key] = {**row, "_rank": rank}
    rows = sorted(best.values(), key=lambda r: (r["student_version"] or "", r["garment_id"], r["model_id"]))
    for r in rows:
        r.pop("_rank")
    return rows, loaded.rejected


@dataclass
class GroundTruth:
    """Where each pair's reference image is, what kind of pair it is, and the images FID compares against."""

    mode: str  # "none" | "root" | "manifest"
    images: dict[tuple[str, str], str]  # (model_id, garment_id) -> uri
    kinds: dict[tuple[str, str], str]  # (model_id, garment_id) -> paired | unpaired
    worn: dict[str, set[str]]  # model_id -> garments it wears in its own photo (root mode)
    model_photos: dict[str, str]  # model_id -> photo uri (root mode)
    garment_images: dict[str, str]  # garment_id -> product photo uri (for the report)
    rejected_rows: int = 0

    def kind(self, model_id: str, garment_id: str) -> str:
        key = (model_id, garment_id)
        if key in self.kinds:
            return self.kinds[key]
        if self.mode == "root":
            return "paired" if garment_id in self.worn.get(model_id, ()) else "unpaired"
        return "unknown"


def _load_optional(uri: str, kind: str) -> manifests.ManifestLoad | None:
    if not storage.exists(uri):
        return None
    try:
        return manifests.load_manifest(uri, kind)
    except manifests.ManifestError as exc:
        raise StageError(f"evaluate: {exc}") from None


def load_ground_truth(uri: str, garments_uri: str = "") -> GroundTruth:
    gt = GroundTruth(mode="none", images={}, kinds={}, worn={}, model_photos={}, garment_images={})
    if uri:
        root_models = storage.join_uri(uri, "models.parquet")
        if storage.exists(root_models):
            _load_root(uri, gt)
        else:
            gt.mode = "manifest"
            try:
                loaded = manifests.load_manifest(uri, "ground_truth")
            except manifests.ManifestError as exc:
                raise StageError(f"evaluate: ground truth {uri}: {exc}") from None
            gt.rejected_rows += loaded.rejected.num_rows
            paired = loaded.rows["paired"].to_pylist() if "paired" in loaded.rows.column_names else None
            for i, r in enumerate(loaded.rows.to_pylist()):
                gt.images[(r["model_id"], r["garment_id"])] = r["image_uri"]
                if paired is not None and paired[i] is not None:
                    gt.kinds[(r["model_id"], r["garment_id"])] = "paired" if _truthy(paired[i]) else "unpaired"
    if garments_uri:
        loaded = _load_optional(garments_uri, "garments")
        if loaded is None:
            raise StageError(f"evaluate: garments manifest not found: {garments_uri}")
        gt.garment_images.update({r["garment_id"]: r["image_uri"] for r in loaded.rows.to_pylist()})
    return gt


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y", "t")
    return bool(value)


def _load_root(uri: str, gt: GroundTruth) -> None:
    gt.mode = "root"
    models = _load_optional(storage.join_uri(uri, "models.parquet"), "models")
    garments = _load_optional(storage.join_uri(uri, "garments.parquet"), "garments")
    train = _load_optional(storage.join_uri(uri, "train_pairs.parquet"), "train_pairs")
    test = _load_optional(storage.join_uri(uri, "test_pairs.parquet"), "test_pairs")
    unpaired = _load_optional(storage.join_uri(uri, "ground_truth.parquet"), "ground_truth")
    for loaded in (models, garments, train, test, unpaired):
        if loaded is not None:
            gt.rejected_rows += loaded.rejected.num_rows
    gt.model_photos = {r["model_id"]: r["image_uri"] for r in models.rows.to_pylist()} if models else {}
    if garments is not None:
        gt.garment_images = {r["garment_id"]: r["image_uri"] for r in garments.rows.to_pylist()}
    if train is not None:
        for r in train.rows.to_pylist():
            gt.worn.setdefault(r["model_id"], set()).add(r["garment_id"])
    if unpaired is not None:
        for r in unpaired.rows.to_pylist():
            gt.images[(r["model_id"], r["garment_id"])] = r["image_uri"]
            gt.kinds[(r["model_id"], r["garment_id"])] = "unpaired"
    if test is not None:
        for r in test.rows.to_pylist():
            key = (r["model_id"], r["garment_id"])
            if r["paired"]:
                gt.worn.setdefault(r["model_id"], set()).add(r["garment_id"])
                gt.kinds[key] = "paired"
                photo = gt.model_photos.get(r["model_id"])
                if photo:  # the model wears this garment in its own photo: the photo is the ground truth
                    gt.images[key] = photo
            else:
                gt.kinds.setdefault(key, "unpaired")


# ----------------------------------------------------------------------------------------------------------------------
# Weights: LPIPS and FID are optional; unavailable weights are a note, never a crash.


def _read_state_dict(uri: str) -> dict:
    import torch

    data = storage.read_bytes(uri)
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"not a state dict ({type(obj).__name__})")
    return obj


def _weights_id(*uris: str) -> str:
    digest = hashlib.sha256()
    for uri in uris:
        if uri:
            digest.update(storage.read_bytes(uri))
    return digest.hexdigest()[:12]


def load_lpips(cfg: dict):
    from pfafn.perceptual import build_lpips

    backbone = _read_state_dict(cfg["lpips_backbone_weights"]) if cfg.get("lpips_backbone_weights") else None
    return build_lpips(_read_state_dict(cfg["lpips_weights"]), backbone)


def load_inception(cfg: dict):
    from pfafn.perceptual import build_inception

    return build_inception(_read_state_dict(cfg["fid_weights"]))


def probe_weights(config: EvaluateConfig) -> dict[str, Any]:
    """Which learned metrics can run: ``{"lpips": bool, "lpips_note": str|None, "lpips_net": ..., "fid": bool, ...}``.

    The networks are built once here (and dropped), so a bad file becomes a note in the report instead of failing
    every actor.
    """
    out: dict[str, Any] = {"lpips": False, "lpips_note": None, "lpips_net": None, "lpips_weights_id": None,
                           "fid": False, "fid_note": None, "fid_weights_id": None}
    cfg = dataclasses.asdict(config)
    if not config.lpips_weights:
        out["lpips_note"] = "LPIPS skipped: lpips_weights is not configured (see docs/evaluation.md)"
    else:
        try:
            model = load_lpips(cfg)
            out.update(lpips=True, lpips_net=model.net_type,
                       lpips_weights_id=_weights_id(config.lpips_weights, config.lpips_backbone_weights))
        except Exception as exc:
            out["lpips_note"] = f"LPIPS skipped: weights unavailable ({type(exc).__name__}: {one_line(exc)})"
    if not config.fid_weights:
        out["fid_note"] = "FID skipped: fid_weights is not configured (see docs/evaluation.md)"
    else:
        try:
            load_inception(cfg)
            out.update(fid=True, fid_weights_id=_weights_id(config.fid_weights))
        except Exception as exc:
            out["fid_note"] = f"FID skipped: weights unavailable ({type(exc).__name__}: {one_line(exc)})"
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Planning.


@dataclass
class Plan:
    pairs: list[dict]
    units: list[dict]
    reals: int
    rejected: pa.Table
    gt: GroundTruth


def plan_units(config: EvaluateConfig, weights: dict[str, Any]) -> Plan:
    rows, rejected = load_result_pairs(config.results, config.student_version)
    gt = load_ground_truth(config.ground_truth, config.garments)
    pairs = []
    for r in rows:
        key = (r["model_id"], r["garment_id"])
        kind = gt.kind(*key)
        pairs.append({
            "student_version": r["student_version"] or "",
            "garment_id": r["garment_id"],
            "model_id": r["model_id"],
            "pair_kind": kind,
            "result_status": r["status"],
            "result_error": r.get("error"),
            "image_uri": r.get("image_uri") or "",
            "ground_truth_uri": gt.images.get(key, ""),
            "garment_uri": gt.garment_images.get(r["garment_id"], ""),
            # FID compares unpaired try-ons with real photos (the papers' protocol); without pair kinds, all of them
            "fid_fake": bool(weights["fid"]) and kind in ("unpaired", "unknown"),
        })
    units = []
    b = config.batch_size
    for start in range(0, len(pairs), b):
        units.append({"unit": len(units), "role": "pairs", "spec": json.dumps(pairs[start:start + b])})
    reals: list[str] = []
    if weights["fid"]:
        if gt.mode == "root":
            fid_models = sorted({p["model_id"] for p in pairs if p["fid_fake"]})
            reals = sorted({gt.model_photos[m] for m in fid_models if m in gt.model_photos})
        elif gt.mode == "manifest":
            reals = sorted(set(gt.images.values()))
    for start in range(0, len(reals), b):
        units.append({"unit": len(units), "role": "reals",
                      "spec": json.dumps([{"image_uri": u} for u in reals[start:start + b]])})
    return Plan(pairs=pairs, units=units, reals=len(reals), rejected=rejected, gt=gt)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1 (CPU tasks): decode and score a unit.


def _decode(uri: str, cfg: dict) -> np.ndarray:
    from pfafn import imageio

    if not uri:
        raise FileNotFoundError("no image URI")
    data = storage.read_bytes(uri, max_bytes=cfg["max_image_bytes"])
    return imageio.decode_image(data, max_pixels=cfg["max_image_pixels"])


def _fit(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from pfafn import imageio

    return image if image.shape[:2] == (h, w) else imageio.fit_image(image, h, w)


def ssim_psnr(results: list[np.ndarray], references: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair SSIM and PSNR (``pfafn.metrics``, images in [0, 1], data range 1) of uint8 H×W×3 pairs, batched by
    size; PSNR is +inf for pixel-identical pairs."""
    import torch

    from pfafn import metrics

    n = len(results)
    ssim = np.full(n, np.nan)
    psnr = np.full(n, np.nan)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(results):
        groups.setdefault(img.shape, []).append(i)
    for idx in groups.values():
        x = torch.from_numpy(np.stack([results[i] for i in idx])).permute(0, 3, 1, 2).double() / 255.0
        y = torch.from_numpy(np.stack([references[i] for i in idx])).permute(0, 3, 1, 2).double() / 255.0
        ssim[idx] = metrics.ssim(x, y).numpy()
        psnr[idx] = metrics.psnr(x, y).numpy()
    return ssim, psnr


def score_unit(row: dict, cfg: dict) -> dict:
    """Decode a unit's images; SSIM/PSNR for pairs with ground truth. Failures become error reasons."""
    started = time.perf_counter()
    items = json.loads(row["spec"])
    role = row["role"]
    h, w = cfg["height"], cfg["width"]
    need_net = cfg["lpips"] or cfg["fid"]
    n = len(items)
    fakes = np.zeros((n if need_net else 0, h, w, 3), np.uint8)
    refs = np.zeros((n if need_net and role == "pairs" else 0, h, w, 3), np.uint8)
    decoded = np.zeros(n, bool)
    if role == "reals":
        for i, item in enumerate(items):
            try:
                image = _decode(item["image_uri"], cfg)
                fakes[i] = _fit(image, h, w)
                decoded[i] = True
                item["status"] = "ok"
            except Exception as exc:
                item.update(status="error", error=error_reason("real image", exc))
    else:
        scored_results, scored_refs, scored_idx = [], [], []
        for i, item in enumerate(items):
            item.update(status=None, error=None, ssim=None, psnr=None, lpips=None, height=None, width=None)
            if item["result_status"] != "ok":
                item.update(status="error", error=f"try-on failed: {item['result_error'] or 'error row'}")
                continue
            try:
                result = _decode(item["image_uri"], cfg)
            except Exception as exc:
                item.update(status="error", error=error_reason("try-on image", exc))
                continue
            item.update(height=int(result.shape[0]), width=int(result.shape[1]))
            reference = None
            if item["ground_truth_uri"]:
                try:
                    # the reference is fitted to the try-on's size (same policy as the model inputs)
                    reference = _fit(_decode(item["ground_truth_uri"], cfg), *result.shape[:2])
                except Exception as exc:
                    item.update(status="error", error=error_reason("ground truth", exc))
                    continue
            decoded[i] = True
            if need_net:
                fakes[i] = _fit(result, h, w)
            if reference is None:
                item["status"] = "no_ground_truth"
                continue
            item["status"] = "ok"
            if need_net:
                refs[i] = _fit(reference, h, w)
            scored_results.append(result)
            scored_refs.append(reference)
            scored_idx.append(i)
        if scored_idx:
            try:
                ssim, psnr = ssim_psnr(scored_results, scored_refs)
                for k, i in enumerate(scored_idx):
                    items[i]["ssim"], items[i]["psnr"] = float(ssim[k]), float(psnr[k])
            except Exception as exc:  # e.g. an image smaller than the SSIM window
                for i in scored_idx:
                    items[i].update(status="error", error=error_reason("metrics", exc))
                    decoded[i] = False
    meta = {"unit": int(row["unit"]), "role": role, "items": items, "decoded": decoded.tolist(),
            "decode_ms": (time.perf_counter() - started) * 1e3}
    return {"meta": json.dumps(meta), "fakes": fakes, "refs": refs}


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2 (actor pool): LPIPS and Inception features.


class FeatureActor:
    """Holds LPIPS and/or Inception-v3 on one device; adds LPIPS values and FID features to scored units."""

    def __init__(self, cfg: dict):
        import torch

        self.device = cfg["device"]
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg["torch_threads"]))
        self.lpips = load_lpips(cfg).to(self.device) if cfg["lpips"] else None
        self.inception = load_inception(cfg).to(self.device) if cfg["fid"] else None
        self.batch_size = int(cfg["batch_size"])

    def __call__(self, batch: dict) -> dict:
        metas, features = [], []
        for i, meta_json in enumerate(batch["meta"]):
            meta, feats = self._unit(json.loads(meta_json), batch["fakes"][i], batch["refs"][i])
            metas.append(json.dumps(meta))
            features.append(feats.astype(np.float32).tobytes())
        return {"meta": np.array(metas, dtype=object), "features": np.array(features, dtype=object)}

    def _tensor(self, images: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0

    def _unit(self, meta: dict, fakes: np.ndarray, refs: np.ndarray) -> tuple[dict, np.ndarray]:
        import torch

        started = time.perf_counter()
        items, decoded = meta["items"], meta["decoded"]
        feature_rows: list[int] = []
        feats = np.zeros((0, 2048), np.float32)
        with torch.inference_mode():
            if self.lpips is not None and meta["role"] == "pairs":
                idx = [i for i, it in enumerate(items) if it["status"] == "ok"]
                for s in range(0, len(idx), self.batch_size):
                    part = idx[s:s + self.batch_size]
                    try:
                        values = self.lpips(self._tensor(fakes[part]), self._tensor(refs[part])).cpu().numpy()
                        for i, v in zip(part, values):
                            items[i]["lpips"] = float(v)
                    except Exception as exc:
                        for i in part:  # the pair keeps its SSIM/PSNR; the LPIPS failure is its note
                            items[i]["error"] = error_reason("lpips", exc)
            if self.inception is not None:
                if meta["role"] == "reals":
                    idx = [i for i, ok in enumerate(decoded) if ok]
                else:
                    idx = [i for i, it in enumerate(items) if decoded[i] and it["fid_fake"]]
                chunks = []
                for s in range(0, len(idx), self.batch_size):
                    part = idx[s:s + self.batch_size]
                    try:
                        chunks.append(self.inception(self._tensor(fakes[part])).cpu().numpy())
                        feature_rows += part
                    except Exception as exc:
                        log.warning("inception features failed for %d images: %s", len(part), exc)
                if chunks:
                    feats = np.concatenate(chunks).astype(np.float32)
        meta["feature_rows"] = feature_rows
        meta["model_ms"] = (time.perf_counter() - started) * 1e3
        return meta, feats


# ----------------------------------------------------------------------------------------------------------------------
# Stage 3 (CPU tasks): write the unit's scores.


def scores_table(items: list[dict], run_id: str) -> pa.Table:
    now = datetime.datetime.now(datetime.timezone.utc)
    cols: dict[str, list] = {f.name: [] for f in SCORES_SCHEMA}
    for it in items:
        for name in cols:
            if name == "run_id":
                cols[name].append(run_id)
            elif name == "finished_at":
                cols[name].append(now)
            elif name == "image_uri":
                cols[name].append(it.get("image_uri") or None)
            elif name == "ground_truth_uri":
                cols[name].append(it.get("ground_truth_uri") or None)
            elif name == "garment_uri":
                cols[name].append(it.get("garment_uri") or None)
            else:
                cols[name].append(it.get(name))
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in SCORES_SCHEMA}, schema=SCORES_SCHEMA)


def write_unit(meta: dict, features: bytes | None, cfg: dict) -> dict:
    items = meta["items"]
    out = {"unit": meta["unit"], "role": meta["role"], "ok": 0, "no_ground_truth": 0, "error": 0,
           "decode_ms": meta["decode_ms"], "model_ms": meta.get("model_ms", 0.0),
           "features": features or b"", "feature_owners": json.dumps([])}
    rows = meta.get("feature_rows", [])
    if meta["role"] == "reals":
        out["feature_owners"] = json.dumps(["__real__"] * len(rows))
        out["error"] = sum(1 for it in items if it["status"] == "error")
        return out
    out["feature_owners"] = json.dumps([items[i]["student_version"] for i in rows])
    for it in items:
        out[it["status"]] += 1
    dest = storage.join_uri(cfg["output"], SCORES_DIR, f"part-{cfg['run_id']}-{meta['unit']:06d}.parquet")
    manifests.write_manifest(scores_table(items, cfg["run_id"]), dest)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a try-on run; returns (and writes under the output) the summary; writes the report."""
    from pipelines.locking import lock_output, new_run_id, write_run_summary
    from pipelines.ray_env import ensure_ray, model_actor_plan

    config.validate()
    config = absolute_paths(config, "results", "ground_truth", "output", "garments", "lpips_weights",
                            "lpips_backbone_weights", "fid_weights")
    started = time.time()
    run_id = new_run_id(config.run_id)
    lock = lock_output(config.output, run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock)
    try:
        weights = probe_weights(config)
        plan = plan_units(config, weights)
        plan_s = time.time() - started
        log.info("evaluate %s: %d pairs (%d with ground truth), %d real images for FID, %d units; lpips=%s fid=%s",
                 run_id, len(plan.pairs), sum(1 for p in plan.pairs if p["ground_truth_uri"]), plan.reals,
                 len(plan.units), weights["lpips"], weights["fid"])
        collected = {"features": {}, "timings": {"decode_ms": 0.0, "model_ms": 0.0}, "real_errors": 0}
        actor_plan = None
        if plan.units:
            ensure_ray()
            cfg = dataclasses.asdict(config) | {"run_id": run_id, "lpips": weights["lpips"], "fid": weights["fid"]}
            if weights["lpips"] or weights["fid"]:
                actor_plan = model_actor_plan(config.device, config.actors, config.cpus_per_actor)
                cfg["device"] = actor_plan.device
                if not cfg["torch_threads"] and actor_plan.device == "cpu":
                    cfg["torch_threads"] = max(1, int(round(actor_plan.num_cpus * 2)))
            collected = _execute(plan, cfg, actor_plan)
        if plan.rejected.num_rows:
            manifests.write_manifest(plan.rejected, storage.join_uri(config.output, "rejected.parquet"))
        scores = load_scores(config.output, run_id)
        _drop_other_runs(config.output, run_id)
        fid = _fid(collected["features"], weights)
        report = build_report(config, run_id, scores, fid, weights, plan)
        uris = write_report(config, report)
        elapsed = time.time() - started
        overall = report["overall"]
        summary: dict[str, Any] = {
            "stage": "evaluate",
            "run_id": run_id,
            "results": config.results,
            "ground_truth": config.ground_truth or None,
            "output": config.output,
            "scores": storage.join_uri(config.output, SCORES_DIR),
            **uris,
            "student_versions": sorted({p["student_version"] for p in plan.pairs}),
            "pairs": len(plan.pairs),
            "pairs_ok": report["counts"]["ok"],
            "pairs_no_ground_truth": report["counts"]["no_ground_truth"],
            "pairs_error": report["counts"]["error"],
            "rejected_rows": plan.rejected.num_rows,
            "ssim": overall["ssim_mean"],
            "psnr": overall["psnr_mean"],
            "psnr_identical": overall["psnr_identical"],
            "psnr_cap": config.psnr_cap,
            "lpips": overall["lpips_mean"],
            "lpips_note": report["notes"]["lpips"],
            "fid": report["fid"]["value"],
            "fid_note": report["notes"]["fid"],
            "fid_by_version": {v: f["fid"] for v, f in report["fid"]["by_version"].items()},
            "metrics": {"ssim": overall["ssim_mean"], "psnr": overall["psnr_mean"], "lpips": overall["lpips_mean"],
                        "fid": report["fid"]["value"]},
            "actors": actor_plan.size if actor_plan else 0,
            "device": actor_plan.device if actor_plan else None,
            "timings": {"plan_s": round(plan_s, 3), "wall_s": round(elapsed, 3),
                        **{k: round(v, 1) for k, v in collected["timings"].items()}},
            "wall_s": round(elapsed, 3),
        }
        write_run_summary(config.output, run_id, summary)
        return summary
    finally:
        lock.release()


def _execute(plan: Plan, cfg: dict, actor_plan) -> dict:
    rows = stream_units(
        plan.units,
        decode=lambda row: score_unit(row, cfg),
        write=lambda meta, features: write_unit(meta, features, cfg),
        actor_plan=actor_plan,
        model_cls=FeatureActor if actor_plan is not None else None,
        model_kwargs={"cfg": cfg},
        payload="features",
    )
    features: dict[str, list[np.ndarray]] = {}
    timings = {"decode_ms": 0.0, "model_ms": 0.0}
    real_errors = 0
    for row in rows:
        owners = json.loads(row["feature_owners"])
        if owners:
            feats = np.frombuffer(row["features"], dtype=np.float32).reshape(len(owners), -1)
            for owner, f in zip(owners, feats):
                features.setdefault(owner, []).append(f)
        for k in timings:
            timings[k] += float(row[k])
        if row["role"] == "reals":
            real_errors += int(row["error"])
    return {"features": features, "timings": timings, "real_errors": real_errors}


def load_scores(output: str, run_id: str | None = None) -> pa.Table:
    """Scores rows under ``{output}/scores/`` (optionally of one run)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = storage.join_uri(output, SCORES_DIR)
    files = storage.list_files(root, suffix=".parquet") if storage.exists(root) else []
    parts = []
    for uri in files:
        if run_id is not None and not storage.basename(uri).startswith(f"part-{run_id}-"):
            continue
        fs, path = storage.pyarrow_filesystem(uri)
        t = pq.read_table(path, filesystem=fs)
        if run_id is not None:
            t = t.filter(pc.equal(t["run_id"], run_id))
        parts.append(t.cast(SCORES_SCHEMA))
    return pa.concat_tables(parts) if parts else SCORES_SCHEMA.empty_table()


def _drop_other_runs(output: str, run_id: str) -> None:
    """After this run's scores are complete, remove earlier runs' parts: scores/ holds one row per pair."""
    root = storage.join_uri(output, SCORES_DIR)
    if not storage.exists(root):
        return
    for uri in storage.list_files(root, suffix=".parquet"):
        if not storage.basename(uri).startswith(f"part-{run_id}-"):
            storage.delete(uri)


# ----------------------------------------------------------------------------------------------------------------------
# FID and the report.


def _fid(features: dict[str, list[np.ndarray]], weights: dict) -> dict[str, Any]:
    from pfafn.perceptual import fid_from_features

    out: dict[str, Any] = {"by_version": {}, "n_real": len(features.get("__real__", []))}
    if not weights["fid"]:
        return out
    reals = np.asarray(features.get("__real__", []), dtype=np.float64)
    for version, feats in sorted(features.items()):
        if version == "__real__":
            continue
        entry: dict[str, Any] = {"fid": None, "n_fake": len(feats), "n_real": len(reals), "note": None}
        if len(feats) < 2 or len(reals) < 2:
            entry["note"] = f"FID needs at least 2 try-on and 2 real images (have {len(feats)} and {len(reals)})"
        else:
            entry["fid"] = round(fid_from_features(np.asarray(feats, dtype=np.float64), reals), 4)
            if min(len(feats), len(reals)) < 2048:
                entry["note"] = (f"few images ({len(feats)} try-ons, {len(reals)} real): FID is biased upwards "
                                 "below ~2048 per side; compare runs of equal size only")
        out["by_version"][version] = entry
    return out


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return round(float(arr.mean()), 6), round(float(np.median(arr)), 6)


def _group_stats(rows: list[dict], cap: float) -> dict[str, Any]:
    scored = [r for r in rows if r["status"] == "ok"]
    ssim = [r["ssim"] for r in scored if r["ssim"] is not None]
    psnr = [min(r["psnr"], cap) for r in scored if r["psnr"] is not None]
    lp = [r["lpips"] for r in scored if r["lpips"] is not None]
    out = {"pairs": len(rows), "ok": len(scored),
           "no_ground_truth": sum(r["status"] == "no_ground_truth" for r in rows),
           "error": sum(r["status"] == "error" for r in rows),
           "psnr_identical": sum(1 for r in scored if r["psnr"] is not None and math.isinf(r["psnr"]))}
    out["ssim_mean"], out["ssim_median"] = _stats(ssim)
    out["psnr_mean"], out["psnr_median"] = _stats(psnr)
    out["lpips_mean"], out["lpips_median"] = _stats(lp)
    return out


def rank_pairs(rows: list[dict], rank_by: str = "ssim") -> list[dict]:
    """Scored rows best first: SSIM/PSNR descending or LPIPS ascending; ties broken by PSNR, then SSIM, then ids."""
    scored = [r for r in rows if r["status"] == "ok" and r.get(rank_by) is not None]

    def key(r: dict):
        primary = -r[rank_by] if rank_by in ("ssim", "psnr") else r[rank_by]
        psnr = r["psnr"] if r["psnr"] is not None else -math.inf
        return (primary, -psnr, -(r["ssim"] or 0.0), r["student_version"], r["garment_id"], r["model_id"])

    return sorted(scored, key=key)


def _example(r: dict, cap: float) -> dict[str, Any]:
    psnr = r["psnr"]
    return {
        "student_version": r["student_version"], "garment_id": r["garment_id"], "model_id": r["model_id"],
        "pair_kind": r["pair_kind"], "ssim": None if r["ssim"] is None else round(r["ssim"], 6),
        "psnr": None if psnr is None else round(min(psnr, cap), 4), "psnr_identical": bool(psnr is not None
                                                                                             and math.isinf(psnr)),
        "lpips": None if r["lpips"] is None else round(r["lpips"], 6), "image_uri": r["image_uri"],
        "ground_truth_uri": r["ground_truth_uri"], "garment_uri": r["garment_uri"],
    }


def build_report(config: EvaluateConfig, run_id: str, scores: pa.Table, fid: dict, weights: dict, plan: Plan) -> dict:
    rows = scores.to_pylist()
    cap = config.psnr_cap
    groups = []
    keys = sorted({(r["pair_kind"], r["student_version"]) for r in rows})
    for kind, version in keys:
        sub = [r for r in rows if r["pair_kind"] == kind and r["student_version"] == version]
        groups.append({"pair_kind": kind, "student_version": version, **_group_stats(sub, cap)})
    by_version = {v: _group_stats([r for r in rows if r["student_version"] == v], cap)
                  for v in sorted({r["student_version"] for r in rows})}
    by_kind = {k: _group_stats([r for r in rows if r["pair_kind"] == k], cap)
               for k in sorted({r["pair_kind"] for r in rows})}
    overall = _group_stats(rows, cap)
    ranked = rank_pairs(rows, config.rank_by)
    n = config.examples
    fid_values = {v: e["fid"] for v, e in fid["by_version"].items() if e["fid"] is not None}
    fid_note = weights["fid_note"]
    fid_value = None
    if weights["fid"]:
        if len(fid_values) == 1:
            fid_value = next(iter(fid_values.values()))
            fid_note = next(iter(fid["by_version"].values()))["note"]
        elif len(fid_values) > 1:
            fid_note = "several student versions: see fid.by_version"
        elif fid["by_version"]:
            fid_note = "; ".join(e["note"] for e in fid["by_version"].values() if e["note"])
        else:
            fid_note = ("FID skipped: no real images to compare with (give --ground-truth)" if plan.reals == 0
                        else "FID skipped: no try-on images to compare")
    lpips_note = weights["lpips_note"]
    if weights["lpips"] and overall["ok"] == 0:
        lpips_note = "LPIPS: no pair with ground truth was scored"
    errors = [r for r in rows if r["status"] == "error"]
    return {
        "stage": "evaluate",
        "run_id": run_id,
        "results": config.results,
        "ground_truth": config.ground_truth or None,
        "ground_truth_mode": plan.gt.mode,
        "psnr_cap": cap,
        "rank_by": config.rank_by,
        "counts": {"pairs": len(rows), "ok": overall["ok"], "no_ground_truth": overall["no_ground_truth"],
                   "error": overall["error"], "rejected_result_rows": plan.rejected.num_rows,
                   "rejected_ground_truth_rows": plan.gt.rejected_rows},
        "overall": overall,
        "by_pair_kind": by_kind,
        "by_student_version": by_version,
        "groups": groups,
        "fid": {"value": fid_value, "by_version": fid["by_version"], "n_real": fid.get("n_real", 0),
                "weights_id": weights["fid_weights_id"]},
        "lpips": {"net": weights["lpips_net"], "weights_id": weights["lpips_weights_id"]},
        "best": [_example(r, cap) for r in ranked[:n]],
        "worst": [_example(r, cap) for r in ranked[::-1][:n]],
        "errors": [{"student_version": r["student_version"], "garment_id": r["garment_id"],
                    "model_id": r["model_id"], "error": r["error"]} for r in errors[:50]],
        "notes": {"lpips": lpips_note, "fid": fid_note,
                  "psnr": f"PSNR is +inf for pixel-identical pairs; means, medians and examples cap it at {cap:g} dB "
                          "(psnr_identical counts them); scores/*.parquet keep the uncapped value"},
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def report_markdown(report: dict) -> str:
    lines = [f"# Evaluation {report['run_id']}", "",
             f"Results: `{report['results']}` · ground truth: `{report['ground_truth'] or 'none'}` "
             f"({report['ground_truth_mode']})", ""]
    c = report["counts"]
    lines += [f"Pairs: {c['pairs']} · scored: {c['ok']} · no ground truth: {c['no_ground_truth']} · "
              f"errors: {c['error']} · rejected result rows: {c['rejected_result_rows']}", ""]
    lines += ["| pair kind | student version | pairs | scored | no GT | errors | SSIM mean | SSIM median | "
              "PSNR mean (dB) | PSNR median | identical | LPIPS mean | LPIPS median |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in report["groups"]:
        lines.append(f"| {g['pair_kind']} | {g['student_version']} | {g['pairs']} | {g['ok']} | "
                     f"{g['no_ground_truth']} | {g['error']} | "
                     f"{_fmt(g['ssim_mean'])} | {_fmt(g['ssim_median'])} | {_fmt(g['psnr_mean'], 2)} | "
                     f"{_fmt(g['psnr_median'], 2)} | {g['psnr_identical']} | {_fmt(g['lpips_mean'])} | "
                     f"{_fmt(g['lpips_median'])} |")
    lines += ["", f"FID: {_fmt(report['fid']['value'], 3)}"]
    for version, e in report["fid"]["by_version"].items():
        lines.append(f"- {version}: {_fmt(e['fid'], 3)} ({e['n_fake']} try-ons vs {e['n_real']} real)"
                     + (f" — {e['note']}" if e["note"] else ""))
    lines += ["", "Notes:"] + [f"- {k}: {v}" for k, v in report["notes"].items() if v]
    for title, key in (("Best", "best"), ("Worst", "worst")):
        lines += ["", f"## {title} pairs by {report['rank_by']}", "",
                  "| garment | model | version | kind | SSIM | PSNR | LPIPS | try-on |", "|---|---|---|---|---:|---:|---:|---|"]
        for e in report[key]:
            lines.append(f"| {e['garment_id']} | {e['model_id']} | {e['student_version']} | {e['pair_kind']} | "
                         f"{_fmt(e['ssim'])} | {_fmt(e['psnr'], 2)}{' (identical)' if e['psnr_identical'] else ''} | "
                         f"{_fmt(e['lpips'])} | {e['image_uri']} |")
    if report["errors"]:
        lines += ["", "## Errors (first 50)", ""] + [f"- {e['garment_id']} × {e['model_id']} ({e['student_version']}): "
                                                       f"{e['error']}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def report_html(report: dict) -> str:
    from pipelines import gallery

    items = []
    for label, key in (("best", "best"), ("worst", "worst")):
        for k, e in enumerate(report[key], start=1):
            caption = (f"{label} #{k} · {e['garment_id']} × {e['model_id']} · {e['pair_kind']} · "
                       f"SSIM {_fmt(e['ssim'])} · PSNR {_fmt(e['psnr'], 2)}{' (identical)' if e['psnr_identical'] else ''}"
                       + (f" · LPIPS {_fmt(e['lpips'])}" if e["lpips"] is not None else ""))
            items.append(gallery.GalleryItem(
                caption=caption, status=label,
                images=[("result", e["image_uri"]), ("ground truth", e["ground_truth_uri"]),
                        ("garment", e["garment_uri"] or None)]))
    o = report["overall"]
    meta = (f"run {report['run_id']} · {report['counts']['ok']} scored / {report['counts']['error']} errors / "
            f"{report['counts']['no_ground_truth']} without ground truth · SSIM {_fmt(o['ssim_mean'])} · "
            f"PSNR {_fmt(o['psnr_mean'], 2)} dB (capped at {report['psnr_cap']:g}) · LPIPS {_fmt(o['lpips_mean'])} · "
            f"FID {_fmt(report['fid']['value'], 3)}")
    return gallery.render_html(f"Try-on evaluation · {report['run_id']}", items, meta)


def write_report(config: EvaluateConfig, report: dict) -> dict[str, str]:
    from pipelines import gallery

    uris = {"report": storage.join_uri(config.output, "report.json"),
            "report_md": storage.join_uri(config.output, "report.md"),
            "report_html": storage.join_uri(config.output, "report.html")}
    storage.write_json(uris["report"], report)
    storage.write_bytes(uris["report_md"], report_markdown(report).encode("utf-8"))
    gallery.write_html(uris["report_html"], report_html(report))
    return uris
