"""The driver side of a training phase: one Ray Train ``TorchTrainer`` per phase, skipped when already finished.

:func:`run_phase` plans and fits one phase:

- ``RunConfig(name=<phase>, storage_path={output}/ray, storage_filesystem=<pyarrow S3 fs for s3://>,
  failure_config=FailureConfig(max_failures), checkpoint_config=CheckpointConfig(num_to_keep))``,
  ``ScalingConfig(num_workers, use_gpu, resources_per_worker)``, datasets ``train`` (split across workers, equal
  rows) and the validation sets (not split; rank 0 evaluates); the workers run
  :func:`pipelines.training.loop.worker_loop`.
- A phase whose ``{output}/phases/<phase>.json`` says it finished with the same plan is not launched again.

Resume: re-running with the same output restores the latest checkpoint of the phase (Ray Train V2: same
``storage_path`` + ``name``) and continues at its step; a finished phase does no training. Worker failures are
retried ``max_failures`` times from the latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Mapping

from pipelines.core import storage
from pipelines.core.errors import StageError
from pipelines.training.checkpoints import (
    RAY_DIR,
    STATE_JSON,
    finished_phase,
    latest_checkpoint_step,
    load_checkpoint_state,
    phase_record_uri,
    save_phase_weights,
)
from pipelines.training.config import TrainSettings
from pipelines.training.data import EpochPlan
from pipelines.training.loop import PhaseRun, PhaseTask, worker_loop

log = logging.getLogger(__name__)


def plan_key(plan: EpochPlan, extra: Mapping[str, Any]) -> str:
    """A short hash of everything that makes a phase's result: a phase finished under another key runs again."""
    text = json.dumps({"plan": dataclasses.asdict(plan), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_storage(output: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for ``RunConfig``: local absolute path, or bucket/key + pyarrow S3."""
    uri = storage.join_uri(output, RAY_DIR)
    if storage.is_s3(uri):
        fs, path = storage.pyarrow_filesystem(uri)
        return path, fs
    path = storage.local_path(uri)
    os.makedirs(path, exist_ok=True)
    return path, None


def run_phase(*, task: PhaseTask, output: str, plan: EpochPlan, batch_size: int, settings: TrainSettings,
              datasets_fn: Callable[[int], dict], key_extra: Mapping[str, Any]) -> dict:
    """Run (or skip, when already finished) one phase; return its record (also written to ``{output}/phases/``).

    ``datasets_fn(start_step) -> {"train": ds, <val set>: ds, ...}`` builds the datasets lazily, so a finished phase
    decodes nothing and a resumed one starts the sample order at the latest checkpoint.
    """
    key = plan_key(plan, dict(key_extra, batch_size=batch_size, workers=settings.num_workers))
    done = finished_phase(output, task.name, key)
    if done is not None:
        log.info("phase %s already finished at step %s; skipping", task.name, done.get("steps"))
        return dict(done, skipped=True, trained_steps=0, start="skipped", plan_changed=False)
    replaced = start_afresh_if_plan_changed(output, task.name, key)
    start = min(latest_checkpoint_step(output, task.name), plan.total_steps)
    run = PhaseRun(task.name, output, plan, start, batch_size, settings, task, uuid.uuid4().hex[:12], key)
    trainer = _trainer(run, datasets_fn(start))
    started = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line, the run can be re-run to resume
        raise StageError(f"training phase {task.name} failed (re-run with the same --output to resume from its "
                         f"latest checkpoint): {type(exc).__name__}: {' '.join(str(exc).split())[:800]}") from exc
    if result.checkpoint is None:
        raise StageError(f"training phase {task.name} ended without a checkpoint")
    record = _phase_record(run, load_checkpoint_state(result.checkpoint), started, replaced)
    return dict(record, skipped=False)


def start_afresh_if_plan_changed(output: str, phase: str, key: str) -> str | None:
    """The one rule for a changed plan: a phase whose plan key differs from the one its saved state was trained
    under (more epochs, another learning rate, a new tutor version, new data, another size, batch or worker
    count, or an earlier phase that changed) starts afresh. Its Ray Train checkpoints are deleted, so Ray Train
    restores nothing and the phase trains every step of the new plan from its initial weights; the record is
    replaced when the phase finishes. Returns the replaced plan key (None: nothing to replace, resume as usual).

    Why not train only the added steps: the published schedule decays the learning rate linearly over the
    phase's epochs (``niter`` + ``niter_decay``), so the weights after N epochs of a longer plan differ from a
    finished shorter plan; continuing would give a model no plan describes. A same-plan re-run still resumes from
    its latest checkpoint (a crash) or is skipped (finished)."""
    previous = saved_plan_key(output, phase)
    if previous is None or previous == key:
        return None
    log.warning("phase %s: its plan changed (%s -> %s); starting it afresh", phase, previous, key)
    storage.delete_prefix(storage.join_uri(output, RAY_DIR, phase))
    return previous


def saved_plan_key(output: str, phase: str) -> str | None:
    """The plan key of the phase's saved state: its latest Ray Train checkpoint's ``state.json`` (what a resume
    would restore; newer than the record when a changed plan crashed before finishing), else its finished record;
    None when there is none. One that cannot be read is a :class:`StageError` (never guessed: a wrong guess either
    deletes good checkpoints or resumes a wrong plan)."""
    uris = [phase_record_uri(output, phase)]
    step = latest_checkpoint_step(output, phase)
    if step:
        uris.insert(0, storage.join_uri(output, RAY_DIR, phase, f"step_{step:08d}", STATE_JSON))
    for uri in uris:
        try:
            if not storage.exists(uri):
                continue
            key = storage.read_json(uri).get("plan_key")
        except (storage.StorageError, ValueError, AttributeError) as exc:
            raise StageError(f"training phase {phase}: cannot read {uri}: {exc}") from None
        if key:
            return str(key)
    return None


def _trainer(run: PhaseRun, datasets: dict):
    import ray.train
    from ray.train.torch import TorchTrainer

    s = run.settings
    storage_path, fs = run_storage(run.output)
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        worker_loop,
        train_loop_config={"run": run},
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=s.num_to_keep),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def _phase_record(run: PhaseRun, state: dict, started: float, replaced: str | None = None) -> dict:
    """Write the final weights and the record of a finished phase (resume facts of this invocation, loss summary;
    ``start`` is ``fresh`` or ``resumed``, ``plan_changed`` says the phase restarted because its plan changed and
    ``replaced_plan_key`` names the plan it replaced)."""
    save_phase_weights(run.output, run.name, state["nets"])
    steps = int(state["step"])
    this = state.get("runs", {}).get(run.run_id) or {}
    start_step = int(this.get("start_step", steps))
    losses = [h["loss"] for h in state["history"] if h.get("loss") is not None]
    k = max(1, min(5, len(losses) // 4))
    record = {
        "phase": run.name,
        "finished": True,
        "plan_key": run.plan_key,
        "plan": dataclasses.asdict(run.plan),
        "steps": steps,
        "resumed_from_step": start_step,
        "start": "resumed" if start_step > 0 else "fresh",
        "plan_changed": replaced is not None,
        "replaced_plan_key": replaced,
        "attempts": int(this.get("attempts", 0)),
        "attempt_start_steps": list(this.get("resumed_from_steps", [])),
        "worker_nodes": list(this.get("worker_nodes", [])),  # Ray node id per rank, last attempt
        "trained_steps": steps - start_step,
        "loss_first": sum(losses[:k]) / k if losses else None,
        "loss_last": sum(losses[-k:]) / k if losses else None,
        "epoch_metrics": state["epoch_metrics"],
        "final_metrics": state["epoch_metrics"][-1] if state["epoch_metrics"] else {},
        "history": state["history"],
        "wall_s": round(time.time() - started, 3),
        "checkpoint_dir": storage.join_uri(run.output, RAY_DIR, run.name),
    }
    storage.write_json(phase_record_uri(run.output, run.name), record)
    return record
