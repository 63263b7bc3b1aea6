"""Where a training run keeps its state, and how it is read back.

``{output}/ray/<phase>/step_XXXXXXXX/{state.pt,state.json,loss_curve.png}``
    Ray Train checkpoints (``RunConfig(storage_path={output}/ray, name=<phase>)``): networks, optimizers, GradScaler,
    step, loss history, epoch metrics; read with ``weights_only=True``; the phase's loss curve so far
    (``pipelines.training.curves``).
``{output}/phases/<phase>.json`` and ``.pt``
    a finished phase's record (plan key, resume facts, history) and final weights; the next phase starts from them
    and a re-run skips the phase.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

from pipelines.core import storage

PHASES_DIR = "phases"
RAY_DIR = "ray"
STATE_FILE = "state.pt"
STATE_JSON = "state.json"


def write_checkpoint_dir(state: dict, meta: dict, files: dict[str, bytes] | None = None) -> str:
    """A new local directory holding ``state.pt`` (``state``), ``state.json`` (``meta``) and ``files`` (name ->
    bytes: the loss curve, ``pipelines.training.curves``). Ray Train uploads the directory as one checkpoint."""
    import torch

    tmp = tempfile.mkdtemp(prefix="pfafn-ckpt-")
    torch.save(state, os.path.join(tmp, STATE_FILE))
    with open(os.path.join(tmp, STATE_JSON), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, sort_keys=True, default=str)
    for name, data in (files or {}).items():
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(data)
    return tmp


def load_checkpoint_state(ckpt) -> dict:
    """``state.pt`` of a Ray Train checkpoint, read with ``weights_only=True``.

    Not ``Checkpoint.as_directory()``: for a remote (S3) checkpoint it downloads into one temporary directory shared
    by every process on the node, and a worker that arrives after another one finished downloading downloads again
    into the same files while the first is still reading them ("PytorchStreamReader failed reading file ...", seen
    on resume with two workers on one node; ray-project/ray#48726). Each process downloads into its own directory
    instead; a local checkpoint is read in place."""
    import pyarrow.fs
    import torch

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
        return torch.load(os.path.join(ckpt.path, STATE_FILE), map_location="cpu", weights_only=True)
    tmp = tempfile.mkdtemp(prefix="pfafn-resume-")
    try:
        ckpt.to_directory(tmp)
        return torch.load(os.path.join(tmp, STATE_FILE), map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint_step(output: str, phase: str) -> int:
    """Highest step among the phase's persisted checkpoints (``step_XXXXXXXX/state.json``), 0 when none."""
    prefix = storage.join_uri(output, RAY_DIR, phase)
    try:
        files = storage.list_files(prefix, suffix=STATE_JSON)
    except storage.StorageError:
        return 0
    best = 0
    for uri in files:
        parent = storage.basename(storage.parent_uri(uri))
        if parent.startswith("step_"):
            try:
                best = max(best, int(parent[5:]))
            except ValueError:
                continue
    return best


def phase_record_uri(output: str, phase: str) -> str:
    return storage.join_uri(output, PHASES_DIR, f"{phase}.json")


def phase_weights_uri(output: str, phase: str) -> str:
    return storage.join_uri(output, PHASES_DIR, f"{phase}.pt")


def finished_phase(output: str, phase: str, key: str) -> dict | None:
    """The record of ``phase`` when it finished with the plan ``key`` (and its weights exist), else None."""
    uri = phase_record_uri(output, phase)
    if not storage.exists(uri) or not storage.exists(phase_weights_uri(output, phase)):
        return None
    record = storage.read_json(uri)
    if record.get("finished") and record.get("plan_key") == key:
        return record
    return None


def save_phase_weights(output: str, phase: str, nets: dict) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(nets, buf)
    storage.write_bytes(phase_weights_uri(output, phase), buf.getvalue())


def load_phase_weights(output: str, phase: str) -> dict:
    """The state dicts a finished phase left (``{net name: state_dict}``)."""
    import torch

    data = storage.read_bytes(phase_weights_uri(output, phase))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def warp_and_gen(state_dict: dict) -> tuple[dict, dict]:
    """Split an end-to-end model's state dict (children ``warp`` and ``gen``) into the two checkpoint parts."""
    warp = {k[len("warp."):]: v for k, v in state_dict.items() if k.startswith("warp.")}
    gen = {k[len("gen."):]: v for k, v in state_dict.items() if k.startswith("gen.")}
    return warp, gen
