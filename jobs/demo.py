"""Run every stage end to end on an embedded default: a generated synthetic world, local Ray, local folders.

    python -m jobs.demo
    python -m jobs.demo --output runs/demo2 --set persons=96

Stages: synthetic world -> tutor training (Ray Train) -> tutor inference (Ray Data) -> student distillation
(Ray Train, 2 workers) -> catalog try-on (Ray Data) -> evaluation against exact ground truth -> QA gallery.
The last stdout line is the summary JSON (paths, counts, metrics, the gallery).
"""
from __future__ import annotations

import sys

from jobs.cli import Flag, Job
from pipelines.stages.demo import PRESETS, DemoConfig, run

JOB = Job(__doc__, DemoConfig, PRESETS, run, flags=(
    Flag("--output", "where everything is written"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
