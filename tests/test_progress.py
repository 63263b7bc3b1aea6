"""Progress lines (rates, ETA, time-based cadence) on a fake clock, and the Pillow loss-curve chart."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pipelines.core.plots import line_chart_png, nice_ticks
from pipelines.core.progress import Meter, StepProgress, StreamProgress, format_duration
from pipelines.training.curves import curve_png, main_terms, window_means


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 3600 * 3 + 12 * 60, 86400 * 2 + 3600 * 4)] == \
        ["0s", "59s", "1m01s", "59m59s", "3h12m", "2d04h"]
    assert format_duration(None) == format_duration(float("inf")) == "?"


def test_meter_eta_uses_the_recent_window():
    clock = Clock()
    m = Meter(1000, clock=clock)
    clock.t += 100  # start-up: nothing done for 100 s
    m.add(100)
    clock.t += 10
    r = m.read()
    assert r.overall == pytest.approx(100 / 110) and r.recent == pytest.approx(100 / 110)
    m.add(100)
    clock.t += 10  # now 10 items/s
    r = m.read()
    assert r.recent == pytest.approx(10.0) and r.overall == pytest.approx(200 / 120)
    assert r.eta_s == pytest.approx(80.0)  # 800 left at the recent 10/s, not at the start-up-laden average
    clock.t += 5  # a window with no progress falls back to the overall rate
    assert m.read().eta_s == pytest.approx(800 / (200 / 125))
    assert Meter(10, clock=clock).read().eta_s is None  # no rate yet: unknown, not zero


def test_stream_progress_is_time_based_and_counts_items():
    clock = Clock()
    p = StreamProgress("catalog_tryon r1", items_total=100, units_total=4, item_name="pair", unit_name="tile",
                       every_s=30, clock=clock)
    clock.t += 10
    assert p.unit_done(40, ok=40, error=0) is None  # 10 s < 30 s since the start
    clock.t += 25
    line = p.unit_done(20, ok=58, error=2)
    assert line == ("catalog_tryon r1: pairs 60/100 (60.0%), tiles 2/4, 1.71 pairs/s (recent 1.71/s), ETA 23s, "
                    "58 ok, 2 error")
    clock.t += 5
    assert p.unit_done(20, ok=78, error=2) is None
    clock.t += 5
    last = p.unit_done(20, ok=98, error=2)  # the last unit always logs, whatever the cadence
    assert last == "catalog_tryon r1: pairs 100/100 (100.0%), tiles 4/4, 2.22 pairs/s, done in 45s, 98 ok, 2 error"


def test_stream_progress_every_zero_logs_each_unit():
    clock = Clock()
    p = StreamProgress("x", items_total=3, units_total=3, item_name="unit", unit_name="unit", every_s=0, clock=clock)
    lines = [p.unit_done(1, ok=i + 1, error=0) for i in range(3)]
    assert all(lines) and lines[0].startswith("x: units 1/3 (33.3%), 0.000 units/s (recent 0.000/s), ETA ?")


def test_step_progress_line():
    clock = Clock()
    p = StepProgress("tutor_warp", total_steps=200, step=50, samples_per_step=8, clock=clock)  # resumed at step 50
    clock.t += 20
    line = p.line(100, "3/10", {"loss": 0.43217, "warp_total": 0.41, "kd_flow": None})
    assert line == ("tutor_warp: step 100/200 (50.0%), epoch 3/10, loss 0.4322 (warp_total 0.41, kd_flow nan), "
                    "20.0 samples/s, ETA 40s")
    clock.t += 40
    assert p.line(200, "10/10", {"loss": 0.1}).endswith("loss 0.1, 20.0 samples/s, done in 1m00s")


def test_main_terms_and_window_means():
    entry = {"step": 3, "epoch": 0, "loss": 1.0, "warp_l1": 0.2, "warp_total": 0.5, "gen_total": 0.5,
             "kd_flow": 0.01, "kd_gate_fraction": 0.5}
    assert main_terms(entry) == ["loss", "warp_total", "gen_total", "kd_flow"]
    warp_phase = {"step": 1, "epoch": 0, "loss": 1.0, "l1": 0.5, "smooth": 0.01, "total": 1.0}
    assert main_terms(warp_phase) == ["loss", "l1", "smooth"]
    means = window_means([{"step": 1, "loss": 1.0, "warp_total": None}, {"step": 2, "loss": 3.0, "warp_total": 2.0}])
    assert means == {"loss": 2.0, "warp_total": 2.0}


def test_nice_ticks():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(1, 24) == [5, 10, 15, 20]
    assert nice_ticks(0.31, 0.92) == pytest.approx([0.4, 0.6, 0.8])


def _decode(png: bytes):
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    img.load()
    return img, json.loads(img.text["pfafn"])


def test_curve_covers_every_phase_and_draws_each_term():
    warp = [{"step": s, "loss": 2.0 / s, "warp_total": 2.0 / s} for s in range(1, 31)]
    e2e = [{"step": s, "loss": 1.0, "warp_total": 0.2, "gen_total": 0.8} for s in range(1, 11)]
    img, meta = _decode(curve_png([("tutor_warp", warp), ("tutor_e2e", e2e)], title="train_tutor: loss"))
    assert meta["phases"] == [{"phase": "tutor_warp", "first_step": 1, "last_step": 30, "x_offset": 0},
                              {"phase": "tutor_e2e", "first_step": 1, "last_step": 10, "x_offset": 30}]
    assert meta["terms"] == ["loss", "warp_total", "gen_total"]
    pixels = set(img.convert("RGB").getdata())
    for colour in ((0, 114, 178), (213, 94, 0), (0, 158, 115)):  # one line colour per term, legend included
        assert colour in pixels


def test_chart_handles_gaps_a_single_point_and_no_values():
    png = line_chart_png({"loss": [(1, 0.5), (2, None), (3, float("nan")), (4, 0.4)]}, title="t", meta={"n": 4})
    assert _decode(png)[0].size == (760, 420)
    assert Image.open(io.BytesIO(line_chart_png({"loss": [(1, None)]}, title="t"))).format == "PNG"
    long = [(s, 1.0 / s) for s in range(1, 100_001)]  # binned per pixel column
    assert Image.open(io.BytesIO(line_chart_png({"loss": long}, title="t"))).format == "PNG"
