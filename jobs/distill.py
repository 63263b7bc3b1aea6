"""Stage 2: distil the parser-free student from the tutor's fakes with Ray Train; writes {output}/student.pt,
{output}/official/{warp,gen}_model_final.pth and {output}/summary.json.

    python -m jobs.distill --data s3://b/datasets/synthetic-v1 --fakes s3://b/fakes/v1 --tutor s3://b/tutor/v1/tutor.pt \\
        --output s3://b/distill/v1 --preset published

Re-running with the same --output resumes from the latest checkpoint; a finished run does no training.
Exit status: 0 on success; 2 for a config/usage error, a held lock or a failed training run (re-run to resume).
"""
from __future__ import annotations

import sys

from jobs.cli import TRAIN_FLAGS, Flag, Job
from pipelines.stages.distill import PRESETS, DistillConfig, run

JOB = Job(__doc__, DistillConfig, PRESETS, run, flags=(
    Flag("--data", "dataset root (models/garments/train_pairs/test_pairs[/ground_truth] parquet)"),
    Flag("--fakes", "tutor-inference output (its manifest/ folder) or a fakes manifest file"),
    Flag("--tutor", "tutor checkpoint (project format, kind tutor) that made the fakes"),
    Flag("--output", "run root: student.pt, official/, checkpoints, summary.json (local or s3://)"),
    Flag("--supervision", "target image: the real photo (published) or the tutor's paired try-on (WUTON-style "
                          "ablation)"),
    Flag("--no-distill", "turn adjustable knowledge distillation off (ablation)", field="distill.enabled",
         const=False),
    *TRAIN_FLAGS,
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
