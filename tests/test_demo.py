"""``jobs.demo`` end to end (every stage, in-process Ray) on a smaller world, with a relative ``--output`` as a user
types it: Ray workers do not share the driver's working directory, so a stage that passed ``runs/...`` on to them
would read and write somewhere else (this test failed that way before the stages resolved their paths)."""
from __future__ import annotations

import json
import os


from jobs import demo



def test_demo_runs_every_stage_with_a_relative_output(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sets = ["persons=16", "garments=8", "ground_truth_pairs=4", "catalog_garments=2", "catalog_models=2",
            "height=64", "width=64"]
    argv = ["--output", "runs/demo"]
    for item in sets:
        argv += ["--set", item]
    assert demo.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    out = str(tmp_path / "runs" / "demo")
    assert summary["output"] == out
    for key in ("tutor_checkpoint", "student_checkpoint", "official_warp", "official_gen", "gallery", "report"):
        assert summary[key].startswith(out + os.sep), (key, summary[key])
        assert os.path.isfile(summary[key]), (key, summary[key])
    assert summary["fakes_written"] > 0
    assert (summary["catalog_pairs_ok"], summary["catalog_pairs_error"]) == (4, 0)
    # the evaluation read the catalog's images back and scored the pairs that have exact ground truth
    evaluation = json.load(open(os.path.join(out, "eval", "summary.json")))
    assert evaluation["pairs"] == 4 and evaluation["pairs_error"] == 0 and evaluation["pairs_ok"] >= 1
    assert 0.0 < summary["metrics"]["ssim"] <= 1.0 and summary["metrics"]["psnr"] > 0
    assert summary["tutor_metrics"]["val_ssim"] > 0 and summary["student_metrics"]
    # nothing was written relative to a worker's working directory
    assert sorted(os.listdir(tmp_path)) == ["runs"]
    assert sorted(os.listdir(tmp_path / "runs")) == ["demo"]
