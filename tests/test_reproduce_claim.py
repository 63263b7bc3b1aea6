"""benchmarks/reproduce_claim.py: the evaluation, statistics and report the docs rely on.

The full smoke preset (world → tutor → fakes → three students → evaluation) runs eight Ray Train phases; on the
shared 2-core machine that took 4.7-8.5 minutes (Ray Train start-up per phase dominates), over this file's 3-minute
budget. So the default tests drive the evaluation on a real synthetic dataset root (``pipelines.stages.generate_synthetic``)
with tiny checkpoints made here (one trained for a few steps so the models differ), and check the JSON schema the
doc generator reads. ``make test-all`` (the ``slow`` tests) additionally runs the smoke preset end to end.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import reproduce_claim as rc


TINY = rc.TINY_WIDTHS


def _widths():
    from pfafn.nn import NetworkWidths

    return NetworkWidths(encoder_channels=tuple(TINY["encoder_channels"]), fpn_dim=TINY["fpn_dim"],
                         flow_channels=tuple(TINY["flow_channels"]), ngf=TINY["ngf"])


@pytest.fixture(scope="module")
def level(tmp_path_factory):
    """A 64×64 noisy world with 6 ground-truth pairs, a random tutor and three different students, evaluated."""
    from pfafn.checkpoint import save_checkpoint
    from pfafn.tryon import TryOnModel
    from pfafn.tutor import TutorModel
    from pipelines.stages import generate_synthetic

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("claim")
    world = generate_synthetic.run(generate_synthetic.SyntheticDatasetConfig(
        output=str(base / "world"), persons=12, garments=12, height=64, width=64, parsing_noise=0.6,
        ground_truth_pairs=6, test_fraction=0.25, unpaired_per_model=2, executor="local", workers=2))
    ckpts = {}
    torch.manual_seed(0)
    tutor = TutorModel(_widths())
    ckpts["tutor"] = str(base / "tutor.pt")
    save_checkpoint(ckpts["tutor"], warp=tutor.warp, gen=tutor.gen, kind="tutor")
    for seed, name in enumerate(("wuton", "ablation", "pfafn")):
        torch.manual_seed(seed + 1)
        student = TryOnModel(_widths())
        if name == "pfafn":  # push the generator towards "keep the person": a real difference the stats must see
            with torch.no_grad():
                for p in student.gen.parameters():
                    p.mul_(0.01)
        ckpts[name] = str(base / f"{name}.pt")
        save_checkpoint(ckpts[name], warp=student.warp, gen=student.gen, kind="student")
    picture = base / "img" / "claim_0p60.png"
    ev = rc.evaluate(world["data"], ckpts, height=64, width=64, limit=6, seed=0, picture=picture, picture_rows=3,
                     torch_threads=1)
    return {"world": world, "ckpts": ckpts, "eval": ev, "picture": picture}


def test_evaluation_scores_all_four_models_and_the_reference_on_the_same_pairs(level):
    ev = level["eval"]
    assert ev["eval_pairs"] == 6 and len(ev["eval_keys"]) == 6 and ev["eval_pairs_dropped"] == 0
    assert all(k.split("__")[0] in {f"m{i:05d}" for i in (9, 10, 11)} for k in ev["eval_keys"])  # test models only
    assert set(ev["rows"]) == set(rc.MODELS) | {"input_photo"}
    for name, row in ev["rows"].items():
        assert set(row) == set(rc.METRICS)
        for metric, stat in row.items():
            assert stat["n"] == 6, (name, metric)
            assert math.isfinite(stat["mean"]) and math.isfinite(stat["se"]) and stat["se"] >= 0, (name, metric)
            assert len(ev["per_pair"][name][metric]) == 6
        assert 0 < row["ssim"]["mean"] <= 1 and 0 <= row["l1"]["mean"] <= 1 and 0 < row["psnr"]["mean"] < 100
    # The unchanged photo is close to the truth off the garment, far on it: whole-image L1 < garment-region L1.
    photo = ev["rows"]["input_photo"]
    assert photo["l1"]["mean"] < photo["garment_l1"]["mean"]
    # Different weights give different try-ons.
    assert len({round(ev["rows"][m]["l1"]["mean"], 6) for m in rc.MODELS}) == 4


def test_comparisons_are_paired_and_consistent(level):
    ev = level["eval"]
    assert set(ev["comparisons"]) == {"pfafn-tutor", "pfafn-wuton", "pfafn-ablation"}
    for key, comp in ev["comparisons"].items():
        other = key.split("-")[1]
        for metric, c in comp.items():
            diffs = np.array(ev["per_pair"]["pfafn"][metric]) - np.array(ev["per_pair"][other][metric])
            assert c["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-5)
            lo, hi = c["ci95"]
            assert lo <= c["mean_diff"] <= hi
            assert c["wins"] + c["losses"] + c["ties"] == c["n"] == 6
            assert c["sign_test_units"] == 3  # the sign test and the bootstrap are over the 3 test models
            assert 0 < c["sign_test_p"] <= 1
            assert c["verdict"] in ("better", "worse", "no significant difference")
    assert json.loads(json.dumps(ev)) == ev  # the JSON the doc reads


def test_picture_has_one_row_per_pair_and_seven_columns(level):
    from PIL import Image

    with Image.open(level["picture"]) as im:
        w, h = im.size
    assert w == 7 * (64 + 2) - 2
    assert h == 14 + 3 * (64 + 2) - 2


def test_tutor_sees_the_noisy_parsing(level):
    """The evaluation decodes the dataset root's parsing (noisy at 0.6), not the exact one."""
    from pfafn.synthetic import SyntheticWorld, WorldConfig

    pairs = rc.load_eval_pairs(level["world"]["data"], 64, 64, 2)
    world = SyntheticWorld(12, 12, WorldConfig(height=64, width=64, seed=0, parsing_noise=0.6))
    i = int(pairs["keys"][0].split("__")[0][1:])
    exact = world.render_person(i).parsing
    assert np.array_equal(pairs["parsing"][0], world.noisy_parsing(i, parsing=exact))
    assert not np.array_equal(pairs["parsing"][0], exact)
    # and the garment region is the exact garment of the ground-truth render
    j = int(pairs["keys"][0].split("__")[1][1:])
    assert np.array_equal(pairs["gt_garment_mask"][0], world.render_person(i, j).garment_mask)


def test_metrics_and_statistics_on_known_inputs():
    t = torch.rand(3, 3, 32, 32) * 2 - 1
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 10:22] = 1
    same = rc.pair_metrics(t, t, mask)
    assert np.allclose(same["ssim"], 1) and np.allclose(same["psnr"], rc.PSNR_CAP) and np.allclose(same["l1"], 0)
    assert np.allclose(same["garment_l1"], 0) and np.allclose(same["garment_ssim"], 1)
    off = t.clone()
    off[:, :, 0:4] = -t[:, :, 0:4]  # change only outside the garment region
    m = rc.pair_metrics(off, t, mask)
    assert (m["l1"] > 0).all() and np.allclose(m["garment_l1"], 0)

    better = rc.paired_comparison(np.full(8, 0.9) + np.arange(8) * 1e-3, np.full(8, 0.8), higher_is_better=True)
    assert better["verdict"] == "better" and better["wins"] == 8
    assert better["sign_test_p"] == pytest.approx(2 / 256)
    lower_l1 = rc.paired_comparison(np.full(8, 0.1) + np.arange(8) * 1e-3, np.full(8, 0.2), higher_is_better=False)
    assert lower_l1["verdict"] == "better"
    # Clustered pairs: resampling whole groups gives a wider CI than resampling pairs when groups share an offset.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 4)
    d = np.repeat(rng.normal(size=10), 4) + rng.normal(scale=0.01, size=40)
    lo_p, hi_p = rc.bootstrap_ci(d)
    lo_g, hi_g = rc.bootstrap_ci(d, groups=groups)
    assert hi_g - lo_g > 1.5 * (hi_p - lo_p)
    noise = np.random.default_rng(0).normal(size=40)
    assert rc.paired_comparison(noise, noise[::-1].copy(), True)["verdict"] == "no significant difference"


def test_results_doc_renders_from_the_json(level, tmp_path):
    ev = level["eval"]
    result = {
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00", "wall_s": 60.0,
        "settings": rc._resolved_settings("smoke", rc.PRESETS["smoke"], [0.6], 0),
        "machine": {"cpus": 2, "torch": torch.__version__, "processor": "x"},
        "levels": [{"parsing_noise": 0.6, "steps": {"tutor": {}, "pfafn": {}}, "wall_s": {"eval_s": 1.0},
                    **ev}],
    }
    doc = tmp_path / "results.md"
    doc.write_text("old\n" + rc.DISCUSSION_MARKER + "\nhand-written discussion\n")
    rc.write_results_doc(result, doc)
    text = doc.read_text()
    assert "| PF-AFN student (paper) |" in text and "| PF-AFN − tutor |" in text
    assert text.count(rc.DISCUSSION_MARKER) == 1 and text.rstrip().endswith("hand-written discussion")
    assert set(rc.claim_status(result["levels"][0]).values()) <= {"holds", "contradicted", "not shown"}


@pytest.mark.slow  # ~5-9 min on 2 shared cores: `make test-all`
def test_smoke_preset_end_to_end(tmp_path):
    result = rc.run_claim("smoke", work_dir=str(tmp_path / "work"))
    (level,) = result["levels"]
    assert set(level["rows"]) == set(rc.MODELS) | {"input_photo"}
    assert all(math.isfinite(level["rows"][m][k]["mean"]) for m in rc.MODELS for k in rc.METRICS)
    assert level["supervision"] == {"pfafn": "real", "wuton": "tutor", "ablation": "real"}
    assert level["kd_enabled"] == {"pfafn": True, "wuton": True, "ablation": False}
    assert len(set(level["versions"].values())) == 4
