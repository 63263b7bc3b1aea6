"""Stage 0: train the parser-based tutor (PB-AFN) with Ray Train.

Pipeline (reads top to bottom)::

    dataset root manifests ──► training samples (train pairs of train-split models) + paired validation samples
        ──► phase 1 "tutor_warp": AFWM(45) with the warp loss (§4.4)                     ─┐ Ray Train TorchTrainer,
        ──► phase 2 "tutor_e2e": TutorModel (AFWM(45) from phase 1 + ResUnetGenerator(8, 4))│ DDP, checkpoints,
            with 0.5·L_warp + gen_PB (§4.5); warp Adam at 0.2·lr, gen Adam at lr            ─┘ resume, eval per epoch
        ──► {output}/tutor.pt (project format, kind "tutor") + {output}/summary.json

Each sample is decoded by CPU tasks (person, parsing, DensePose, keypoints, worn garment + mask, and an unpaired
garment chosen per (sample, epoch)); the 45-channel person representation and the generator inputs are built on
the worker with :mod:`pfafn.person`. See ``docs/training.md``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines import storage
from pipelines.config import to_dict
from pipelines.errors import StageError
from pipelines.training import data as tdata
from pipelines.training.common import (
    CPU_WIDTHS,
    TINY_WIDTHS,
    LossConfig,
    MetricSums,
    WidthsConfig,
    build_vgg,
    check_vgg_available,
    adam,
    e2e_optimizers,
    require,
    run_summary,
    with_absolute_paths,
)
from pipelines.training.loop import PhaseConfig, PhaseTask, TrainSettings, load_phase_weights, run_phase

log = logging.getLogger(__name__)

TUTOR_FILE = "tutor.pt"
WARP_PHASE = "tutor_warp"
E2E_PHASE = "tutor_e2e"


@dataclass
class TutorConfig:
    """Config of ``jobs.train_tutor``; every field is documented in docs/training.md and jobs/configs/train_tutor.yaml."""

    data: str = ""
    output: str = ""
    height: int = 256
    width: int = 192
    batch_size: int = 4
    seed: int = 0
    widths: WidthsConfig = field(default_factory=WidthsConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(vgg="torchvision"))
    warp: PhaseConfig = field(default_factory=lambda: PhaseConfig(50, 50, 5e-5))
    e2e: PhaseConfig = field(default_factory=lambda: PhaseConfig(50, 50, 5e-5))
    warp_lr_scale: float = 0.2  # e2e warp optimizer lr relative to e2e.lr (published 0.2)
    decode_unpaired: bool = True  # emit the per-(sample, epoch) unpaired garment (reference loader's color_un)
    val_samples: int = 64
    val_fraction: float = 0.1
    preview: bool = True
    train: TrainSettings = field(default_factory=TrainSettings)
    lock_ttl_s: float = 600.0
    force_unlock: bool = False

    def validate(self) -> None:
        require(self.data, "data", "train_tutor")
        require(self.output, "output", "train_tutor")
        if self.height % 32 or self.width % 32 or self.height < 64 or self.width < 64:
            raise StageError(f"train_tutor: height and width must be multiples of 32 and >= 64, got "
                             f"{self.height}x{self.width}")
        if self.batch_size < 1:
            raise StageError("train_tutor: batch_size must be >= 1")
        for name in ("warp", "e2e"):
            if getattr(self, name).epochs < 1:
                raise StageError(f"train_tutor: {name}.niter + {name}.niter_decay must be >= 1")
        self.train.validate()


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "height": 64, "width": 64, "batch_size": 2, "widths": TINY_WIDTHS, "loss": {"vgg": "off"},
        "warp": {"niter": 6, "niter_decay": 2, "lr": 1e-3}, "e2e": {"niter": 1, "niter_decay": 1, "lr": 1e-3},
        "val_samples": 4, "preview": False,
        "train": {"num_workers": 2, "cpus_per_worker": 0.25, "decode_cpus": 0.25, "torch_threads": 1},
    },
    "cpu": {
        "height": 128, "width": 96, "batch_size": 4, "widths": CPU_WIDTHS, "loss": {"vgg": "off"},
        "warp": {"niter": 4, "niter_decay": 4, "lr": 2e-4}, "e2e": {"niter": 4, "niter_decay": 4, "lr": 2e-4},
        "val_samples": 16,
        "train": {"num_workers": 1, "cpus_per_worker": 1.0, "decode_cpus": 0.5},
    },
    "published": {
        "height": 256, "width": 192, "batch_size": 4, "loss": {"vgg": "torchvision"},
        "widths": dataclasses.asdict(WidthsConfig()),
        "warp": {"niter": 50, "niter_decay": 50, "lr": 5e-5}, "e2e": {"niter": 50, "niter_decay": 50, "lr": 5e-5},
        "val_samples": 256,
        "train": {"num_workers": 8, "use_gpu": True, "sync_batchnorm": True, "cpus_per_worker": 4.0,
                  "decode_cpus": 1.0, "precision": "fp32"},
    },
}

TRAIN_FIELDS = ("person", "keypoints", "parsing", "densepose", "garment", "garment_mask")
UNPAIRED_FIELDS = ("unpaired", "unpaired_mask")


# ----------------------------------------------------------------------------------------------------------------------
# Worker-side tensors


def tutor_inputs(batch, device) -> dict:
    """Model tensors of a decoded tutor batch (built on the worker)."""
    from pfafn.person import person_clothes, tutor_warp_input

    person = tdata.image_tensor(batch["person"], device)
    parsing = tdata.label_tensor(batch["parsing"], device)
    densepose = tdata.label_tensor(batch["densepose"], device)
    keypoints = batch["keypoints"].to(device)
    garment = tdata.image_tensor(batch["garment"], device)
    mask = tdata.mask_tensor(batch["garment_mask"], device)
    binary = (mask > 0.5).float()
    rep = tutor_warp_input(parsing, densepose, keypoints)
    target, target_mask = person_clothes(person, parsing)
    out = {"person": person, "parsing": parsing, "densepose": densepose, "rep": rep, "garment": garment,
           "mask": mask, "binary": binary, "target": target, "target_mask": target_mask}
    if "unpaired" in batch:
        out["unpaired"] = tdata.image_tensor(batch["unpaired"], device)
        out["unpaired_mask"] = tdata.mask_tensor(batch["unpaired_mask"], device)
    return out


class TutorWarpTask(PhaseTask):
    """Phase 1, PB warp: AFWM(45) trained with L_warp."""

    name = WARP_PHASE
    trainable = ("warp",)
    val_sets = ("val",)

    def __init__(self, config: TutorConfig) -> None:
        self.config = config
        self.phase = config.warp

    def build(self, device) -> dict:
        import torch

        from pfafn.nn import AFWM

        torch.manual_seed(self.config.seed)
        return {"warp": AFWM(45, self.config.widths.build()), "vgg": build_vgg(self.config.loss, device)}

    def optimizers(self, nets) -> dict:
        return {"warp": (adam(nets["warp"].parameters(), self.phase.lr), 1.0)}

    def step(self, nets, batch, epoch, device):
        from pfafn.losses import warp_loss

        x = tutor_inputs(batch, device)
        out = nets["warp"](x["rep"], x["garment"] * x["binary"], x["binary"], intermediates=True)
        return warp_loss(out, x["target"], x["target_mask"], nets["vgg"])

    def evaluate(self, nets, val_iters, epoch, device) -> dict:
        sums = MetricSums("val_warp")
        l1, n = 0.0, 0
        for batch in val_iters["val"].iter_torch_batches(batch_size=self.config.batch_size):
            x = tutor_inputs(batch, device)
            out = nets["warp"](x["rep"], x["garment"] * x["binary"], x["binary"])
            warped = out.warped_garment * x["target_mask"]
            sums.add(warped, x["target"])
            l1 += float((warped - x["target"]).abs().mean(dim=(1, 2, 3)).sum())
            n += warped.shape[0]
        res = sums.result()
        if n:
            res["val_warp_l1"] = l1 / n
        return res


class TutorE2ETask(PhaseTask):
    """Phase 2, PB end-to-end: TutorModel with 0.5·L_warp + gen_PB; the warp starts from phase 1."""

    name = E2E_PHASE
    trainable = ("tutor",)
    val_sets = ("val",)

    def __init__(self, config: TutorConfig) -> None:
        self.config = config
        self.phase = config.e2e

    def build(self, device) -> dict:
        import torch

        from pfafn.tutor import TutorModel

        torch.manual_seed(self.config.seed + 1)
        return {"tutor": TutorModel(self.config.widths.build()), "vgg": build_vgg(self.config.loss, device)}

    def init_weights(self, nets) -> None:
        nets["tutor"].warp.load_state_dict(load_phase_weights(self.config.output, WARP_PHASE)["warp"])

    def optimizers(self, nets) -> dict:
        return e2e_optimizers(nets["tutor"], self.phase.lr, self.config.warp_lr_scale)

    def step(self, nets, batch, epoch, device):
        from pfafn.losses import parser_based_gen_loss, warp_loss

        x = tutor_inputs(batch, device)
        out = nets["tutor"](x["rep"], x["person"], x["parsing"], x["densepose"], x["garment"], x["mask"],
                            cloth_region="parsing", composite_region=x["target_mask"], intermediates=True)
        lw, pw = warp_loss(out.warp, x["target"], x["target_mask"], nets["vgg"])
        lg, pg = parser_based_gen_loss(out.tryon, out.rendered, out.composite_mask, x["person"], nets["vgg"])
        parts = {f"warp_{k}": v for k, v in pw.items()}
        parts.update({f"gen_{k}": v for k, v in pg.items()})
        return 0.5 * lw + lg, parts

    def evaluate(self, nets, val_iters, epoch, device) -> dict:
        sums = MetricSums("val")
        preview = None
        for batch in val_iters["val"].iter_torch_batches(batch_size=self.config.batch_size):
            x = tutor_inputs(batch, device)
            out = nets["tutor"](x["rep"], x["person"], x["parsing"], x["densepose"], x["garment"], x["mask"],
                                cloth_region="parsing")
            sums.add(out.tryon, x["person"])
            if preview is None and "unpaired" in x:
                fake = nets["tutor"](x["rep"], x["person"], x["parsing"], x["densepose"], x["unpaired"],
                                     x["unpaired_mask"], cloth_region="warped")
                preview = (x["person"], x["unpaired"], fake.tryon)
        if preview is not None and self.config.preview:
            _write_preview(self.config.output, f"{self.name}_epoch{epoch:03d}.png", preview)
        return sums.result()


def _write_preview(output: str, name: str, images) -> None:
    """A contact sheet (rows: person | garment | fake) of the first validation batch (rank 0)."""
    import numpy as np

    from pfafn.imageio import encode_png, from_model_tensor

    cols = [np.concatenate([from_model_tensor(t[i].detach().cpu()) for t in images], axis=1)
            for i in range(min(4, images[0].shape[0]))]
    sheet = np.concatenate(cols, axis=0)
    try:
        storage.write_bytes(storage.join_uri(output, "previews", name), encode_png(sheet))
    except storage.StorageError as exc:
        log.warning("preview not written: %s", exc)


# ----------------------------------------------------------------------------------------------------------------------
# Driver


def _datasets(config: TutorConfig, root, train, val, plan, errors_uri):
    s = config.train
    block_rows = s.block_rows or min(512, plan.global_batch * 4)
    fields = TRAIN_FIELDS + (UNPAIRED_FIELDS if config.decode_unpaired else ())
    train_spec = tdata.DecodeSpec(config.height, config.width, fields, errors_uri, "train_pairs")
    val_spec = tdata.DecodeSpec(config.height, config.width, TRAIN_FIELDS + UNPAIRED_FIELDS, errors_uri, "validation")
    val_table = tdata.epoch_table(val, tdata.EpochPlan(len(val), 1, len(val), 1, len(val)), config.seed,
                                  unpaired_garments=root) if val else tdata.sample_table(val)

    def make(start_step: int) -> dict:
        table = tdata.epoch_table(train, plan, config.seed, start_step,
                                  unpaired_garments=root if config.decode_unpaired else None)
        return {"train": tdata.build_dataset(table, train_spec, block_rows=block_rows, decode_cpus=s.decode_cpus),
                "val": tdata.build_dataset(val_table, val_spec, block_rows=max(1, config.batch_size),
                                           decode_cpus=s.decode_cpus)}
    return make


def run(config: TutorConfig) -> dict[str, Any]:
    """Train the tutor (both phases, resuming where a previous run on this output stopped); return the summary."""
    from pfafn.checkpoint import save_checkpoint
    from pipelines.locking import lock_output, new_run_id, write_run_summary
    from pipelines.ray_env import ensure_ray

    config.validate()
    config = with_absolute_paths(config, "data", "output")
    started = time.time()
    check_vgg_available(config.loss)
    run_id = new_run_id()
    lock = lock_output(config.output, run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock)
    try:
        try:
            root = tdata.load_root(config.data)
        except tdata.DatasetRootError as exc:
            raise StageError(f"train_tutor: {exc}") from None
        errors = list(root.errors)
        train, val = tdata.split_train_val(root, config.val_samples, config.val_fraction, config.seed, errors)
        if not train:
            raise StageError(f"train_tutor: {config.data} has no usable training pairs")
        ensure_ray()
        s = config.train
        errors_uri = storage.join_uri(config.output, tdata.ERROR_ROWS_DIR)
        phases = {}
        key_extra = {"data": config.data, "size": [config.height, config.width], "seed": config.seed,
                     "widths": to_dict(config.widths)}
        for task, phase in ((TutorWarpTask(config), config.warp), (TutorE2ETask(config), config.e2e)):
            try:
                plan = tdata.plan_epochs(len(train), config.batch_size, s.num_workers, phase.epochs, phase.max_steps)
            except tdata.DatasetRootError as exc:
                raise StageError(f"train_tutor: {exc}") from None
            phases[task.name] = run_phase(
                task=task, output=config.output, plan=plan, batch_size=config.batch_size, settings=s,
                datasets_fn=_datasets(config, root, train, val, plan, errors_uri),
                key_extra=dict(key_extra, phase=to_dict(phase), after=phases.get(WARP_PHASE, {}).get("plan_key")),
            )
        weights = load_phase_weights(config.output, E2E_PHASE)["tutor"]
        warp_sd = {k[len("warp."):]: v for k, v in weights.items() if k.startswith("warp.")}
        gen_sd = {k[len("gen."):]: v for k, v in weights.items() if k.startswith("gen.")}
        ckpt_uri = storage.join_uri(config.output, TUTOR_FILE)
        final = phases[E2E_PHASE].get("final_metrics", {})
        version = save_checkpoint(ckpt_uri, warp=warp_sd, gen=gen_sd, kind="tutor", meta={
            "stage": "train_tutor", "data": config.data, "height": config.height, "width": config.width,
            "steps": {k: v["steps"] for k, v in phases.items()}, "metrics": final,
        })
        n_errors = tdata.collect_error_rows(config.output, errors)
        if n_errors:
            log.warning("train_tutor: %d samples/rows dropped; see %s", n_errors,
                        storage.join_uri(config.output, tdata.ERRORS_FILE))
        summary = run_summary(
            "train_tutor", run_id, config, phases, train_samples=len(train), val_samples=len(val),
            error_rows=n_errors, errors_uri=storage.join_uri(config.output, tdata.ERRORS_FILE), started=started,
            final_metrics=final, checkpoint=ckpt_uri, version=version,
        )
        write_run_summary(config.output, run_id, summary)
        return summary
    finally:
        lock.release()
