"""pfafn.checkpoint and pfafn.load_official: formats, round trips, versions, error messages."""

from __future__ import annotations

import io
import uuid

import pytest
import torch

import pfafn
from pfafn.checkpoint import (
    FORMAT,
    CheckpointError,
    export_official,
    load_checkpoint,
    load_student,
    save_checkpoint,
    weights_version,
)
from pfafn.nn import AFWM, NetworkWidths, ResUnetGenerator
from pfafn.tryon import TryOnModel
from tests.model_helpers import SMALL, small_tryon_model

H, W = 64, 64


@pytest.fixture(scope="module")
def model():
    return small_tryon_model()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(1, 3, H, W, generator=g) * 2 - 1, torch.rand(1, 3, H, W, generator=g) * 2 - 1,
            torch.rand(1, 1, H, W, generator=g))


@pytest.fixture(scope="module")
def reference(model, pair):
    with torch.no_grad():
        return model(*pair).tryon


def _official_files(model, tmp_path):
    warp_path, gen_path = tmp_path / "warp_model_final.pth", tmp_path / "gen_model_final.pth"
    export_official(model, warp_path, gen_path)
    return warp_path, gen_path


def test_project_round_trip(model, pair, reference, tmp_path):
    path = tmp_path / "ckpt" / "student.pt"
    version = save_checkpoint(path, warp=model.warp, gen=model.gen, kind="student", meta={"epoch": 3})
    assert len(version) == 12 and int(version, 16) >= 0
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["kind"] == "student" and raw["version"] == version
    assert raw["input_nc"] == {"warp": 3, "gen": 7} and raw["widths"]["fpn_dim"] == 16
    loaded = load_checkpoint(path)
    assert (loaded.kind, loaded.version, loaded.widths, loaded.meta) == ("student", version, SMALL, {"epoch": 3})
    assert not loaded.warp.training and not loaded.gen.training
    with torch.no_grad():
        out = load_student(path)(*pair).tryon
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_version_is_a_stable_content_id(model, tmp_path):
    v1 = save_checkpoint(tmp_path / "a.pt", warp=model.warp, gen=model.gen, kind="student")
    v2 = save_checkpoint(tmp_path / "b.pt", warp=model.warp.state_dict(), gen=model.gen.state_dict(),
                         kind="student", meta={"note": "meta is not part of the version"})
    assert v1 == v2 == weights_version(model.warp, model.gen)
    assert load_checkpoint(tmp_path / "b.pt").version == v1
    # memory format does not change the id
    warp_cl = AFWM(3, SMALL)
    warp_cl.load_state_dict(model.warp.state_dict())
    warp_cl.to(memory_format=torch.channels_last)
    assert weights_version(warp_cl, model.gen) == v1
    # one changed weight does
    state = {k: v.clone() for k, v in model.gen.state_dict().items()}
    state["model.model.0.weight"][0, 0, 0, 0] += 1e-3
    assert weights_version(model.warp, state) != v1


def test_tampered_checkpoint_fails_verification(model, tmp_path):
    path = tmp_path / "s.pt"
    save_checkpoint(path, warp=model.warp, gen=model.gen, kind="student")
    raw = torch.load(path, weights_only=True)
    raw["gen"]["model.model.0.weight"].mul_(2)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(path)


def test_sources_bytes_filelike_and_uris(model, pair, reference, tmp_path):
    buffer = io.BytesIO()
    version = save_checkpoint(buffer, warp=model.warp, gen=model.gen, kind="student")
    data = buffer.getvalue()
    assert load_checkpoint(data).version == version
    assert load_checkpoint(io.BytesIO(data)).version == version
    (tmp_path / "x.pt").write_bytes(data)
    assert load_checkpoint(str(tmp_path / "x.pt")).version == version
    assert load_checkpoint(f"file://{tmp_path / 'x.pt'}").version == version
    uri = f"memory://pfafn-test-{uuid.uuid4().hex}/student.pt"  # a non-local fsspec filesystem
    assert save_checkpoint(uri, warp=model.warp, gen=model.gen, kind="student") == version
    with torch.no_grad():
        torch.testing.assert_close(load_student(uri)(*pair).tryon, reference, rtol=0, atol=0)


def test_export_official_and_load_official(model, pair, reference, tmp_path):
    warp_path, gen_path = _official_files(model, tmp_path)
    warp_state = torch.load(warp_path, weights_only=True)
    assert type(warp_state) is dict and len(warp_state) == 420
    assert not any(k.startswith("module.") for k in warp_state)
    assert set(warp_state) == set(model.warp.state_dict())
    official = pfafn.load_official(warp_path, gen_path)
    assert not official.training and official.widths == SMALL
    with torch.no_grad():
        torch.testing.assert_close(official(*pair).tryon, reference, rtol=0, atol=0)
    # exporting from a project checkpoint gives the same files
    src = tmp_path / "s.pt"
    save_checkpoint(src, warp=model.warp, gen=model.gen, kind="student")
    export_official(src, tmp_path / "w2.pth", tmp_path / "g2.pth")
    assert (tmp_path / "w2.pth").read_bytes() == warp_path.read_bytes()


def test_training_saved_official_checkpoints_load(model, pair, reference, tmp_path):
    """DDP ``module.`` prefix, the training-only ``aflow_net.weight`` and the legacy (PyTorch 1.1) file format."""
    warp_state = {f"module.{k}": v for k, v in model.warp.state_dict().items()}
    warp_state["module.aflow_net.weight"] = torch.randn(4, 1, 3, 3)
    gen_state = {f"module.{k}": v for k, v in model.gen.state_dict().items()}
    warp_path, gen_path = tmp_path / "warp.pth", tmp_path / "gen.pth"
    torch.save(warp_state, warp_path, _use_new_zipfile_serialization=False)
    torch.save(gen_state, gen_path, _use_new_zipfile_serialization=False)
    with open(gen_path, "rb") as gen_file:
        loaded = pfafn.load_official(str(warp_path), gen_file)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*pair).tryon, reference, rtol=0, atol=0)


def test_wrong_keys_and_shapes_are_named(model, tmp_path):
    warp_path, gen_path = _official_files(model, tmp_path)
    good = torch.load(gen_path, weights_only=True)

    bad = dict(good)
    del bad["model.model.2.block.0.weight"]
    bad["model.model.99.weight"] = torch.zeros(1)
    bad["model.model.6.weight"] = torch.zeros(4, 17, 3, 3)
    torch.save(bad, tmp_path / "bad_gen.pth")
    with pytest.raises(CheckpointError) as info:
        pfafn.load_official(warp_path, tmp_path / "bad_gen.pth")
    message = str(info.value)
    assert "1 missing key(s): model.model.2.block.0.weight" in message
    assert "1 unexpected key(s): model.model.99.weight" in message
    assert "model.model.6.weight (checkpoint (4, 17, 3, 3) vs model (4, 16, 3, 3))" in message

    warp_bad = torch.load(warp_path, weights_only=True)
    for k in [k for k in warp_bad if k.startswith("aflow_net.netRefine")]:
        del warp_bad[k]
    with pytest.raises(CheckpointError, match=r"40 missing key\(s\): aflow_net.netRefine.*\+35 more"):
        pfafn.load_official(_save(warp_bad, tmp_path / "w.pth"), gen_path)

    with pytest.raises(CheckpointError, match="cannot read"):
        pfafn.load_official(b"not a checkpoint", gen_path)
    with pytest.raises(CheckpointError, match="load_official"):
        load_checkpoint(warp_path)
    save_checkpoint(tmp_path / "p.pt", warp=model.warp, gen=model.gen, kind="student")
    with pytest.raises(CheckpointError, match="load_checkpoint"):
        pfafn.load_official(tmp_path / "p.pt", gen_path)
    with pytest.raises(CheckpointError, match="missing"):
        save_checkpoint(tmp_path / "q.pt", warp=model.warp, gen=bad, kind="student")


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_tutor_checkpoints(tmp_path):
    torch.manual_seed(3)
    warp, gen = AFWM(45, SMALL), ResUnetGenerator(8, 4, ngf=SMALL.ngf)
    version = save_checkpoint(tmp_path / "tutor.pt", warp=warp, gen=gen, kind="tutor")
    loaded = load_checkpoint(tmp_path / "tutor.pt")
    assert (loaded.kind, loaded.version, loaded.warp.input_nc, loaded.gen.input_nc) == ("tutor", version, 45, 8)
    torch.testing.assert_close(loaded.warp.state_dict(), warp.state_dict())
    with pytest.raises(CheckpointError, match="student"):
        load_student(tmp_path / "tutor.pt")
    with pytest.raises(CheckpointError, match=r"a student is AFWM\(3\)"):
        save_checkpoint(tmp_path / "x.pt", warp=warp, gen=gen, kind="student")
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", warp=warp, gen=gen, kind="teacher")
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "x.pt", warp=warp, gen=gen, kind="tutor", meta={"bad": object()})


def test_published_widths_are_inferred_from_shapes():
    from pfafn.checkpoint import _generator_config, _warp_config

    with torch.device("meta"):
        warp, gen = AFWM(3), ResUnetGenerator(7, 4)
    assert _warp_config(warp.state_dict()) == (3, NetworkWidths())
    assert _generator_config(gen.state_dict()) == {"input_nc": 7, "output_nc": 4, "num_downs": 5, "ngf": 64}


def test_versions_without_building_and_of_official_files(model, tmp_path):
    from pfafn.checkpoint import official_version, read_version, to_tryon_model

    path = tmp_path / "s.pt"
    version = save_checkpoint(path, warp=model.warp, gen=model.gen, kind="student")
    assert read_version(path) == read_version(path.read_bytes()) == version
    warp_path, gen_path = _official_files(model, tmp_path)
    assert official_version(warp_path, gen_path) == version  # same weights, same id, whatever the format
    assert isinstance(to_tryon_model(load_checkpoint(path)), TryOnModel)
    with pytest.raises(CheckpointError, match="not a pfafn-tryon/1"):
        read_version(warp_path)
