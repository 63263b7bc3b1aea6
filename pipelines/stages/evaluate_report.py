"""The evaluation report: statistics per pair kind and student version, best/worst examples, FID and notes, as
one JSON-able dict (:func:`build_report`) rendered three ways — ``report.json``, ``report.md`` (tables) and
``report.html`` (the examples as pictures: result | ground truth | garment). Scoring is in
:mod:`pipelines.stages.evaluate`."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.core import storage


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


def _groups(rows: list[dict], cap: float) -> dict[str, Any]:
    """Statistics overall, per pair kind, per student version and per ``(pair_kind, student_version)`` group."""
    groups = []
    for kind, version in sorted({(r["pair_kind"], r["student_version"]) for r in rows}):
        sub = [r for r in rows if r["pair_kind"] == kind and r["student_version"] == version]
        groups.append({"pair_kind": kind, "student_version": version, **_group_stats(sub, cap)})
    return {
        "overall": _group_stats(rows, cap),
        "by_pair_kind": {k: _group_stats([r for r in rows if r["pair_kind"] == k], cap)
                         for k in sorted({r["pair_kind"] for r in rows})},
        "by_student_version": {v: _group_stats([r for r in rows if r["student_version"] == v], cap)
                               for v in sorted({r["student_version"] for r in rows})},
        "groups": groups,
    }


def _fid_value(fid: dict, weights: dict, reals: int) -> tuple[float | None, str | None]:
    """The one FID to headline (when one student version has one) and the note that explains it."""
    if not weights["fid"]:
        return None, weights["fid_note"]
    values = {v: e["fid"] for v, e in fid["by_version"].items() if e["fid"] is not None}
    if len(values) == 1:
        return next(iter(values.values())), next(iter(fid["by_version"].values()))["note"]
    if len(values) > 1:
        return None, "several student versions: see fid.by_version"
    if fid["by_version"]:
        return None, "; ".join(e["note"] for e in fid["by_version"].values() if e["note"])
    return None, ("FID skipped: no real images to compare with (give --ground-truth)" if reals == 0
                  else "FID skipped: no try-on images to compare")


def build_report(config, run_id: str, scores: pa.Table, fid: dict, weights: dict, plan) -> dict:
    """The report as a JSON-able dict (``report.json``); ``plan`` is :class:`pipelines.stages.evaluate.Plan`."""
    rows = scores.to_pylist()
    cap = config.psnr_cap
    stats = _groups(rows, cap)
    overall = stats["overall"]
    ranked = rank_pairs(rows, config.rank_by)
    n = config.examples
    fid_value, fid_note = _fid_value(fid, weights, plan.reals)
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
        **stats,
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
    """The best and worst pairs as cards (result | ground truth | garment) whose scores sort "worst first", and the
    errors as table rows; both filtered by status and error reason (:func:`pipelines.core.gallery.render_html`)."""
    from pipelines.core import gallery

    items = []
    for label, key in (("best", "best"), ("worst", "worst")):
        for k, e in enumerate(report[key], start=1):
            caption = (f"{label} #{k} · {e['garment_id']} × {e['model_id']} · {e['pair_kind']} · "
                       f"SSIM {_fmt(e['ssim'])} · PSNR {_fmt(e['psnr'], 2)}{' (identical)' if e['psnr_identical'] else ''}"
                       + (f" · LPIPS {_fmt(e['lpips'])}" if e["lpips"] is not None else ""))
            items.append(gallery.GalleryItem(
                caption=caption, status="ok",
                images=[("result", e["image_uri"]), ("ground truth", e["ground_truth_uri"]),
                        ("garment", e["garment_uri"] or None)],
                extra={m: e[m] for m in ("ssim", "psnr", "lpips") if e[m] is not None}))
    errors = [gallery.GalleryItem(caption=f"{e['garment_id']} × {e['model_id']} ({e['student_version']})",
                                  status="error", images=[], note=e["error"] or "") for e in report["errors"]]
    o = report["overall"]
    meta = (f"run {report['run_id']} · {report['counts']['ok']} scored / {report['counts']['error']} errors / "
            f"{report['counts']['no_ground_truth']} without ground truth · SSIM {_fmt(o['ssim_mean'])} · "
            f"PSNR {_fmt(o['psnr_mean'], 2)} dB (capped at {report['psnr_cap']:g}) · LPIPS {_fmt(o['lpips_mean'])} · "
            f"FID {_fmt(report['fid']['value'], 3)}")
    return gallery.render_html(f"Try-on evaluation · {report['run_id']}", items, meta, listed=errors)


def write_report(output: str, report: dict) -> dict[str, str]:
    """Write report.json, report.md and report.html under ``output``; returns their URIs."""
    from pipelines.core import gallery

    uris = {"report": storage.join_uri(output, "report.json"),
            "report_md": storage.join_uri(output, "report.md"),
            "report_html": storage.join_uri(output, "report.html")}
    storage.write_json(uris["report"], report)
    storage.write_bytes(uris["report_md"], report_markdown(report).encode("utf-8"))
    gallery.write_html(uris["report_html"], report_html(report))
    return uris
