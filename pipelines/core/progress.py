"""Progress lines people can read in ``ray job logs``: done / total, the rate over the run and over the last
window, and an ETA. The Ray Data stages (:func:`pipelines.batch.run_batch_stage`) log one every
``progress_every_s`` seconds and at the end; the training loop (:mod:`pipelines.training.loop`) every
``train.log_every_steps`` steps. Both count on a :class:`Meter`; the clock is injectable so tests need not sleep.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable


def format_duration(seconds: float | None) -> str:
    """``45s``, ``7m05s``, ``3h12m``, ``2d04h``; ``?`` when unknown (no rate yet)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(per_s: float) -> str:
    """A rate with three significant digits at most, readable at 0.02/s and 12345/s alike."""
    if per_s >= 100:
        return f"{per_s:.0f}"
    if per_s >= 10:
        return f"{per_s:.1f}"
    return f"{per_s:.2f}" if per_s >= 0.1 else f"{per_s:.3f}"


@dataclass
class Rates:
    """One reading of a :class:`Meter`: items per second over the whole meter and since the previous reading, and
    the seconds left at the recent rate (the overall rate when the window saw nothing; None: no rate yet)."""

    done: int
    total: int
    overall: float
    recent: float
    eta_s: float | None
    elapsed_s: float

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


class Meter:
    """Counts ``done`` of ``total`` items against a clock (``time.monotonic`` unless a test passes a fake one).

    The ETA uses the rate since the previous :meth:`read` (the recent window), not the run's average: the first
    minutes of a Ray Data stage or a training phase include start-up (actors loading the model, the first blocks
    decoding), which an average would carry for the whole run. ``done`` may start above 0 (a resumed phase); rates
    count only what this meter saw."""

    def __init__(self, total: int, done: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.clock = int(total), int(done), clock
        self.start_t = self.mark_t = clock()
        self.start_done = self.mark_done = self.done

    def add(self, n: int) -> None:
        self.done += int(n)

    def elapsed(self) -> float:
        return self.clock() - self.start_t

    def read(self) -> Rates:
        """The current rates; the recent window restarts here."""
        now = self.clock()
        overall = _rate(self.done - self.start_done, now - self.start_t)
        recent = _rate(self.done - self.mark_done, now - self.mark_t)
        rate = recent or overall
        left = max(0, self.total - self.done)
        eta = 0.0 if not left else (left / rate if rate > 0 else None)
        self.mark_t, self.mark_done = now, self.done
        return Rates(self.done, self.total, overall, recent, eta, now - self.start_t)


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 and n > 0 else 0.0


class StreamProgress:
    """The progress of a stream of units that hold different numbers of items (a catalog tile's pairs, a tutor
    inference chunk's samples): :meth:`unit_done` after each committed unit returns a line when one is due (every
    ``every_s`` seconds, and for the last unit), else None.

    A line reads ``catalog_tryon RUN: pairs 1200/20000 (6.0%), tiles 30/500, 41.3 pairs/s (recent 44.0/s),
    ETA 7m07s, 1195 ok, 5 error``; ok/error are the run's rows so far (error rows decided at planning included)."""

    def __init__(self, label: str, *, items_total: int, units_total: int, item_name: str, unit_name: str,
                 every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.item_name, self.unit_name, self.every_s = label, item_name, unit_name, float(every_s)
        self.items = Meter(items_total, clock=clock)
        self.units_total, self.units_done = int(units_total), 0
        self.last_line_t = self.items.start_t

    def unit_done(self, items: int, ok: int, error: int) -> str | None:
        self.items.add(items)
        self.units_done += 1
        now = self.items.clock()
        last = self.units_done >= self.units_total
        if not last and now - self.last_line_t < self.every_s:
            return None
        self.last_line_t = now
        return self.line(self.items.read(), ok, error, last)

    def line(self, r: Rates, ok: int, error: int, last: bool) -> str:
        item = self.item_name
        units = "" if item == self.unit_name else f"{self.unit_name}s {self.units_done}/{self.units_total}, "
        head = f"{self.label}: {item}s {r.done}/{r.total} ({r.percent:.1f}%), {units}{format_rate(r.overall)} {item}s/s"
        when = (f", done in {format_duration(r.elapsed_s)}" if last else
                f" (recent {format_rate(r.recent)}/s), ETA {format_duration(r.eta_s)}")
        return f"{head}{when}, {ok} ok, {error} error"


class StepProgress:
    """A training phase's progress on rank 0: :meth:`line` at a step, with the loss terms averaged over the steps
    since the previous line (one step's loss is noise). It reads ``tutor_warp: step 120/2000 (6.0%), epoch 3/50,
    loss 0.4321 (warp_total 0.4321), 12.3 samples/s, ETA 5m12s``; samples/s and the ETA are over the steps since the
    previous line (a resumed phase counts from its checkpoint's step)."""

    def __init__(self, label: str, *, total_steps: int, step: int, samples_per_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.samples_per_step = label, int(samples_per_step)
        self.meter = Meter(total_steps, done=step, clock=clock)

    def line(self, step: int, epoch: str, losses: dict[str, float | None]) -> str:
        self.meter.add(step - self.meter.done)
        r = self.meter.read()
        terms = [f"{k} {_loss(v)}" for k, v in losses.items() if k != "loss"]
        loss = f"loss {_loss(losses.get('loss'))}" + (f" ({', '.join(terms)})" if terms else "")
        speed = format_rate(r.recent * self.samples_per_step)
        when = f"ETA {format_duration(r.eta_s)}" if r.done < r.total else f"done in {format_duration(r.elapsed_s)}"
        return (f"{self.label}: step {r.done}/{r.total} ({r.percent:.1f}%), epoch {epoch}, {loss}, {speed} samples/s, "
                f"{when}")


def _loss(v: float | None) -> str:
    return "nan" if v is None else f"{v:.4g}"
