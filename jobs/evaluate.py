"""Evaluate a try-on run: per-pair SSIM/PSNR (+ LPIPS) against ground truth, FID, and a report with examples.

    python -m jobs.evaluate --results s3://b/tryon --ground-truth s3://b/dataset --output s3://b/eval/2026-11-27

``--results`` is a catalog output root (or its ``results/`` folder); ``--ground-truth`` a dataset root or a
ground-truth manifest (model_id, garment_id, image_uri[, paired]). LPIPS / FID run when ``lpips_weights`` /
``fid_weights`` point at state dicts (``--set lpips_weights=s3://...``); otherwise the report says they were skipped.
Exit status: 0 when the report was written (error rows included); 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.evaluate import PRESETS, EvaluateConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.evaluate", __doc__.split("\n\n")[0])
    parser.add_argument("--results", help="catalog output root or its results/ folder (local or s3://)")
    parser.add_argument("--ground-truth", help="dataset root, or a ground-truth manifest (model_id, garment_id, "
                                               "image_uri[, paired])")
    parser.add_argument("--output", help="report location (local folder or s3://bucket/prefix)")
    parser.add_argument("--garments", help="garments manifest, for the garment picture in the report's examples")
    parser.add_argument("--student-version", help="evaluate only this student version")
    parser.add_argument("--lpips-weights", help="LPIPS state dict (full, or lin layers + --set lpips_backbone_weights)")
    parser.add_argument("--fid-weights", help="torchvision Inception-v3 state dict for FID")
    parser.add_argument("--batch-size", type=int, help="pairs per work unit")
    parser.add_argument("--force-unlock", action="store_true", default=None, help="take over a lock left by a dead run")
    args = parser.parse_args(argv)
    explicit = {
        "results": args.results, "ground_truth": args.ground_truth, "output": args.output, "garments": args.garments,
        "student_version": args.student_version, "lpips_weights": args.lpips_weights,
        "fid_weights": args.fid_weights, "batch_size": args.batch_size, "force_unlock": args.force_unlock,
    }
    return run_stage(config_cls=EvaluateConfig, args=args, presets=PRESETS, explicit=explicit, run=run)


if __name__ == "__main__":
    sys.exit(main())
