"""Evaluate a try-on run: per-pair SSIM/PSNR (+ LPIPS) against ground truth, FID, and a report with examples.

    python -m jobs.evaluate --results s3://b/tryon --ground-truth s3://b/dataset --output s3://b/eval/2026-11-27

``--results`` is a catalog output root (or its ``results/`` folder); ``--ground-truth`` a dataset root or a
ground-truth manifest (model_id, garment_id, image_uri[, paired]). LPIPS / FID run when ``lpips_weights`` /
``fid_weights`` point at state dicts (``--lpips-weights``, ``--fid-weights``); otherwise the report says they were
skipped. Exit status: 0 when the report was written (error rows included); 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import RAY_STAGE_FLAGS, Flag, Job
from pipelines.stages.evaluate import PRESETS, EvaluateConfig, run

JOB = Job(__doc__, EvaluateConfig, PRESETS, run, flags=(
    Flag("--results", "catalog output root or its results/ folder (local or s3://)"),
    Flag("--ground-truth", "dataset root, or a ground-truth manifest (model_id, garment_id, image_uri[, paired])"),
    Flag("--output", "report location (local folder or s3://bucket/prefix)"),
    Flag("--garments", "garments manifest, for the garment picture in the report's examples"),
    Flag("--student-version", "evaluate only this student version"),
    Flag("--lpips-weights", "LPIPS state dict (full, or lin layers + --set lpips_backbone_weights=URI)"),
    Flag("--fid-weights", "torchvision Inception-v3 state dict for FID"),
    Flag("--batch-size", "pairs per work unit"),
    *RAY_STAGE_FLAGS,
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
