"""Stage 0: train the parser-based tutor (PB-AFN) with Ray Train.

Pipeline (reads top to bottom; the skeleton is :mod:`pipelines.training.stage`)::

    dataset root manifests ──► training samples (train pairs of train-split models) + paired validation samples
        ──► phase 1 "tutor_warp": AFWM(45) with the warp loss              (PF-AFN_train/train_PBAFN_stage1.py)
        ──► phase 2 "tutor_e2e": TutorModel (AFWM(45) from phase 1 + ResUnetGenerator(8, 4)) with
            0.5·L_warp + gen_PB; warp Adam at 0.2·lr, gen Adam at lr       (PF-AFN_train/train_PBAFN_e2e.py)
        ──► {output}/tutor.pt (project format, kind "tutor") + {output}/summary.json

Each phase is one Ray Train ``TorchTrainer`` (DDP, checkpoints, resume, evaluation per epoch). Each sample is
decoded by CPU tasks (person, parsing, DensePose, keypoints, worn garment + mask, and an unpaired garment chosen per
(sample, epoch)); the 45-channel person representation and the generator inputs are built on the worker with
:mod:`pfafn.person`. See ``docs/training.md``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines.core import storage
from pipelines.core.config import to_dict
from pipelines.core.errors import StageError
from pipelines.training import data as tdata
from pipelines.training.checkpoints import load_phase_weights
from pipelines.training.common import MetricSums, adam, build_vgg, e2e_optimizers, eval_batches
from pipelines.training.config import CPU_WIDTHS, TINY_WIDTHS, TrainingConfig, WidthsConfig
from pipelines.training.data import tutor_inputs
from pipelines.training.loop import PhaseTask
from pipelines.training.stage import EvalSet, Samples, TrainingStage, run_training, save_model

log = logging.getLogger(__name__)

TUTOR_FILE = "tutor.pt"
WARP_PHASE = "tutor_warp"
E2E_PHASE = "tutor_e2e"


@dataclass
class TutorConfig(TrainingConfig):
    """Config of ``jobs.train_tutor``; every field is documented in docs/training.md and
    jobs/configs/train_tutor.yaml."""

    STAGE: ClassVar[str] = "train_tutor"

    widths: WidthsConfig = field(default_factory=WidthsConfig)
    decode_unpaired: bool = True  # emit the per-(sample, epoch) unpaired garment (color_un of aligned_dataset.py)
    preview: bool = True


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
# Phases (worker side)


class TutorWarpTask(PhaseTask):
    """Phase 1, PB warp (``train_PBAFN_stage1.py``): AFWM(45) trained with L_warp."""

    name = WARP_PHASE
    trainable = ("warp",)
    val_sets = ("val",)

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
        for batch in eval_batches(val_iters, "val", self.config.batch_size):
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
    """Phase 2, PB end-to-end (``train_PBAFN_e2e.py``): TutorModel with 0.5·L_warp + gen_PB; the warp starts from
    phase 1."""

    name = E2E_PHASE
    trainable = ("tutor",)
    val_sets = ("val",)

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
        for batch in eval_batches(val_iters, "val", self.config.batch_size):
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


class TutorStage(TrainingStage):
    config: TutorConfig

    def samples(self, root, errors) -> Samples:
        c = self.config
        train, val = tdata.split_train_val(root, c.val_samples, c.val_fraction, c.seed, errors)
        if not train:
            raise StageError(f"train_tutor: {c.data} has no usable training pairs")
        # validation rows carry an unpaired garment too (the e2e preview tries it on)
        val_table = (tdata.epoch_table(val, tdata.EpochPlan(len(val), 1, len(val), 1, len(val)), c.seed,
                                       unpaired_garments=root) if val else tdata.sample_table(val))
        return Samples(train, TRAIN_FIELDS + (UNPAIRED_FIELDS if c.decode_unpaired else ()), "train_pairs",
                       {"val": EvalSet(val_table, TRAIN_FIELDS + UNPAIRED_FIELDS, "validation")},
                       unpaired=root if c.decode_unpaired else None)

    def tasks(self, samples) -> list[PhaseTask]:
        c = self.config
        return [TutorWarpTask(c, c.warp), TutorE2ETask(c, c.e2e)]

    def plan_fields(self) -> dict[str, Any]:
        return {"widths": to_dict(self.config.widths)}

    def finish(self, phases) -> dict[str, Any]:
        steps = {k: v["steps"] for k, v in phases.items()}
        model = save_model(self.config, phases, "tutor", file=TUTOR_FILE, kind="tutor", meta={"steps": steps})
        return {"checkpoint": model.uri, "version": model.version}


def run(config: TutorConfig) -> dict[str, Any]:
    """Train the tutor (both phases, resuming where a previous run on this output stopped); return the summary."""
    return run_training(config, TutorStage)
