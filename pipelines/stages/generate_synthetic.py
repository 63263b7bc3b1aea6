"""Write a synthetic try-on world (``pfafn.synthetic.world``) as a dataset root that every stage reads via ``--data``.

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
of other garments, garments no train model wears first (VITON's test products are not in its training split; Han et
al., "VITON: An Image-based Virtual Try-on Network", CVPR 2018), drawn from
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

from pipelines import dataset_root
from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError, absolute_paths, check_size
from pipelines.dataset_root import DatasetWriterConfig

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
class SyntheticDatasetConfig(DatasetWriterConfig):
    """Config of ``jobs.generate_synthetic``; every field is documented in jobs/configs/generate_synthetic.yaml.

    output, executor, ray_min_items, chunk_size, workers, cpus_per_task   see ``DatasetWriterConfig``; a work unit is
                        one person, garment or ground-truth render
    persons, garments   numbers of model photos and garment product photos
    height, width       image size (PF-AFN's rule: multiples of 32, at least 64)
    seed                the world's seed (same settings -> byte-identical dataset)
    parsing_noise       parser imitation in parsing/ (0 = exact parsing; see docs/synthetic-world.md)
    ground_truth_pairs  unpaired (test model, other garment) pairs rendered exactly under ground_truth/
    test_fraction       share of the models in the test split (the last indices)
    unpaired_per_model  unpaired test pairs per test model (at least; more when ground_truth_pairs needs them)
    """

    persons: int = 200
    garments: int = 100
    height: int = 256
    width: int = 192
    seed: int = 0
    parsing_noise: float = 0.0
    ground_truth_pairs: int = 200
    test_fraction: float = 0.2
    unpaired_per_model: int = 1

    def validate(self) -> None:
        where = "generate_synthetic"
        self.check_writer(where)
        # The world renders other sizes too, but every stage that reads this dataset trains or runs PF-AFN.
        check_size(where, self.height, self.width)
        problems = [
            f"{name} must be >= 1, got {getattr(self, name)}" for name in ("persons", "garments")
            if getattr(self, name) < 1
        ]
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.parsing_noise <= 1.0:
            problems.append(f"parsing_noise must be within [0, 1], got {self.parsing_noise}")
        if self.ground_truth_pairs < 0 or self.unpaired_per_model < 0:
            problems.append("ground_truth_pairs and unpaired_per_model must be >= 0")
        if not 0.0 <= self.test_fraction < 1.0:
            problems.append(f"test_fraction must be within [0, 1), got {self.test_fraction}")
        if problems:
            raise ConfigError(f"{where}: {problems[0]}")


# "published": VITON's size, 14,221 train + 2,032 test pairs at 256x192 (Han et al., CVPR 2018); ground truth for
# every unpaired test pair.
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
    from pfafn.synthetic import GENERATOR_NAME

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


MODEL_FILES = (MODEL_IMAGE, PARSING, POSE, DENSEPOSE)
GARMENT_FILES = (GARMENT_IMAGE, GARMENT_MASK)


def model_files(i: int) -> list[str]:
    return [p.format(mid=_mid(i)) for p in MODEL_FILES]


def garment_files(j: int) -> list[str]:
    return [p.format(gid=_gid(j)) for p in GARMENT_FILES]


def gt_file(i: int, j: int) -> str:
    return GROUND_TRUTH.format(mid=_mid(i), gid=_gid(j))


def _png(a: np.ndarray) -> bytes:
    from pfafn import imageio

    return imageio.encode_png(a, compress_level=PNG_COMPRESS_LEVEL)


def _model_outputs(world, i: int, noisy: bool) -> dict[str, Any]:
    """``relative path -> make bytes`` of model ``i``'s files (one render, encoded lazily per missing file)."""
    from pfafn.synthetic import encode_openpose_json

    p = world.render_person(i)
    # noisy_parsing(parsing_noise=0) is an exact copy; skip its cost (~40% of a render)
    parsing = (lambda: world.noisy_parsing(i, parsing=p.parsing)) if noisy else (lambda: p.parsing)
    makers = (lambda: _png(p.image), lambda: _png(parsing()),
              lambda: encode_openpose_json(p.keypoints).encode("utf-8"), lambda: _png(p.densepose))
    return dict(zip(model_files(i), makers))


def _garment_outputs(world, j: int) -> dict[str, Any]:
    g = world.render_garment(j)
    return dict(zip(garment_files(j), (lambda: _png(g.image), lambda: _png(g.mask))))


def render_chunk(spec: dict, items: list) -> dict:
    """Render and write one chunk. ``items``: ``["model", i, missing]``, ``["garment", j, missing]`` or
    ``["gt", i, j, missing]`` where ``missing`` lists the relative paths still to write."""
    from pfafn.synthetic import SyntheticWorld, WorldConfig

    started = time.perf_counter()
    world = SyntheticWorld(spec["persons"], spec["garments"],
                           WorldConfig(height=spec["height"], width=spec["width"], seed=spec["seed"],
                                       parsing_noise=spec["parsing_noise"]))
    written = renders = 0
    for item in items:
        kind, missing = item[0], set(item[-1])
        if kind == "model":
            outputs = _model_outputs(world, item[1], spec["parsing_noise"] > 0)
        elif kind == "garment":
            outputs = _garment_outputs(world, item[1])
        elif kind == "gt":
            outputs = {gt_file(item[1], item[2]): lambda i=item[1], j=item[2]: _png(world.render_person(i, j).image)}
        else:  # pragma: no cover - planner bug
            raise ValueError(f"unknown work item {item!r}")
        renders += 1
        for rel, make in outputs.items():
            if rel in missing:
                storage.write_bytes(storage.join_uri(spec["root"], rel), make())
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
    for kind, count, files_of in (("model", plan.persons, model_files), ("garment", plan.garments, garment_files)):
        for k in range(count):
            files = files_of(k)
            missing = [f for f in files if f not in existing]
            present += len(files) - len(missing)
            if missing:
                items.append([kind, k, missing])
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

    return dataset_root.chunked(sorted(items, key=key), size)


def run(config: SyntheticDatasetConfig) -> dict[str, Any]:
    """Generate (or finish, or verify) the dataset root; returns (and writes under the root) the run summary."""
    config.validate()
    config = absolute_paths(config, "output")
    job = dataset_root.WriterRun("generate_synthetic", config.output)
    with job.step("plan_s"):
        plan = plan_world(config)
        world = world_json(config, plan)
        storage.makedirs(job.root)
        created = dataset_root.claim_root(job.root, world)
        items, present = _work_items(plan, set() if created else dataset_root.relative_listing(job.root))
    with job.step("render_s"):
        log.info("generate_synthetic %s: %d persons x %d garments at %dx%d into %s: %d renders to do, %d files "
                 "already there", job.run_id, config.persons, config.garments, config.height, config.width, job.root,
                 len(items), present)
        spec = {"root": job.root, "persons": config.persons, "garments": config.garments, "height": config.height,
                "width": config.width, "seed": config.seed, "parsing_noise": float(config.parsing_noise)}
        results = job.execute(render_chunk, spec, _chunks(items, config.chunk_size), config, units=len(items),
                              what="render")
    job.timings["render_task_s"] = round(sum(r["seconds"] for r in results), 3)
    with job.step("manifests_s"):
        manifests_written = dataset_root.write_manifests(job.root, build_manifests(job.root, plan))
    renders = sum(r["renders"] for r in results)
    summary = job.summary(
        dataset_root.MANIFEST_FILES, **_summary_fields(config, plan, world["counts"]),
        world=storage.join_uri(job.root, dataset_root.WORLD_JSON),
        files_written=sum(r["files_written"] for r in results), files_skipped=present, renders=renders,
        manifests_written=manifests_written, created=created, chunks=job.chunks,
        renders_per_s=round(renders / job.timings["render_s"], 2) if renders and job.timings["render_s"] > 0 else 0.0,
    )
    if world["counts"]["ground_truth"] < config.ground_truth_pairs:
        summary["warning"] = (f"only {world['counts']['ground_truth']} of {config.ground_truth_pairs} ground-truth "
                              f"pairs are possible with {world['counts']['test_models']} test models x "
                              f"{config.garments - 1} other garments")
        log.warning(summary["warning"])
    return job.finish(summary)


def _summary_fields(config: SyntheticDatasetConfig, plan: WorldPlan, counts: dict[str, int]) -> dict[str, Any]:
    """The summary's description of the world: its settings and counts."""
    return {
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
        "config": dataclasses.asdict(config),
    }
