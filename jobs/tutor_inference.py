"""Tutor inference: the parser-based tutor renders each training person in k other garments (fakes + manifest).

    python -m jobs.tutor_inference --data s3://b/dataset --tutor s3://b/tutor/tutor.pt --output s3://b/fakes

Pass the summary's ``fakes`` (``{output}/manifest``) to ``jobs.distill --fakes``.
Exit status: 0 when the run finished (error rows included) and the error rate is within ``max_error_rate``;
1 when the error rate exceeded it; 2 for a config/usage error or a held lock.
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.tutor_inference import PRESETS, TutorInferenceConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.tutor_inference", __doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (models/garments/train_pairs.parquet, parsing, pose, DensePose)")
    parser.add_argument("--tutor", help="tutor checkpoint in the project format (kind 'tutor', from jobs.train_tutor)")
    parser.add_argument("--output", help="fakes root (local folder or s3://bucket/prefix)")
    parser.add_argument("--k", type=int, help="other garments rendered per training person")
    parser.add_argument("--seed", type=int, help="seed of the garment choice")
    parser.add_argument("--height", type=int, help="tutor input height (multiple of 32)")
    parser.add_argument("--width", type=int, help="tutor input width (multiple of 32)")
    parser.add_argument("--batch-size", type=int, help="fakes per forward pass")
    parser.add_argument("--chunk-size", type=int, help="persons per work unit (one decode task, one Parquet part)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--actors", type=int, help="model actors (0 = one per GPU, or automatic on CPU)")
    parser.add_argument("--max-error-rate", type=float, help="exit 1 when error fakes / attempted fakes exceed this")
    parser.add_argument("--force-unlock", action="store_true", default=None, help="take over a lock left by a dead run")
    args = parser.parse_args(argv)
    explicit = {
        "data": args.data, "tutor": args.tutor, "output": args.output, "k": args.k, "seed": args.seed,
        "height": args.height, "width": args.width, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "precision": args.precision, "actors": args.actors, "max_error_rate": args.max_error_rate,
        "force_unlock": args.force_unlock,
    }
    return run_stage(
        config_cls=TutorInferenceConfig, args=args, presets=PRESETS, explicit=explicit, run=run,
        exit_code=lambda s: 1 if s.get("exceeded_error_rate") else 0,
    )


if __name__ == "__main__":
    sys.exit(main())
