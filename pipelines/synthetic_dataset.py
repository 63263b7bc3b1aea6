"""Write a synthetic try-on world (``pfafn.data.synthetic``) as a dataset root that every stage reads via ``--data``.

Pipeline (reads top to bottom)::

    config ──► plan (split, pairs, ground-truth pairs; pure arithmetic on indices, no pixels)
        ──► claim the root (world.json: created exclusively, or must match this config)
        ──► list what already exists (one listing) ──► chunks of missing renders
        ──► render + encode + write (threads in-process for small worlds, Ray tasks for large ones)
        ──► manifests (rewritten only when their content changes) ──► summary JSON

What is written (docs/datasets.md): ``images/models/{model_id}.png`` (model i in its own garment
``i % garments``), ``parsing/{model_id}.png`` (uint8 14-class ids; the *noisy* parsing at ``parsing_noise``, exact at
0), ``pose/{model_id}.json`` (OpenPose COCO-18, both keys), ``densepose/{model_id}.png`` (uint8 part index 0..24),
``images/garments/{garment_id}.png`` and ``images/garment_masks/{garment_id}.png`` (0/255), and
``ground_truth/{model_id}__{garment_id}.png`` (exact render of the model wearing the other garment).

Split and pairs: the last ``round(persons * test_fraction)`` models (at least one when the fraction is positive and
there are two or more persons) are the test split. ``train_pairs`` = each train model with the garment it wears.
``test_pairs`` = each test model with its own garment (``paired``) plus unpaired pairs: per test model an ordered list
of other garments, garments no train model wears first (VITON's test garments are unseen in training), drawn from
``(seed, model)``; the unpaired pairs are taken round-robin over the test models, ``max(ground_truth_pairs,
test_models * unpaired_per_model)`` of them. ``ground_truth`` = the first ``ground_truth_pairs`` of those, so every
ground-truth pair is also an unpaired test pair.

Idempotent: every file has a deterministic key and deterministic bytes; files that exist are skipped (writes are
atomic, so an existing file is complete), manifests are rewritten only when different, and a root holding a different
world is refused with the differing settings named.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import dataset_root, manifests, storage
from pipelines.config import absolute_paths
from pipelines.locking import new_run_id, write_run_summary
from pipelines.errors import StageError

log = logging.getLogger(__name__)

MODEL_IMAGE = "images/models/{mid}.png"
PARSING = "parsing/{mid}.png"
POSE = "pose/{mid}.json"
DENSEPOSE = "densepose/{mid}.png"
GARMENT_IMAGE = "images/garments/{gid}.png"
GARMENT_MASK = "images/garment_masks/{gid}.png"
GROUND_TRUTH = "ground_truth/{mid}__{gid}.png"

# zlib level 1: ~4x faster than Pillow's default 6 on these renders for ~10% larger files (measured at 256x192);
# the pixels are the same at any level.
PNG_COMPRESS_LEVEL = 1
# Mixed into the seed of the per-model unpaired-garment draw (the world's own streams are 1..7).
_UNPAIRED_STREAM = 0x7E57


@dataclass
class SyntheticDatasetConfig:
    """Config of ``jobs.generate_synthetic``; every field is documented in jobs/configs/generate_synthetic.yaml.

    output              dataset root to write (local folder or s3://bucket/prefix)
    persons, garments   numbers of model photos and garment product photos
    height, width       image size (positive multiples of 32)
    seed                the world's seed (same settings -> byte-identical dataset)
    parsing_noise       parser imitation in parsing/ (0 = exact parsing; see docs/synthetic-world.md)
    ground_truth_pairs  unpaired (test model, other garment) pairs rendered exactly under ground_truth/
    test_fraction       share of the models in the test split (the last indices)
    unpaired_per_model  unpaired test pairs per test model (at least; more when ground_truth_pairs needs them)
    executor            auto | local | ray: where renders run; auto = Ray when the work has >= ray_min_items units
    ray_min_items       work units (person renders + garment renders + ground-truth renders) from which auto uses Ray
    chunk_size          work units per task (one Ray task or one thread job)
    workers             threads for the in-process executor (render, PNG encode and storage writes overlap)
    cpus_per_task       CPUs each Ray task reserves
    """

    output: str = ""
    persons: int = 200
    garments: int = 100
    height: int = 256
    width: int = 192
    seed: int = 0
    parsing_noise: float = 0.0
    ground_truth_pairs: int = 200
    test_fraction: float = 0.2
    unpaired_per_model: int = 1
    executor: str = "auto"
    ray_min_items: int = 512
    chunk_size: int = 32
    workers: int = 4
    cpus_per_task: float = 1.0

    def validate(self) -> None:
        if not self.output:
            raise StageError("generate_synthetic: --output is required")
        for name in ("persons", "garments"):
            if getattr(self, name) < 1:
                raise StageError(f"generate_synthetic: {name} must be >= 1, got {getattr(self, name)}")
        for name, value in (("height", self.height), ("width", self.width)):
            if value < 64 or value % 32:
                raise StageError(f"generate_synthetic: {name} must be a multiple of 32 and at least 64 (the networks' "
                                 f"coarsest level needs it), got {value}")
        if self.seed < 0:
            raise StageError(f"generate_synthetic: seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.parsing_noise <= 1.0:
            raise StageError(f"generate_synthetic: parsing_noise must be within [0, 1], got {self.parsing_noise}")
        if self.ground_truth_pairs < 0 or self.unpaired_per_model < 0:
            raise StageError("generate_synthetic: ground_truth_pairs and unpaired_per_model must be >= 0")
        if not 0.0 <= self.test_fraction < 1.0:
            raise StageError(f"generate_synthetic: test_fraction must be within [0, 1), got {self.test_fraction}")
        if self.executor not in dataset_root.EXECUTORS:
            raise StageError(f"generate_synthetic: executor must be one of {', '.join(dataset_root.EXECUTORS)}")
        if self.chunk_size < 1 or self.workers < 1 or self.ray_min_items < 0 or self.cpus_per_task <= 0:
            raise StageError("generate_synthetic: chunk_size and workers must be >= 1, ray_min_items >= 0, "
                             "cpus_per_task > 0")


# VITON: 14,221 train + 2,032 test pairs at 256x192; ground truth for every unpaired test pair.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"persons": 8, "garments": 8, "height": 128, "width": 96, "ground_truth_pairs": 4, "test_fraction": 0.25},
    "cpu": {"persons": 1000, "garments": 1000, "height": 256, "width": 192, "ground_truth_pairs": 200,
            "test_fraction": 0.2},
    "published": {"persons": 16253, "garments": 16253, "height": 256, "width": 192, "ground_truth_pairs": 2032,
                  "test_fraction": 0.125},
}


# ----------------------------------------------------------------------------------------------------------------------
# Plan: split and pairs (indices only).


@dataclass(frozen=True)
class WorldPlan:
    persons: int
    garments: int
    train_models: tuple[int, ...]
    test_models: tuple[int, ...]
    unpaired: tuple[tuple[int, int], ...]  # (test model, other garment), round-robin over the test models
    ground_truth: tuple[tuple[int, int], ...]  # the first ground_truth_pairs of ``unpaired``

    def worn(self, i: int) -> int:
        return i % self.garments


def n_test_models(persons: int, test_fraction: float) -> int:
    if persons < 2 or test_fraction <= 0:
        return 0
    return min(persons - 1, max(1, int(round(persons * test_fraction))))


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int, exclude: int) -> list[int]:
    """Up to ``k`` distinct members of ``pool`` other than ``exclude``, in a random order."""
    if k <= 0 or pool.size == 0:
        return []
    take = min(pool.size, k + 1)
    picks = rng.choice(pool, size=take, replace=False).tolist()
    return [int(p) for p in picks if p != exclude][:k]


def plan_world(config: SyntheticDatasetConfig) -> WorldPlan:
    """The split and all pairs of the config's world (deterministic; no rendering)."""
    n, m = config.persons, config.garments
    n_test = n_test_models(n, config.test_fraction)
    train = tuple(range(n - n_test))
    test = tuple(range(n - n_test, n))
    if not test or m < 2:
        return WorldPlan(n, m, train, test, (), ())
    seen = np.zeros(m, dtype=bool)
    seen[np.asarray(train, dtype=np.int64) % m] = True
    unseen_pool = np.flatnonzero(~seen)
    seen_pool = np.flatnonzero(seen)
    wanted = min(max(config.ground_truth_pairs, len(test) * config.unpaired_per_model), len(test) * (m - 1))
    per_model = math.ceil(wanted / len(test)) if wanted else 0
    lists: list[list[int]] = []
    for i in test:
        own = i % m
        rng = np.random.default_rng([config.seed, _UNPAIRED_STREAM, i])
        picks = _draw(rng, unseen_pool, per_model, own)
        if len(picks) < per_model:
            picks += _draw(rng, seen_pool, per_model - len(picks), own)
        lists.append(picks)
    unpaired: list[tuple[int, int]] = []
    for r in range(per_model):
        for i, picks in zip(test, lists):
            if r < len(picks) and len(unpaired) < wanted:
                unpaired.append((i, picks[r]))
    gt = unpaired[: config.ground_truth_pairs]
    return WorldPlan(n, m, train, test, tuple(unpaired), tuple(gt))


def world_json(config: SyntheticDatasetConfig, plan: WorldPlan) -> dict[str, Any]:
    """The identity of the dataset: every setting that changes a byte of it, and its counts."""
    from pfafn.data import GENERATOR_NAME

    return {
        "format": dataset_root.DATASET_FORMAT,
        "source": "synthetic",
        "generator": GENERATOR_NAME,
        "seed": int(config.seed),
        "height": int(config.height),
        "width": int(config.width),
        "parsing_noise": float(config.parsing_noise),
        "persons": int(config.persons),
        "garments": int(config.garments),
        "test_fraction": float(config.test_fraction),
        "unpaired_per_model": int(config.unpaired_per_model),
        "ground_truth_pairs": int(config.ground_truth_pairs),
        "id_format": {"model": "m{index:05d}", "garment": "g{index:05d}"},
        "worn_garment": "model i wears garment i % garments",
        "counts": {
            "models": plan.persons,
            "garments": plan.garments,
            "train_models": len(plan.train_models),
            "test_models": len(plan.test_models),
            "train_pairs": len(plan.train_models),
            "test_pairs": len(plan.test_models) + len(plan.unpaired),
            "test_pairs_unpaired": len(plan.unpaired),
            "ground_truth": len(plan.ground_truth),
        },
    }


# ----------------------------------------------------------------------------------------------------------------------
# Rendering (runs in threads or in Ray tasks; module-level so Ray pickles it by reference).


def _mid(i: int) -> str:
    return f"m{i:05d}"


def _gid(j: int) -> str:
    return f"g{j:05d}"


def model_files(i: int) -> list[str]:
    mid = _mid(i)
    return [p.format(mid=mid) for p in (MODEL_IMAGE, PARSING, POSE, DENSEPOSE)]


def garment_files(j: int) -> list[str]:
    gid = _gid(j)
    return [GARMENT_IMAGE.format(gid=gid), GARMENT_MASK.format(gid=gid)]


def gt_file(i: int, j: int) -> str:
    return GROUND_TRUTH.format(mid=_mid(i), gid=_gid(j))


def render_chunk(spec: dict, items: list) -> dict:
    """Render and write one chunk. ``items``: ``["model", i, missing]``, ``["garment", j, missing]`` or
    ``["gt", i, j, missing]`` where ``missing`` lists the relative paths still to write."""
    from pfafn import imageio
    from pfafn.data import SyntheticWorld, WorldConfig, encode_openpose_json

    started = time.perf_counter()
    world = SyntheticWorld(spec["persons"], spec["garments"],
                           WorldConfig(height=spec["height"], width=spec["width"], seed=spec["seed"],
                                       parsing_noise=spec["parsing_noise"]))
    root = spec["root"]
    noisy = spec["parsing_noise"] > 0

    def png(a) -> bytes:
        return imageio.encode_png(a, compress_level=PNG_COMPRESS_LEVEL)

    written = renders = 0
    for item in items:
        kind = item[0]
        out: dict[str, bytes] = {}
        if kind == "model":
            i, missing = item[1], set(item[2])
            p = world.render_person(i)
            mid = _mid(i)
            wanted = {
                MODEL_IMAGE.format(mid=mid): lambda: png(p.image),
                # noisy_parsing(parsing_noise=0) is an exact copy; skip its cost (~40% of a render)
                PARSING.format(mid=mid): lambda: png(world.noisy_parsing(i, parsing=p.parsing) if noisy else p.parsing),
                POSE.format(mid=mid): lambda: encode_openpose_json(p.keypoints).encode("utf-8"),
                DENSEPOSE.format(mid=mid): lambda: png(p.densepose),
            }
            out = {rel: make() for rel, make in wanted.items() if rel in missing}
        elif kind == "garment":
            j, missing = item[1], set(item[2])
            g = world.render_garment(j)
            gid = _gid(j)
            wanted = {
                GARMENT_IMAGE.format(gid=gid): lambda: png(g.image),
                GARMENT_MASK.format(gid=gid): lambda: png(g.mask),
            }
            out = {rel: make() for rel, make in wanted.items() if rel in missing}
        elif kind == "gt":
            i, j = item[1], item[2]
            out = {gt_file(i, j): png(world.render_person(i, j).image)}
        else:  # pragma: no cover - planner bug
            raise ValueError(f"unknown work item {item!r}")
        renders += 1
        for rel, data in out.items():
            storage.write_bytes(storage.join_uri(root, rel), data)
            written += 1
    return {"renders": renders, "files_written": written, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------------------------
# Manifests.


def build_manifests(root: str, plan: WorldPlan) -> dict[str, pa.Table]:
    j = lambda rel: storage.join_uri(root, rel)  # noqa: E731
    test_set = set(plan.test_models)
    mids = [_mid(i) for i in range(plan.persons)]
    models = pa.table({
        "model_id": mids,
        "image_uri": [j(MODEL_IMAGE.format(mid=m)) for m in mids],
        "split": ["test" if i in test_set else "train" for i in range(plan.persons)],
        "parsing_uri": [j(PARSING.format(mid=m)) for m in mids],
        "pose_uri": [j(POSE.format(mid=m)) for m in mids],
        "densepose_uri": [j(DENSEPOSE.format(mid=m)) for m in mids],
    })
    gids = [_gid(g) for g in range(plan.garments)]
    garments = pa.table({
        "garment_id": gids,
        "image_uri": [j(GARMENT_IMAGE.format(gid=g)) for g in gids],
        "mask_uri": [j(GARMENT_MASK.format(gid=g)) for g in gids],
    })
    train_pairs = pa.table({
        "model_id": [_mid(i) for i in plan.train_models],
        "garment_id": [_gid(plan.worn(i)) for i in plan.train_models],
    })
    paired = [(i, plan.worn(i), True) for i in plan.test_models]
    unpaired = [(i, g, False) for i, g in plan.unpaired]
    test_rows = paired + unpaired
    test_pairs = pa.table({
        "model_id": [_mid(i) for i, _, _ in test_rows],
        "garment_id": [_gid(g) for _, g, _ in test_rows],
        "paired": pa.array([p for _, _, p in test_rows], pa.bool_()),
    })
    ground_truth = pa.table({
        "model_id": [_mid(i) for i, _ in plan.ground_truth],
        "garment_id": [_gid(g) for _, g in plan.ground_truth],
        "image_uri": [j(gt_file(i, g)) for i, g in plan.ground_truth],
    })
    tables = {"models": models, "garments": garments, "train_pairs": train_pairs, "test_pairs": test_pairs,
              "ground_truth": ground_truth}
    return {kind: manifests.conform(t, kind) for kind, t in tables.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def _work_items(plan: WorldPlan, existing: set[str]) -> tuple[list[list], int]:
    """Work items for every render with a missing file, and the number of files already present."""
    items: list[list] = []
    present = 0
    for i in range(plan.persons):
        files = model_files(i)
        missing = [f for f in files if f not in existing]
        present += len(files) - len(missing)
        if missing:
            items.append(["model", i, missing])
    for g in range(plan.garments):
        files = garment_files(g)
        missing = [f for f in files if f not in existing]
        present += len(files) - len(missing)
        if missing:
            items.append(["garment", g, missing])
    for i, g in plan.ground_truth:  # sorted by model so a chunk reuses the model's sampled body
        rel = gt_file(i, g)
        if rel in existing:
            present += 1
        else:
            items.append(["gt", i, g, [rel]])
    return items, present


def _chunks(items: list[list], size: int) -> list[list]:
    def key(it):
        return (0 if it[0] == "model" else 1 if it[0] == "garment" else 2, it[1], it[2] if it[0] == "gt" else 0)

    ordered = sorted(items, key=key)
    return [ordered[k:k + size] for k in range(0, len(ordered), size)]


def run(config: SyntheticDatasetConfig) -> dict[str, Any]:
    """Generate (or finish, or verify) the dataset root; returns (and writes under the root) the run summary."""
    config.validate()
    config = absolute_paths(config, "output")
    started = time.perf_counter()
    root = dataset_root.normalize_root(config.output)
    run_id = new_run_id()
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        plan = plan_world(config)
        world = world_json(config, plan)
        storage.makedirs(root)
        created = dataset_root.claim_root(root, world)
        existing = set() if created else dataset_root.relative_listing(root)
        items, present = _work_items(plan, existing)
        timings["plan_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        executor = dataset_root.choose_executor(config.executor, len(items), config.ray_min_items)
        spec = {"root": root, "persons": config.persons, "garments": config.garments, "height": config.height,
                "width": config.width, "seed": config.seed, "parsing_noise": float(config.parsing_noise)}
        chunks = _chunks(items, config.chunk_size)
        log.info("generate_synthetic %s: %d persons x %d garments at %dx%d into %s: %d renders to do in %d chunks "
                 "(%s), %d files already there", run_id, config.persons, config.garments, config.height, config.width,
                 root, len(items), len(chunks), executor, present)
        results = dataset_root.run_chunks(render_chunk, spec, chunks, executor=executor, workers=config.workers,
                                          cpus_per_task=config.cpus_per_task, what="render")
        renders = sum(r["renders"] for r in results)
        written = sum(r["files_written"] for r in results)
        timings["render_s"] = round(time.perf_counter() - t0, 3)
        timings["render_task_s"] = round(sum(r["seconds"] for r in results), 3)

        t0 = time.perf_counter()
        tables = build_manifests(root, plan)
        manifests_written = []
        for kind, table in tables.items():
            if dataset_root.write_manifest_if_changed(table, dataset_root.manifest_uri(root, kind), kind):
                manifests_written.append(kind)
        timings["manifests_s"] = round(time.perf_counter() - t0, 3)
    except storage.StorageError as exc:
        raise StageError(f"generate_synthetic: storage error: {exc}") from None

    elapsed = time.perf_counter() - started
    timings["total_s"] = round(elapsed, 3)
    counts = world["counts"]
    summary: dict[str, Any] = {
        "stage": "generate_synthetic",
        "run_id": run_id,
        "output": root,
        "data": root,
        "world": storage.join_uri(root, dataset_root.WORLD_JSON),
        "manifests": {kind: dataset_root.manifest_uri(root, kind) for kind in dataset_root.MANIFEST_FILES},
        "persons": config.persons,
        "garments": config.garments,
        "height": config.height,
        "width": config.width,
        "seed": config.seed,
        "parsing_noise": float(config.parsing_noise),
        "models": counts["models"],
        "train_models": counts["train_models"],
        "test_models": counts["test_models"],
        "train_pairs": counts["train_pairs"],
        "test_pairs": counts["test_pairs"],
        "test_pairs_paired": counts["test_models"],
        "test_pairs_unpaired": counts["test_pairs_unpaired"],
        "ground_truth_pairs": counts["ground_truth"],
        "ground_truth_pairs_requested": config.ground_truth_pairs,
        "files_total": 4 * plan.persons + 2 * plan.garments + len(plan.ground_truth),
        "files_written": written,
        "files_skipped": present,
        "renders": renders,
        "manifests_written": manifests_written,
        "created": created,
        "executor": executor,
        "chunks": len(chunks),
        "timings": timings,
        "wall_s": round(elapsed, 3),
        "renders_per_s": round(renders / timings["render_s"], 2) if renders and timings["render_s"] > 0 else 0.0,
        "config": dataclasses.asdict(config),
    }
    if counts["ground_truth"] < config.ground_truth_pairs:
        summary["warning"] = (f"only {counts['ground_truth']} of {config.ground_truth_pairs} ground-truth pairs are "
                              f"possible with {counts['test_models']} test models x {config.garments - 1} other "
                              "garments")
        log.warning(summary["warning"])
    try:
        write_run_summary(root, run_id, summary)
    except storage.StorageError as exc:
        raise StageError(f"generate_synthetic: storage error writing the summary: {exc}") from None
    return summary
