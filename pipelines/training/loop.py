"""The worker side of a training phase: the :class:`PhaseTask` a stage implements and the one loop that runs it.

:func:`worker_loop` is the ``train_loop_per_worker`` of every phase's ``TorchTrainer``; it reads top to bottom as
the steps of a :class:`PhaseWorker`:

1. ``restore`` — build the networks (``PhaseTask.build``), restore ``ray.train.get_checkpoint()`` (networks, step,
   history) or initialise them (``PhaseTask.init_weights``); a checkpoint that is final ends the phase here.
2. ``prepare`` — wrap the trainable networks with ``ray.train.torch.prepare_model`` (DDP; optional SyncBatchNorm
   and channels_last on GPU), build the optimizers (``PhaseTask.optimizers``), the AMP dtype and GradScaler, and
   restore their state from the checkpoint.
3. ``batches`` — ``get_dataset_shard("train").iter_torch_batches``, skipping the samples of steps already trained.
4. ``train_step`` per batch — the published LR schedule for the batch's epoch, autocast (bf16/fp16, GPU only) +
   GradScaler for fp16, ``PhaseTask.step``, step the optimizers active in that epoch, the test-only fault hook;
   then at an epoch end (rank 0 evaluates ``PhaseTask.evaluate`` on the validation sets) and every
   ``checkpoint_every_steps``: ``save_and_report`` — rank 0 writes ``state.pt`` + ``state.json``, every worker
   calls ``ray.train.report`` (same count on all ranks; async upload by default).
5. ``finish`` — a final checkpoint when the stream ended early or the last step was not reported.

The per-run state (networks, optimizers, step, history) lives in the :class:`PhaseWorker`, never on the task: the
task is the stage's configuration, pickled to every worker.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from pipelines.core import storage
from pipelines.training.checkpoints import load_checkpoint_state, write_checkpoint_dir
from pipelines.training.config import PhaseConfig, TrainSettings
from pipelines.training.curves import checkpoint_files, window_means
from pipelines.training.data import EpochPlan
from pipelines.training.schedule import linear_decay_lr

log = logging.getLogger(__name__)

FAULT_DIR = "_fault"


class PhaseTask:
    """What a stage implements per phase. Instances are pickled to the workers (keep them small: URIs, configs).

    ``nets`` is a dict of modules; names in :attr:`trainable` are restored from / saved to checkpoints and wrapped
    in DDP, the others are frozen helpers (the tutor in distillation, the VGG loss).
    """

    name: str = "phase"
    trainable: tuple[str, ...] = ()
    val_sets: tuple[str, ...] = ()

    def __init__(self, config, phase: PhaseConfig) -> None:
        self.config = config  # the stage's config
        self.phase = phase  # this phase's epochs and learning rate

    def build(self, device) -> dict:
        raise NotImplementedError

    def init_weights(self, nets: dict) -> None:
        """Fresh start (no checkpoint): e.g. load the previous phase's weights."""

    def optimizers(self, nets: dict) -> dict:
        """name -> (optimizer, lr scale relative to ``phase.lr``)."""
        raise NotImplementedError

    def active_optimizers(self, epoch: int, names: tuple[str, ...]) -> tuple[str, ...]:
        """The optimizers that step in ``epoch``, out of ``names`` (the keys of :meth:`optimizers`): all of them."""
        return names

    def step(self, nets: dict, batch: Mapping[str, Any], epoch: int, device):
        """Return ``(loss, parts)``: a scalar tensor and a dict of detached scalar tensors."""
        raise NotImplementedError

    def evaluate(self, nets: dict, val_iters: dict, epoch: int, device) -> dict[str, float]:
        return {}


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


def worker_loop(config: dict) -> None:
    """``train_loop_per_worker`` of every phase (the steps are described in the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = PhaseWorker(config["run"])
    state = worker.restore()
    if worker.done:
        log.info("%s: checkpoint at step %d is final; no training", worker.run.name, worker.step)
        return
    worker.prepare(state)
    del state
    for batch in worker.batches():
        worker.train_step(batch)
        if worker.done:
            break
    worker.finish()


class PhaseWorker:
    """One worker's state in one phase of one invocation."""

    def __init__(self, run: PhaseRun) -> None:
        import ray.train
        import ray.train.torch
        import torch

        self.run, self.task, self.plan, self.settings = run, run.task, run.plan, run.settings
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.nets: dict = {}
        self.opts: dict = {}
        self.amp = None
        self.scaler = None
        self.step = 0
        self.history: list[dict] = []
        self.epoch_metrics: list[dict] = []
        self.runs: dict = {}
        self.final_checkpoint = False
        self.last_reported = 0
        self.t0 = time.perf_counter()
        self.progress = None  # rank 0's pipelines.core.progress.StepProgress, from batches() on
        self.last_logged = 0

    @property
    def done(self) -> bool:
        return self.final_checkpoint or self.step >= self.plan.total_steps

    # 1. restore ------------------------------------------------------------------------------------------------------

    def restore(self) -> dict | None:
        """Build the networks and load the latest checkpoint into them (or initialise them); return its state."""
        import ray.train

        self.nets = self.task.build(self.device)
        ckpt = ray.train.get_checkpoint()
        state = load_checkpoint_state(ckpt) if ckpt is not None else None
        if state is None:
            self.task.init_weights(self.nets)
        else:
            for name in self.task.trainable:
                self.nets[name].load_state_dict(state["nets"][name])
        self._restore_progress(state or {})
        return state

    def _restore_progress(self, state: dict) -> None:
        """Step, history and per-invocation resume facts (``runs``: start step, attempts, resumed-from steps)."""
        self.step = int(state.get("step", 0))
        self.history = list(state.get("history", []))
        self.epoch_metrics = list(state.get("epoch_metrics", []))
        self.runs = dict(state.get("runs", {}))
        this = dict(self.runs.get(self.run.run_id, {"start_step": self.step, "attempts": 0}))
        this["attempts"] = int(this["attempts"]) + 1
        this.setdefault("resumed_from_steps", []).append(self.step)
        this["worker_nodes"] = self._worker_nodes()  # this attempt's; a retry may run on other nodes
        self.runs[self.run.run_id] = this
        self.final_checkpoint = bool(state.get("finished"))

    def _worker_nodes(self) -> list[str]:
        """Every rank's Ray node id, in rank order (a collective: all ranks call it, in ``restore``)."""
        import ray
        import torch.distributed as dist

        mine = ray.get_runtime_context().get_node_id()
        if self.world < 2 or not (dist.is_available() and dist.is_initialized()):
            return [mine]
        nodes: list = [None] * self.world
        dist.all_gather_object(nodes, mine)
        return [str(n) for n in nodes]

    # 2. prepare ------------------------------------------------------------------------------------------------------

    def prepare(self, state: dict | None) -> None:
        """DDP-wrap the trainable networks, build optimizers, AMP and GradScaler, restore their state."""
        import torch

        self._wrap_trainable()
        self.opts = self.task.optimizers({k: _unwrap(v) for k, v in self.nets.items()})
        self.amp = _amp_dtype(self.settings, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
        if state:
            for name, (opt, _) in self.opts.items():
                if name in state["optimizers"]:
                    opt.load_state_dict(state["optimizers"][name])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])

    def _wrap_trainable(self) -> None:
        import ray.train.torch
        import torch

        s, cuda = self.settings, self.device.type == "cuda"
        for name in self.task.trainable:
            net = self.nets[name].to(self.device)
            if s.sync_batchnorm and cuda and self.world > 1:
                net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
            if s.channels_last and cuda:
                net = net.to(memory_format=torch.channels_last)
            self.nets[name] = ray.train.torch.prepare_model(net, move_to_device=self.device)
            self.nets[name].train()

    # 3. batches ------------------------------------------------------------------------------------------------------

    def batches(self) -> Iterator:
        """This worker's training batches from its step on: the data starts at ``data_start_step`` (the latest
        checkpoint when the driver planned the phase), so a retry from a later checkpoint skips the steps between."""
        import ray.train

        skip = self.step - self.run.data_start_step
        if skip < 0:
            log.warning("%s: the data starts at step %d but the checkpoint is at step %d; %d steps of samples are "
                        "skipped", self.run.name, self.run.data_start_step, self.step, -skip)
        shard = ray.train.get_dataset_shard("train")
        batches = shard.iter_torch_batches(batch_size=self.run.batch_size, drop_last=True,
                                           prefetch_batches=self.settings.prefetch_batches)
        self.last_reported, self.t0 = self.step, time.perf_counter()
        self._start_progress()
        return itertools.islice(batches, max(0, skip), None)

    def _start_progress(self) -> None:
        from pipelines.core.progress import StepProgress

        self.last_logged = self.step
        self.progress = StepProgress(self.run.name, total_steps=self.plan.total_steps, step=self.step,
                                     samples_per_step=self.run.batch_size * self.world)

    # 4. train step ---------------------------------------------------------------------------------------------------

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch``, its history entry, the fault hook, and a report when one is due."""
        epoch = min(self.plan.epochs - 1, self.step // self.plan.steps_per_epoch)
        self._set_lr(epoch)
        loss, parts = self._forward_backward(batch, epoch)
        for name in self.task.active_optimizers(epoch, tuple(self.opts)):
            self.scaler.step(self.opts[name][0])
        self.scaler.update()
        self.step += 1
        entry = {"step": self.step, "epoch": epoch, "loss": _finite(_float(loss))}
        entry.update({k: _finite(_float(v)) for k, v in parts.items()})
        self.history.append(entry)
        maybe_inject_fault(self.run, self.step, self.rank)
        self._log_if_due(epoch)
        self._report_if_due(entry, epoch)

    def _log_if_due(self, epoch: int) -> None:
        """Rank 0, every ``log_every_steps`` steps and at the phase's last step: one progress line (step / total,
        the main loss terms averaged since the previous line, samples/s, ETA)."""
        every, last = self.settings.log_every_steps, self.step >= self.plan.total_steps
        if self.rank != 0 or self.progress is None or not every or not (last or self.step % every == 0):
            return
        window = self.history[max(0, len(self.history) - (self.step - self.last_logged)):]
        self.last_logged = self.step
        log.info("%s", self.progress.line(self.step, f"{epoch + 1}/{self.plan.epochs}", window_means(window)))

    def _set_lr(self, epoch: int) -> None:
        phase = self.task.phase
        for opt, scale in self.opts.values():
            lr = linear_decay_lr(phase.lr * scale, epoch, phase.niter, phase.niter_decay)
            for group in opt.param_groups:
                group["lr"] = lr

    def _forward_backward(self, batch, epoch: int):
        import torch

        for opt, _ in self.opts.values():
            opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss, parts = self.task.step(self.nets, batch, epoch, self.device)
        self.scaler.scale(loss).backward()
        return loss, parts

    def _report_if_due(self, entry: dict, epoch: int) -> None:
        """At an epoch end (with validation) and every ``checkpoint_every_steps``: checkpoint and report."""
        every = self.settings.checkpoint_every_steps
        epoch_end = self.step % self.plan.steps_per_epoch == 0 or self.step >= self.plan.total_steps
        if not (epoch_end or (every and self.step % every == 0)):
            return
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        metrics = {"loss": entry["loss"], "epoch": epoch,
                   "samples_per_s": round(self.run.batch_size * self.world * (self.step - self.last_reported)
                                          / elapsed, 3)}
        if epoch_end:
            metrics.update(self.validate(epoch))
            recent = [h["loss"] for h in self.history if h["epoch"] == epoch and h["loss"] is not None]
            metrics["epoch_loss"] = sum(recent) / len(recent) if recent else None
            self.epoch_metrics.append(dict(metrics, step=self.step))
        self.save_and_report(metrics, final=self.step >= self.plan.total_steps)
        self.last_reported, self.t0 = self.step, time.perf_counter()

    def validate(self, epoch: int) -> dict:
        """Rank 0 evaluates the unwrapped networks on the (unsplit) validation sets; other ranks return {}."""
        import ray.train
        import torch

        if self.rank != 0 or not self.task.val_sets:
            return {}
        models = {k: _unwrap(v) for k, v in self.nets.items()}
        for m in models.values():
            if m is not None:
                m.eval()
        with torch.no_grad():
            val_iters = {n: ray.train.get_dataset_shard(n) for n in self.task.val_sets}
            metrics = self.task.evaluate(models, val_iters, epoch, self.device)
        for name in self.task.trainable:
            models[name].train()
        return metrics

    def save_and_report(self, metrics: dict, final: bool) -> None:
        """Rank 0 writes the checkpoint; every rank reports (Ray Train needs the same number of reports)."""
        import ray.train

        plan = self.plan
        meta = {"phase": self.run.name, "step": self.step,
                "epoch": min(plan.epochs - 1, max(0, (self.step - 1)) // plan.steps_per_epoch),
                "finished": final, "metrics": metrics, "runs": self.runs, "plan": dataclasses.asdict(plan),
                "plan_key": self.run.plan_key}
        ckpt = None
        if self.rank == 0:
            files = checkpoint_files(self.run.name, self.history)  # loss_curve.png beside state.pt
            ckpt = ray.train.Checkpoint.from_directory(write_checkpoint_dir(self._state(final), meta, files))
        mode = (ray.train.CheckpointUploadMode.ASYNC if self.settings.async_upload
                else ray.train.CheckpointUploadMode.SYNC)
        ray.train.report(dict(metrics, step=self.step, phase=self.run.name), checkpoint=ckpt,
                         checkpoint_dir_name=f"step_{self.step:08d}", checkpoint_upload_mode=mode)

    def _state(self, final: bool) -> dict:
        return {
            "step": self.step, "finished": final, "history": self.history, "epoch_metrics": self.epoch_metrics,
            "runs": self.runs,
            "nets": {n: {k: v.detach().cpu() for k, v in _unwrap(self.nets[n]).state_dict().items()}
                     for n in self.task.trainable},
            "optimizers": {n: o.state_dict() for n, (o, _) in self.opts.items()},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }

    # 5. finish -------------------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """The stream ended early (dropped samples) or the last step was not reported: a final checkpoint."""
        if self.last_reported != self.step or self.step < self.plan.total_steps:
            self.save_and_report({"loss": self.history[-1]["loss"] if self.history else None}, final=True)


def maybe_inject_fault(run: PhaseRun, step: int, rank: int) -> None:
    """TEST-ONLY: SIGKILL this worker after ``train.fault_kill_at_step`` (once per output, see TrainSettings)."""
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
