"""Catalog try-on: every garment on every model with a PF-AFN student; incremental, idempotent, with a QA gallery.

    python -m jobs.catalog_tryon --garments s3://b/garments.parquet --models s3://b/models.parquet \\
        --student s3://b/student/student.pt --output s3://b/tryon

Exit status: 0 when the run finished (error rows included) and the error rate is within ``max_error_rate``;
1 when the error rate exceeded it; 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.catalog import PRESETS, CatalogConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.catalog_tryon", __doc__.split("\n\n")[0])
    parser.add_argument("--garments", help="garments manifest (Parquet/CSV: garment_id, image_uri[, mask_uri])")
    parser.add_argument("--models", help="models manifest (Parquet/CSV: model_id, image_uri)")
    parser.add_argument("--output", help="output root (local folder or s3://bucket/prefix)")
    parser.add_argument("--student", help="student checkpoint in the project format (from jobs.distill)")
    parser.add_argument("--official-warp", help="published-format warp_model_final.pth")
    parser.add_argument("--official-gen", help="published-format gen_model_final.pth")
    parser.add_argument("--height", type=int, help="model input height (multiple of 32)")
    parser.add_argument("--width", type=int, help="model input width (multiple of 32)")
    parser.add_argument("--batch-size", type=int, help="pairs per forward pass")
    parser.add_argument("--tile-size", type=int, help="garments and models per tile (encoders run once per tile)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--actors", type=int, help="model actors (0 = one per GPU, or automatic on CPU)")
    parser.add_argument("--max-error-rate", type=float, help="exit 1 when error pairs / attempted pairs exceed this")
    parser.add_argument("--force-unlock", action="store_true", default=None, help="take over a lock left by a dead run")
    args = parser.parse_args(argv)
    explicit = {
        "garments": args.garments, "models": args.models, "output": args.output, "student": args.student,
        "official_warp": args.official_warp, "official_gen": args.official_gen, "height": args.height,
        "width": args.width, "batch_size": args.batch_size, "tile_size": args.tile_size,
        "precision": args.precision, "actors": args.actors, "max_error_rate": args.max_error_rate,
        "force_unlock": args.force_unlock,
    }
    return run_stage(
        config_cls=CatalogConfig, args=args, presets=PRESETS, explicit=explicit, run=run,
        exit_code=lambda s: 1 if s.get("exceeded_error_rate") else 0,
    )


if __name__ == "__main__":
    sys.exit(main())
