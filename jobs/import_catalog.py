"""Import a catalog — folders of photos, or a CSV/Parquet export — as the garments and models manifests of
``jobs.catalog_tryon``: safe, stable ids, masks found by name, every file that is not an image listed with a reason.

    python -m jobs.import_catalog --garments photos/garments --models photos/models --output catalogs/spring
    python -m jobs.import_catalog --garments s3://bucket/export/garments.csv --id-column sku --image-column picture \\
        --models s3://bucket/models/ --output s3://bucket/catalogs/spring

A folder is searched recursively; ``<name>_mask.png`` beside a garment photo is its mask. In a table, relative paths
resolve against the table's folder and every other column (gender, season ...) is kept for ``--match``. Images are
referenced in place: pass the summary's ``allowed_roots`` to the catalog (``--allowed-root DIR``, once per folder). Re-running
gives the same ids and rewrites a manifest only when it changed. docs/catalog.md, "Importing a catalog".
The last stdout line is the run summary (JSON). Exit status: 0 imported (skipped files included), 2 for a config or
usage error, a missing or empty source, a source without images, or an output holding another import.
"""
from __future__ import annotations

import sys

from jobs.cli import Flag, Job
from pipelines.stages.import_catalog import PRESETS, ImportCatalogConfig, run

JOB = Job(__doc__, ImportCatalogConfig, PRESETS, run, flags=(
    Flag("--garments", "garment photos: a folder (searched recursively) or a .csv / .parquet table (local or s3://)"),
    Flag("--models", "model (person) photos: a folder or a .csv / .parquet table (local or s3://)"),
    Flag("--output", "where to write garments.parquet and models.parquet (local folder or s3://bucket/prefix)"),
    Flag("--id-column", "table column holding the ids (default: garment_id/model_id, id or sku; none: from file names)"),
    Flag("--image-column", "table column holding image paths or URIs (default: image_uri, image, image_path, picture, ...)"),
    Flag("--mask-column", "table column holding garment mask paths or URIs (default: mask_uri, mask or mask_path)"),
    Flag("--executor", "where files are checked: threads in this process, Ray tasks, or auto by count"),
))
main = JOB.main

if __name__ == "__main__":
    sys.exit(main())
