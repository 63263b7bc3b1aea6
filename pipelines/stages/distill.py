"""Stage 2: distil the parser-free student (PF-AFN) from the tutor's fakes with Ray Train.

Pipeline (reads top to bottom; the skeleton is :mod:`pipelines.training.stage`)::

    fakes manifest (ok rows of tutor inference) + dataset root ──► one sample per fake: fake image (person wearing
        the tutor garment g'), real photo, its parsing/DensePose/pose, worn garment g + mask, g' + mask
        ──► phase 1 "student_warp" (PF warp, PF-AFN_train/train_PFAFN_stage1.py): AFWM(3) initialised from the
            tutor's warp except cond_* and aflow_net.netRefine*; L_warp + adjustable KD; first only
            cond_* / netRefine train, then all (a second Adam)
        ──► phase 2 "student_e2e" (PF end-to-end, PF-AFN_train/train_PFAFN_e2e.py): AFWM(3) from phase 1 +
            ResUnetGenerator(7, 4) from scratch; 0.25·(L_warp + KD) + gen_PF
        ──► {output}/student.pt (project format, kind "student"), {output}/official/{warp,gen}_model_final.pth
            (published format) and {output}/summary.json

Per sample the frozen tutor (eval, no grad) warps the *paired* garment g on the person's 45-channel representation:
its person features, flows and warped garment are the distillation targets (``flow_out_sup``, the frozen
``PB_warp_model`` pass on the real garment in ``train_PFAFN_stage1.py``). It also warps g' to give the skin mask of
gen_PF. Where this differs from the original scripts is listed in ``docs/training.md``.

Switches kept first-class for the ablation benchmark: ``distill.enabled`` (false = no KD terms) and
``supervision`` (``real``: the real photo, as published; ``tutor``: WUTON-style, the tutor's own paired try-on
replaces the real photo as every target).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipelines.core import manifests, storage
from pipelines.core.errors import StageError
from pipelines.training import data as tdata
from pipelines.training.checkpoints import load_phase_weights
from pipelines.training.common import MetricSums, adam, build_vgg, e2e_optimizers, eval_batches
from pipelines.training.config import PhaseConfig, TrainingConfig
from pipelines.training.data import tutor_inputs
from pipelines.training.loop import PhaseTask
from pipelines.training.stage import EvalSet, Samples, TrainingStage, run_training, save_model

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
OFFICIAL_WARP = "official/warp_model_final.pth"
OFFICIAL_GEN = "official/gen_model_final.pth"
WARP_PHASE = "student_warp"
E2E_PHASE = "student_e2e"
#: Student warp parameters that are *not* copied from the tutor and that train alone during the freeze epochs
#: (``'cond_' in name or 'aflow_net.netRefine' in name`` in ``PF-AFN_train/train_PFAFN_stage1.py``).
FRESH_PREFIXES = ("cond_", "aflow_net.netRefine")


@dataclass
class DistillSwitch:
    """``enabled``: adjustable KD on (published) or off (the "no distillation" ablation)."""

    enabled: bool = True


@dataclass
class DistillConfig(TrainingConfig):
    """Config of ``jobs.distill``; every field is documented in docs/training.md and jobs/configs/distill.yaml."""

    STAGE: ClassVar[str] = "distill"
    PATHS: ClassVar[tuple[str, ...]] = ("data", "fakes", "tutor", "output")

    fakes: str = ""
    tutor: str = ""
    warp: PhaseConfig = field(default_factory=lambda: PhaseConfig(100, 100, 3e-5))
    ngf: int = 0  # student generator width (0: the tutor's)
    supervision: Literal["real", "tutor"] = "real"
    distill: DistillSwitch = field(default_factory=DistillSwitch)
    require_tutor_version: bool = True  # use only fakes made by this tutor checkpoint's version
    freeze_epochs: int = -1  # PF-warp epochs training only cond_*/netRefine (-1: warp.niter, as published)
    skin_switch_epoch: int = -1  # gen_PF (a, b) switch epoch (-1: e2e.niter, as published)
    gt_samples: int = 64  # unpaired ground-truth evaluation samples (when ground_truth.parquet exists)

    def own_input_roots(self) -> tuple[str, ...]:
        """The fakes' folder: the manifest's folder, or for tutor inference's ``{output}/manifest`` parts the output
        root (its images are under ``{output}/fakes/``)."""
        return (storage.parent_uri(fakes_manifest_uri(self.fakes)),)

    @property
    def freeze(self) -> int:
        return self.warp.niter if self.freeze_epochs < 0 else self.freeze_epochs

    @property
    def skin_switch(self) -> int:
        return self.e2e.niter if self.skin_switch_epoch < 0 else self.skin_switch_epoch


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "height": 64, "width": 64, "batch_size": 2, "loss": {"vgg": "off"},
        "warp": {"niter": 2, "niter_decay": 1, "lr": 1e-3}, "e2e": {"niter": 2, "niter_decay": 1, "lr": 1e-3},
        "freeze_epochs": 1, "val_samples": 4, "gt_samples": 4,
        "train": {"num_workers": 2, "cpus_per_worker": 0.25, "decode_cpus": 0.25, "torch_threads": 1},
    },
    "cpu": {
        "height": 128, "width": 96, "batch_size": 4, "loss": {"vgg": "off"},
        "warp": {"niter": 4, "niter_decay": 4, "lr": 2e-4}, "e2e": {"niter": 4, "niter_decay": 4, "lr": 2e-4},
        "val_samples": 16, "gt_samples": 16,
        "train": {"num_workers": 1, "cpus_per_worker": 1.0, "decode_cpus": 0.5},
    },
    "published": {
        "height": 256, "width": 192, "batch_size": 4, "loss": {"vgg": "torchvision"},
        "warp": {"niter": 100, "niter_decay": 100, "lr": 3e-5}, "e2e": {"niter": 50, "niter_decay": 50, "lr": 5e-5},
        "val_samples": 256, "gt_samples": 256,
        "train": {"num_workers": 8, "use_gpu": True, "sync_batchnorm": True, "cpus_per_worker": 4.0,
                  "decode_cpus": 1.0, "precision": "fp32"},
    },
}

TRAIN_FIELDS = ("person", "keypoints", "parsing", "densepose", "garment", "garment_mask", "fake", "fake_garment",
                "fake_garment_mask")
VAL_FIELDS = ("person", "parsing", "garment", "garment_mask")
GT_FIELDS = ("person", "garment", "garment_mask", "target")


# ----------------------------------------------------------------------------------------------------------------------
# Networks and losses (worker side)


def _nn():
    import torch
    from torch import nn

    from pfafn.nn import AFWM, ResUnetGenerator
    from pfafn.tryon import compose_tryon

    class StudentNet(nn.Module):
        """Student warp + generator with the PF end-to-end *training* forward (so DDP sees one forward).

        Children ``warp`` (AFWM(3)) and ``gen`` (ResUnetGenerator(7, 4)): the student checkpoint's keys.
        """

        def __init__(self, widths, ngf: int) -> None:
            super().__init__()
            self.warp = AFWM(3, widths)
            self.gen = ResUnetGenerator(7, 4, num_downs=5, ngf=ngf)

        def forward(self, fake, masked_garment, binary, composite_region):
            out = self.warp(fake, masked_garment, binary, intermediates=True)
            gen_out = self.gen(torch.cat([fake, out.warped_garment.to(fake.dtype), out.warped_mask.to(fake.dtype)], 1))
            # Training composition: m = sigmoid · warped edge · parsing clothes mask (train_PFAFN_e2e.py).
            tryon, rendered, m = compose_tryon(gen_out, out.warped_garment, out.warped_mask * composite_region)
            return out, tryon, rendered, m

    return StudentNet


def load_tutor(uri: str, device):
    """The frozen tutor (eval mode, no grad) and its checkpoint version."""
    from pfafn.checkpoint import load_checkpoint
    from pfafn.tutor import TutorModel

    loaded = load_checkpoint(uri, map_location="cpu")
    if loaded.kind != "tutor":
        raise StageError(f"distill: {uri} is a {loaded.kind} checkpoint, not a tutor")
    tutor = TutorModel.from_checkpoint(loaded).to(device).eval()
    tutor.requires_grad_(False)
    return tutor, loaded


def init_student_warp_from_tutor(student_warp, tutor_warp) -> list[str]:
    """Copy every tutor warp weight except ``cond_*`` and ``aflow_net.netRefine*`` (the PF warp starts from the PB
    warp checkpoint in ``train_PFAFN_stage1.py``, whose person branch sees 3 channels, not 45). Returns the copied
    keys."""
    src = tutor_warp.state_dict()
    dst = student_warp.state_dict()
    copied = []
    for k, v in src.items():
        if k.startswith(FRESH_PREFIXES) or k not in dst or dst[k].shape != v.shape:
            continue
        dst[k] = v.detach().clone()
        copied.append(k)
    student_warp.load_state_dict(dst)
    return copied


def distill_terms(tutor_out, student_out, target, enabled: bool):
    """Adjustable KD (``train_PFAFN_stage1.py``, ``train_PFAFN_e2e.py``): ``(feature_loss, flow_loss, gate)``; zero
    losses when ``enabled`` is false."""
    from pfafn.losses import distillation_gate, distillation_loss

    gate = distillation_gate(tutor_out.warped_garment, student_out.warped_garment, target)
    if not enabled:
        zero = student_out.warped_garment.new_zeros((), dtype=gate.dtype)
        return zero, zero, gate
    feature, flow = distillation_loss(tutor_out, student_out, gate)
    return feature, flow, gate


def student_inputs(batch, device, tutor, supervision: str) -> dict:
    """Model tensors + the frozen tutor's paired warp (distillation targets) and, for ``supervision=tutor``, its
    paired try-on as the target image."""
    import torch

    x = tutor_inputs(batch, device)
    x["fake"] = tdata.image_tensor(batch["fake"], device)
    x["masked_garment"] = x["garment"] * x["binary"]
    with torch.no_grad():
        x["tutor_warp"] = tutor.warp(x["rep"], x["masked_garment"], x["binary"], intermediates=True)
        if supervision == "tutor":
            tt = tutor(x["rep"], x["person"], x["parsing"], x["densepose"], x["garment"], x["mask"],
                       cloth_region="parsing")
            x["real"] = tt.tryon.detach().float()
            x["target"] = x["real"] * x["target_mask"]
        else:
            x["real"] = x["person"]
    return x


def _warp_parts(pw: dict, feature, flow, gate) -> dict:
    parts = {f"warp_{k}": v for k, v in pw.items()}
    parts.update(kd_feature=feature.detach(), kd_flow=flow.detach(), kd_gate_fraction=gate.mean())
    return parts


class _StudentTask(PhaseTask):
    def __init__(self, config: DistillConfig, phase: PhaseConfig, widths) -> None:
        super().__init__(config, phase)
        self.widths = widths  # the tutor's: the student's warp starts from its weights

    def _frozen(self, device) -> dict:
        tutor, _ = load_tutor(self.config.tutor, device)
        return {"tutor": tutor, "vgg": build_vgg(self.config.loss, device)}

    def _tryon_view(self, warp, gen):
        import torch

        from pfafn.tryon import TryOnModel

        with torch.device("meta"):
            model = TryOnModel(self.widths)
        model.warp, model.gen = warp, gen
        return model


class StudentWarpTask(_StudentTask):
    """Phase 1, PF warp (``train_PFAFN_stage1.py``): AFWM(3) with L_warp + adjustable KD; the freeze epochs train
    cond_*/netRefine only."""

    name = WARP_PHASE
    trainable = ("warp",)
    val_sets = ("val",)

    def __init__(self, config: DistillConfig, widths) -> None:
        super().__init__(config, config.warp, widths)

    def build(self, device) -> dict:
        import torch

        from pfafn.nn import AFWM

        torch.manual_seed(self.config.seed)
        return {"warp": AFWM(3, self.widths), **self._frozen(device)}

    def init_weights(self, nets) -> None:
        init_student_warp_from_tutor(nets["warp"], nets["tutor"].warp)

    def optimizers(self, nets) -> dict:
        fresh = [p for n, p in nets["warp"].named_parameters() if n.startswith(FRESH_PREFIXES)]
        return {"fresh": (adam(fresh, self.phase.lr), 1.0),
                "all": (adam(nets["warp"].parameters(), self.phase.lr), 1.0)}

    def active_optimizers(self, epoch: int, names: tuple[str, ...]) -> tuple[str, ...]:
        # optimizer_part before epoch niter, then optimizer (train_PFAFN_stage1.py)
        return ("fresh",) if epoch < self.config.freeze else ("all",)

    def step(self, nets, batch, epoch, device):
        from pfafn.losses import warp_loss

        x = student_inputs(batch, device, nets["tutor"], self.config.supervision)
        out = nets["warp"](x["fake"], x["masked_garment"], x["binary"], intermediates=True)
        lw, pw = warp_loss(out, x["target"], x["target_mask"], nets["vgg"])
        feature, flow, gate = distill_terms(x["tutor_warp"], out, x["target"], self.config.distill.enabled)
        return lw + feature + flow, _warp_parts(pw, feature, flow, gate)

    def evaluate(self, nets, val_iters, epoch, device) -> dict:
        from pfafn.person import person_clothes

        sums = MetricSums("val_warp")
        for batch in eval_batches(val_iters, "val", self.config.batch_size):
            person = tdata.image_tensor(batch["person"], device)
            garment = tdata.image_tensor(batch["garment"], device)
            binary = (tdata.mask_tensor(batch["garment_mask"], device) > 0.5).float()
            target, target_mask = person_clothes(person, tdata.label_tensor(batch["parsing"], device))
            out = nets["warp"](person, garment * binary, binary)
            sums.add(out.warped_garment * target_mask, target)
        return sums.result()


class StudentE2ETask(_StudentTask):
    """Phase 2, PF end-to-end (``train_PFAFN_e2e.py``): StudentNet with 0.25·(L_warp + KD) + gen_PF."""

    name = E2E_PHASE
    trainable = ("student",)
    val_sets = ("val", "val_gt")

    def __init__(self, config: DistillConfig, widths, ngf: int, has_gt: bool) -> None:
        super().__init__(config, config.e2e, widths)
        self.ngf = ngf
        if not has_gt:
            self.val_sets = ("val",)

    def build(self, device) -> dict:
        import torch

        torch.manual_seed(self.config.seed + 1)
        return {"student": _nn()(self.widths, self.ngf), **self._frozen(device)}

    def init_weights(self, nets) -> None:
        nets["student"].warp.load_state_dict(load_phase_weights(self.config.output, WARP_PHASE)["warp"])

    def optimizers(self, nets) -> dict:
        return e2e_optimizers(nets["student"], self.phase.lr, self.config.warp_lr_scale)

    def step(self, nets, batch, epoch, device):
        import torch

        from pfafn.losses import parser_free_gen_loss, warp_loss

        x = student_inputs(batch, device, nets["tutor"], self.config.supervision)
        with torch.no_grad():
            fake_mask = (tdata.mask_tensor(batch["fake_garment_mask"], device) > 0.5).float()
            fake_garment = tdata.image_tensor(batch["fake_garment"], device)
            warped_un = nets["tutor"].warp(x["rep"], fake_garment * fake_mask, fake_mask).warped_mask
            # skin_mask of train_PFAFN_e2e.py: warped edge of the fake's garment × (1 − parsing clothes)
            skin = warped_un.float() * (1.0 - x["target_mask"])
        out, tryon, rendered, m = nets["student"](x["fake"], x["masked_garment"], x["binary"], x["target_mask"])
        lw, pw = warp_loss(out, x["target"], x["target_mask"], nets["vgg"])
        feature, flow, gate = distill_terms(x["tutor_warp"], out, x["target"], self.config.distill.enabled)
        lg, pg = parser_free_gen_loss(tryon, rendered, m, x["real"], skin, epoch, nets["vgg"],
                                      switch_epoch=self.config.skin_switch)
        parts = _warp_parts(pw, feature, flow, gate)
        parts.update({f"gen_{k}": v for k, v in pg.items()})
        return 0.25 * (lw + feature + flow) + lg, parts

    def evaluate(self, nets, val_iters, epoch, device) -> dict:
        model = self._tryon_view(nets["student"].warp, nets["student"].gen)
        res = {}
        for name, target_key, prefix in (("val", "person", "val"), ("val_gt", "target", "val_unpaired")):
            if name not in val_iters:
                continue
            sums = MetricSums(prefix)
            for batch in eval_batches(val_iters, name, self.config.batch_size):
                person = tdata.image_tensor(batch["person"], device)
                out = model(person, tdata.image_tensor(batch["garment"], device),
                            tdata.mask_tensor(batch["garment_mask"], device))
                sums.add(out.tryon, tdata.image_tensor(batch[target_key], device))
            res.update(sums.result())
        return res


# ----------------------------------------------------------------------------------------------------------------------
# Driver


def fakes_manifest_uri(fakes: str) -> str:
    """The fakes manifest: ``fakes`` itself when it names a .parquet/.csv file or is the folder of Parquet parts that
    ``jobs.tutor_inference`` reports as ``fakes``; ``{fakes}/manifest/`` when it is a tutor-inference output root;
    else ``{fakes}/fakes.parquet``."""
    if fakes.lower().endswith((".parquet", ".csv")):
        return fakes
    manifest_dir = storage.join_uri(fakes, "manifest")
    try:
        if storage.list_files(manifest_dir, suffix=".parquet"):
            return manifest_dir
        if storage.basename(fakes) == "manifest" and storage.list_files(fakes, suffix=".parquet"):
            return fakes
    except storage.StorageError:
        pass
    return storage.join_uri(fakes, "fakes.parquet")


def fake_samples(root: tdata.DatasetRoot, fakes_uri: str, tutor_version: str, require_version: bool,
                 errors: list[dict]) -> tuple[list[dict], dict]:
    """One training sample per ok fake whose model and garments are known; everything else becomes an error row."""
    try:
        loaded = manifests.load_manifest(fakes_uri, "fakes")
    except (manifests.ManifestError, storage.StorageError) as exc:
        raise StageError(f"distill: cannot read the fakes manifest {fakes_uri}: {exc}") from None
    errors.extend(loaded.rejected.to_pylist())
    stats = {"fakes_rows": loaded.input_rows, "fakes_rejected": loaded.rejected.num_rows, "fakes_not_ok": 0,
             "fakes_other_tutor": 0}
    out = []
    for r in loaded.rows.to_pylist():
        key = f"{r['model_id']}__{r['tutor_garment_id']}"
        if r["status"] != "ok":
            stats["fakes_not_ok"] += 1
            continue
        if require_version and r["tutor_version"] != tutor_version:
            stats["fakes_other_tutor"] += 1
            errors.append(tdata.error_row("fakes", key, f"fake made by tutor {r['tutor_version']}, not {tutor_version}",
                                          r, fakes_uri))
            continue
        model = root.models.get(r["model_id"])
        worn = root.garments.get(r["worn_garment_id"])
        other = root.garments.get(r["tutor_garment_id"])
        if model is None or worn is None or other is None:
            errors.append(tdata.error_row("fakes", key, "model or garment of the fake is not in the dataset root", r,
                                          fakes_uri))
            continue
        if r["tutor_garment_id"] == r["worn_garment_id"]:
            errors.append(tdata.error_row("fakes", key, "the fake's tutor garment is the worn garment", r, fakes_uri))
            continue
        out.append({"sample_key": key, **tdata.person_columns(model), **tdata.garment_columns(worn, "garment"),
                    "fake_uri": r["image_uri"], **tdata.garment_columns(other, "fake_garment")})
    out.sort(key=lambda s: s["sample_key"])
    return out, stats


def check_fakes_size(samples: list[dict], config: DistillConfig, probes: int = 8) -> None:
    """Refuse fakes of another size than ``height × width`` (:class:`StageError`, exit 2, both sizes named).

    A fake is the tutor's output at the size it ran at, aligned with the person fitted to that size; letterboxed to
    another size it no longer lines up with the person and its target, and the student learns an average ghost
    (issue 12, item 9). The first fake whose header reads decides (one tutor inference run writes one size); each
    sample's fake is checked again when decoded (``pipelines.training.data``), so a mixed folder gives error rows."""
    from PIL import Image

    roots = config.input_roots()
    for sample in samples[:probes]:
        try:
            data = storage.read_input(sample["fake_uri"], roots=roots, max_bytes=config.max_image_bytes,
                                      timeout_s=config.read_timeout_s)
            with Image.open(io.BytesIO(data)) as im:  # the header only: no pixels decoded
                width, height = im.size
        except Exception:  # noqa: BLE001 - an unreadable fake is its sample's error row at decode time
            continue
        if (height, width) != (config.height, config.width):
            raise StageError(
                f"distill: the fakes are {height}x{width} (height x width, e.g. {sample['fake_uri']}) but distill runs "
                f"at {config.height}x{config.width}; run distill with height={height} width={width}, or tutor "
                f"inference at {config.height}x{config.width}")
        return


class DistillStage(TrainingStage):
    config: DistillConfig
    # set by prepare(), from the tutor checkpoint and the fakes location
    tutor_version: str
    widths: Any  # pfafn.nn.NetworkWidths of the tutor (the student's warp starts from its weights)
    ngf: int
    fakes_uri: str

    def prepare(self) -> None:
        """Read the tutor (its widths shape the student; its version selects the fakes) before taking the lock."""
        c = self.config
        try:
            _, loaded = load_tutor(c.tutor, "cpu")
        except StageError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable / wrong checkpoint: one line
            raise StageError(f"distill: cannot load the tutor {c.tutor}: {exc}") from None
        self.tutor_version = loaded.version
        self.widths = loaded.widths
        self.ngf = c.ngf or loaded.widths.ngf
        self.fakes_uri = fakes_manifest_uri(c.fakes)

    def samples(self, root, errors) -> Samples:
        c = self.config
        train, stats = fake_samples(root, self.fakes_uri, self.tutor_version, c.require_tutor_version, errors)
        if not train:
            raise StageError(f"distill: no usable ok fakes in {self.fakes_uri} for tutor {self.tutor_version} "
                             f"({stats})")
        check_fakes_size(train, c)
        _, val = tdata.split_train_val(root, c.val_samples, c.val_fraction, c.seed, [])
        gt = tdata.unpaired_ground_truth_samples(root, c.gt_samples, errors)
        eval_sets = {"val": EvalSet(tdata.sample_table(val), VAL_FIELDS, "validation")}
        if gt:
            eval_sets["val_gt"] = EvalSet(tdata.sample_table(gt), GT_FIELDS, "ground_truth")
        return Samples(train, TRAIN_FIELDS, "fakes", eval_sets, summary={"gt_samples": len(gt), **stats})

    def tasks(self, samples) -> list[PhaseTask]:
        return [StudentWarpTask(self.config, self.widths),
                StudentE2ETask(self.config, self.widths, self.ngf, "val_gt" in samples.eval_sets)]

    def plan_fields(self) -> dict[str, Any]:
        c = self.config
        return {"fakes": self.fakes_uri, "tutor": self.tutor_version, "supervision": c.supervision,
                "distill": c.distill.enabled, "ngf": self.ngf, "freeze": c.freeze}

    def finish(self, phases) -> dict[str, Any]:
        """The student checkpoint and its published-format export (which must hash to the same version)."""
        from pfafn.checkpoint import export_official

        c = self.config
        model = save_model(c, phases, "student", file=STUDENT_FILE, kind="student", meta={
            "fakes": self.fakes_uri, "tutor_version": self.tutor_version, "supervision": c.supervision,
            "distill": c.distill.enabled})
        warp_uri = storage.join_uri(c.output, OFFICIAL_WARP)
        gen_uri = storage.join_uri(c.output, OFFICIAL_GEN)
        warp_buf, gen_buf = io.BytesIO(), io.BytesIO()  # then atomic storage writes, like every stage output
        official = export_official((model.warp, model.gen), warp_buf, gen_buf)
        storage.write_bytes(warp_uri, warp_buf.getvalue())
        storage.write_bytes(gen_uri, gen_buf.getvalue())
        if official != model.version:
            raise StageError(f"distill: exported weights hash to {official}, the checkpoint to {model.version}")
        return {"fakes": self.fakes_uri, "tutor": c.tutor, "tutor_version": self.tutor_version,
                "student_checkpoint": model.uri, "official_warp": warp_uri, "official_gen": gen_uri,
                "version": model.version, "supervision": c.supervision, "distill_enabled": c.distill.enabled}


def run(config: DistillConfig) -> dict[str, Any]:
    """Distil the student (both phases, resuming where a previous run on this output stopped); return the summary."""
    return run_training(config, DistillStage)
