"""Generate a synthetic try-on dataset root (models, garments, pairs, parsing/pose/DensePose, exact ground truth).

    python -m jobs.generate_synthetic --output s3://bucket/datasets/synth-v1 --persons 2000 --garments 2000 \\
        --ground-truth-pairs 500 --height 256 --width 192 --seed 0 --parsing-noise 0.3

The last stdout line is the run summary (JSON); its ``data`` field is the root to pass as ``--data`` to the training
stages. Re-running with the same settings skips every file that exists; a different world into the same output is
refused. Exit status: 0 on success, 2 for a config/usage error or a conflicting output.
"""
from __future__ import annotations

import sys

from jobs.cli import Flag, Job
from pipelines.stages.generate_synthetic import PRESETS, SyntheticDatasetConfig, run

JOB = Job(__doc__, SyntheticDatasetConfig, PRESETS, run, flags=(
    Flag("--output", "dataset root to write (local folder or s3://bucket/prefix)"),
    Flag("--persons", "number of model (person) photos"),
    Flag("--garments", "number of garment product photos"),
    Flag("--height", "image height (multiple of 32, >= 64)"),
    Flag("--width", "image width (multiple of 32, >= 64)"),
    Flag("--seed", "world seed (same settings give a byte-identical dataset)"),
    Flag("--parsing-noise", "parser imitation in parsing/, 0 (exact) .. 1"),
    Flag("--ground-truth-pairs", "unpaired (test model, other garment) pairs rendered exactly under ground_truth/"),
    Flag("--test-fraction", "share of the models in the test split"),
    Flag("--executor", "where renders run: in this process, as Ray tasks, or auto by size (ray_min_items)"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
