"""Tutor inference: the parser-based tutor renders each training person in k other garments (fakes + manifest).

    python -m jobs.tutor_inference --data s3://b/dataset --tutor s3://b/tutor/tutor.pt --output s3://b/fakes

Pass the summary's ``fakes`` (``{output}/manifest``) to ``jobs.distill --fakes``.
Exit status: 0 when the run finished (error rows included) and the error rate is within ``max_error_rate``;
1 when the error rate exceeded it; 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import RAY_STAGE_FLAGS, Flag, Job
from pipelines.stages.tutor_inference import PRESETS, TutorInferenceConfig, run

JOB = Job(__doc__, TutorInferenceConfig, PRESETS, run, flags=(
    Flag("--data", "dataset root (models/garments/train_pairs.parquet, parsing, pose, DensePose)"),
    Flag("--tutor", "tutor checkpoint in the project format (kind 'tutor', from jobs.train_tutor)"),
    Flag("--output", "fakes root (local folder or s3://bucket/prefix)"),
    Flag("--k", "other garments rendered per training person"),
    Flag("--seed", "seed of the garment choice"),
    Flag("--height", "tutor input height (multiple of 32; 0: the tutor checkpoint's training size)"),
    Flag("--width", "tutor input width (multiple of 32; 0: the tutor checkpoint's training size)"),
    Flag("--batch-size", "fakes per forward pass"),
    Flag("--chunk-size", "persons per work unit (one decode task, one Parquet part)"),
    Flag("--precision", "autocast precision of the forward pass (auto: bf16 where the GPU supports it)"),
    Flag("--actors", "model actors (0 = one per GPU, or automatic on CPU)"),
    Flag("--max-error-rate", "exit 1 when error fakes / attempted fakes exceed this"),
    *RAY_STAGE_FLAGS,
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
