"""Stage 0: train the parser-based tutor (PB-AFN) with Ray Train; writes {output}/tutor.pt and {output}/summary.json.

    python -m jobs.train_tutor --data s3://b/datasets/synthetic-v1 --output s3://b/tutor/v1 --preset published

Re-running with the same --output resumes from the latest checkpoint; a finished run does no training.
Exit status: 0 on success; 2 for a config/usage error, a held lock or a failed training run (re-run to resume).
"""
from __future__ import annotations

import sys

from jobs.cli import TRAIN_FLAGS, Flag, Job
from pipelines.stages.train_tutor import PRESETS, TutorConfig, run

JOB = Job(__doc__, TutorConfig, PRESETS, run, flags=(
    Flag("--data", "dataset root (models/garments/train_pairs/test_pairs parquet)"),
    Flag("--output", "run root: tutor.pt, Ray Train checkpoints, summary.json (local or s3://)"),
    *TRAIN_FLAGS,
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
