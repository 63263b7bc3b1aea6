"""Stage 2: distil the parser-free student from the tutor's fakes with Ray Train; writes {output}/student.pt,
{output}/official/{warp,gen}_model_final.pth and {output}/summary.json.

    python -m jobs.distill --data s3://b/datasets/synthetic-v1 --fakes s3://b/fakes/v1 --tutor s3://b/tutor/v1/tutor.pt \\
        --output s3://b/distill/v1 --preset published

Re-running with the same --output resumes from the latest checkpoint; a finished run does no training.
Exit status: 0 on success; 2 for a config/usage error, a held lock or a failed training run (re-run to resume).
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.distill import PRESETS, DistillConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.distill", __doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (models/garments/train_pairs/test_pairs[/ground_truth] parquet)")
    parser.add_argument("--fakes", help="tutor-inference output (its manifest/ folder) or a fakes manifest file")
    parser.add_argument("--tutor", help="tutor checkpoint (project format, kind tutor) that made the fakes")
    parser.add_argument("--output", help="run root: student.pt, official/, checkpoints, summary.json (local or s3://)")
    parser.add_argument("--supervision", choices=["real", "tutor"], help="target image: the real photo (published) "
                        "or the tutor's paired try-on (WUTON-style ablation)")
    parser.add_argument("--no-distill", action="store_true", default=None,
                        help="turn adjustable knowledge distillation off (ablation)")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (one GPU each with --use-gpu)")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="train on GPUs")
    parser.add_argument("--max-failures", type=int, help="worker-failure retries from the latest checkpoint")
    parser.add_argument("--force-unlock", action="store_true", default=None, help="take over a lock left by a dead run")
    args = parser.parse_args(argv)
    extra = []
    for key, value in (("num_workers", args.num_workers), ("use_gpu", args.use_gpu),
                       ("max_failures", args.max_failures)):
        if value is not None:
            extra.append(f"train.{key}={str(value).lower() if isinstance(value, bool) else value}")
    if args.no_distill:
        extra.append("distill.enabled=false")
    args.overrides = list(args.overrides) + extra
    explicit = {"data": args.data, "fakes": args.fakes, "tutor": args.tutor, "output": args.output,
                "supervision": args.supervision, "force_unlock": args.force_unlock}
    return run_stage(config_cls=DistillConfig, args=args, presets=PRESETS, explicit=explicit, run=run)


if __name__ == "__main__":
    sys.exit(main())
