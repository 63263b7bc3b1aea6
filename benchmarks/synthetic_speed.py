"""Throughput of the synthetic try-on world on one thread; prints one JSON object.

    python benchmarks/synthetic_speed.py [--samples 200] [--sizes 256x192,128x96] [--pin-cpu 0]

For each size it times, on fresh indices (nothing cached but the world object):
  render_person   one person render incl. parsing, DensePose, keypoints and the garment's warp grid
  render_unpaired render_person(i, j) with j != worn_garment(i) (an unpaired ground-truth render)
  render_garment  one product photo + mask
  noisy_parsing   parser-noise corruption of an exact parsing at parsing_noise=0.5 (given the parsing)
and reports samples/s (median of 5 rounds) and the ratio of render_person against the 50 samples/s target at
256×192. Thread pools are limited to one thread before numpy is imported.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy  # noqa: E402

from benchmarks.machine import cpu_name  # noqa: E402
from pfafn.synthetic.world import GENERATOR_NAME, SyntheticWorld, WorldConfig  # noqa: E402

TARGET_PERSON_PER_S = 50.0


def _rate(fn: Callable[[int], object], start: int, count: int, rounds: int = 5) -> float:
    """Median samples/s over ``rounds`` rounds of ``count`` calls on fresh indices."""
    rates = []
    for r in range(rounds):
        base = start + r * count
        t0 = time.perf_counter()
        for k in range(count):
            fn(base + k)
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_size(height: int, width: int, samples: int) -> dict[str, float]:
    per_round = max(samples // 5, 1)
    n = 20 * per_round + 100
    world = SyntheticWorld(n, n, WorldConfig(height=height, width=width, seed=123))
    noisy_world = SyntheticWorld(n, n, WorldConfig(height=height, width=width, seed=123, parsing_noise=0.5))
    for i in range(3):  # warm-up (imports, first-call allocations)
        world.render_person(n - 1 - i)
        world.render_garment(n - 1 - i)
    parsings = [world.render_person(i).parsing for i in range(per_round)]
    return {
        "render_person_per_s": round(_rate(world.render_person, 0, per_round), 1),
        "render_unpaired_per_s": round(
            _rate(lambda i: world.render_person(i, (i + 7) % n), 5 * per_round, per_round), 1
        ),
        "render_garment_per_s": round(_rate(world.render_garment, 10 * per_round, per_round), 1),
        "noisy_parsing_per_s": round(
            _rate(lambda i: noisy_world.noisy_parsing(i, parsing=parsings[i % per_round]), 0, per_round), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="calls per measurement (split over 5 rounds)")
    parser.add_argument("--sizes", default="256x192,128x96", help="comma-separated HxW list")
    parser.add_argument("--pin-cpu", type=int, default=None, help="pin the process to this CPU (Linux)")
    args = parser.parse_args()
    if args.pin_cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.pin_cpu})
    results: dict[str, dict[str, float]] = {}
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        results[f"{h}x{w}"] = bench_size(h, w, args.samples)
    person_rate = results.get("256x192", {}).get("render_person_per_s")
    report = {
        "benchmark": "synthetic_speed",
        "generator": GENERATOR_NAME,
        "threads": 1,
        "samples_per_measurement": args.samples,
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__},
        "results": results,
        "target_person_per_s_256x192": TARGET_PERSON_PER_S,
        "ratio_vs_target": round(person_rate / TARGET_PERSON_PER_S, 2) if person_rate else None,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
