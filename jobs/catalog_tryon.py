"""Catalog try-on: every garment on every model with a PF-AFN student; incremental, idempotent, with a QA gallery.

    python -m jobs.catalog_tryon --garments s3://b/garments.parquet --models s3://b/models.parquet \\
        --student s3://b/student/student.pt --output s3://b/tryon

Exit status: 0 when the run finished (error rows included) and the error rate is within ``max_error_rate``;
1 when the error rate exceeded it; 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import RAY_STAGE_FLAGS, Flag, Job
from pipelines.stages.catalog_tryon import PRESETS, CatalogConfig, run

JOB = Job(__doc__, CatalogConfig, PRESETS, run, flags=(
    Flag("--garments", "garments manifest (Parquet/CSV: garment_id, image_uri[, mask_uri])"),
    Flag("--models", "models manifest (Parquet/CSV: model_id, image_uri)"),
    Flag("--output", "output root (local folder or s3://bucket/prefix)"),
    Flag("--student", "student checkpoint in the project format (from jobs.distill)"),
    Flag("--official-warp", "published-format warp_model_final.pth"),
    Flag("--official-gen", "published-format gen_model_final.pth"),
    Flag("--height", "model input height (multiple of 32)"),
    Flag("--width", "model input width (multiple of 32)"),
    Flag("--batch-size", "pairs per forward pass"),
    Flag("--tile-size", "garments and models per tile (encoders run once per tile)"),
    Flag("--pairs", "only these pairs: CSV/Parquet file (local or s3://) with garment_id, model_id columns"),
    Flag("--match", "only pairs whose garment and model rows have equal values in these manifest columns "
                    "(COLUMN[,COLUMN], e.g. gender,season; a null value matches nothing)"),
    Flag("--output-size", "original: each try-on at its person photo's own size, placed into the photo (garment "
                          "sampled from the garment photo); model: the model size; auto: original for catalogs from "
                          "jobs.import_catalog"),
    Flag("--format", "output image format: jpeg|png|webp (jpeg_quality is the JPEG/WebP quality)"),
    Flag("--expect-version", "refuse (exit 2) a student whose weights are not this version (nightly passes the "
                             "promoted one)"),
    Flag("--precision", "autocast precision of the forward pass (auto: bf16 where the GPU supports it)"),
    Flag("--actors", "model actors (0 = one per GPU, or automatic on CPU)"),
    Flag("--max-error-rate", "exit 1 when error pairs / attempted pairs exceed this"),
    *RAY_STAGE_FLAGS,
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
