"""Stage 0 on real Ray Train (2 gloo workers, tiny preset): loss falls, a killed run resumes at its saved step,
a finished run re-run trains nothing, and the tutor checkpoint is in the project format."""
from __future__ import annotations

import json
import os

import pytest

from pipelines.core.config import ConfigError, build_config
from pipelines.core.errors import StageError
from pipelines.stages.train_tutor import PRESETS, TutorConfig, run
from tests.dataset_helpers import write_dataset_root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 14 models: 12 train (3 global steps of 2×2 per epoch), 2 test (validation)
    return write_dataset_root(str(tmp_path_factory.mktemp("tutor-data") / "root"), persons=14, garments=14, test=2,
                      height=64, width=64)


def _config(data: str, output: str, *overrides: str) -> TutorConfig:
    return build_config(TutorConfig, preset=PRESETS["tiny"], overrides=list(overrides),
                        explicit={"data": data, "output": output})


def _curve_meta(path: str) -> dict:
    """What a loss_curve.png covers (its ``pfafn`` text chunk), after checking it decodes as a PNG."""
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return json.loads(img.text["pfafn"])


def test_config_rejects_a_bad_choice_and_size(tmp_path):
    with pytest.raises(ConfigError, match=r"precision.*auto.*fp32.*bf16.*fp16"):
        _config(str(tmp_path), str(tmp_path / "out"), "train.precision=fp8").validate()
    with pytest.raises(ConfigError, match="multiples of 32"):
        _config(str(tmp_path), str(tmp_path / "out"), "height=100").validate()
    with pytest.raises(ConfigError, match="--output is required"):
        _config(str(tmp_path), "").validate()
    with pytest.raises(ConfigError, match="log_every_steps"):
        _config(str(tmp_path), str(tmp_path / "out"), "train.log_every_steps=-1").validate()


def test_published_preset_needs_vgg_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    cfg = build_config(TutorConfig, preset=PRESETS["published"],
                       explicit={"data": str(tmp_path), "output": str(tmp_path / "out")})
    with pytest.raises(StageError, match="VGG19 weights"):
        run(cfg)


def test_tutor_trains_resumes_after_a_kill_and_rerun_does_nothing(ray_session, data_root, tmp_path, monkeypatch):
    """With relative --data and --output, as a user types them: Ray Train workers run in their own working
    directory, so the stage must resolve them in the driver (the e2e phase's workers read the warp phase's weights)."""
    from pfafn.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    data_root = os.path.relpath(data_root, tmp_path)
    assert not os.path.isabs(data_root)
    out = "tutor"
    common = ("train.checkpoint_every_steps=4", "train.async_upload=false")
    # 1) a worker dies after step 10 of the warp phase and no retry is allowed: the run fails...
    with pytest.raises(StageError, match="re-run"):
        run(_config(data_root, out, *common, "train.fault_kill_at_step=10", "train.fault_phase=tutor_warp",
                    "train.max_failures=0"))
    assert os.path.exists(os.path.join(out, "_fault", "tutor_warp.killed"))
    # 2) ...and the same command resumes from the checkpoint saved before the kill (epoch end at step 9).
    summary = run(_config(data_root, out, *common))
    warp = summary["phases"]["tutor_warp"]
    assert warp["resumed_from_step"] == 9
    assert warp["trained_steps"] == 24 - 9
    assert summary["steps"] == {"tutor_warp": 24, "tutor_e2e": 6}
    # the loss falls over the warp phase (history spans both runs: it is kept in the checkpoint)
    history = json.load(open(os.path.join(out, "phases", "tutor_warp.json")))["history"]
    assert [h["step"] for h in history] == list(range(1, 25))
    losses = [h["loss"] for h in history]
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.5, (first, last)
    # loss_curve.png beside the tutor (every phase) and beside each checkpoint (its phase so far); both start at
    # step 1, before the resume at step 9: the history they are drawn from survives in the checkpoint
    assert summary["loss_curve"] == os.path.join(os.path.abspath(out), "loss_curve.png")
    assert _curve_meta(summary["loss_curve"])["phases"] == [
        {"phase": "tutor_warp", "first_step": 1, "last_step": 24, "x_offset": 0},
        {"phase": "tutor_e2e", "first_step": 1, "last_step": 6, "x_offset": 24}]
    ckpt_curve = _curve_meta(os.path.join(out, "ray", "tutor_warp", "step_00000024", "loss_curve.png"))
    assert ckpt_curve["phases"] == [{"phase": "tutor_warp", "first_step": 1, "last_step": 24, "x_offset": 0}]
    assert ckpt_curve["terms"] == ["loss", "l1", "mask", "smooth", "tv"]  # the warp phase's terms (VGG off: none)
    # per-epoch validation metrics are reported with the checkpoints
    e2e = summary["phases"]["tutor_e2e"]
    assert len(e2e["epoch_metrics"]) == 2 and 0.0 < e2e["final_metrics"]["val_ssim"] <= 1.0
    assert summary["final_metrics"]["val_psnr"] > 0
    # the project-format tutor checkpoint
    loaded = load_checkpoint(summary["checkpoint"])
    assert loaded.kind == "tutor" and loaded.version == summary["version"]
    assert json.load(open(os.path.join(out, "summary.json")))["version"] == summary["version"]
    assert summary["finished_at"].endswith("Z")
    # 3) a finished run re-run does no training and yields the same tutor
    again = run(_config(data_root, out, *common))
    assert again["trained_steps"] == 0 and again["skipped"] is True
    assert again["version"] == summary["version"]


@pytest.mark.slow  # three training runs, ~160 s; the kill/resume test above is the default suite's training run
def test_a_longer_plan_after_a_finished_one_trains_again(ray_session, data_root, tmp_path):
    """A finished phase whose plan changed starts afresh (the documented rule, docs/training.md): more epochs run
    every step of the new plan, the summary says so, and the version changes with the weights."""
    out = str(tmp_path / "tutor")
    short = ("warp.niter=1", "warp.niter_decay=0", "e2e.niter=1", "e2e.niter_decay=0", "train.num_workers=1")
    first = run(_config(data_root, out, *short))
    assert first["steps"] == {"tutor_warp": 6, "tutor_e2e": 6}
    assert first["phases"]["tutor_warp"]["start"] == "fresh" and not first["phases"]["tutor_warp"]["plan_changed"]
    longer = ("warp.niter=2", *short[1:])
    second = run(_config(data_root, out, *longer))
    warp = second["phases"]["tutor_warp"]
    assert second["steps"]["tutor_warp"] == 12 and warp["trained_steps"] == 12, warp
    assert warp["plan_changed"] is True and warp["start"] == "fresh"
    assert warp["replaced_plan_key"] == first["phases"]["tutor_warp"]["plan_key"]
    assert second["phases"]["tutor_e2e"]["plan_changed"] is True  # it starts from the warp phase's new weights
    assert second["version"] != first["version"]
    again = run(_config(data_root, out, *longer))
    assert again["trained_steps"] == 0 and again["version"] == second["version"]
