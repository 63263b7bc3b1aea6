"""Nightly catalog run: submit the catalog stage for the promoted student to a Ray cluster, once per day.

    python -m jobs.nightly --config jobs/configs/nightly.yaml --address http://head:8265 \\
        --promotions s3://b/production --garments s3://b/catalog/garments.parquet \\
        --models s3://b/catalog/models.parquet --output s3://b/tryon

The submission id is {submission_prefix}-YYYY-MM-DD, so a second submission the same day is refused. The student
is the newest promotion (python -m jobs.promote --to PREFIX, the same PREFIX as --promotions); a training run nobody
promoted is never used. The last stdout line is one JSON object: submission_id, status, student, student_version,
promotion, exit_code and, when it waited, the catalog's own summary (job_summary).

Exit status: 0 submitted (--no-wait) or SUCCEEDED; 1 job FAILED/STOPPED (or the catalog's own non-zero exit
code: 1 error rate exceeded, 2 config error or held lock); 2 usage/config error, no promotion found, cluster
unreachable; 3 this date's submission already exists (already ran / is running); 4 still running when --timeout
expired (the job keeps running).

Credentials never go into the runtime_env (it is stored in the cluster and shown in the dashboard): the cluster's
pods get S3 access from a Secret or IRSA, and this client authenticates with RAY_AUTH_MODE=token +
RAY_AUTH_TOKEN from the environment.
"""
from __future__ import annotations

import sys

from jobs.cli import Flag, Job
from pipelines.stages.nightly import PRESETS, NightlyConfig, exit_code, run

JOB = Job(__doc__, NightlyConfig, PRESETS, run, exit_code=exit_code, set_example="env_vars.PFAFN_LOG_LEVEL=DEBUG",
          flags=(
    Flag("--address", "Ray dashboard / job API address, e.g. http://head:8265 (default: $RAY_ADDRESS)"),
    Flag("--promotions", "promotions prefix (jobs.promote --to): the newest record under PREFIX/promotions/ wins"),
    Flag("--garments", "garments manifest for the catalog (Parquet/CSV)"),
    Flag("--models", "models manifest for the catalog (Parquet/CSV)"),
    Flag("--output", "catalog output root (local folder on the cluster or s3://...)"),
    Flag("--catalog-config", "catalog YAML, relative to the working dir on the cluster ('' for none)"),
    Flag("--catalog-set", "--set override passed to jobs.catalog_tryon (repeatable; replaces the config's list)",
         field="catalog_overrides"),
    Flag("--date", "run date YYYY-MM-DD (default: today in --timezone)"),
    Flag("--timezone", "IANA time zone that decides 'today', e.g. Europe/Berlin"),
    Flag("--submission-prefix", "submission id prefix; the id is PREFIX-YYYY-MM-DD"),
    Flag("--submission-id", "explicit submission id (a deliberate re-run of a date)"),
    Flag("--working-dir", "folder uploaded as the job's working_dir ('' = the image's code)"),
    Flag("--exclude", "extra runtime_env exclude pattern (repeatable; added to the config's excludes)",
         field="excludes", extend=True),
    Flag("--entrypoint-num-cpus", "CPUs reserved for the catalog driver process"),
    Flag("--wait", "wait for the job, streaming its logs (--no-wait: submit and exit 0)", negatable=True),
    Flag("--timeout", "seconds to wait before exiting 4 (0 = no limit)", field="timeout_s"),
    Flag("--dry-run", "find the promoted student and print the submission without contacting the cluster"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
