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

import sys

from jobs.cli import Flag, Job
from pipelines.stages.import_viton import PRESETS, VitonImportConfig, run

JOB = Job(__doc__, VitonImportConfig, PRESETS, run, flags=(
    Flag("--source", "VITON root with train_*/ and/or test_* folders (local path or s3://)"),
    Flag("--train-source", "root of the train_* folders, when not under --source"),
    Flag("--test-source", "root of the test_* folders, when not under --source"),
    Flag("--output", "dataset root to write (local folder or s3://bucket/prefix)"),
    Flag("--mode", "reference files in place where their format matches, or copy everything into --output"),
    Flag("--verify", "decode and check every file (--no-verify: names, ids and presence only)", negatable=True),
    Flag("--executor", "where validation runs: in this process, as Ray tasks, or auto by size"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
