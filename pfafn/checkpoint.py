"""Checkpoints: the project's own format, the published PF-AFN format, and the conversions between them.

**Published format** (``warp_model_final.pth``, ``gen_model_final.pth``): each file is a plain state dict of one
network (AFWM or ResUnetGenerator), keys without a ``module.`` prefix; training-saved warp files may carry the extra
``aflow_net.weight`` (4×1×3×3) second-derivative filters, which are not model weights and are dropped on load.
See :func:`pfafn.load_official` and :func:`export_official`.

**Project format** (``FORMAT = "pfafn-tryon/1"``): one ``torch.save`` file holding a plain dict, loadable with
``torch.load(..., weights_only=True)``::

    {"format": "pfafn-tryon/1", "kind": "student" | "tutor", "version": "<12 hex>",
     "widths": {"encoder_channels": [...], "fpn_dim": 256, "flow_channels": [...], "ngf": 64},
     "input_nc": {"warp": 3 | 45, "gen": 7 | 8}, "warp": state_dict, "gen": state_dict, "meta": {...}}

A *student* holds AFWM(3) + ResUnetGenerator(7, 4); a *tutor* AFWM(45) + ResUnetGenerator(8, 4).  ``version`` is a
content id: the first 12 hex digits of a SHA-256 over the weights (key, dtype, shape and bytes of every state-dict
entry, in sorted key order), independent of memory format, device, file name and ``meta``.  It is the
``student_version`` in catalog output keys.

Sources are local paths, ``file://`` or any fsspec URI (``s3://…``), ``bytes`` or binary file-likes; destinations
are local paths (written atomically), fsspec URIs or writable file-likes.  Every load uses ``weights_only=True``.
Shape/key problems raise :class:`CheckpointError`, which names the offending keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import torch
from torch import Tensor, nn

from pfafn.nn.afwm import AFWM, NetworkWidths
from pfafn.nn.generator import ResUnetGenerator

if TYPE_CHECKING:
    from pfafn.tryon import TryOnModel

__all__ = [
    "FORMAT",
    "KINDS",
    "CheckpointError",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_student",
    "to_tryon_model",
    "read_version",
    "official_version",
    "export_official",
    "weights_version",
    "read_state_dict",
    "build_warp",
    "build_generator",
    "build_tryon_model",
]

FORMAT = "pfafn-tryon/1"
#: kind → (AFWM input_nc, generator input_nc)
KINDS = {"student": (3, 7), "tutor": (45, 8)}
#: Training-only parameter (fixed second-difference filters) found in training-saved warp checkpoints.
TRAINING_ONLY_KEYS = ("aflow_net.weight",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_NAMES = 5

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]
Destination = Union[str, os.PathLike, BinaryIO]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the network it is loaded into."""


# --------------------------------------------------------------------------------------------------------------
# I/O


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return f"<{type(src).__name__}>"


def _is_uri(path: str) -> bool:
    return "://" in path


def _torch_load(src: Source, map_location: Any, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` from any supported source (``mmap`` for local zip-format files)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return torch.load(io.BytesIO(bytes(src)), map_location=map_location, weights_only=True)
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if _is_uri(path):
            import fsspec

            with fsspec.open(path, "rb") as f:
                data = f.read()  # one ranged GET instead of many small seeks
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    if hasattr(src, "read"):
        if not (hasattr(src, "seekable") and src.seekable()):
            src = io.BytesIO(src.read())
        return torch.load(src, map_location=map_location, weights_only=True)
    raise TypeError(f"unsupported checkpoint source {type(src).__name__}: use a path, URI, bytes or file-like")


def _load_object(src: Source, map_location: Any, what: str, mmap: bool = False) -> Any:
    try:
        return _torch_load(src, map_location, mmap)
    except (OSError, TypeError):
        raise
    except Exception as e:  # UnpicklingError, RuntimeError (corrupt zip), EOFError, ...
        raise CheckpointError(f"cannot read {what} {_describe(src)}: {type(e).__name__}: {e}") from e


def _write_bytes(dest: Destination, data: bytes) -> None:
    if hasattr(dest, "write"):
        dest.write(data)
        return
    path = os.fspath(dest)
    if _is_uri(path):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, fs_path = fsspec.core.url_to_fs(path)
        if not isinstance(fs, LocalFileSystem):
            # One PUT (or a multipart upload aborted on any error): the object appears whole or not at all. Not
            # ``with fs.open(path, "wb")``: its ``__exit__`` closes the file even when the block raised, which
            # uploads what was buffered so far and replaces a good checkpoint with a truncated one.
            fs.pipe_file(fs_path, data)
            return
        path = fs_path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")  # unique per writer
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: readers never see a half-written checkpoint
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _serialize(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# State dicts


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):  # DDP ("module.") / torch.compile ("_orig_mod.")
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _canonical_state(state: Mapping[str, Any] | nn.Module, what: str) -> dict[str, Tensor]:
    """A plain ``{key: cpu contiguous tensor}`` dict without wrapper prefixes or training-only keys."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} is a {type(state).__name__}, expected a state dict (mapping of tensors)")
    state = _strip_prefixes(state)
    for key in TRAINING_ONLY_KEYS:
        state.pop(key, None)
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{what}: {len(bad)} entries are not tensors: {_names(bad)}")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_NAMES])
    return shown + (f", … (+{len(keys) - _MAX_NAMES} more)" if len(keys) > _MAX_NAMES else "")


def _check_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_names(mismatched)}")
        raise CheckpointError(f"{what} does not match the network: " + "; ".join(parts))


def _shape(state: Mapping[str, Tensor], key: str, dim: int, default: int) -> int:
    t = state.get(key)
    return int(t.shape[dim]) if t is not None and t.dim() > dim else default


def _warp_config(state: Mapping[str, Tensor]) -> tuple[int, NetworkWidths]:
    """(input_nc, widths) of an AFWM state dict, from tensor shapes; defaults where a key is absent."""
    d = NetworkWidths()
    channels = tuple(
        _shape(state, f"image_features.encoders.{i}.0.block.2.weight", 0, d.encoder_channels[i]) for i in range(5)
    )
    fpn_dim = _shape(state, "image_FPN.adaptive.0.weight", 0, d.fpn_dim)
    flow = tuple(_shape(state, f"aflow_net.netMain.0.{j}.weight", 0, d.flow_channels[i]) for i, j in enumerate((0, 2, 4)))
    input_nc = _shape(state, "cond_features.encoders.0.0.block.0.weight", 0, 3)
    return input_nc, NetworkWidths(encoder_channels=channels, fpn_dim=fpn_dim, flow_channels=flow, ngf=d.ngf)


_DOWNCONV = re.compile(r"^model\.model\.(?:4\.model\.)?(?:5\.model\.)*0\.weight$")


def _generator_config(state: Mapping[str, Tensor]) -> dict[str, int]:
    """ResUnetGenerator constructor arguments from tensor shapes."""
    return {
        "input_nc": _shape(state, "model.model.0.weight", 1, 7),
        "output_nc": _shape(state, "model.model.6.weight", 0, 4),
        "num_downs": max(5, sum(1 for k in state if _DOWNCONV.match(k))),
        "ngf": _shape(state, "model.model.0.weight", 0, 64),
    }


def _materialize(make: Any, state: dict[str, Tensor], what: str) -> nn.Module:
    """Build ``make()`` without random init (meta device) and assign the checked ``state`` to it."""
    with torch.device("meta"):
        module = make()
    expected = module.state_dict()
    state = dict(state)
    for key, t in expected.items():  # pre-2018 files lack BN step counters; they do not affect eval
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    _check_keys(expected, state, what)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module


def build_warp(
    state: Mapping[str, Tensor] | nn.Module, *, what: str = "warp state dict", copy: bool = True
) -> AFWM:
    """An :class:`AFWM` (input_nc and widths inferred from shapes) holding ``state``.

    With ``copy=False`` the module takes ownership of the given CPU tensors (for freshly loaded files).
    """
    state = _canonical_state(state, what)
    if copy:
        state = {k: v.clone() for k, v in state.items()}
    input_nc, widths = _warp_config(state)
    return _materialize(lambda: AFWM(input_nc, widths), state, what)


def build_generator(
    state: Mapping[str, Tensor] | nn.Module, *, what: str = "generator state dict", copy: bool = True
) -> ResUnetGenerator:
    """A :class:`ResUnetGenerator` (configuration inferred from shapes) holding ``state`` (see :func:`build_warp`)."""
    state = _canonical_state(state, what)
    if copy:
        state = {k: v.clone() for k, v in state.items()}
    config = _generator_config(state)
    return _materialize(lambda: ResUnetGenerator(**config), state, what)


def build_tryon_model(
    warp_state: Mapping[str, Tensor] | nn.Module, gen_state: Mapping[str, Tensor] | nn.Module, *, copy: bool = True
) -> TryOnModel:
    """A student :class:`TryOnModel` from AFWM(3) and ResUnetGenerator(7, 4) state dicts, in train mode."""
    from pfafn.tryon import TryOnModel

    warp = build_warp(warp_state, what="warp checkpoint", copy=copy)
    gen = build_generator(gen_state, what="generator checkpoint", copy=copy)
    _check_kind("student", warp, gen)
    widths = NetworkWidths(
        encoder_channels=warp.widths.encoder_channels,
        fpn_dim=warp.widths.fpn_dim,
        flow_channels=warp.widths.flow_channels,
        ngf=int(gen.model.model[0].out_channels),
    )
    if gen.num_downs != 5:
        raise CheckpointError(f"the try-on generator has num_downs=5; this checkpoint has {gen.num_downs}")
    with torch.device("meta"):
        model = TryOnModel(widths)
    model.warp = warp
    model.gen = gen
    return model


def read_state_dict(src: Source, map_location: Any = "cpu", what: str = "checkpoint") -> dict[str, Tensor]:
    """Read a published-format (plain state dict) checkpoint; strips ``module.`` and drops ``aflow_net.weight``."""
    obj = _load_object(src, map_location, what)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise CheckpointError(
            f"{what} {_describe(src)} is a project checkpoint ({FORMAT}); use pfafn.checkpoint.load_checkpoint"
        )
    return _canonical_state(obj, f"{what} {_describe(src)}")


def _check_kind(kind: str, warp: AFWM, gen: ResUnetGenerator) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    warp_nc, gen_nc = KINDS[kind]
    if warp.input_nc != warp_nc or gen.input_nc != gen_nc or gen.output_nc != 4:
        raise CheckpointError(
            f"a {kind} is AFWM({warp_nc}) + ResUnetGenerator({gen_nc}, 4); got AFWM({warp.input_nc}) + "
            f"ResUnetGenerator({gen.input_nc}, {gen.output_nc})"
        )


def _tensor_bytes(t: Tensor) -> memoryview:
    return memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def weights_version(warp: Mapping[str, Tensor] | nn.Module, gen: Mapping[str, Tensor] | nn.Module) -> str:
    """The 12-hex content id of a (warp, gen) pair of networks or state dicts (see the module docstring)."""
    digest = hashlib.sha256()
    for name, part in (("warp", warp), ("gen", gen)):
        state = _canonical_state(part, name)
        for key in sorted(state):
            t = state[key]
            digest.update(f"{name}.{key}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
            digest.update(_tensor_bytes(t))
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------------
# Project format


@dataclass
class LoadedCheckpoint:
    """A project checkpoint, its networks built (eval mode, on ``map_location``).

    Attributes:
        kind: ``"student"`` or ``"tutor"``.
        version: 12-hex content id of the weights.
        widths: the networks' widths (inferred from the weights).
        warp: AFWM(3) (student) or AFWM(45) (tutor).
        gen: ResUnetGenerator(7, 4) (student) or ResUnetGenerator(8, 4) (tutor).
        meta: the free-form JSON-compatible dict saved with it.
    """

    kind: str
    version: str
    widths: NetworkWidths
    warp: AFWM
    gen: ResUnetGenerator
    meta: dict = field(default_factory=dict)

    def tryon_model(self) -> TryOnModel:
        """The student as a :class:`pfafn.tryon.TryOnModel` (sharing these modules)."""
        if self.kind != "student":
            raise CheckpointError(f"a TryOnModel needs a student checkpoint, this one is a {self.kind}")
        from pfafn.tryon import TryOnModel

        with torch.device("meta"):
            model = TryOnModel(self.widths)
        model.warp = self.warp
        model.gen = self.gen
        return model.train(self.warp.training)


def save_checkpoint(
    dest: Destination,
    *,
    warp: nn.Module | Mapping[str, Tensor],
    gen: nn.Module | Mapping[str, Tensor],
    kind: str,
    meta: dict | None = None,
) -> str:
    """Write a project checkpoint and return its ``version``.

    Args:
        dest: local path (atomic write, parent folders created), fsspec URI or writable binary file-like.
        warp, gen: the networks (DDP / torch.compile wrappers accepted) or their state dicts.
        kind: ``"student"`` (AFWM(3) + ResUnetGenerator(7, 4)) or ``"tutor"`` (AFWM(45) + ResUnetGenerator(8, 4)).
        meta: JSON-compatible dict (epoch, dataset, metrics, ...), stored as is; not part of the version.

    Raises:
        ValueError for an unknown kind or non-JSON meta; CheckpointError if the weights do not form that kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    meta = dict(meta or {})
    try:
        meta = json.loads(json.dumps(meta))  # plain types only, so weights_only loading accepts it
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be JSON-compatible: {e}") from e
    warp_state = _canonical_state(warp, "warp")
    gen_state = _canonical_state(gen, "gen")
    # Validate on the meta device: shapes only, no weights copied.
    warp_nc, widths = _warp_config(warp_state)
    gen_config = _generator_config(gen_state)
    with torch.device("meta"):
        warp_ref = AFWM(warp_nc, widths)
        gen_ref = ResUnetGenerator(**gen_config)
    _check_keys(warp_ref.state_dict(), warp_state, "warp")
    _check_keys(gen_ref.state_dict(), gen_state, "gen")
    _check_kind(kind, warp_ref, gen_ref)
    version = weights_version(warp_state, gen_state)
    widths = NetworkWidths(
        encoder_channels=widths.encoder_channels,
        fpn_dim=widths.fpn_dim,
        flow_channels=widths.flow_channels,
        ngf=gen_config["ngf"],
    )
    payload = {
        "format": FORMAT,
        "kind": kind,
        "version": version,
        "widths": widths.to_dict(),
        "input_nc": {"warp": warp_nc, "gen": gen_config["input_nc"]},
        "warp": warp_state,
        "gen": gen_state,
        "meta": meta,
    }
    _write_bytes(dest, _serialize(payload))
    return version


def load_checkpoint(src: Source, map_location: str | torch.device = "cpu", verify: bool = True) -> LoadedCheckpoint:
    """Read a project checkpoint and build its networks (eval mode).

    Args:
        src: local path, fsspec URI, bytes or binary file-like.
        map_location: device the networks end up on.
        verify: recompute the content id and raise :class:`CheckpointError` if it differs from the stored one.
    """
    obj = _load_object(src, "cpu", "checkpoint")
    where = _describe(src)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{where} is a plain state dict (published PF-AFN format?); use pfafn.load_official for those"
            )
        raise CheckpointError(f"{where} is not a {FORMAT} checkpoint")
    for key in ("kind", "version", "warp", "gen"):
        if key not in obj:
            raise CheckpointError(f"{where}: the {FORMAT} checkpoint has no {key!r} entry")
    kind = obj["kind"]
    if kind not in KINDS:
        raise CheckpointError(f"{where}: unknown kind {kind!r}")
    warp = build_warp(obj["warp"], what=f"{where} warp", copy=False)
    gen = build_generator(obj["gen"], what=f"{where} gen", copy=False)
    _check_kind(kind, warp, gen)
    version = str(obj["version"])
    if verify:
        actual = weights_version(warp, gen)
        if actual != version:
            raise CheckpointError(f"{where}: stored version {version} but the weights hash to {actual} (corrupted?)")
    widths = NetworkWidths(
        encoder_channels=warp.widths.encoder_channels,
        fpn_dim=warp.widths.fpn_dim,
        flow_channels=warp.widths.flow_channels,
        ngf=int(gen.model.model[0].out_channels),
    )
    return LoadedCheckpoint(
        kind=kind,
        version=version,
        widths=widths,
        warp=warp.to(map_location).eval(),
        gen=gen.to(map_location).eval(),
        meta=dict(obj.get("meta") or {}),
    )


def load_student(src: Source, map_location: str | torch.device = "cpu") -> TryOnModel:
    """A student project checkpoint as an eval-mode :class:`pfafn.tryon.TryOnModel`."""
    return load_checkpoint(src, map_location).tryon_model().eval()


def to_tryon_model(loaded: LoadedCheckpoint) -> TryOnModel:
    """``loaded.tryon_model()``: the student's networks as a :class:`pfafn.tryon.TryOnModel`."""
    return loaded.tryon_model()


def read_version(src: Source) -> str:
    """The stored ``version`` of a project checkpoint, without building the networks.

    Local files are memory-mapped, so the weights are not read; remote ones are downloaded once.
    """
    is_local = isinstance(src, (str, os.PathLike)) and not _is_uri(os.fspath(src))
    try:
        obj = _load_object(src, "cpu", "checkpoint", mmap=is_local)
    except CheckpointError:
        if not is_local:
            raise
        obj = _load_object(src, "cpu", "checkpoint")  # legacy (non-zip) files cannot be memory-mapped
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT or "version" not in obj:
        raise CheckpointError(f"{_describe(src)} is not a {FORMAT} checkpoint")
    return str(obj["version"])


def official_version(warp_checkpoint: Source, gen_checkpoint: Source) -> str:
    """The content id of published-format weights: equal to the ``version`` that :func:`save_checkpoint` gives
    the model :func:`pfafn.load_official` builds from the same files."""
    model = build_tryon_model(
        read_state_dict(warp_checkpoint, what="warp checkpoint"),
        read_state_dict(gen_checkpoint, what="generator checkpoint"),
        copy=False,
    )
    return weights_version(model.warp, model.gen)


def export_official(src_or_model: Any, warp_dest: Destination, gen_dest: Destination) -> str:
    """Write the published two-file format (plain state dicts, no prefix) and return the weights' version.

    Args:
        src_or_model: a :class:`pfafn.tryon.TryOnModel`, a :class:`LoadedCheckpoint`, a ``(warp, gen)`` pair of
            modules / state dicts, or a project checkpoint source (path, URI, bytes, file-like).
        warp_dest, gen_dest: destinations of ``warp_model_final.pth`` / ``gen_model_final.pth`` equivalents.
    """
    from pfafn.tryon import TryOnModel

    if isinstance(src_or_model, (TryOnModel, LoadedCheckpoint)):
        warp, gen = src_or_model.warp, src_or_model.gen
    elif isinstance(src_or_model, tuple) and len(src_or_model) == 2:
        warp, gen = src_or_model
    else:
        loaded = load_checkpoint(src_or_model)
        warp, gen = loaded.warp, loaded.gen
    warp_state = _canonical_state(getattr(warp, "_orig_mod", warp), "warp")
    gen_state = _canonical_state(getattr(gen, "_orig_mod", gen), "gen")
    _write_bytes(warp_dest, _serialize(warp_state))
    _write_bytes(gen_dest, _serialize(gen_state))
    return weights_version(warp_state, gen_state)
