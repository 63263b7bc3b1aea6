"""The one Ray Train stage skeleton: ``pipelines.stages.train_tutor`` and ``pipelines.stages.distill`` are each a
:class:`TrainingStage` (samples, phases, model file) run by :func:`run_training`::

    validate the config, make its paths absolute (Ray Train workers have a working directory of their own)
    check the VGG weights and stage.prepare() (distill: read the tutor)       — before the lock, fails fast
    with holding(lock_output(output)):   (fenced: see pipelines.core.locking)
        load the dataset root; stage.samples(): ids and URIs only, bad rows become error rows
        for each of stage.tasks(): plan the epochs, run_phase (a TorchTrainer; skipped when already finished)
        stage.finish(): the model file(s) from the last phase's weights
        fold the error rows, write the summary
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from pipelines.core import storage
from pipelines.core.config import to_dict
from pipelines.core.errors import StageError
from pipelines.training import data as tdata
from pipelines.training.checkpoints import load_phase_weights, warp_and_gen
from pipelines.training.common import check_vgg_available
from pipelines.training.config import TrainingConfig, with_absolute_paths
from pipelines.training.curves import write_stage_curve
from pipelines.training.loop import PhaseTask
from pipelines.training.phases import run_phase

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """A validation set: its id/URI table, the fields to decode, and the ``manifest`` of its error rows."""

    table: pa.Table
    fields: tuple[str, ...]
    manifest: str


@dataclass
class Samples:
    """What a stage trains on: training samples (ids/URIs), the fields to decode, and the validation sets."""

    train: list[dict]
    train_fields: tuple[str, ...]
    train_manifest: str
    eval_sets: dict[str, EvalSet]
    unpaired: tdata.DatasetRoot | None = None  # draws the tutor's unpaired garment per (sample, epoch)
    summary: dict[str, Any] = field(default_factory=dict)  # the stage's own summary keys (counts)

    @property
    def val_samples(self) -> int:
        return self.eval_sets["val"].table.num_rows if "val" in self.eval_sets else 0


class TrainingStage:
    """What a training stage supplies to :func:`run_training` (driver side; it is never sent to the workers)."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config

    def prepare(self) -> None:
        """Checks that need no lock and no Ray (e.g. that an input checkpoint loads)."""

    def samples(self, root: tdata.DatasetRoot, errors: list[dict]) -> Samples:
        raise NotImplementedError

    def tasks(self, samples: Samples) -> list[PhaseTask]:
        """The phases, in order; each starts from the weights the one before left."""
        raise NotImplementedError

    def plan_fields(self) -> dict[str, Any]:
        """What, besides data, size, seed and the phase's own settings, makes a phase's result (its plan key)."""
        return {}

    def finish(self, phases: dict[str, dict]) -> dict[str, Any]:
        """Write the model file(s); return the summary keys naming them."""
        raise NotImplementedError


def run_training(config: TrainingConfig, stage_cls: Callable[[TrainingConfig], TrainingStage]) -> dict[str, Any]:
    """Run a training stage end to end (resuming where a previous run on this output stopped); return the summary."""
    from pipelines.core.locking import holding, interrupt_driver, lock_output, new_run_id, write_run_summary
    from pipelines.core.ray_env import ensure_ray

    config.validate()
    config = with_absolute_paths(config)
    stage = stage_cls(config)
    started = time.time()
    check_vgg_available(config.loss)
    stage.prepare()
    run_id = new_run_id()
    lock = lock_output(config.output, run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock,
                       on_lost=interrupt_driver)
    with holding(lock):
        try:
            root = tdata.load_root(config.data)
            errors = list(root.errors)
            samples = stage.samples(root, errors)
            ensure_ray()
            phases = run_phases(stage, samples)
        except tdata.DatasetRootError as exc:
            raise StageError(f"{config.STAGE}: {exc}") from None
        lock.check()  # a run that lost its lock writes no model file and no summary
        summary = {"stage": config.STAGE, "run_id": run_id, "data": config.data, "output": config.output,
                   **stage.finish(phases), **samples.summary,
                   "loss_curve": write_stage_curve(config.output, config.STAGE, phases)}  # beside the model file
        summary.update(_common_summary(config, phases, samples, errors, started))
        write_run_summary(config.output, run_id, summary, lock)
    return summary


def run_phases(stage: TrainingStage, samples: Samples) -> dict[str, dict]:
    """Run the stage's phases in order; return their records by phase name."""
    config = stage.config
    errors_uri = storage.join_uri(config.output, tdata.ERROR_ROWS_DIR)
    common = {"data": config.data, "size": [config.height, config.width], "seed": config.seed, **stage.plan_fields()}
    phases: dict[str, dict] = {}
    after = None  # the previous phase's plan key: a phase re-runs when the one it starts from changed
    for task in stage.tasks(samples):
        plan = tdata.plan_epochs(len(samples.train), config.batch_size, config.train.num_workers, task.phase.epochs,
                                 task.phase.max_steps)
        phases[task.name] = run_phase(
            task=task, output=config.output, plan=plan, batch_size=config.batch_size, settings=config.train,
            datasets_fn=phase_datasets(config, samples, task, plan, errors_uri),
            key_extra=dict(common, phase=to_dict(task.phase), after=after),
        )
        after = phases[task.name].get("plan_key")
    return phases


def phase_datasets(config: TrainingConfig, samples: Samples, task: PhaseTask, plan: tdata.EpochPlan,
                   errors_uri: str) -> Callable[[int], dict]:
    """``start_step -> {"train": ds, <val set>: ds}``: the run's sample order from that step, and the validation sets
    the task evaluates, each behind the CPU decode map."""
    s = config.train
    eval_rows = max(1, config.batch_size)

    def spec(fields: tuple[str, ...], manifest: str) -> tdata.DecodeSpec:
        return tdata.decode_spec(config, fields, errors_uri, manifest)

    train_spec = spec(samples.train_fields, samples.train_manifest)
    block_rows = s.block_rows or min(512, plan.global_batch * 4)

    def make(start_step: int) -> dict:
        table = tdata.epoch_table(samples.train, plan, config.seed, start_step, unpaired_garments=samples.unpaired)
        out = {"train": tdata.build_dataset(table, train_spec, block_rows=block_rows, decode_cpus=s.decode_cpus)}
        for name in task.val_sets:
            ev = samples.eval_sets[name]
            out[name] = tdata.build_dataset(ev.table, spec(ev.fields, ev.manifest), block_rows=eval_rows,
                                            decode_cpus=s.decode_cpus)
        return out
    return make


def final_metrics(phases: dict[str, dict]) -> dict:
    """The last phase's last-epoch metrics."""
    return list(phases.values())[-1].get("final_metrics", {})


@dataclass
class SavedModel:
    uri: str
    version: str
    warp: dict
    gen: dict


def save_model(config: TrainingConfig, phases: dict[str, dict], net: str, *, file: str, kind: str,
               meta: dict[str, Any]) -> SavedModel:
    """Network ``net`` of the last phase (children ``warp`` and ``gen``) as a project-format checkpoint
    ``{output}/{file}`` (``pfafn.checkpoint``); its meta holds the stage, data, size and final metrics too."""
    import io

    from pfafn.checkpoint import save_checkpoint

    warp, gen = warp_and_gen(load_phase_weights(config.output, list(phases)[-1])[net])
    uri = storage.join_uri(config.output, file)
    meta = {"stage": config.STAGE, "data": config.data, "height": config.height, "width": config.width, **meta,
            "metrics": final_metrics(phases)}
    buf = io.BytesIO()  # serialised whole first, then one atomic storage write: a failure leaves the old file
    version = save_checkpoint(buf, warp=warp, gen=gen, kind=kind, meta=meta)
    storage.write_bytes(uri, buf.getvalue())
    return SavedModel(uri, version, warp, gen)


def _common_summary(config: TrainingConfig, phases: dict[str, dict], samples: Samples, errors: list[dict],
                    started: float) -> dict[str, Any]:
    """The summary keys every training stage writes (after folding the error rows)."""
    n_errors = tdata.collect_error_rows(config.output, errors)
    errors_uri = storage.join_uri(config.output, tdata.ERRORS_FILE)
    if n_errors:
        log.warning("%s: %d samples/rows dropped; see %s", config.STAGE, n_errors, errors_uri)
    s = config.train
    return {
        "steps": {k: v["steps"] for k, v in phases.items()},
        "trained_steps": sum(v.get("trained_steps", 0) for v in phases.values()),
        "skipped": all(v.get("skipped") for v in phases.values()),
        "train_samples": len(samples.train),
        "val_samples": samples.val_samples,
        "error_rows": n_errors,
        "errors": errors_uri if n_errors else None,
        "final_metrics": final_metrics(phases),
        "phases": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in phases.items()},
        "num_workers": s.num_workers,
        # distinct Ray node ids the phases' workers ran on (each phase record has them per rank)
        "worker_nodes": sorted({n for v in phases.values() for n in v.get("worker_nodes", [])}),
        "use_gpu": s.use_gpu,
        "finished_at": utc_now(),
        "wall_s": round(time.time() - started, 3),
    }


def utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
