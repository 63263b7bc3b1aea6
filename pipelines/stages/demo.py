"""The whole system end to end on an embedded default: synthetic world → tutor → fakes → student → catalog → eval.

Every stage is the real one (Ray Data / Ray Train on a local Ray, local folders under ``runs/demo`` by default) with
a small preset, so a fresh clone shows the full pipeline on 2 CPU cores in minutes. Each stage is idempotent, so a
second ``make demo`` reuses what the first one finished.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError, absolute_paths, build_config, check_choices, check_size, require

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Config of ``jobs.demo`` (all fields optional)."""

    output: str = "runs/demo"
    preset: Literal["tiny", "cpu", "published"] = "tiny"  # the preset of every stage
    height: int = 128
    width: int = 96
    persons: int = 48
    garments: int = 24
    parsing_noise: float = 0.3
    ground_truth_pairs: int = 24
    seed: int = 0
    train_workers: int = 2
    catalog_garments: int = 6
    catalog_models: int = 6

    def validate(self) -> None:
        require(self, "demo", "output")
        check_choices(self, "demo")
        check_size("demo", self.height, self.width)
        if self.catalog_garments < 1 or self.catalog_models < 1:
            raise ConfigError("demo: catalog_garments and catalog_models must be >= 1")


PRESETS: dict[str, dict[str, Any]] = {"tiny": {}, "cpu": {"preset": "cpu", "height": 256, "width": 192}}


def _stage(step: int, total: int, name: str, fn: Callable[[], dict]) -> dict:
    log.info("[%d/%d] %s ...", step, total, name)
    started = time.time()
    summary = fn()
    log.info("[%d/%d] %s done in %.1fs", step, total, name, time.time() - started)
    return summary


def _cfg(module, overrides: dict, preset: str):
    cls = next(v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type)
               and v.__module__ == module.__name__)
    return build_config(cls, preset=module.PRESETS.get(preset, {}), explicit=overrides)


def write_catalog_manifests(data: str, dest: str, n_garments: int, n_models: int) -> tuple[str, str]:
    """Catalog inputs for the demo: test-split models and garments, ground-truth pairs first (so eval has GT)."""
    models = manifests.load_manifest(storage.join_uri(data, "models.parquet"), "models").rows
    garments = manifests.load_manifest(storage.join_uri(data, "garments.parquet"), "garments").rows
    test_models = models.filter(pc.equal(models["split"], "test"))
    gt_uri = storage.join_uri(data, "ground_truth.parquet")
    gt = manifests.load_manifest(gt_uri, "ground_truth").rows if storage.exists(gt_uri) else None
    gt_rows = gt.to_pylist() if gt is not None else []
    model_ids = _first_distinct(n_models, [r["model_id"] for r in gt_rows], test_models["model_id"].to_pylist(),
                                models["model_id"].to_pylist())
    garment_ids = _first_distinct(n_garments, [r["garment_id"] for r in gt_rows], garments["garment_id"].to_pylist())
    g_sel = garments.filter(pc.is_in(garments["garment_id"], pa.array(garment_ids)))
    m_sel = models.filter(pc.is_in(models["model_id"], pa.array(model_ids))).select(["model_id", "image_uri"])
    g_uri = storage.join_uri(dest, "garments.parquet")
    m_uri = storage.join_uri(dest, "models.parquet")
    manifests.write_manifest(g_sel, g_uri)
    manifests.write_manifest(m_sel, m_uri)
    return g_uri, m_uri


def _first_distinct(n: int, *sources: list[str]) -> list[str]:
    """The first ``n`` distinct ids, taken from ``sources`` in order."""
    out: list[str] = []
    for ids in sources:
        for i in ids:
            if len(out) >= n:
                return out
            if i not in out:
                out.append(i)
    return out


def run(config: DemoConfig) -> dict[str, Any]:
    from pipelines.stages import catalog_tryon, distill, evaluate, generate_synthetic, train_tutor, tutor_inference
    from pipelines.core.ray_env import ensure_ray

    config.validate()
    config = absolute_paths(config, "output")
    started = time.time()
    out = config.output
    storage.makedirs(out)
    ensure_ray()
    size = {"height": config.height, "width": config.width}
    p = config.preset
    total = 7
    paths = {k: storage.join_uri(out, k) for k in ("data", "tutor", "fakes", "student", "catalog", "tryon", "eval")}

    data = _stage(1, total, "synthetic world", lambda: generate_synthetic.run(_cfg(generate_synthetic, {
        "output": paths["data"], "persons": config.persons, "garments": config.garments, "seed": config.seed,
        "parsing_noise": config.parsing_noise, "ground_truth_pairs": config.ground_truth_pairs, **size}, p)))
    workers = {"train": {"num_workers": config.train_workers}}
    tutor = _stage(2, total, f"train tutor (Ray Train, {config.train_workers} workers)", lambda: train_tutor.run(_cfg(
        train_tutor, {"data": paths["data"], "output": paths["tutor"], **size, **workers}, p)))
    fakes = _stage(3, total, "tutor inference (Ray Data)", lambda: tutor_inference.run(_cfg(tutor_inference, {
        "data": data.get("data", paths["data"]), "tutor": tutor["checkpoint"], "output": paths["fakes"], **size}, p)))
    student = _stage(4, total, f"distill student (Ray Train, {config.train_workers} workers)", lambda: distill.run(_cfg(
        distill, {"data": paths["data"], "fakes": fakes["fakes"], "tutor": tutor["checkpoint"],
                  "output": paths["student"], **size, **workers}, p)))
    g_uri, m_uri = write_catalog_manifests(paths["data"], paths["catalog"], config.catalog_garments,
                                           config.catalog_models)
    # the catalog manifests sit in catalog/ but name the world's photos: allow the world's folder as an input root
    tryon = _stage(5, total, f"catalog try-on {config.catalog_garments}x{config.catalog_models} (Ray Data)",
                   lambda: catalog_tryon.run(_cfg(catalog_tryon, {"garments": g_uri, "models": m_uri,
                                                      "student": student["student_checkpoint"],
                                                      "allowed_roots": [paths["data"]],
                                                      "output": paths["tryon"], **size}, p)))
    report = _stage(6, total, "evaluate against exact ground truth", lambda: evaluate.run(_cfg(evaluate, {
        "results": paths["tryon"], "ground_truth": paths["data"], "output": paths["eval"], "garments": g_uri,
        "allowed_roots": [paths["data"]], "student_version": tryon["student_version"], **size}, p)))
    log.info("[7/7] summary")
    summary = {
        "stage": "demo",
        "output": out,
        "data": data.get("data", paths["data"]),
        "tutor_checkpoint": tutor.get("checkpoint"),
        "fakes": fakes.get("fakes"),
        "fakes_written": fakes.get("fakes_written"),
        "student_checkpoint": student.get("student_checkpoint"),
        "official_warp": student.get("official_warp"),
        "official_gen": student.get("official_gen"),
        "student_version": tryon.get("student_version"),
        "catalog_pairs_ok": tryon.get("pairs_ok"),
        "catalog_pairs_skipped": tryon.get("pairs_skipped"),
        "catalog_pairs_error": tryon.get("pairs_error"),
        "gallery": tryon.get("gallery"),
        "report": report.get("report_md") or report.get("report"),
        "metrics": report.get("metrics"),
        "tutor_metrics": tutor.get("final_metrics"),
        "student_metrics": student.get("final_metrics"),
        "wall_s": round(time.time() - started, 1),
    }
    storage.write_json(storage.join_uri(out, "summary.json"), summary)
    return summary
