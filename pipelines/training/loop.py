"""The phase runner shared by the training stages: a Ray Train ``TorchTrainer`` per phase, one generic worker loop.

A stage (``pipelines.train_tutor``, ``pipelines.distill``) describes each training phase as a :class:`PhaseTask`
(networks, optimizers, one training step, evaluation); :func:`run_phase` runs it:

driver
    ``RunConfig(name=<phase>, storage_path={output}/ray, storage_filesystem=<pyarrow S3 fs for s3://>,
    failure_config=FailureConfig(max_failures), checkpoint_config=CheckpointConfig(num_to_keep))``,
    ``ScalingConfig(num_workers, use_gpu, resources_per_worker)``, datasets ``train`` (split across workers, equal
    rows) and the validation sets (not split; rank 0 evaluates). A phase whose ``{output}/phases/<phase>.json``
    says it finished with the same plan is not launched again.
worker
    builds the networks, restores ``ray.train.get_checkpoint()`` (networks, optimizers, GradScaler, step, history)
    or initialises them (``PhaseTask.init_weights``), wraps the trainable ones with ``ray.train.torch.prepare_model``
    (DDP; optional SyncBatchNorm on GPU), and iterates ``get_dataset_shard("train").iter_torch_batches``. Per step:
    the published LR schedule per epoch, autocast (bf16/fp16, GPU only) + GradScaler for fp16, the active
    optimizers. Every ``checkpoint_every_steps`` and at each epoch end rank 0 writes ``state.pt`` + ``state.json``
    and every worker calls ``ray.train.report`` (same count on all ranks; async upload by default); at an epoch end
    rank 0 first evaluates on the validation sets and the metrics go with the checkpoint.

Resume: re-running with the same output restores the latest checkpoint of the phase (Ray Train V2: same
``storage_path`` + ``name``) and continues at its step; a finished phase does no training. Worker failures are
retried ``max_failures`` times from the latest checkpoint. The test-only fault hook (``fault_kill_at_step``) kills
one worker process once, guarded by a marker file under ``{output}/_fault/``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from pipelines import storage
from pipelines.errors import StageError
from pipelines.training.data import EpochPlan
from pipelines.training.schedule import linear_decay_lr

log = logging.getLogger(__name__)

PHASES_DIR = "phases"
RAY_DIR = "ray"
FAULT_DIR = "_fault"
STATE_FILE = "state.pt"
STATE_JSON = "state.json"


@dataclass
class TrainSettings:
    """Ray Train and loop settings shared by every phase of a stage (config key ``train``)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0
    checkpoint_every_steps: int = 0  # 0: only at epoch ends (and the last step)
    num_to_keep: int = 2
    async_upload: bool = True
    precision: str = "auto"  # auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16 | fp16
    channels_last: bool = False
    sync_batchnorm: bool = False
    torch_threads: int = 0  # 0: leave torch's default
    prefetch_batches: int = 1
    decode_cpus: float = 1.0
    block_rows: int = 0  # rows per Ray Data block of the id table (0: 4 global batches, at most 512)
    # TEST-ONLY fault injection: kill worker ``fault_kill_rank`` of phase ``fault_phase`` right after global step
    # ``fault_kill_at_step`` (once per output: a marker under {output}/_fault/ stops the retry from killing again).
    fault_kill_at_step: int = 0
    fault_kill_rank: int = 1
    fault_phase: str = ""

    def validate(self) -> None:
        if self.num_workers < 1:
            raise StageError("train.num_workers must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise StageError(f"train.precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        if self.max_failures < -1:
            raise StageError("train.max_failures must be >= -1 (-1 = retry forever)")


@dataclass
class PhaseConfig:
    """One training phase: ``niter`` epochs at ``lr`` then ``niter_decay`` epochs of linear decay."""

    niter: int = 50
    niter_decay: int = 50
    lr: float = 5e-5
    max_steps: int = 0  # 0: all epochs; >0 caps the phase (smoke runs)

    @property
    def epochs(self) -> int:
        return self.niter + self.niter_decay


class PhaseTask:
    """What a stage implements per phase. Instances are pickled to the workers (keep them small: URIs, configs).

    ``nets`` is a dict of modules; names in :attr:`trainable` are restored from / saved to checkpoints and wrapped
    in DDP, the others are frozen helpers (the tutor in distillation, the VGG loss).
    """

    name: str = "phase"
    trainable: tuple[str, ...] = ()
    val_sets: tuple[str, ...] = ()
    phase: PhaseConfig

    def build(self, device) -> dict:
        raise NotImplementedError

    def init_weights(self, nets: dict) -> None:
        """Fresh start (no checkpoint): e.g. load the previous phase's weights."""

    def optimizers(self, nets: dict) -> dict:
        """name -> (optimizer, lr scale relative to ``phase.lr``)."""
        raise NotImplementedError

    def active_optimizers(self, epoch: int) -> tuple[str, ...]:
        return tuple(self._opt_names)

    def step(self, nets: dict, batch: Mapping[str, Any], epoch: int, device):
        """Return ``(loss, parts)``: a scalar tensor and a dict of detached scalar tensors."""
        raise NotImplementedError

    def evaluate(self, nets: dict, val_iters: dict, epoch: int, device) -> dict[str, float]:
        return {}

    # set by the loop
    _opt_names: tuple[str, ...] = ()


@dataclass
class PhaseRun:
    """Everything a worker needs for one phase (pickled into ``train_loop_config``)."""

    name: str
    output: str
    plan: EpochPlan
    data_start_step: int
    batch_size: int
    settings: TrainSettings
    task: PhaseTask
    run_id: str
    plan_key: str


def plan_key(plan: EpochPlan, extra: Mapping[str, Any]) -> str:
    text = json.dumps({"plan": dataclasses.asdict(plan), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Worker side


def _unwrap(module):
    return getattr(module, "module", module)


def _amp_dtype(settings: TrainSettings, device):
    import torch

    if device.type != "cuda":
        return None
    if settings.precision == "fp16":
        return torch.float16
    if settings.precision == "bf16":
        return torch.bfloat16
    if settings.precision == "auto" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _float(x) -> float:
    return float(x.detach().float().item()) if hasattr(x, "detach") else float(x)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _write_checkpoint_dir(state: dict, meta: dict) -> str:
    import torch

    tmp = tempfile.mkdtemp(prefix="pfafn-ckpt-")
    torch.save(state, os.path.join(tmp, STATE_FILE))
    with open(os.path.join(tmp, STATE_JSON), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, sort_keys=True, default=str)
    return tmp


def load_checkpoint_state(ckpt) -> dict:
    """``state.pt`` of a Ray Train checkpoint, read with ``weights_only=True``.

    Not ``Checkpoint.as_directory()``: for a remote (S3) checkpoint it downloads into one temporary directory shared
    by every process on the node, and a worker that arrives after another one finished downloading downloads again
    into the same files while the first is still reading them ("PytorchStreamReader failed reading file ...", seen
    on resume with two workers on one node; ray-project/ray#48726). Each process downloads into its own directory
    instead; a local checkpoint is read in place."""
    import pyarrow.fs
    import torch

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        return torch.load(os.path.join(ckpt.path, STATE_FILE), map_location="cpu", weights_only=True)
    tmp = tempfile.mkdtemp(prefix="pfafn-resume-")
    try:
        ckpt.to_directory(tmp)
        return torch.load(os.path.join(tmp, STATE_FILE), map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _maybe_inject_fault(run: PhaseRun, step: int, rank: int) -> None:
    s = run.settings
    if not s.fault_kill_at_step or step != s.fault_kill_at_step or rank != s.fault_kill_rank:
        return
    if s.fault_phase and s.fault_phase != run.name:
        return
    marker = storage.join_uri(run.output, FAULT_DIR, f"{run.name}.killed")
    if not storage.write_bytes_if_absent(marker, f"killed rank {rank} after step {step}\n".encode()):
        return
    import ray.train

    try:  # make the kill land after the latest checkpoint is committed, so the resume point is deterministic
        from ray.train import CheckpointConsistencyMode

        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED, timeout_s=60)
    except Exception as exc:  # noqa: BLE001
        log.warning("fault hook: could not wait for committed checkpoints: %s", exc)
    log.warning("TEST FAULT HOOK: killing worker rank %d (pid %d) after step %d of %s", rank, os.getpid(), step,
                run.name)
    os.kill(os.getpid(), signal.SIGKILL)


def worker_loop(config: dict) -> None:
    """``train_loop_per_worker`` of every phase."""
    import ray.train
    import ray.train.torch
    import torch

    run: PhaseRun = config["run"]
    task, plan, s = run.task, run.plan, run.settings
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    nets = task.build(device)
    state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state = load_checkpoint_state(ckpt)
        for name in task.trainable:
            nets[name].load_state_dict(state["nets"][name])
    else:
        task.init_weights(nets)

    step = int(state["step"]) if state else 0
    history: list = list(state["history"]) if state else []
    epoch_metrics: list = list(state["epoch_metrics"]) if state else []
    runs: dict = dict(state.get("runs", {})) if state else {}
    this_run = dict(runs.get(run.run_id, {"start_step": step, "attempts": 0}))
    this_run["attempts"] = int(this_run["attempts"]) + 1
    this_run.setdefault("resumed_from_steps", []).append(step)
    runs[run.run_id] = this_run
    finished = bool(state and state.get("finished")) or step >= plan.total_steps
    if finished:
        log.info("%s: checkpoint at step %d is final; no training", run.name, step)
        return

    for name in task.trainable:
        net = nets[name].to(device)
        if s.sync_batchnorm and device.type == "cuda" and world > 1:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if s.channels_last and device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        nets[name] = ray.train.torch.prepare_model(net, move_to_device=device)
        nets[name].train()
    opts = task.optimizers({k: _unwrap(v) for k, v in nets.items()})
    task._opt_names = tuple(opts)
    amp = _amp_dtype(s, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    if state:
        for name, (opt, _) in opts.items():
            if name in state["optimizers"]:
                opt.load_state_dict(state["optimizers"][name])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    def save_and_report(metrics: dict, final: bool) -> None:
        ckpt_obj = None
        meta = {"phase": run.name, "step": step, "epoch": min(plan.epochs - 1, max(0, (step - 1)) // plan.steps_per_epoch),
                "finished": final, "metrics": metrics, "runs": runs, "plan": dataclasses.asdict(plan),
                "plan_key": run.plan_key}
        if rank == 0:
            payload = {
                "step": step, "finished": final, "history": history, "epoch_metrics": epoch_metrics, "runs": runs,
                "nets": {n: {k: v.detach().cpu() for k, v in _unwrap(nets[n]).state_dict().items()}
                         for n in task.trainable},
                "optimizers": {n: o.state_dict() for n, (o, _) in opts.items()},
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            }
            ckpt_obj = ray.train.Checkpoint.from_directory(_write_checkpoint_dir(payload, meta))
        mode = ray.train.CheckpointUploadMode.ASYNC if s.async_upload else ray.train.CheckpointUploadMode.SYNC
        ray.train.report(dict(metrics, step=step, phase=run.name), checkpoint=ckpt_obj,
                         checkpoint_dir_name=f"step_{step:08d}", checkpoint_upload_mode=mode)

    skip = step - run.data_start_step
    if skip < 0:
        log.warning("%s: the data starts at step %d but the checkpoint is at step %d; %d steps of samples are skipped",
                    run.name, run.data_start_step, step, -skip)
    shard = ray.train.get_dataset_shard("train")
    last_reported = step
    t0 = time.perf_counter()
    for batch in shard.iter_torch_batches(batch_size=run.batch_size, drop_last=True,
                                          prefetch_batches=s.prefetch_batches):
        if skip > 0:
            skip -= 1
            continue
        epoch = min(plan.epochs - 1, step // plan.steps_per_epoch)
        for name, (opt, scale) in opts.items():
            lr = linear_decay_lr(task.phase.lr * scale, epoch, task.phase.niter, task.phase.niter_decay)
            for group in opt.param_groups:
                group["lr"] = lr
        active = task.active_optimizers(epoch)
        for opt, _ in opts.values():
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, parts = task.step(nets, batch, epoch, device)
        scaler.scale(loss).backward()
        for name in active:
            scaler.step(opts[name][0])
        scaler.update()
        step += 1
        entry = {"step": step, "epoch": epoch, "loss": _finite(_float(loss))}
        entry.update({k: _finite(_float(v)) for k, v in parts.items()})
        history.append(entry)
        _maybe_inject_fault(run, step, rank)
        epoch_end = step % plan.steps_per_epoch == 0 or step >= plan.total_steps
        periodic = s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0
        if epoch_end or periodic:
            metrics = {"loss": entry["loss"], "epoch": epoch,
                       "samples_per_s": round(run.batch_size * world * (step - last_reported)
                                              / max(1e-9, time.perf_counter() - t0), 3)}
            if epoch_end and rank == 0 and task.val_sets:
                models = {k: _unwrap(v) for k, v in nets.items()}
                for m in models.values():
                    if m is not None:
                        m.eval()
                with torch.no_grad():
                    val = task.evaluate(models, {n: ray.train.get_dataset_shard(n) for n in task.val_sets},
                                        epoch, device)
                for name in task.trainable:
                    models[name].train()
                metrics.update(val)
            if epoch_end:
                recent = [h["loss"] for h in history if h["epoch"] == epoch and h["loss"] is not None]
                metrics["epoch_loss"] = sum(recent) / len(recent) if recent else None
                epoch_metrics.append(dict(metrics, step=step))
            save_and_report(metrics, final=step >= plan.total_steps)
            last_reported, t0 = step, time.perf_counter()
        if step >= plan.total_steps:
            break
    if last_reported != step or step < plan.total_steps:
        # The stream ended early (dropped samples) or the last step was not reported: final checkpoint.
        save_and_report({"loss": history[-1]["loss"] if history else None}, final=True)


# ----------------------------------------------------------------------------------------------------------------------
# Driver side


def run_storage(output: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for ``RunConfig``: local absolute path, or bucket/key + pyarrow S3."""
    uri = storage.join_uri(output, RAY_DIR)
    if storage.is_s3(uri):
        fs, path = storage.pyarrow_filesystem(uri)
        return path, fs
    path = storage.local_path(uri)
    os.makedirs(path, exist_ok=True)
    return path, None


def latest_checkpoint_step(output: str, phase: str) -> int:
    """Highest step among the phase's persisted checkpoints (``step_XXXXXXXX/state.json``), 0 when none."""
    prefix = storage.join_uri(output, RAY_DIR, phase)
    try:
        files = storage.list_files(prefix, suffix=STATE_JSON)
    except storage.StorageError:
        return 0
    best = 0
    for uri in files:
        parent = storage.basename(storage.parent_uri(uri))
        if parent.startswith("step_"):
            try:
                best = max(best, int(parent[5:]))
            except ValueError:
                continue
    return best


def phase_record_uri(output: str, phase: str) -> str:
    return storage.join_uri(output, PHASES_DIR, f"{phase}.json")


def phase_weights_uri(output: str, phase: str) -> str:
    return storage.join_uri(output, PHASES_DIR, f"{phase}.pt")


def finished_phase(output: str, phase: str, key: str) -> dict | None:
    uri = phase_record_uri(output, phase)
    if not storage.exists(uri) or not storage.exists(phase_weights_uri(output, phase)):
        return None
    record = storage.read_json(uri)
    if record.get("finished") and record.get("plan_key") == key:
        return record
    return None


def load_phase_weights(output: str, phase: str) -> dict:
    """The state dicts a finished phase left (``{net name: state_dict}``)."""
    import io

    import torch

    data = storage.read_bytes(phase_weights_uri(output, phase))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def run_phase(*, task: PhaseTask, output: str, plan: EpochPlan, batch_size: int, settings: TrainSettings,
              datasets_fn, key_extra: Mapping[str, Any]) -> dict:
    """Run (or skip, when already finished) one phase; return its record (also written to ``{output}/phases/``).

    ``datasets_fn(start_step) -> {"train": ds, <val set>: ds, ...}`` builds the datasets lazily, so a finished phase
    decodes nothing and a resumed one starts the sample order at the latest checkpoint.
    """
    import io

    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    key = plan_key(plan, dict(key_extra, batch_size=batch_size, workers=settings.num_workers))
    done = finished_phase(output, task.name, key)
    if done is not None:
        log.info("phase %s already finished at step %s; skipping", task.name, done.get("steps"))
        return dict(done, skipped=True, trained_steps=0)

    start = min(latest_checkpoint_step(output, task.name), plan.total_steps)
    datasets = datasets_fn(start)
    storage_path, fs = run_storage(output)
    run = PhaseRun(task.name, output, plan, start, batch_size, settings, task, uuid.uuid4().hex[:12], key)
    resources = {"CPU": settings.cpus_per_worker}
    if settings.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"run": run},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=task.name,
            storage_path=storage_path,
            storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.num_to_keep),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    started = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line, the run can be re-run to resume
        raise StageError(f"training phase {task.name} failed (re-run with the same --output to resume from its "
                         f"latest checkpoint): {type(exc).__name__}: {' '.join(str(exc).split())[:800]}") from exc
    if result.checkpoint is None:
        raise StageError(f"training phase {task.name} ended without a checkpoint")
    state = load_checkpoint_state(result.checkpoint)
    this = state.get("runs", {}).get(run.run_id)
    buf = io.BytesIO()
    torch.save(state["nets"], buf)
    storage.write_bytes(phase_weights_uri(output, task.name), buf.getvalue())
    history = state["history"]
    losses = [h["loss"] for h in history if h.get("loss") is not None]
    k = max(1, min(5, len(losses) // 4))
    record = {
        "phase": task.name,
        "finished": True,
        "plan_key": key,
        "plan": dataclasses.asdict(plan),
        "steps": int(state["step"]),
        "resumed_from_step": int(this["start_step"]) if this else int(state["step"]),
        "attempts": int(this["attempts"]) if this else 0,
        "attempt_start_steps": list(this.get("resumed_from_steps", [])) if this else [],
        "trained_steps": int(state["step"]) - (int(this["start_step"]) if this else int(state["step"])),
        "loss_first": sum(losses[:k]) / k if losses else None,
        "loss_last": sum(losses[-k:]) / k if losses else None,
        "epoch_metrics": state["epoch_metrics"],
        "final_metrics": state["epoch_metrics"][-1] if state["epoch_metrics"] else {},
        "history": history,
        "wall_s": round(time.time() - started, 3),
        "checkpoint_dir": storage.join_uri(output, RAY_DIR, task.name),
    }
    storage.write_json(phase_record_uri(output, task.name), record)
    return dict(record, skipped=False)
