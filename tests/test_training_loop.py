"""Restoring a Ray Train checkpoint's state (``pipelines.training.checkpoints.load_checkpoint_state``)."""
from __future__ import annotations

import io
import os
import threading

import torch

from pipelines.core import storage
from pipelines.training.checkpoints import STATE_FILE, load_checkpoint_state


def _state() -> dict:
    return {"step": 7, "nets": {"warp": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}}}


def _check(state: dict) -> None:
    assert state["step"] == 7
    assert torch.equal(state["nets"]["warp"]["w"], _state()["nets"]["warp"]["w"])


def test_local_checkpoint_is_read_in_place(tmp_path):
    import ray.train

    torch.save(_state(), tmp_path / STATE_FILE)
    _check(load_checkpoint_state(ray.train.Checkpoint.from_directory(str(tmp_path))))


def test_s3_checkpoint_is_downloaded_into_a_private_directory(s3_bucket):
    """Two workers on one node resuming from an S3 checkpoint: ``Checkpoint.as_directory()`` downloads into one
    node-wide temporary directory, and a late worker re-downloads into it while an earlier one is reading (a corrupt
    read in CI). Here another process holds that shared directory's download lock and has left a truncated file in
    it: a reader that used the shared directory would block on the lock (or read the truncated file); ours must
    return the right state and leave the shared directory alone."""
    import ray.train
    from ray.air._internal.filelock import TempFileLock

    buf = io.BytesIO()
    torch.save(_state(), buf)
    uri = f"{s3_bucket}/ckpt/step_00000007"
    storage.write_bytes(storage.join_uri(uri, STATE_FILE), buf.getvalue())
    fs, path = storage.pyarrow_filesystem(uri)
    ckpt = ray.train.Checkpoint(path, filesystem=fs)

    shared = ckpt._get_temporary_checkpoint_dir()
    os.makedirs(shared, exist_ok=True)
    truncated = os.path.join(shared, STATE_FILE)
    with open(truncated, "wb") as fh:
        fh.write(buf.getvalue()[:100])
    result: dict = {}

    def read() -> None:
        try:
            result["state"] = load_checkpoint_state(ckpt)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    try:
        with TempFileLock(shared, timeout=-1):
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            reader.join(timeout=60)
            assert not reader.is_alive(), "load_checkpoint_state waited on the node-shared download directory"
        assert "error" not in result, result.get("error")
        _check(result["state"])
        with open(truncated, "rb") as fh:
            assert len(fh.read()) == 100
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
