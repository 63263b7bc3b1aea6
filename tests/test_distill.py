"""Stage 2 on real Ray Train (2 gloo workers, tiny preset, output on real S3): the KD gate; losses fall; a worker
killed mid-run is retried and the run resumes at its saved step; a finished run re-run trains nothing; the
published-format export gives the project checkpoint's outputs."""
from __future__ import annotations


import pytest
import torch

from pipelines.core.config import ConfigError, build_config
from pipelines.stages.distill import PRESETS, DistillConfig, distill_terms, run
from pipelines.core.errors import StageError
from pipelines.training.config import TINY_WIDTHS, WidthsConfig
from tests.dataset_helpers import write_dataset_root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_session):
    """A dataset root, a random tiny tutor checkpoint and its fakes (12 train persons, 2 test with ground truth)."""
    from pfafn.checkpoint import save_checkpoint
    from pfafn.tutor import TutorModel

    base = tmp_path_factory.mktemp("distill-inputs")
    data = write_dataset_root(str(base / "root"), persons=14, garments=14, test=2, height=64, width=64)
    torch.manual_seed(0)
    tutor = TutorModel(WidthsConfig(**TINY_WIDTHS).build())
    tutor_uri = str(base / "tutor.pt")
    save_checkpoint(tutor_uri, warp=tutor.warp, gen=tutor.gen, kind="tutor")
    from pipelines.stages import tutor_inference

    fakes = tutor_inference.run(build_config(
        tutor_inference.TutorInferenceConfig, preset=tutor_inference.PRESETS["tiny"],
        explicit={"data": data, "tutor": tutor_uri, "output": str(base / "fakes"), "height": 64, "width": 64,
                  "actors": 1, "cpus_per_actor": 0.5, "gallery_size": 0}))["fakes"]
    return {"data": data, "tutor": tutor_uri, "fakes": fakes}


def _config(inputs, output: str, *overrides: str) -> DistillConfig:
    return build_config(DistillConfig, preset=PRESETS["tiny"], overrides=list(overrides),
                        explicit={"data": inputs["data"], "fakes": inputs["fakes"], "tutor": inputs["tutor"],
                                  "output": output})


def test_config_rejects_a_bad_supervision():
    paths = {"data": "d", "fakes": "f", "tutor": "t.pt", "output": "o"}
    with pytest.raises(ConfigError, match=r"supervision.*real.*tutor"):
        build_config(DistillConfig, preset=PRESETS["tiny"], overrides=["supervision=wuton"], explicit=paths)
    cfg = build_config(DistillConfig, preset=PRESETS["tiny"], explicit=paths)
    cfg.supervision = "wuton"  # built in Python, past from_dict: validate() checks it again
    with pytest.raises(ConfigError, match=r"supervision must be one of real\|tutor"):
        cfg.validate()


def test_sample_with_a_worse_tutor_gets_no_distillation_gradient():
    from pfafn.nn import AFWM

    torch.manual_seed(1)
    widths = WidthsConfig(**TINY_WIDTHS).build()
    tutor, student = AFWM(45, widths).eval(), AFWM(3, widths).eval()
    person = torch.rand(2, 3, 64, 64) * 2 - 1
    rep = torch.rand(2, 45, 64, 64)
    garment = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.ones(2, 1, 64, 64)
    with torch.no_grad():
        t_out = tutor(rep, garment, mask, intermediates=True)
    s_out = student(person, garment, mask, intermediates=True)
    for t in s_out.person_features + s_out.flows:
        t.retain_grad()
    # sample 0: the target is the tutor's own warp (tutor better); sample 1: the student's (tutor worse)
    target = torch.stack([t_out.warped_garment[0], s_out.warped_garment[1].detach()])
    feature, flow, gate = distill_terms(t_out, s_out, target, enabled=True)
    assert gate.tolist() == [1.0, 0.0]
    (feature + flow).backward()
    for t in s_out.person_features + s_out.flows[2:]:
        assert t.grad[1].abs().max() == 0.0      # no distillation gradient for the worse-tutor sample
        assert t.grad[0].abs().max() > 0.0       # the better-tutor sample is distilled
    # with distillation disabled (ablation) nothing is distilled, but the gate is still computed
    f0, fl0, g0 = distill_terms(t_out, s_out, target, enabled=False)
    assert float(f0) == 0.0 and float(fl0) == 0.0 and g0.tolist() == [1.0, 0.0]


def test_distill_on_s3_survives_a_killed_worker_resumes_and_exports(ray_session, inputs, s3_bucket):
    """Output (Ray Train storage included) on real S3. A worker is SIGKILLed after step 5 of the PF-warp phase; with
    max_failures=1 the run restarts from the step-4 checkpoint and completes. A re-run trains nothing."""
    import json

    from pfafn import load_official
    from pfafn.checkpoint import load_checkpoint, load_student
    from pipelines.core import storage

    out = f"{s3_bucket}/distill/run1"
    summary = run(_config(inputs, out, "train.checkpoint_every_steps=2", "train.max_failures=1",
                          "train.fault_kill_at_step=5", "train.fault_phase=student_warp", "train.fault_kill_rank=1"))
    assert storage.exists(f"{out}/_fault/student_warp.killed")
    warp = summary["phases"]["student_warp"]
    assert warp["attempts"] == 2 and warp["attempt_start_steps"] == [0, 4]  # resumed at the saved step 4
    assert summary["steps"] == {"student_warp": 9, "student_e2e": 9}
    assert storage.list_files(f"{out}/ray/student_warp", suffix="state.json")  # Ray Train checkpoints on S3
    # losses fall in both phases (mean of the first vs the last steps)
    for name in ("student_warp", "student_e2e"):
        p = summary["phases"][name]
        assert p["loss_last"] < p["loss_first"], (name, p["loss_first"], p["loss_last"])
    history = json.loads(storage.read_bytes(f"{out}/phases/student_e2e.json"))["history"]
    assert [h["step"] for h in history] == list(range(1, 10))
    assert all(0.0 <= h["kd_gate_fraction"] <= 1.0 and h["kd_flow"] >= 0.0 for h in history)
    metrics = summary["final_metrics"]
    assert 0 < metrics["val_ssim"] <= 1 and 0 < metrics["val_unpaired_ssim"] <= 1 and metrics["val_unpaired_psnr"] > 0
    assert summary["student_checkpoint"] == f"{out}/student.pt" and summary["finished_at"].endswith("Z")
    assert json.loads(storage.read_bytes(f"{out}/summary.json"))["version"] == summary["version"]
    loaded = load_checkpoint(summary["student_checkpoint"])
    assert loaded.kind == "student" and loaded.version == summary["version"]
    # the published-format files give the same outputs as the project checkpoint
    official = load_official(summary["official_warp"], summary["official_gen"])
    project = load_student(summary["student_checkpoint"])
    torch.manual_seed(2)
    person, garment = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    mask = (torch.rand(2, 1, 64, 64) > 0.3).float()
    with torch.no_grad():
        a, b = official(person, garment, mask), project(person, garment, mask)
    assert (a.tryon - b.tryon).abs().max() <= 1e-6
    assert (a.flow - b.flow).abs().max() <= 1e-6
    # a finished run re-run does no training and gives the same student
    again = run(_config(inputs, out))
    assert again["trained_steps"] == 0 and again["skipped"] is True and again["version"] == summary["version"]


def test_distill_needs_usable_fakes(inputs, tmp_path):
    import pyarrow as pa

    from pipelines.core import manifests

    path = tmp_path / "fakes.parquet"  # one ok fake, made by another tutor version: nothing usable
    rows = [{"model_id": "m00000", "worn_garment_id": "g00000", "tutor_garment_id": "g00001",
             "image_uri": str(tmp_path / "x.png"), "tutor_version": "000000000000", "status": "ok"}]
    manifests.write_manifest(pa.Table.from_pylist(rows), str(path), kind="fakes")
    cfg = build_config(DistillConfig, preset=PRESETS["tiny"],
                       explicit={"data": inputs["data"], "fakes": str(path), "tutor": inputs["tutor"],
                                 "output": str(tmp_path / "out")})
    with pytest.raises(StageError, match="no usable ok fakes"):
        run(cfg)
