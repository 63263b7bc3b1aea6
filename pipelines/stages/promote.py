"""Promote a student to production: check its evaluation against thresholds, then write a promotion record that
``jobs.nightly`` follows (``jobs.promote`` is its CLI; the record format is :mod:`pipelines.core.promotions`).

What :func:`run` does, top to bottom — nothing is written unless every step passes:

1. loads the student checkpoint and takes its content id (``version``: the hash of its weights, verified on load,
   the same ``student_version`` the catalog writes into its result rows and evaluate groups its scores by);
2. reads the evaluation (a ``jobs.evaluate`` output folder, its ``report.json`` or its ``summary.json``) and takes
   the scores *of this version* from ``by_student_version`` — an evaluation that did not score this version is
   refused, so the scores in the record are the student's own;
3. checks every configured threshold (``min_<score>`` / ``max_<score>``: the score must be at least / at most the
   value) by the score's name; a thresholded score the evaluation lacks is a miss, never a pass;
4. on a miss, or with no evaluation while thresholds are set, refuses (exit 2, one line naming each score and
   threshold it missed) unless ``force`` — then the record says ``forced: true``, the required ``reason`` and what
   was missed;
5. creates the record ``{to}/promotions/{time}-{version}.json`` (create-exclusive, never overwritten).
"""
from __future__ import annotations

import getpass
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from pipelines.core import promotions, storage
from pipelines.core.config import ConfigError, require
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

#: The named threshold fields; each reads the evaluation score after its ``min_`` / ``max_`` prefix.
THRESHOLD_FIELDS = ("min_ssim", "min_psnr", "max_lpips", "max_fid", "max_error_rate")
_REASON_LIMIT = 500


@dataclass
class PromoteConfig:
    """Config of ``jobs.promote``; every field is documented in jobs/configs/promote.yaml (no choice fields).
    A threshold of ``None`` is not checked."""

    student: str = ""
    to: str = ""
    evaluation: str = ""
    force: bool = False
    reason: str = ""
    # Defaults: PF-AFN reports SSIM 0.89 on the VITON test set (Ge et al., CVPR 2021, Table 1), so 0.80 refuses a
    # clearly broken student with room for harder catalogs; error pairs as in the catalog's max_error_rate (5 %).
    # PSNR, LPIPS and FID have no default because LPIPS/FID need weights that an evaluation may not have had.
    min_ssim: float | None = 0.80
    min_psnr: float | None = None
    max_lpips: float | None = None
    max_fid: float | None = None
    max_error_rate: float | None = 0.05
    extra_thresholds: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        require(self, "promote", "student", "to")
        if self.force and not " ".join(self.reason.split()):
            raise ConfigError("promote: --force needs --reason TEXT (it is recorded with the promotion)")
        for name, value in self.thresholds().items():
            if not name.startswith(("min_", "max_")) or len(name) < 5:
                raise ConfigError(f"promote: threshold {name!r} must be named min_<score> or max_<score>")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"promote: threshold {name} must be a finite number, got {value!r}")

    def thresholds(self) -> dict[str, float]:
        """Every threshold that is set, named fields and ``extra_thresholds`` together."""
        out = {name: getattr(self, name) for name in THRESHOLD_FIELDS if getattr(self, name) is not None}
        out.update(self.extra_thresholds)
        return out


PRESETS: dict[str, dict[str, Any]] = {}


# ----------------------------------------------------------------------------------------------------------------------
# The student and its evaluation


def student_version(uri: str) -> str:
    """The student checkpoint's content id; StageError when it is not a readable, intact student checkpoint."""
    from pfafn import checkpoint

    loaded = checkpoint.load_checkpoint(uri, map_location="cpu")  # verify=True: the weights must hash to it
    if loaded.kind != "student":
        raise StageError(f"promote: {uri} is a {loaded.kind} checkpoint, not a student")
    return loaded.version


def read_report(uri: str) -> dict[str, Any]:
    """The evaluation report: ``uri`` is an evaluate output folder, its report.json, or its summary.json (which
    names the report)."""
    data = storage.read_json(uri if uri.rstrip("/").endswith(".json") else storage.join_uri(uri, "report.json"))
    if isinstance(data, dict) and "by_student_version" not in data and isinstance(data.get("report"), str):
        data = storage.read_json(data["report"])
    if not isinstance(data, dict) or not isinstance(data.get("by_student_version"), dict):
        raise StageError(f"promote: {uri} is not a jobs.evaluate report (no 'by_student_version')")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def evaluation_scores(report: dict[str, Any], version: str, where: str) -> dict[str, float | None]:
    """The scores of ``version`` by name: each ``<score>_mean`` of its ``by_student_version`` entry as ``<score>``,
    ``error_rate`` (error pairs / pairs) and its ``fid``. StageError when the report did not score this version."""
    entry = report["by_student_version"].get(version)
    if not isinstance(entry, dict):
        scored = ", ".join(sorted(report["by_student_version"])) or "none"
        raise StageError(f"promote: the evaluation {where} is not of this student: it scored student version(s) "
                         f"{scored}, the student is version {version}")
    scores = {name[: -len("_mean")]: _number(v) for name, v in entry.items() if name.endswith("_mean")}
    pairs, errors = _number(entry.get("pairs")), _number(entry.get("error"))
    scores["error_rate"] = errors / pairs if pairs and errors is not None else None
    fid = ((report.get("fid") or {}).get("by_version") or {}).get(version)
    scores["fid"] = _number(fid.get("fid")) if isinstance(fid, dict) else None
    return scores


def missed_thresholds(scores: dict[str, float | None], thresholds: dict[str, float]) -> list[str]:
    """One phrase per threshold the scores miss, e.g. ``ssim 0.61 < min_ssim 0.8``; a missing score misses."""
    missed = []
    for name, limit in sorted(thresholds.items()):
        bound, score = name.split("_", 1)
        value = scores.get(score)
        if value is None:
            missed.append(f"{score} is missing from the evaluation ({name} {limit:g})")
        elif bound == "min" and value < limit:
            missed.append(f"{score} {value:.4g} < {name} {limit:g}")
        elif bound == "max" and value > limit:
            missed.append(f"{score} {value:.4g} > {name} {limit:g}")
    return missed


def promoted_by() -> str:
    """Who promotes: ``PFAFN_PROMOTED_BY`` (e.g. a CI job's name), else the login name; a name, never a secret."""
    name = os.environ.get("PFAFN_PROMOTED_BY", "")
    if not name.strip():
        try:
            name = getpass.getuser()
        except (OSError, KeyError):  # no login name in a bare container
            name = "unknown"
    return " ".join(name.split())[:100] or "unknown"


# ----------------------------------------------------------------------------------------------------------------------
# The run


def run(config: PromoteConfig) -> dict[str, Any]:
    """Check and promote; returns the summary (the record's URI and contents). Refusals raise StageError (exit 2)
    before anything is written."""
    config.validate()
    student = storage.absolute_uri(config.student)
    version = student_version(student)
    thresholds = config.thresholds()
    scores: dict[str, float | None] = {}
    evaluation = storage.absolute_uri(config.evaluation)
    report: dict[str, Any] = {}
    if evaluation:
        report = read_report(evaluation)
        scores = evaluation_scores(report, version, evaluation)
        missed = missed_thresholds(scores, thresholds)
    else:
        missed = [f"no evaluation to check {', '.join(sorted(thresholds))} against"] if thresholds else []
    if missed and not config.force:
        raise StageError(f"promote: refused student {version} ({student}): {'; '.join(missed)}. Evaluate it "
                         "(python -m jobs.evaluate) and pass --evaluation URI, or --force --reason TEXT")
    previous, _ = promotions.newest_promotion(config.to)
    record = {
        "student": student, "student_version": version, "promoted_by": promoted_by(),
        "evaluation": evaluation or None, "evaluation_run_id": report.get("run_id"),
        "scores": scores, "thresholds": thresholds, "missed": missed, "forced": bool(config.force),
        "reason": " ".join(config.reason.split())[:_REASON_LIMIT] or None,
        "replaces": previous.student_version if previous else None,
    }
    uri, written = promotions.write_record(config.to, record)
    log.info("promoted student %s (%s) as %s%s", version, student, uri, " (forced)" if config.force else "")
    return {"stage": "promote", "promotion": uri, **written}
