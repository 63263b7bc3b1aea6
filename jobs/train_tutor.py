"""Stage 0: train the parser-based tutor (PB-AFN) with Ray Train; writes {output}/tutor.pt and {output}/summary.json.

    python -m jobs.train_tutor --data s3://b/datasets/synthetic-v1 --output s3://b/tutor/v1 --preset published

Re-running with the same --output resumes from the latest checkpoint; a finished run does no training.
Exit status: 0 on success; 2 for a config/usage error, a held lock or a failed training run (re-run to resume).
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.train_tutor import PRESETS, TutorConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.train_tutor", __doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (models/garments/train_pairs/test_pairs parquet)")
    parser.add_argument("--output", help="run root: tutor.pt, Ray Train checkpoints, summary.json (local or s3://)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (one GPU each with --use-gpu)")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="train on GPUs")
    parser.add_argument("--max-failures", type=int, help="worker-failure retries from the latest checkpoint")
    parser.add_argument("--force-unlock", action="store_true", default=None, help="take over a lock left by a dead run")
    args = parser.parse_args(argv)
    overrides = {"num_workers": args.num_workers, "use_gpu": args.use_gpu, "max_failures": args.max_failures}
    train = {k: v for k, v in overrides.items() if v is not None}
    explicit = {"data": args.data, "output": args.output, "force_unlock": args.force_unlock}
    if train:
        args.overrides = list(args.overrides) + [f"train.{k}={str(v).lower() if isinstance(v, bool) else v}"
                                                 for k, v in train.items()]
    return run_stage(config_cls=TutorConfig, args=args, presets=PRESETS, explicit=explicit, run=run)


if __name__ == "__main__":
    sys.exit(main())
