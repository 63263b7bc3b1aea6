"""benchmarks/profile_model.py: the profile attributes every op to a model scope and counts the layout copies."""
from __future__ import annotations

import json

import pytest

from benchmarks import profile_model
from tests.model_helpers import single_thread  # noqa: F401


def test_quick_profile_groups_by_scope_and_op(tmp_path, single_thread):  # noqa: F811
    out, md = tmp_path / "p.json", tmp_path / "p.md"
    result = profile_model.main(["--quick", "--garments", "1", "--models", "2", "--batch-size", "2", "--repeats", "1",
                                 "--device", "cpu", "--malloc-cache-mb", "0",  # leave this test process's malloc alone
                                 "--output", str(out), "--markdown", str(md)])
    assert json.loads(out.read_text())["pairs"] == 2
    assert result["malloc_cache_mb"] == 0 and result["minor_page_faults_per_tile"] >= 0
    prof = result["profile"]
    scopes = {s["scope"] for s in prof["by_scope"]}
    assert {"garment_encoder", "person_FPN", "flow_network", "flow_network.netMain", "generator"} <= scopes
    assert sum(s["share"] for s in prof["by_scope"]) == pytest.approx(1.0, abs=1e-3)
    ops = {o["op"]: o for o in prof["top_ops"]}
    assert ops["aten::mkldnn_convolution"]["calls"] > 0
    assert "aten::copy_" in prof["layout_ops"]
    assert "| scope | self CPU ms | share |" in md.read_text()
