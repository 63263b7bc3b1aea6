"""Import a dataset in the published VITON / PF-AFN layout (train_img/, train_color/, ..., test_pairs.txt) as a
dataset root: models/garments/train_pairs/test_pairs manifests plus import_errors.parquet.

    python -m jobs.import_viton --source s3://bucket/raw/VITON --output s3://bucket/datasets/viton
    python -m jobs.import_viton --train-source /data/VITON_traindata --test-source /data/VITON_test --output /data/viton

The last stdout line is the run summary (JSON); its ``data`` field is the root to pass as ``--data``. Photos, edges,
labels and poses are referenced in place (``--mode copy`` copies them into the root); DensePose .npy is converted to
PNG. Every rejected file or pair line is a row of import_errors.parquet with its reason. Exit status: 0 when the
import finished (rejected rows included), 2 for a config/usage error or a conflicting output.
"""
from __future__ import annotations

import argparse
import sys

from jobs.cli import base_parser, run_stage
from pipelines.viton import PRESETS, VitonImportConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("jobs.import_viton", __doc__.split("\n\n")[0], presets=None)
    parser.add_argument("--source", help="VITON root with train_*/ and/or test_* folders (local path or s3://)")
    parser.add_argument("--train-source", help="root of the train_* folders, when not under --source")
    parser.add_argument("--test-source", help="root of the test_* folders, when not under --source")
    parser.add_argument("--output", help="dataset root to write (local folder or s3://bucket/prefix)")
    parser.add_argument("--mode", choices=["reference", "copy"],
                        help="reference files in place where their format matches, or copy everything into --output")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help="decode and check every file (--no-verify: names, ids and presence only)")
    parser.add_argument("--executor", choices=["auto", "local", "ray"],
                        help="where validation runs: in this process, as Ray tasks, or auto by size")
    args = parser.parse_args(argv)
    explicit = {
        "source": args.source, "train_source": args.train_source, "test_source": args.test_source,
        "output": args.output, "mode": args.mode, "verify": args.verify, "executor": args.executor,
    }
    return run_stage(config_cls=VitonImportConfig, args=args, presets=PRESETS, explicit=explicit, run=run)


if __name__ == "__main__":
    sys.exit(main())
