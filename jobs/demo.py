"""Run every stage end to end on an embedded default: a generated synthetic world, local Ray, local folders.

    python -m jobs.demo                 # writes runs/demo
    python -m jobs.demo --output runs/demo2 --set persons=96

Stages: synthetic world -> tutor training (Ray Train) -> tutor inference (Ray Data) -> student distillation
(Ray Train, 2 workers) -> catalog try-on (Ray Data) -> evaluation against exact ground truth -> QA gallery.
The last stdout line is the summary JSON (paths, counts, metrics, the gallery).
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.demo import PRESETS, DemoConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.demo", __doc__.split("\n\n")[0], presets=tuple(PRESETS))
    parser.add_argument("--output", help="where everything is written (default runs/demo)")
    args = parser.parse_args(argv)
    return run_stage(config_cls=DemoConfig, args=args, presets=PRESETS, explicit={"output": args.output}, run=run)


if __name__ == "__main__":
    sys.exit(main())
