"""Promotion (jobs.promote) and the nightly following it: a real evaluation (pipelines.stages.evaluate on the session's
in-process Ray) of two real tiny students — one whose try-ons equal the ground truth, one far off — then promotions
refused below threshold (exit 2, one line, nothing written), accepted, forced (recorded), refused for an evaluation
of another student or one lacking a thresholded score; nightly (--dry-run) picks the promoted student, not a newer
unpromoted distill run, follows a rollback and skips a corrupt record."""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipelines.core import manifests, promotions, storage
from tests.catalog_helpers import write_student

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
PAIRS = [("g0", "m0"), ("g0", "m1"), ("g1", "m0"), ("g1", "m1")]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    """Students good / bad / other (checkpoints), and one evaluation of good and bad (not of other)."""
    import torch

    from pipelines.stages.evaluate import EvaluateConfig, run

    tmp = tmp_path_factory.mktemp("promote")
    versions = {name: write_student(str(tmp / name / "student.pt"), seed=i)
                for i, name in enumerate(("good", "bad", "other"))}
    rng = np.random.default_rng(0)
    gt_rows, result_rows = [], []
    now = dt.datetime.now(dt.timezone.utc)
    for gid, mid in PAIRS:
        truth = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        gt_uri = str(tmp / "gt" / f"{mid}_{gid}.png")
        storage.write_bytes(gt_uri, _png(truth))
        gt_rows.append({"model_id": mid, "garment_id": gid, "image_uri": gt_uri})
        for name, image in (("good", truth), ("bad", 255 - truth)):
            uri = str(tmp / "tryon" / versions[name] / gid / f"{mid}.png")
            storage.write_bytes(uri, _png(image))
            result_rows.append({"garment_id": gid, "model_id": mid, "student_version": versions[name],
                                "status": "ok", "image_uri": uri, "run_id": "r1", "finished_at": now})
    pq.write_table(pa.Table.from_pylist(gt_rows), str(tmp / "gt.parquet"))
    (tmp / "tryon" / "results").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(result_rows, schema=manifests.SCHEMAS["tryon_results"]),
                   str(tmp / "tryon" / "results" / "part-r1-000000.parquet"))
    torch.set_num_threads(1)
    summary = run(EvaluateConfig(results=str(tmp / "tryon"), ground_truth=str(tmp / "gt.parquet"),
                                 output=str(tmp / "eval"), batch_size=4, height=SIZE, width=SIZE, examples=1,
                                 actors=1, cpus_per_actor=0.5, torch_threads=1))
    assert sorted(summary["student_versions"]) == sorted([versions["good"], versions["bad"]])
    return {"tmp": tmp, "versions": versions, "evaluation": str(tmp / "eval"),
            "student": {n: str(tmp / n / "student.pt") for n in versions}}


def _promote(argv: list[str], capsys) -> tuple[int, dict | None, list[str]]:
    from jobs.promote import main

    code = main(argv)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), [l for l in err.splitlines() if l.startswith("error:")]


def _records(prefix: Path) -> list[Path]:
    return sorted((prefix / "promotions").glob("*.json")) if (prefix / "promotions").is_dir() else []


def test_refused_below_threshold_writes_nothing(world, tmp_path, capsys):
    to = tmp_path / "production"
    code, summary, errors = _promote(["--student", world["student"]["bad"], "--evaluation", world["evaluation"],
                                      "--to", str(to)], capsys)
    assert code == 2 and summary is None
    assert len(errors) == 1 and re.search(r"ssim -?[0-9.e-]+ < min_ssim 0\.8", errors[0]), errors
    assert world["versions"]["bad"] in errors[0] and "--force" in errors[0]
    assert not to.exists(), "a refused promotion writes nothing"


def test_accepted_above_threshold(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PFAFN_PROMOTED_BY", "release-bot")
    to = tmp_path / "production"
    before = dt.datetime.now(dt.timezone.utc)
    # the summary.json of the evaluation names its report.json: either location works
    code, summary, errors = _promote(["--student", world["student"]["good"], "--to", str(to), "--evaluation",
                                      str(Path(world["evaluation"]) / "summary.json"), "--set", "min_psnr=30"],
                                     capsys)
    assert code == 0 and not errors, errors
    (record_path,) = _records(to)
    record = json.loads(record_path.read_text())
    assert summary["promotion"] == str(record_path) and record_path.name.endswith(f"-{world['versions']['good']}.json")
    assert record["student"] == world["student"]["good"] and record["student_version"] == world["versions"]["good"]
    assert record["promoted_by"] == "release-bot" and record["forced"] is False and record["reason"] is None
    promoted_at = dt.datetime.fromisoformat(record["promoted_at"])
    assert promoted_at.utcoffset() == dt.timedelta(0) and before <= promoted_at <= dt.datetime.now(dt.timezone.utc)
    assert record["scores"]["ssim"] == pytest.approx(1.0) and record["scores"]["error_rate"] == 0.0
    assert record["thresholds"] == {"min_ssim": 0.8, "min_psnr": 30, "max_error_rate": 0.05} and not record["missed"]
    assert record["evaluation"].endswith("summary.json") and record["replaces"] is None


def test_force_is_recorded_with_its_reason(world, tmp_path, capsys):
    to = tmp_path / "production"
    code, _, errors = _promote(["--student", world["student"]["bad"], "--to", str(to), "--force"], capsys)
    assert code == 2 and "--reason" in errors[0] and not to.exists()
    code, summary, errors = _promote(["--student", world["student"]["bad"], "--evaluation", world["evaluation"],
                                      "--to", str(to), "--force", "--reason", "hotfix:\n ticket 9"], capsys)
    assert code == 0 and not errors
    record = json.loads(Path(summary["promotion"]).read_text())
    assert record["forced"] is True and record["reason"] == "hotfix: ticket 9"
    assert len(record["missed"]) == 1 and record["missed"][0].startswith("ssim ")


@pytest.mark.parametrize("student, extra, message", [
    ("other", [], "is not of this student: it scored student version(s)"),
    ("good", ["--set", "max_fid=50"], "fid is missing from the evaluation (max_fid 50)"),
    ("good", ["--set", "extra_thresholds={min_garment_ssim: 0.5}"], "garment_ssim is missing from the evaluation"),
    ("good", ["--evaluation", ""], "no evaluation to check max_error_rate, min_ssim against"),
])
def test_refusals_name_the_cause(world, tmp_path, capsys, student, extra, message):
    to = tmp_path / "production"
    code, _, errors = _promote(["--student", world["student"][student], "--evaluation", world["evaluation"],
                                "--to", str(to), *extra], capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not to.exists()


# ----------------------------------------------------------------------------------------------------------------------
# nightly follows the promotions


def _nightly(prefix: Path, capsys, monkeypatch) -> dict:
    from jobs.nightly import main

    monkeypatch.chdir(ROOT)
    code = main(["--config", "jobs/configs/nightly.yaml", "--promotions", str(prefix), "--garments", "g.parquet",
                 "--models", "m.parquet", "--output", "out", "--date", "2026-03-01", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_nightly_uses_the_newest_promotion_and_rollback(world, tmp_path, capsys, monkeypatch, caplog):
    to = tmp_path / "production"
    good, bad = world["student"]["good"], world["student"]["bad"]
    assert _promote(["--student", good, "--evaluation", world["evaluation"], "--to", str(to)], capsys)[0] == 0
    # a newer distill run nobody promoted: nightly must not pick it up
    newer = tmp_path / "distill" / "newer"
    newer.mkdir(parents=True)
    (newer / "student.pt").write_bytes(Path(bad).read_bytes())
    (newer / "summary.json").write_text(json.dumps({"stage": "distill", "student_checkpoint": "student.pt",
                                                    "finished_at": "2099-01-01T00:00:00Z"}))
    first = _nightly(to, capsys, monkeypatch)
    assert first["student"] == good and first["student_version"] == world["versions"]["good"]
    assert f"--student {good} " in first["entrypoint"]

    assert _promote(["--student", bad, "--to", str(to), "--force", "--reason", "try it"], capsys)[0] == 0
    second = _nightly(to, capsys, monkeypatch)
    assert second["student"] == bad and second["promotion_forced"] is True

    code, summary, _ = _promote(["--student", good, "--evaluation", world["evaluation"], "--to", str(to)], capsys)
    assert code == 0 and summary["replaces"] == world["versions"]["bad"]
    rolled_back = _nightly(to, capsys, monkeypatch)
    assert rolled_back["student"] == good and rolled_back["promotion"] == summary["promotion"]
    assert len(_records(to)) == 3, "every promotion is its own record"

    # corrupt records that would sort (by key) or claim (by time) to be newest are skipped, never chosen
    (to / "promotions" / "99999999T999999.999999Z-zzz.json").write_text("{not json")
    (to / "promotions" / "99999999T999999.999999Z-yyy.json").write_text(json.dumps(
        {"format": promotions.FORMAT, "student_version": "yyy", "promoted_at": "2099-01-01T00:00:00Z"}))
    with caplog.at_level(logging.WARNING, logger="pipelines.stages.nightly"):
        after = _nightly(to, capsys, monkeypatch)
    assert after["student"] == good and after["promotion"] == summary["promotion"]
    warnings = [r.getMessage() for r in caplog.records if "ignored promotion record" in r.getMessage()]
    assert len(warnings) == 2 and any("invalid JSON" in w for w in warnings) and any("no 'student'" in w
                                                                                       for w in warnings)


# ----------------------------------------------------------------------------------------------------------------------
# records


def test_records_never_overwrite_and_ties_go_by_key(tmp_path):
    prefix = str(tmp_path / "p")
    record = {"student": "/s.pt", "student_version": "abc"}
    first, _ = promotions.write_record(prefix, record)
    second, _ = promotions.write_record(prefix, record)
    assert first != second and len(promotions.list_promotions(prefix)[0]) == 2
    same = {"format": promotions.FORMAT, "student": "/s.pt", "promoted_at": "2030-01-01T00:00:00+00:00"}
    for key in ("a", "b"):
        storage.write_json(storage.join_uri(prefix, "promotions", f"{key}.json"), {**same, "student_version": key})
    best, skipped = promotions.newest_promotion(prefix)
    assert best.student_version == "b" and not skipped


def test_promote_config_is_documented():
    from pipelines.core.config import build_config
    from pipelines.stages.promote import PromoteConfig

    text = (ROOT / "jobs" / "configs" / "promote.yaml").read_text()
    data = yaml.safe_load(text)
    config = build_config(PromoteConfig, file_data=data)
    assert set(data) == {f for f in PromoteConfig.__dataclass_fields__}
    assert config.min_ssim == 0.8 and config.max_error_rate == 0.05 and config.max_fid is None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z_]+:", line):
            assert re.search(r"\s#\s*\S", line.split(":", 1)[1]), f"promote.yaml: {line!r} has no comment"


def test_catalog_refuses_a_checkpoint_replaced_after_its_promotion(tmp_path):
    """Nightly passes the promoted version (--expect-version): other weights under the promoted URI are refused."""
    from pipelines.core.errors import StageError
    from pipelines.stages.catalog_tryon import CatalogConfig, CatalogTryOn

    student = str(tmp_path / "student.pt")
    write_student(student, seed=0)
    version = CatalogTryOn(CatalogConfig(student=student)).model_version()
    assert CatalogTryOn(CatalogConfig(student=student, expect_version=version)).model_version() == version
    write_student(student, seed=1)  # replaced in place
    with pytest.raises(StageError, match=f"expected {version}"):
        CatalogTryOn(CatalogConfig(student=student, expect_version=version)).model_version()
