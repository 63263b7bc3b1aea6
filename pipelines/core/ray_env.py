"""Connecting to Ray and sizing actors the same way on a laptop and on a cluster.

``ensure_ray()`` joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or starts a local Ray.
``model_actor_resources()`` decides per-actor GPUs/CPUs: one GPU per actor when the cluster has GPUs, otherwise a
CPU actor that leaves room for the read/decode/write tasks (on a 2-core machine two actors with one CPU each would
starve them — see docs/operations.md).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Literal

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


def ensure_ray(*, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process; a no-op when already connected."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    if not address:
        # Pin helper processes that call ray.init() themselves (e.g. Ray Train's placement-group cleaner) to this
        # cluster; with several local Rays on one machine they would otherwise refuse to pick one.
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    log.info("ray connected: %s", ray.cluster_resources())


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


@dataclasses.dataclass(frozen=True)
class ActorPlan:
    """How many model actors to start and what each one reserves."""

    size: int
    num_gpus: float
    num_cpus: float
    device: str  # "cuda" or "cpu"


def model_actor_plan(device: Device = "auto", actors: int = 0, cpus_per_actor: float = 0.0) -> ActorPlan:
    """Plan the model actor pool.

    ``actors=0`` means automatic: one actor per GPU, or on a CPU-only cluster one actor per 4 CPUs (at least one),
    each taking half of its CPUs so decode and write tasks keep running beside it.
    """
    gpus = cluster_gpus()
    cpus = cluster_cpus()
    if device == "cuda" and gpus == 0:
        from pipelines.core.errors import StageError

        raise StageError("device=cuda was requested but the Ray cluster reports no GPUs")
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if use_gpu:
        size = actors or gpus
        return ActorPlan(size=size, num_gpus=1.0, num_cpus=cpus_per_actor or 1.0, device="cuda")
    size = actors or max(1, int(cpus // 4))
    per_actor = cpus_per_actor or max(0.25, min(2.0, cpus / (2.0 * size)))
    return ActorPlan(size=size, num_gpus=0.0, num_cpus=per_actor, device="cpu")
