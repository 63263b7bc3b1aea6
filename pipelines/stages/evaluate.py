"""Evaluate a try-on run: per-pair SSIM / PSNR (/ LPIPS) against ground truth, FID, and a report with examples.

A :class:`pipelines.batch.BatchStage` (the shared skeleton runs it); what is particular to evaluation::

    results (catalog {output} or its results/) ──► one row per (student_version, garment_id, model_id)
        ──► ground truth: a dataset root (ground_truth.parquet for unpaired pairs; the model's own photo for
            test_pairs rows with paired=true) or a ground-truth manifest (model_id, garment_id, image_uri[, paired])
        ──► units of pairs (URIs only)
        ──► score (CPU tasks: decode the try-on and its ground truth, SSIM and PSNR batched per unit)
        ──► features (model actor pool, only when LPIPS or FID weights are available: LPIPS per pair, Inception
            pool3 features of the try-ons and of the real photos for FID)
        ──► write (CPU tasks: the unit's per-pair scores as Parquet under {output}/scores/ — the commit point)
        ──► FID per student version, report.json / report.md / report.html (``evaluate_report``)

Every result row ends as one scores row: ``ok`` (scored), ``no_ground_truth`` (decoded, nothing to compare to; still
used for FID) or ``error`` with a one-line reason naming what failed (``try-on image: …`` — missing, corrupt, or the
catalog's own error row —, ``ground truth image: …``, ``metrics: …``). A re-run evaluates the results as they are
then and, once its own scores are complete, removes the earlier scores of the student versions it evaluated (other
versions' scores and files that are not scores parts stay).
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.batch import (BatchRun, BatchStage, InputError, RayStageConfig, UnitActor, blame, commit_part,
                             error_reason, one_line, part_uri, read_image, read_parts, rows_table, run_batch_stage)
from pipelines.core import manifests, parts, storage
from pipelines.core.config import ConfigError
from pipelines.core.errors import StageError
from pipelines.stages.evaluate_report import build_report, write_report

log = logging.getLogger(__name__)

SCORES_DIR = "scores"
PAIR_KINDS = ("paired", "unpaired", "unknown")


@dataclass
class EvaluateConfig(RayStageConfig):
    """Config of the evaluation stage (``jobs.evaluate``); fields documented in jobs/configs/evaluate.yaml.

    ``height × width`` is only what the LPIPS / Inception networks see (SSIM and PSNR compare each try-on at its own
    size), so PF-AFN's multiple-of-32 rule does not apply; 32 pixels keep AlexNet's and VGG's five LPIPS layers
    non-empty."""

    results: str = ""
    ground_truth: str = ""
    garments: str = ""
    student_version: str = ""
    lpips_weights: str = ""
    lpips_backbone_weights: str = ""
    fid_weights: str = ""
    psnr_cap: float = 100.0
    rank_by: Literal["ssim", "psnr", "lpips"] = "ssim"
    examples: int = 6

    def validate(self) -> None:
        self.check_common("evaluate", "results", "output")
        if self.height < 32 or self.width < 32:
            raise ConfigError(f"evaluate: height and width must be >= 32, got {self.height}x{self.width}")
        if not self.psnr_cap > 0:
            raise ConfigError("evaluate: psnr_cap must be > 0 (dB)")
        if self.examples < 0:
            raise ConfigError("evaluate: examples must be >= 0")


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
# The required columns tell a scores part from a foreign table in scores/ (skipped, never deleted).
SCORES_SPEC = manifests.ManifestSpec("scores", SCORES_SCHEMA,
                                     required=("student_version", "garment_id", "model_id", "status"))


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


def load_result_pairs(uri: str, student_version: str = "", skipped: parts.Skipped | None = None
                      ) -> tuple[list[dict], pa.Table]:
    """One row per (student_version, garment_id, model_id): the newest ``ok`` row, else the newest error row;
    plus the rows the manifest validation rejected (ERRORS_SCHEMA). In a results folder, files that are not result
    parts (junk, another tool's table) are skipped with a warning and recorded in ``skipped``."""
    location = _resolve_results(uri)
    spec = manifests.SPECS["tryon_results"]
    where = {"student_version": student_version} if student_version else None
    try:
        if parts.list_parts(location):
            tables = list(parts.scan_parts([(location, where)], spec, spec.schema.names, skipped=skipped))
            table = pa.concat_tables(tables) if tables else spec.schema.empty_table()
            loaded = manifests.validate_table(table, spec, base_dir=location.rstrip("/"), source=location)
        else:  # one results file (or a folder of CSV parts)
            loaded = manifests.load_manifest(location, "tryon_results")
    except manifests.ManifestError as exc:
        raise StageError(f"evaluate: results {uri}: {exc}") from None
    rows = loaded.rows
    if student_version:
        rows = rows.filter(pc.fill_null(pc.equal(rows["student_version"], student_version), False))
    return _newest_per_pair(rows), loaded.rejected


def _newest_per_pair(rows: pa.Table) -> list[dict]:
    """The row that counts per (student_version, garment_id, model_id), sorted by that key: sorted in Arrow by key,
    then ok-ness, then time (null times first), the last row of each key wins."""
    keys = ("_version", "garment_id", "model_id")
    t = rows.append_column("_version", pc.fill_null(rows["student_version"], "")).append_column(
        "_ok", pc.fill_null(pc.equal(rows["status"], "ok"), False))
    t = t.take(pc.sort_indices(t, sort_keys=[(k, "ascending", "at_start") for k in (*keys, "_ok", "finished_at")]))
    n = t.num_rows
    if not n:
        return []
    last = np.ones(n, bool)
    last[:-1] = False
    for k in keys:
        col = t[k]
        last[:-1] |= pc.fill_null(pc.not_equal(col.slice(0, n - 1), col.slice(1)), True).to_numpy(
            zero_copy_only=False)
    return t.filter(pa.array(last)).drop_columns(["_version", "_ok"]).to_pylist()


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
    cfg = {"lpips_weights": config.lpips_weights, "lpips_backbone_weights": config.lpips_backbone_weights,
           "fid_weights": config.fid_weights}
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


def _pair(r: dict, gt: GroundTruth, fid: bool) -> dict:
    """One result row as the pair to score: its ground truth, its kind, and whether its try-on goes into FID."""
    key = (r["model_id"], r["garment_id"])
    kind = gt.kind(*key)
    return {
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
        "fid_fake": fid and kind in ("unpaired", "unknown"),
    }


def _real_images(pairs: list[dict], gt: GroundTruth) -> list[str]:
    """The real photos FID compares with: the models of the FID try-ons (dataset root) or every reference image."""
    if gt.mode == "root":
        fid_models = sorted({p["model_id"] for p in pairs if p["fid_fake"]})
        return sorted({gt.model_photos[m] for m in fid_models if m in gt.model_photos})
    if gt.mode == "manifest":
        return sorted(set(gt.images.values()))
    return []


def plan_units(config: EvaluateConfig, weights: dict[str, Any], skipped: parts.Skipped | None = None) -> Plan:
    rows, rejected = load_result_pairs(config.results, config.student_version, skipped)
    gt = load_ground_truth(config.ground_truth, config.garments)
    pairs = [_pair(r, gt, bool(weights["fid"])) for r in rows]
    b = config.batch_size
    units = [{"unit": i, "role": "pairs", "spec": json.dumps(pairs[s:s + b])}
             for i, s in enumerate(range(0, len(pairs), b))]
    reals = _real_images(pairs, gt) if weights["fid"] else []
    for start in range(0, len(reals), b):
        units.append({"unit": len(units), "role": "reals",
                      "spec": json.dumps([{"image_uri": u} for u in reals[start:start + b]])})
    return Plan(pairs=pairs, units=units, reals=len(reals), rejected=rejected, gt=gt)


# ----------------------------------------------------------------------------------------------------------------------
# Decode (CPU tasks): decode and score a unit.


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


def _same_size(reference: np.ndarray, result: np.ndarray) -> np.ndarray:
    """The ground truth, refused unless it has the try-on's size: no resize is exact (resampling changes the pixels
    SSIM/PSNR compare, a letterbox shifts them), so a pair at two sizes is an error row naming both (issue 12 item 9)."""
    if reference.shape[:2] != result.shape[:2]:
        raise ValueError(f"ground truth is {reference.shape[0]}x{reference.shape[1]} but the try-on is "
                         f"{result.shape[0]}x{result.shape[1]} (height x width); evaluate try-ons made at the ground "
                         "truth's size")
    return reference


def _read_tryon(item: dict, cfg: dict) -> np.ndarray:
    """The pair's try-on; a catalog error row or a missing/corrupt image is the ``try-on image``'s failure."""
    if item["result_status"] != "ok":
        raise InputError(f"try-on image: try-on failed ({item['result_error'] or 'error row without a reason'})")
    with blame("try-on image"):
        return read_image(item["image_uri"], cfg)


def _score_reals(items: list[dict], cfg: dict, images: np.ndarray, decoded: np.ndarray) -> None:
    """Decode the real photos of a ``reals`` unit (for FID) into ``images``."""
    for i, item in enumerate(items):
        try:
            images[i] = _fit(read_image(item["image_uri"], cfg), cfg["height"], cfg["width"])
            decoded[i] = True
            item["status"] = "ok"
        except Exception as exc:
            item.update(status="error", error=error_reason("real image", exc))


def _score_pairs(items: list[dict], cfg: dict, fakes: np.ndarray, refs: np.ndarray, decoded: np.ndarray) -> None:
    """Decode each pair's try-on and ground truth and score SSIM/PSNR; fill ``fakes``/``refs`` for the networks."""
    h, w, need_net = cfg["height"], cfg["width"], bool(len(fakes))
    scored: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, item in enumerate(items):
        item.update(status=None, error=None, ssim=None, psnr=None, lpips=None, height=None, width=None)
        try:
            result = _read_tryon(item, cfg)
            item.update(height=int(result.shape[0]), width=int(result.shape[1]))
            reference = None
            if item["ground_truth_uri"]:
                with blame("ground truth image"):
                    reference = _same_size(read_image(item["ground_truth_uri"], cfg), result)
        except InputError as exc:
            item.update(status="error", error=exc.reason)
            continue
        decoded[i] = True
        if need_net:
            fakes[i] = _fit(result, h, w)
        item["status"] = "no_ground_truth" if reference is None else "ok"
        if reference is not None:
            if need_net:
                refs[i] = _fit(reference, h, w)
            scored.append((i, result, reference))
    if not scored:
        return
    try:
        ssim, psnr = ssim_psnr([s[1] for s in scored], [s[2] for s in scored])
        for k, (i, _, _) in enumerate(scored):
            items[i]["ssim"], items[i]["psnr"] = float(ssim[k]), float(psnr[k])
    except Exception as exc:  # e.g. an image smaller than the SSIM window
        for i, _, _ in scored:
            items[i].update(status="error", error=error_reason("metrics", exc))
            decoded[i] = False


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
        _score_reals(items, cfg, fakes, decoded)
    else:
        _score_pairs(items, cfg, fakes, refs, decoded)
    meta = {"unit": int(row["unit"]), "role": role, "items": items, "decoded": decoded.tolist(),
            "decode_ms": (time.perf_counter() - started) * 1e3}
    return {"meta": json.dumps(meta), "fakes": fakes, "refs": refs}


# ----------------------------------------------------------------------------------------------------------------------
# Model (actor pool): LPIPS and Inception features.


class FeatureActor(UnitActor):
    """Holds LPIPS and/or Inception-v3 on one device; adds LPIPS values and FID features to scored units."""

    inputs = ("fakes", "refs")
    payload = "features"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.lpips = load_lpips(cfg).to(self.device) if cfg["lpips"] else None
        self.inception = load_inception(cfg).to(self.device) if cfg["fid"] else None

    def pack(self, payloads: list[np.ndarray]) -> np.ndarray:
        return np.array([f.astype(np.float32).tobytes() for f in payloads], dtype=object)

    def _tensor(self, images: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0

    def run_unit(self, meta: dict, fakes: np.ndarray, refs: np.ndarray) -> tuple[dict, np.ndarray]:
        import torch

        started = time.perf_counter()
        feature_rows: list[int] = []
        feats = np.zeros((0, 2048), np.float32)
        with torch.inference_mode():
            if self.lpips is not None and meta["role"] == "pairs":
                self._lpips(meta["items"], fakes, refs)
            if self.inception is not None:
                feature_rows, feats = self._features(meta, fakes)
        meta["feature_rows"] = feature_rows
        meta["model_ms"] = (time.perf_counter() - started) * 1e3
        return meta, feats

    def _lpips(self, items: list[dict], fakes: np.ndarray, refs: np.ndarray) -> None:
        idx = [i for i, it in enumerate(items) if it["status"] == "ok"]
        for s in range(0, len(idx), self.batch_size):
            part = idx[s:s + self.batch_size]
            try:
                values = self.lpips(self._tensor(fakes[part]), self._tensor(refs[part])).cpu().numpy()
                for i, v in zip(part, values):
                    items[i]["lpips"] = float(v)
            except Exception as exc:
                for i in part:  # the pair keeps its SSIM/PSNR; the LPIPS failure is its note
                    items[i]["error"] = error_reason("metrics", exc)

    def _features(self, meta: dict, images: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Inception pool3 features of the unit's decoded real photos, or of its FID try-ons."""
        items, decoded = meta["items"], meta["decoded"]
        if meta["role"] == "reals":
            idx = [i for i, ok in enumerate(decoded) if ok]
        else:
            idx = [i for i, it in enumerate(items) if decoded[i] and it["fid_fake"]]
        rows, chunks = [], []
        for s in range(0, len(idx), self.batch_size):
            part = idx[s:s + self.batch_size]
            try:
                chunks.append(self.inception(self._tensor(images[part])).cpu().numpy())
                rows += part
            except Exception as exc:
                log.warning("inception features failed for %d images: %s", len(part), exc)
        return rows, (np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 2048), np.float32))


# ----------------------------------------------------------------------------------------------------------------------
# Write (CPU tasks): the unit's scores.


def scores_table(items: list[dict], run_id: str) -> pa.Table:
    now = datetime.datetime.now(datetime.timezone.utc)
    uris = ("image_uri", "ground_truth_uri", "garment_uri")
    return rows_table([{**it, **{k: it.get(k) or None for k in uris}, "run_id": run_id, "finished_at": now}
                       for it in items], SCORES_SCHEMA)


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
    commit_part(scores_table(items, cfg["run_id"]), part_uri(cfg["output"], SCORES_DIR, cfg["attempt"], meta["unit"]),
                cfg)
    return out


def load_scores(output: str, run_id: str | None = None, attempt: str = "", skipped: parts.Skipped | None = None
                ) -> pa.Table:
    """Scores rows under ``{output}/scores/`` (optionally of one run; with ``attempt``, ``BatchRun.attempt``, of that
    run's parts only — a reused run id names earlier attempts' parts too)."""
    if run_id is None:
        return read_parts(storage.join_uri(output, SCORES_DIR), SCORES_SPEC, skipped=skipped)
    return read_parts(storage.join_uri(output, SCORES_DIR), SCORES_SPEC, where={"run_id": run_id},
                      prefix=f"part-{attempt or run_id}-", skipped=skipped)


def _drop_earlier_scores(output: str, attempt: str, versions: set[str], skipped: parts.Skipped | None = None) -> int:
    """After this run's scores (its parts are named ``part-{attempt}-…``) are complete, remove the earlier scores of
    the student versions it evaluated, so scores/ holds one row per pair: a part holding only those versions is
    deleted; a part that also holds other versions is rewritten with their rows only. Other versions' scores and
    files that are not scores parts are never touched. Returns the number of parts deleted or rewritten."""
    changed = 0
    for uri in parts.list_parts(storage.join_uri(output, SCORES_DIR)):
        if storage.basename(uri).startswith(f"part-{attempt}-"):
            continue
        table = parts.read_part(uri, SCORES_SPEC, SCORES_SCHEMA.names, skipped)
        if table is None:
            continue
        mine = pc.fill_null(pc.is_in(pc.fill_null(table["student_version"], ""),
                                     value_set=pa.array(sorted(versions), pa.string())), False)
        if pc.all(mine).as_py():
            storage.delete(uri)
        elif pc.any(mine).as_py():
            manifests.write_manifest(table.filter(pc.invert(mine)), uri)
        else:
            continue
        changed += 1
    return changed


# ----------------------------------------------------------------------------------------------------------------------
# FID (the report is pipelines.stages.evaluate_report).


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




# ----------------------------------------------------------------------------------------------------------------------
# The stage.


class Evaluate(BatchStage):
    """Evaluation's hooks for :func:`pipelines.batch.run_batch_stage`. Its error rate counts error pairs over all
    pairs; it has no model version, no threshold and no gallery (report.html shows the best and worst pairs)."""

    name = "evaluate"
    path_fields = ("results", "ground_truth", "output", "garments", "lpips_weights", "lpips_backbone_weights",
                   "fid_weights")
    model_cls = FeatureActor
    payload = "features"
    timing_keys = ("decode_ms", "model_ms")
    decode = staticmethod(score_unit)
    write = staticmethod(write_unit)

    def __init__(self, config: EvaluateConfig):
        super().__init__(config)
        self.features: dict[str, list[np.ndarray]] = {}

    def plan(self, run: BatchRun) -> list[dict]:
        self.weights = w = probe_weights(self.config)
        self.skipped = parts.Skipped()
        p = self.planned = plan_units(self.config, w, self.skipped)
        log.info("evaluate %s: %d pairs (%d with ground truth), %d real images for FID, %d units; lpips=%s fid=%s",
                 run.run_id, len(p.pairs), sum(1 for x in p.pairs if x["ground_truth_uri"]), p.reals, len(p.units),
                 w["lpips"], w["fid"])
        return p.units

    def write_planned(self, run: BatchRun) -> int:
        if self.planned.rejected.num_rows:
            manifests.write_manifest(self.planned.rejected, storage.join_uri(self.config.output, "rejected.parquet"))
        return 0

    def uses_model(self, run: BatchRun) -> bool:
        return bool(self.weights["lpips"] or self.weights["fid"])

    def worker_extras(self, run: BatchRun) -> dict:
        return {"lpips": self.weights["lpips"], "fid": self.weights["fid"]}

    def collect(self, row: dict, run: BatchRun) -> None:
        owners = json.loads(row["feature_owners"])
        if owners:
            feats = np.frombuffer(row["features"], dtype=np.float32).reshape(len(owners), -1)
            for owner, f in zip(owners, feats):
                self.features.setdefault(owner, []).append(f)

    def summary(self, run: BatchRun) -> dict[str, Any]:
        c, p = self.config, self.planned
        scores = load_scores(c.output, run.run_id, attempt=run.attempt, skipped=self.skipped)
        _drop_earlier_scores(c.output, run.attempt, {x["student_version"] for x in p.pairs}, self.skipped)
        report = build_report(c, run.run_id, scores, _fid(self.features, self.weights), self.weights, p)
        uris = write_report(c.output, report)
        overall, counts = report["overall"], report["counts"]
        run.ok, run.error = counts["ok"] + counts["no_ground_truth"], counts["error"]
        metrics = {"ssim": overall["ssim_mean"], "psnr": overall["psnr_mean"], "lpips": overall["lpips_mean"],
                   "fid": report["fid"]["value"]}
        return {
            "results": c.results,
            "ground_truth": c.ground_truth or None,
            "scores": storage.join_uri(c.output, SCORES_DIR),
            **uris,
            "student_versions": sorted({x["student_version"] for x in p.pairs}),
            "pairs": len(p.pairs),
            "pairs_ok": counts["ok"],
            "pairs_no_ground_truth": counts["no_ground_truth"],
            "pairs_error": counts["error"],
            "rejected_rows": p.rejected.num_rows,
            "results_files_skipped": len(self.skipped),
            **metrics,
            "psnr_identical": overall["psnr_identical"],
            "psnr_cap": c.psnr_cap,
            "lpips_note": report["notes"]["lpips"],
            "fid_note": report["notes"]["fid"],
            "fid_by_version": {v: f["fid"] for v, f in report["fid"]["by_version"].items()},
            "metrics": metrics,
        }


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a try-on run; returns (and writes under the output) the summary; writes the report."""
    return run_batch_stage(Evaluate(config))
