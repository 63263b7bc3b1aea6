"""The dataset root (``--data URI``) and the writer skeleton shared by ``generate_synthetic`` and ``import_viton``.

Layout (docs/datasets.md, docs/data-contracts.md)::

    {root}/world.json            what the root holds (source, generator, seed, sizes, counts); the identity check
    {root}/models.parquet        model_id, image_uri, split, parsing_uri, pose_uri, densepose_uri
    {root}/garments.parquet      garment_id, image_uri, mask_uri
    {root}/train_pairs.parquet   model_id, garment_id
    {root}/test_pairs.parquet    model_id, garment_id, paired
    {root}/ground_truth.parquet  model_id, garment_id, image_uri        (synthetic only)
    {root}/import_errors.parquet rejected input files / pair lines     (VITON importer only)
    {root}/summary.json, {root}/runs/{run_id}.json                     the writer's run summaries

A writer run (:class:`WriterRun`) reads top to bottom::

    validate config ──► claim the root (world.json created exclusively, or equal to this run's identity)
        ──► chunks of work, run by threads in this process or as Ray tasks (:func:`run_chunks`)
        ──► manifests, rewritten only when their content changes ──► world.json + run summary

Every file has a deterministic key, so a re-run skips what exists and a killed run is finished by running it again.
"""
from __future__ import annotations

import json
import logging
import os
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import pyarrow as pa

from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError, check_choices, require
from pipelines.core.errors import StageError
from pipelines.core.locking import new_run_id, write_run_summary

log = logging.getLogger(__name__)

DATASET_FORMAT = "pfafn-dataset/1"
WORLD_JSON = "world.json"
MANIFEST_FILES = {
    "models": "models.parquet",
    "garments": "garments.parquet",
    "train_pairs": "train_pairs.parquet",
    "test_pairs": "test_pairs.parquet",
    "ground_truth": "ground_truth.parquet",
}
IMPORT_ERRORS_FILE = "import_errors.parquet"
Executor = Literal["auto", "local", "ray"]
EXECUTORS: tuple[str, ...] = typing.get_args(Executor)


@dataclass
class DatasetWriterConfig:
    """The fields both dataset writers share (their YAML/docstrings document them); a writer's config subclasses
    this and may change the defaults.

    output          dataset root to write (local folder or s3://bucket/prefix)
    executor        auto | local | ray: where the work runs; auto = Ray when there are >= ray_min_items work units
    ray_min_items   work units from which executor=auto uses Ray
    chunk_size      work units per task (one Ray task or one thread job)
    workers         threads of the in-process executor (reads, encodes and storage writes overlap)
    cpus_per_task   CPUs each Ray task reserves
    """

    output: str = ""
    executor: Executor = "auto"
    ray_min_items: int = 512
    chunk_size: int = 32
    workers: int = 4
    cpus_per_task: float = 1.0

    def check_writer(self, where: str) -> None:
        """The checks of the shared fields (:class:`ConfigError`); a writer's ``validate()`` calls it."""
        require(self, where, "output")
        check_choices(self, where)
        if self.chunk_size < 1 or self.workers < 1 or self.ray_min_items < 0 or self.cpus_per_task <= 0:
            raise ConfigError(f"{where}: chunk_size and workers must be >= 1, ray_min_items >= 0, cpus_per_task > 0")


def normalize_root(uri: str) -> str:
    """The canonical form of a dataset root: an absolute local path (``file://`` dropped) or ``s3://bucket/prefix``
    without a trailing slash. Manifests store URIs under this root, so they are absolute."""
    if not uri:
        raise StageError("an output location is required (--output)")
    try:
        if storage.is_local(uri):
            return storage.local_path(uri).rstrip("/") or "/"
        root = uri.rstrip("/")
        scheme, rest = root.split("://", 1)
        return "s3://" + rest
    except storage.StorageError as exc:
        raise StageError(f"bad output URI: {exc}") from None


def manifest_uri(root: str, kind: str) -> str:
    return storage.join_uri(root, MANIFEST_FILES[kind])


def relative_listing(root: str) -> set[str]:
    """Every object under ``root`` as a path relative to it (one listing; a missing root lists as empty)."""
    prefix = root.rstrip("/") + "/"
    out = set()
    for uri in storage.list_files(root):
        if uri.startswith(prefix):
            out.add(uri[len(prefix):])
    return out


def world_differences(existing: Mapping[str, Any], wanted: Mapping[str, Any], keys: Sequence[str] | None = None
                      ) -> list[str]:
    """``["persons: 6 != 8", ...]`` for the (top-level) keys whose values differ."""
    names = list(keys) if keys is not None else sorted(set(existing) | set(wanted))
    diffs = []
    for k in names:
        a, b = existing.get(k), wanted.get(k)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append((k, f"{k}: {json.dumps(a, sort_keys=True)} (existing) != {json.dumps(b, sort_keys=True)} "
                             "(this run)"))
    # Derived counts only matter when no setting explains the difference (e.g. a changed generator).
    settings = [text for k, text in diffs if k != "counts"]
    return settings or [text for _, text in diffs]


def read_world(root: str) -> dict | None:
    uri = storage.join_uri(root, WORLD_JSON)
    try:
        data = storage.read_json(uri)
    except storage.ObjectNotFoundError:
        return None
    if not isinstance(data, dict):
        raise StageError(f"{uri} is not a JSON object; this location does not hold a dataset written by this project")
    return data


def claim_root(root: str, world: Mapping[str, Any], identity_keys: Sequence[str] | None = None) -> bool:
    """Make sure ``root`` holds (or will hold) the dataset described by ``world``.

    The first writer creates ``world.json`` exclusively (so two concurrent runs with different configs cannot both
    win). When it exists, its ``identity_keys`` (all keys when None) must equal ``world``'s, else :class:`StageError`
    names the differences. A root that has manifests but no ``world.json`` is refused as well. Returns True when this
    call created ``world.json``.
    """
    uri = storage.join_uri(root, WORLD_JSON)
    text = json.dumps(world, indent=2, sort_keys=True) + "\n"
    existing = read_world(root)
    if existing is None:
        if storage.exists(manifest_uri(root, "models")):
            raise StageError(f"{root} holds models.parquet but no {WORLD_JSON}: it was not written by this project's "
                             "dataset writers; choose another --output")
        if storage.write_bytes_if_absent(uri, text.encode("utf-8")):
            return True
        existing = read_world(root) or {}
    diffs = world_differences(existing, world, identity_keys)
    if diffs:
        raise StageError(
            f"{root} already holds a different dataset ({'; '.join(diffs)}); re-run with the same settings to resume, "
            "or choose another --output (or delete that one)"
        )
    return False


def write_manifest_if_changed(table: pa.Table, uri: str, kind: str) -> bool:
    """Write the manifest unless an identical one (same schema and rows) is already there. True if written."""
    table = manifests.conform(table, kind, uri=uri)
    try:
        if storage.exists(uri):
            existing = manifests.read_table(uri, kind)
            if existing.schema.equals(table.schema) and existing.equals(table):
                return False
    except manifests.ManifestError:
        pass  # unreadable: replace it
    manifests.write_manifest(table, uri, kind=kind)
    return True


def write_manifests(root: str, tables: Mapping[str, pa.Table]) -> list[str]:
    """Write each ``kind -> table`` to its manifest under ``root`` unless unchanged; the kinds written."""
    return [kind for kind, table in tables.items() if write_manifest_if_changed(table, manifest_uri(root, kind), kind)]


def write_errors_if_changed(rows: list[Mapping[str, Any]], uri: str) -> bool:
    return write_manifest_if_changed(manifests.error_table(rows), uri, "errors")


# ----------------------------------------------------------------------------------------------------------------------
# Running chunks of work: threads in this process for small jobs, Ray tasks for large ones.


def choose_executor(executor: str, units: int, ray_min_items: int) -> str:
    """``local`` or ``ray``: ``auto`` picks Ray when there are at least ``ray_min_items`` work units."""
    if executor not in EXECUTORS:
        raise StageError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "auto":
        return "ray" if units >= ray_min_items else "local"
    return executor


def chunked(items: Sequence, size: int) -> list[list]:
    """``items`` cut into consecutive chunks of ``size`` (the last one shorter)."""
    return [list(items[k:k + size]) for k in range(0, len(items), size)]


def _failure(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    return f"{type(exc).__name__}: {' '.join(text.split())[:300]}"


def run_chunks(
    fn: Callable[[dict, list], dict],
    spec: dict,
    chunks: list[list],
    *,
    executor: str,
    workers: int = 4,
    cpus_per_task: float = 1.0,
    what: str = "chunk",
) -> list[dict]:
    """``[fn(spec, chunk) for chunk in chunks]``, in chunk order, run by a thread pool (``executor="local"``,
    ``workers`` threads) or as one Ray task per chunk (``executor="ray"``; ``fn`` must be a module-level function).

    Every chunk runs even when one fails; then :class:`StageError` names how many failed and the first reason.
    """
    if not chunks:
        return []
    if executor == "local":
        results, failures = _run_local(fn, spec, chunks, workers, what)
    elif executor == "ray":
        results, failures = _run_ray(fn, spec, chunks, cpus_per_task, what)
    else:
        raise StageError(f"unknown executor {executor!r}")
    if failures:
        k, reason = min(failures)
        raise StageError(f"{len(failures)} of {len(chunks)} {what} tasks failed; first (#{k}): {reason}")
    return [r for r in results if r is not None]


def _run_local(fn, spec: dict, chunks: list[list], workers: int, what: str):
    results: list[dict | None] = [None] * len(chunks)
    failures: list[tuple[int, str]] = []
    if workers <= 1 or len(chunks) == 1:
        for k, chunk in enumerate(chunks):
            try:
                results[k] = fn(spec, chunk)
            except Exception as exc:  # collected, reported by run_chunks
                failures.append((k, _failure(exc)))
        return results, failures
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=what) as pool:
        futures = [pool.submit(fn, spec, chunk) for chunk in chunks]
        for k, fut in enumerate(futures):
            try:
                results[k] = fut.result()
            except Exception as exc:
                failures.append((k, _failure(exc)))
    return results, failures


def _run_ray(fn, spec: dict, chunks: list[list], cpus_per_task: float, what: str):
    import ray

    from pipelines.core.ray_env import ensure_ray

    ensure_ray()
    results: list[dict | None] = [None] * len(chunks)
    failures: list[tuple[int, str]] = []
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=2)(fn)
    spec_ref = ray.put(spec)
    refs = {remote.remote(spec_ref, chunk): k for k, chunk in enumerate(chunks)}
    pending = list(refs)
    done_count = 0
    last_log = time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(len(pending), 64), timeout=30)
        for ref in ready:
            k = refs[ref]
            try:
                results[k] = ray.get(ref)
            except Exception as exc:
                failures.append((k, _failure(getattr(exc, "cause", None) or exc)))
            done_count += 1
        if time.time() - last_log > 30 or not pending:
            log.info("%s: %d/%d Ray tasks done", what, done_count, len(chunks))
            last_log = time.time()
    return results, failures


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1) * 2))


# ----------------------------------------------------------------------------------------------------------------------
# One run of a dataset writer.


class WriterRun:
    """The skeleton both writers run: the normalised root and run id, timed steps whose storage errors become
    :class:`StageError` (exit 2), the chunked work, and the run summary written under the root."""

    def __init__(self, stage: str, output: str):
        self.stage = stage
        self.started = time.perf_counter()
        self.root = normalize_root(output)
        self.run_id = new_run_id()
        self.timings: dict[str, float] = {}
        self.executor = "local"
        self.chunks = 0

    @contextmanager
    def step(self, name: str):
        """Time the block as ``timings[name]``; a storage error inside it stops the run with a one-line reason."""
        t0 = time.perf_counter()
        try:
            yield
        except storage.StorageError as exc:
            raise StageError(f"{self.stage}: storage error: {exc}") from None
        self.timings[name] = round(time.perf_counter() - t0, 3)

    def execute(self, fn: Callable[[dict, list], dict], spec: dict, chunks: list[list], config: DatasetWriterConfig,
                *, units: int, what: str) -> list[dict]:
        """Run ``fn(spec, chunk)`` for every chunk where ``config.executor`` says (``auto``: by ``units``)."""
        self.executor = choose_executor(config.executor, units, config.ray_min_items)
        self.chunks = len(chunks)
        log.info("%s %s: %d work units in %d %s chunks (%s executor) -> %s", self.stage, self.run_id, units,
                 len(chunks), what, self.executor, self.root)
        return run_chunks(fn, spec, chunks, executor=self.executor, workers=config.workers,
                          cpus_per_task=config.cpus_per_task, what=what)

    def summary(self, manifest_kinds: Sequence[str], **fields: Any) -> dict[str, Any]:
        """The summary fields every writer reports, then the stage's ``fields``."""
        elapsed = time.perf_counter() - self.started
        self.timings["total_s"] = round(elapsed, 3)
        return {
            "stage": self.stage,
            "run_id": self.run_id,
            "output": self.root,
            "data": self.root,
            "manifests": {kind: manifest_uri(self.root, kind) for kind in manifest_kinds},
            "executor": self.executor,
            "timings": self.timings,
            "wall_s": round(elapsed, 3),
            **fields,
        }

    def finish(self, summary: dict[str, Any], world: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``world`` (when given and different from what is there) and the run summary; return the summary."""
        try:
            if world is not None and read_world(self.root) != json.loads(json.dumps(world)):
                storage.write_json(storage.join_uri(self.root, WORLD_JSON), world)
            write_run_summary(self.root, self.run_id, summary)
        except storage.StorageError as exc:
            raise StageError(f"{self.stage}: storage error writing the summary: {exc}") from None
        return summary
