"""Generate a synthetic try-on dataset root (models, garments, pairs, parsing/pose/DensePose, exact ground truth).

    python -m jobs.generate_synthetic --output s3://bucket/datasets/synth-v1 --persons 2000 --garments 2000 \\
        --ground-truth-pairs 500 [--height 256 --width 192 --seed 0 --parsing-noise 0.3]

The last stdout line is the run summary (JSON); its ``data`` field is the root to pass as ``--data`` to the training
stages. Re-running with the same settings skips every file that exists; a different world into the same output is
refused. Exit status: 0 on success, 2 for a config/usage error or a conflicting output.
"""
from __future__ import annotations

import sys

from jobs.cli import base_parser, run_stage
from pipelines.synthetic_dataset import PRESETS, SyntheticDatasetConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.generate_synthetic", __doc__.split("\n\n")[0])
    parser.add_argument("--output", help="dataset root to write (local folder or s3://bucket/prefix)")
    parser.add_argument("--persons", type=int, help="number of model (person) photos")
    parser.add_argument("--garments", type=int, help="number of garment product photos")
    parser.add_argument("--height", type=int, help="image height (multiple of 32, >= 64)")
    parser.add_argument("--width", type=int, help="image width (multiple of 32, >= 64)")
    parser.add_argument("--seed", type=int, help="world seed (same settings give a byte-identical dataset)")
    parser.add_argument("--parsing-noise", type=float, help="parser imitation in parsing/, 0 (exact) .. 1")
    parser.add_argument("--ground-truth-pairs", type=int,
                        help="unpaired (test model, other garment) pairs rendered exactly under ground_truth/")
    parser.add_argument("--test-fraction", type=float, help="share of the models in the test split")
    parser.add_argument("--executor", choices=["auto", "local", "ray"],
                        help="where renders run: in this process, as Ray tasks, or auto by size (ray_min_items)")
    args = parser.parse_args(argv)
    explicit = {
        "output": args.output, "persons": args.persons, "garments": args.garments, "height": args.height,
        "width": args.width, "seed": args.seed, "parsing_noise": args.parsing_noise,
        "ground_truth_pairs": args.ground_truth_pairs, "test_fraction": args.test_fraction,
        "executor": args.executor,
    }
    return run_stage(config_cls=SyntheticDatasetConfig, args=args, presets=PRESETS, explicit=explicit, run=run)


if __name__ == "__main__":
    sys.exit(main())
