"""Promote a student to production: jobs.nightly runs the newest promotion, never merely the newest training run.

    python -m jobs.promote --student s3://b/distill/v7/student.pt --evaluation s3://b/eval/v7 --to s3://b/production
    python -m jobs.promote --student s3://b/distill/v6/student.pt --evaluation s3://b/eval/v6 --to s3://b/production
    python -m jobs.promote --student s3://b/distill/v8/student.pt --to s3://b/production \\
        --reason "hotfix for ticket 123; evaluation follows" --force

The second line rolls back to v6 (promoting an older student again); the third promotes without an evaluation.

The student's evaluation (a jobs.evaluate output: folder, report.json or summary.json) must have scored this
student's version and meet every threshold (min_ssim, max_error_rate, ... in jobs/configs/promote.yaml); then a
record {to}/promotions/{time}-{version}.json is created (never overwritten): version, who (PFAFN_PROMOTED_BY or the
login name) and when, the scores and thresholds, forced and the reason. The last stdout line is one JSON object:
the record and its URI (promotion).

Exit status: 0 promoted; 2 refused (one line naming each score that missed its threshold; nothing written), or a
config/usage error, an unreadable student or evaluation, an evaluation of another student.
"""
from __future__ import annotations

import sys

from jobs.cli import Flag, Job
from pipelines.stages.promote import PRESETS, PromoteConfig, run

JOB = Job(__doc__, PromoteConfig, PRESETS, run, set_example="min_psnr=20", flags=(
    Flag("--student", "student checkpoint to promote (local or s3://)"),
    Flag("--to", "promotions prefix (nightly's --promotions); the record goes under PREFIX/promotions/"),
    Flag("--evaluation", "jobs.evaluate output of this student (folder, report.json or summary.json)"),
    Flag("--force", "promote although thresholds are missed or no evaluation is given (needs --reason)"),
    Flag("--reason", "why (required with --force; recorded)"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
