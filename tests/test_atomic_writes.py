"""Checkpoints are written atomically: a failure in the middle of a write leaves the previous file intact."""
from __future__ import annotations

import pytest
import s3fs
import torch

from pfafn.checkpoint import load_checkpoint, save_checkpoint
from pfafn.tryon import TryOnModel
from pipelines.core import storage
from tests.catalog_helpers import TINY


def _model(seed: int) -> TryOnModel:
    torch.manual_seed(seed)
    return TryOnModel(TINY).eval()


@pytest.fixture
def failing_s3_writes(monkeypatch):
    """The connection drops while the checkpoint's bytes are being sent: a file object's ``write`` sends half and
    raises; a whole-object PUT raises. What is left to publish afterwards (a close after the failed write) goes
    through, as it would once the connection is back."""
    real_write = s3fs.core.S3File.write
    real_call = s3fs.core.S3FileSystem._call_s3
    state = {"size": None}

    def half_then_fail(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise ConnectionResetError("injected: connection dropped mid-write")

    async def call_s3(self, method, *args, **kwargs):
        body = kwargs.get("Body")
        if method in ("put_object", "upload_part") and body is not None and len(body) == state["size"]:
            raise ConnectionResetError("injected: connection dropped mid-write")
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.core.S3File, "write", half_then_fail)
    monkeypatch.setattr(s3fs.core.S3FileSystem, "_call_s3", call_s3)
    return state


def test_a_failed_s3_checkpoint_write_keeps_the_old_checkpoint(s3_bucket, request):
    uri = f"{s3_bucket}/distill/student.pt"
    good = _model(0)
    version = save_checkpoint(uri, warp=good.warp, gen=good.gen, kind="student")
    faults = request.getfixturevalue("failing_s3_writes")
    other = _model(1)
    faults["size"] = len(storage.read_bytes(uri))  # same widths: the new checkpoint has the same size
    with pytest.raises(Exception, match="injected"):
        save_checkpoint(uri, warp=other.warp, gen=other.gen, kind="student")
    storage.clear_filesystem_cache()
    assert load_checkpoint(uri).version == version


def test_a_failed_local_checkpoint_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import os

    path = str(tmp_path / "student.pt")
    good = _model(0)
    version = save_checkpoint(path, warp=good.warp, gen=good.gen, kind="student")
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("injected: disk gone")))
    other = _model(1)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(path, warp=other.warp, gen=other.gen, kind="student")
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(path).version == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.pt"]  # no temp file left behind
