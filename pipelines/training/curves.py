"""Loss curves of a training run, drawn from the loss history the checkpoints carry (so a resumed run's curve starts
at step 1, not at the resume):

``{output}/ray/<phase>/step_XXXXXXXX/loss_curve.png``
    beside each Ray Train checkpoint's ``state.pt``: the phase up to that step (rank 0 draws it while training, so a
    long run can be watched).
``{output}/loss_curve.png``
    beside the stage's model file (``tutor.pt``, ``student.pt``): every phase of the stage end to end, one after the
    other on the x axis with a marker where each phase starts.

The terms drawn (and logged by the progress lines) are :func:`main_terms`; the PNG's ``pfafn`` text chunk says which
phases and steps it covers.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

from pipelines.core import storage

log = logging.getLogger(__name__)

CURVE_FILE = "loss_curve.png"
#: The distillation terms worth a line of their own (``pipelines.stages.distill``: feature and flow distillation).
KD_TERMS = ("kd_feature", "kd_flow")


def main_terms(entry: Mapping) -> list[str]:
    """The terms of a history entry worth showing: ``loss`` (what the optimizer minimised), then each part named
    ``*_total`` (the warp loss and the generator loss of ``pfafn.losses`` in an end-to-end phase) and
    :data:`KD_TERMS`; a phase with one loss and no such parts (the warp phase: ``l1``, ``vgg``, ``smooth``, ...)
    shows its terms instead (not its ``total``, which is ``loss``). Every term stays in the history and the phase
    records."""
    parts = [k for k in entry if k not in ("step", "epoch", "loss")]
    main = [k for k in parts if k.endswith("_total") or k in KD_TERMS]
    return ["loss"] + (main or [k for k in parts if k != "total"])


def window_means(entries: Sequence[Mapping]) -> dict[str, float | None]:
    """The mean of each :func:`main_terms` term over ``entries`` (non-finite steps, stored as None, left out)."""
    if not entries:
        return {}
    out: dict[str, float | None] = {}
    for term in main_terms(entries[-1]):
        values = [e[term] for e in entries if e.get(term) is not None]
        out[term] = sum(values) / len(values) if values else None
    return out


def curve_png(phases: Sequence[tuple[str, Sequence[Mapping]]], title: str) -> bytes:
    """The loss curve of ``phases`` (``(name, history)`` in order): x is the step counted over all of them."""
    from pipelines.core.plots import line_chart_png

    series: dict[str, list] = {}
    markers, covered = [], []
    offset = 0
    for name, history in phases:
        if not history:
            continue
        terms = [t for t in dict.fromkeys(t for entry in history for t in main_terms(entry))
                 if any(entry.get(t) for entry in history)]  # a term zero throughout (VGG off) is no line
        for term in series:  # a gap at the boundary: phases optimise different sums
            series[term].append((offset, None))
        for entry in history:
            for term in terms:
                series.setdefault(term, []).append((offset + int(entry["step"]), _finite(entry.get(term))))
        steps = [int(e["step"]) for e in history]
        markers.append((offset, name))
        covered.append({"phase": name, "first_step": min(steps), "last_step": max(steps), "x_offset": offset})
        offset += max(steps)
    return line_chart_png(series, title=title, x_label="step" if len(covered) < 2 else "step (phases in order)",
                          markers=markers if len(covered) > 1 else (), meta={"phases": covered,
                                                                               "terms": list(series)})


def checkpoint_files(phase: str, history: Sequence[Mapping]) -> dict[str, bytes]:
    """The extra files of a Ray Train checkpoint: :data:`CURVE_FILE` of the phase so far (none when drawing fails:
    a curve is never worth a lost checkpoint)."""
    try:
        return {CURVE_FILE: curve_png([(phase, history)], title=f"{phase}: loss per step")}
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: loss curve not drawn: %s", phase, exc)
        return {}


def write_stage_curve(output: str, stage: str, phases: Mapping[str, Mapping]) -> str | None:
    """``{output}/loss_curve.png`` of every phase's history (the phase records, skipped phases included), written
    atomically; returns its URI (None when no phase has a history or the write fails)."""
    ordered = [(name, record.get("history") or []) for name, record in phases.items()]
    if not any(history for _, history in ordered):
        return None
    uri = storage.join_uri(output, CURVE_FILE)
    try:
        storage.write_bytes(uri, curve_png(ordered, title=f"{stage}: loss per step"))
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: loss curve not written to %s: %s", stage, uri, exc)
        return None
    return uri


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None
