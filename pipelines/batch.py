"""The one Ray Data stage skeleton: catalog try-on, tutor inference and evaluation are each a :class:`BatchStage`.

:func:`run_batch_stage` runs every one of them the same way, top to bottom::

    validate → absolute paths → run id → model version → with lock_output(...):
        plan units (ids/URIs only; the done set is already removed) → write the error rows decided at planning
        → ensure_ray + model actor pool → stream the units:

            from_items(units) → decode (CPU tasks) → model (actor pool, optional) → write (CPU tasks, the commit point)

        → collect one small row per committed unit → summary → gallery → {output}/summary.json

A stage supplies only what differs: how it plans its units, the decode and write functions (module-level, so Ray
ships them by reference with the worker cfg dict, never the stage object), the model actor class, its summary
fields and its gallery cards. Errors never escape a unit: decode, model and write turn failures into per-row error
strings (:func:`error_reason`, which names the input that failed), so one bad image never drops a block of good rows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import pyarrow as pa

from pipelines.core.allocator import keep_freed_memory
from pipelines.core.config import ConfigError, absolute_paths, check_choices, check_size, require

log = logging.getLogger(__name__)

# Test-only fault injection: SIGKILL the driver after N committed units, to prove kill + re-run semantics.
FAULT_KILL_ENV = "PFAFN_FAULT_KILL_AFTER_COMMITS"


# ----------------------------------------------------------------------------------------------------------------------
# Configs.


@dataclass
class RayStageConfig:
    """The settings every Ray Data stage shares (catalog try-on, tutor inference, evaluation), one name each."""

    output: str = ""
    height: int = 256
    width: int = 192
    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"
    actors: int = 0
    cpus_per_actor: float = 0.0
    torch_threads: int = 0
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 50 * 1024 * 1024
    lock_ttl_s: float = 600.0
    force_unlock: bool = False
    run_id: str = ""
    # Where input URIs may point besides the folder each input manifest is in (see input_roots); a URI elsewhere
    # becomes an error row "outside allowed roots", unread.
    allowed_roots: list[str] = field(default_factory=list)
    read_timeout_s: float = 120.0  # one input read (S3 GET or local file); past it the input is an error row
    # One progress line (items and units done / total, rate, ETA, ok/error) every this many seconds and at the end;
    # 0 logs one per committed unit (docs/operations.md).
    progress_every_s: float = 30.0

    def check_common(self, where: str, *required: str) -> None:
        """Choices, required fields and batch size; each stage's ``validate()`` adds its own rules."""
        check_choices(self, where)
        require(self, where, *required)
        if self.batch_size < 1:
            raise ConfigError(f"{where}: batch_size must be >= 1")
        from pipelines.core.locking import check_ttl

        check_ttl(where, self.lock_ttl_s)
        check_input_settings(where, self.allowed_roots, self.read_timeout_s)
        if not self.progress_every_s >= 0:
            raise ConfigError(f"{where}: progress_every_s must be >= 0")


@dataclass
class BatchStageConfig(RayStageConfig):
    """The model stages (catalog try-on, tutor inference) add the PF-AFN model's settings; documented in their
    YAMLs."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # see resolve_channels_last
    compile: bool = False
    # Heap memory each CPU model actor keeps for reuse instead of returning it to the kernel
    # (pipelines.core.allocator): large tensors then cost no page faults; 0 leaves malloc's defaults.
    malloc_cache_mb: int = 512
    min_mask_confidence: float = 0.5
    max_error_rate: float = 1.0
    gallery_size: int = 24

    def validate_common(self, where: str, required: tuple[str, ...]) -> None:
        self.check_common(where, *required)
        check_size(where, self.height, self.width)
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"{where}: max_error_rate must be within [0, 1]")
        if self.malloc_cache_mb < 0:
            raise ConfigError(f"{where}: malloc_cache_mb must be >= 0")


# ----------------------------------------------------------------------------------------------------------------------
# Error reasons: which input failed, in one line.


def one_line(exc: BaseException) -> str:
    """An exception as one short line: a typed image/storage error's ``reason``, else ``"TypeName: message"``."""
    reason = getattr(exc, "reason", None)
    text = str(reason) if reason else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return " ".join(text.split())[:300]


#: What an error row can blame, as the first words of its reason (users filter on these; keep them stable).
ERROR_SOURCES = ("person image", "garment image", "garment mask", "parsing", "densepose", "pose", "try-on image",
                 "ground truth image", "real image", "inference", "metrics", "write")


def error_reason(source: str, exc: BaseException) -> str:
    """``"garment image: truncated JPEG"`` — the one-line reason stored in error rows; ``source`` says which input
    (or step) failed and is one of :data:`ERROR_SOURCES`."""
    if source not in ERROR_SOURCES:
        raise ValueError(f"unknown error source {source!r}; add it to ERROR_SOURCES")
    return f"{source}: {one_line(exc)}"


class InputError(Exception):
    """One input of a unit failed; ``reason`` is already the error row's text (``"garment mask: ..."``)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


@contextlib.contextmanager
def blame(source: str) -> Iterator[None]:
    """Inside the block, any failure is ``source``'s: it leaves as :class:`InputError` with that reason (an inner
    ``blame`` wins, so a helper can name a more precise source than its caller)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(error_reason(source, exc)) from exc


def reason_for(exc: BaseException, source: str) -> str:
    """The error row text of ``exc``: its own reason when a :func:`blame` block named the input, else ``source``'s."""
    return exc.reason if isinstance(exc, InputError) else error_reason(source, exc)


def first_errors(units: list[tuple[int, ...]], *errors: list[str | None]) -> tuple[list[str | None], list[int]]:
    """For each item (one index into each of ``errors``), the first input's error, and the items with none.

    ``first_errors([(g, m), ...], garment_errors, model_errors)`` -> ``(reasons, runnable indices)``."""
    reasons: list[str | None] = []
    runnable: list[int] = []
    for k, idx in enumerate(units):
        reason = next((e[i] for e, i in zip(errors, idx) if e[i]), None)
        reasons.append(reason)
        if reason is None:
            runnable.append(k)
    return reasons, runnable


# ----------------------------------------------------------------------------------------------------------------------
# Decoding the shared inputs (CPU tasks).


#: Config fields naming a stage's input manifests (a file or a folder of parts): the folder each one is in is an
#: allowed input root. ``data`` names a dataset root, which is itself the root (its manifests sit at its top).
MANIFEST_FIELDS = ("garments", "models", "ground_truth", "results")
ROOT_FIELDS = ("data",)


def check_input_settings(where: str, allowed_roots: list[str], read_timeout_s: float) -> None:
    """``allowed_roots`` entries are absolute (``/path``, ``file:///path``, ``s3://bucket/prefix``): workers run in
    other working directories, where a relative root would name another folder; ``read_timeout_s`` is positive."""
    for root in allowed_roots:
        if not isinstance(root, str) or not (root.startswith("/") or "://" in root):
            raise ConfigError(f"{where}: allowed_roots entries must be absolute URIs, got {root!r}")
    if not read_timeout_s > 0:
        raise ConfigError(f"{where}: read_timeout_s must be > 0")


def input_roots(cfg: dict) -> tuple[str, ...]:
    """Where the inputs named in manifests may be read from: ``allowed_roots`` plus the folder of each input manifest
    in ``cfg`` (:data:`MANIFEST_FIELDS`, :data:`ROOT_FIELDS`). A manifest can then not turn a worker into a reader
    of any file it can open (``file:///etc/passwd``, the cluster token mounted in a container)."""
    from pipelines.core import storage

    roots = list(cfg.get("allowed_roots") or ())
    roots += [storage.parent_uri(cfg[k]) for k in MANIFEST_FIELDS if cfg.get(k)]
    roots += [cfg[k] for k in ROOT_FIELDS if cfg.get(k)]
    return tuple(roots)


def read_input(uri: str, cfg: dict) -> bytes:
    """The bytes of one input a manifest named: inside :func:`input_roots`, a regular file, within
    ``max_image_bytes`` and ``read_timeout_s`` (:func:`pipelines.core.storage.read_input`).

    A stage's worker cfg always has ``allowed_roots`` (a :class:`RayStageConfig` field); a cfg without the key is a
    direct library call (a test, a notebook) whose caller chose the URIs, and gets no root check."""
    from pipelines.core import storage

    if "allowed_roots" not in cfg:
        return storage.read_bytes(uri, max_bytes=cfg["max_image_bytes"], timeout_s=cfg.get("read_timeout_s"))
    return storage.read_input(uri, roots=input_roots(cfg), max_bytes=cfg["max_image_bytes"],
                              timeout_s=cfg.get("read_timeout_s"))


def decode_garment(image_uri: str, mask_uri: str | None, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Read, decode and fit one garment photo and its mask (read, or extracted from a plain-background photo).

    Returns ``(uint8 H×W×3, uint8 H×W mask in {0, 255})`` at ``cfg["height"] × cfg["width"]``. Raises
    :class:`InputError` naming ``garment image`` or ``garment mask`` (a mask that cannot be read or decoded, has
    another aspect ratio than the photo — one of the same aspect is resized to it —, or was extracted with too little
    confidence).
    """
    from pfafn import garment_mask, imageio

    image, mask = read_garment(image_uri, mask_uri, cfg)
    with blame("garment mask"):
        if mask is None:
            extracted = garment_mask.extract_garment_mask(image)
            if extracted.confidence < cfg["min_mask_confidence"]:
                raise garment_mask.GarmentMaskError(
                    f"low mask confidence {extracted.confidence:.2f} < {cfg['min_mask_confidence']:.2f}")
            mask = extracted.mask.astype(np.float32)
        fitted_mask = imageio.fit_mask(mask, cfg["height"], cfg["width"])
    with blame("garment image"):
        fitted = imageio.fit_image(image, cfg["height"], cfg["width"])
    return fitted, (fitted_mask > 0.5).astype(np.uint8) * 255


def read_garment(image_uri: str, mask_uri: str | None, cfg: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """The garment photo (uint8 H×W×3) and its mask file at the photo's resolution (float32 H×W in [0, 1]; None
    without a mask file). Another resolution of the same framing (aspect within 1 %) is resized; another framing is
    the ``garment mask``'s :class:`InputError` naming both sizes."""
    from pfafn import imageio

    with blame("garment image"):
        image = read_image(image_uri, cfg)
    if not mask_uri:
        return image, None
    with blame("garment mask"):
        mask = imageio.decode_mask(read_input(mask_uri, cfg), max_pixels=cfg["max_image_pixels"])
        return image, imageio.match_mask_size(mask, *image.shape[:2])


def read_image(uri: str, cfg: dict) -> np.ndarray:
    """Read (:func:`read_input`) and decode one image within the ``max_image_pixels`` limit (uint8 H×W×3)."""
    from pfafn import imageio

    if not uri:
        raise FileNotFoundError("no image URI")
    return imageio.decode_image(read_input(uri, cfg), max_pixels=cfg["max_image_pixels"])


def decode_photo(image_uri: str, cfg: dict) -> np.ndarray:
    """Read, decode and fit one person photo to ``cfg["height"] × cfg["width"]`` (uint8 H×W×3); failures are the
    ``person image``'s."""
    from pfafn import imageio

    with blame("person image"):
        return imageio.fit_image(read_image(image_uri, cfg), cfg["height"], cfg["width"])


# ----------------------------------------------------------------------------------------------------------------------
# The model actors.


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16 (AVX512-BF16/AMX)."""
    if precision != "auto":
        return precision
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        native = False
    return "bf16" if native else "fp32"


def resolve_channels_last(channels_last: bool | str) -> bool:
    """``auto`` -> NHWC: cuDNN's tensor-core convolutions want it on CUDA, and on an AVX512-BF16 CPU the tiled
    bf16 forward ran 1.2× faster with it once inputs, gathered pyramids and warped features stay NHWC, fp32 1.1×
    (docs/model-speed.md; before that, plain NCHW was faster for bf16 on CPU)."""
    return True if channels_last == "auto" else bool(channels_last)


def stack_ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch column of per-row arrays of different shapes (Ray Data's variable-shaped tensors)."""
    if len(arrays) == 1:
        return arrays[0][None]
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class UnitActor:
    """Base of the model actors: one model on one device; each decoded unit of a batch goes through
    :meth:`run_unit` (``meta`` plus the arrays named in ``inputs``), which returns ``(meta, payload array)``."""

    inputs: ClassVar[tuple[str, ...]] = ()
    payload: ClassVar[str] = "images"

    def __init__(self, cfg: dict):
        import torch

        self.device = cfg["device"]
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg["torch_threads"]))
        if self.device == "cpu":  # CUDA tensors come from torch's caching allocator already
            keep_freed_memory(int(cfg.get("malloc_cache_mb", 0)))
        self.batch_size = int(cfg["batch_size"])

    def inference_mode(self, cfg: dict):
        """The :class:`pfafn.inference.InferenceMode` of ``cfg``'s precision and memory format on this device."""
        from pfafn.inference import InferenceMode

        self.precision = resolve_precision(cfg["precision"], self.device)
        channels_last = resolve_channels_last(cfg["channels_last"])
        return InferenceMode(dtype=self.precision, channels_last=channels_last, compile=cfg["compile"])

    def run_unit(self, meta: dict, *arrays: np.ndarray) -> tuple[dict, np.ndarray]:
        raise NotImplementedError

    def pack(self, payloads: list[np.ndarray]) -> np.ndarray:
        return stack_ragged(payloads)

    def __call__(self, batch: dict) -> dict:
        metas, payloads = [], []
        for i, meta_json in enumerate(batch["meta"]):
            meta, out = self.run_unit(json.loads(meta_json), *(batch[k][i] for k in self.inputs))
            metas.append(json.dumps(meta))
            payloads.append(out)
        return {"meta": np.array(metas, dtype=object), self.payload: self.pack(payloads)}


# ----------------------------------------------------------------------------------------------------------------------
# Committing a unit and reading the committed parts back.


def part_uri(output: str, folder: str, attempt: str, unit: int | str) -> str:
    """``{output}/{folder}/part-{attempt}-{unit:06d}.parquet`` (or ``-{name}`` for the parts planning writes), where
    ``attempt`` is ``{run_id}-g{lock generation}`` (:meth:`BatchRun.fence`, ``cfg["attempt"]``). The generation is
    unique per acquisition of the output's lock, so no run — not even one reusing a run id — ever overwrites another
    run's committed part, while a retried Ray task of the same run overwrites its own."""
    from pipelines.core import storage

    name = f"{unit:06d}" if isinstance(unit, int) else unit
    return storage.join_uri(output, folder, f"part-{attempt}-{name}.parquet")


def result_row(error: str | None, **values: Any) -> dict:
    """One result row: ``values`` plus ``status`` (ok without ``error``), ``error`` and ``finished_at`` (now, UTC)."""
    return {**values, "status": "ok" if error is None else "error", "error": error,
            "finished_at": datetime.datetime.now(datetime.timezone.utc)}


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys are null) as a table of ``schema``."""
    return pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()


def commit_part(table: pa.Table, uri: str, cfg: dict) -> None:
    """Write one unit's rows as one Parquet object, atomically: the unit's commit point. First checks that the run
    still holds the output's lock (``cfg["output"]``, ``cfg["lock_generation"]``: the worker cfg, or
    ``BatchRun.cfg`` on the driver): a run that was taken over — or a task of a dead driver — raises
    :class:`pipelines.core.locking.LockLostError` and commits nothing."""
    from pipelines.core import manifests
    from pipelines.core.locking import check_fence

    check_fence(cfg["output"], cfg["lock_generation"])
    manifests.write_manifest(table, uri)


def read_parts(root: str, spec, *, where: dict[str, Any] | None = None, prefix: str = "",
               skipped=None) -> pa.Table:
    """Every ``*.parquet`` part under ``root`` whose name starts with ``prefix``, cast to ``spec``'s schema (a
    manifest kind or :class:`pipelines.core.manifests.ManifestSpec`); ``where`` keeps the rows whose columns equal
    the given values. Files that are not parts of that kind are skipped with a warning and recorded in ``skipped``
    (a :class:`pipelines.core.parts.Skipped`). No parts: an empty table. For result sets too large to materialise,
    use :mod:`pipelines.core.parts` directly."""
    from pipelines.core import manifests, parts

    spec = manifests.SPECS[spec] if isinstance(spec, str) else spec
    tables = list(parts.scan_parts([(root, where)], spec, spec.schema.names, prefix=prefix, skipped=skipped))
    return pa.concat_tables(tables) if tables else spec.schema.empty_table()


def store_image(key: Callable[[], str], encode: Callable[[], bytes]) -> tuple[str | None, str | None, float]:
    """Write one output image: ``(uri, None, ms)``, or ``(None, "write: ...", ms)`` when the key, the encoding or the
    storage fails (the pair becomes an error row; the unit goes on)."""
    from pipelines.core import storage

    started = time.perf_counter()
    try:
        uri = key()
        storage.write_bytes(uri, encode())
    except Exception as exc:
        return None, error_reason("write", exc), (time.perf_counter() - started) * 1e3
    return uri, None, (time.perf_counter() - started) * 1e3


# ----------------------------------------------------------------------------------------------------------------------
# Streaming the units through Ray Data.


def decode_task_cpus(actor_plan) -> float:
    """CPUs of a decode task in front of the model actors.

    Ray Data fuses a task map into the following actor map when their resource requests are equal, which would run
    the decoding inside the model actors instead of in CPU tasks beside them; keep the two requests different.
    """
    if actor_plan is None or actor_plan.num_gpus or abs(actor_plan.num_cpus - 0.5) > 1e-6:
        return 0.5
    return 0.4


def stream_units(
    units: list[dict],
    *,
    decode: Callable[[dict], dict],
    write: Callable[[dict, Any], dict],
    actor_plan=None,
    model_cls: type | None = None,
    model_kwargs: dict | None = None,
    payload: str = "images",
) -> Iterator[dict]:
    """Run ``units`` through decode → model actors (when ``model_cls``) → write; yield one row per committed unit.

    ``decode(unit)`` returns ``{"meta": json str, ...arrays}``; the model actor's ``__call__`` takes a batch of those
    and returns ``{"meta": json str, payload: array}``; ``write(meta_dict, payload_array_or_None)`` commits the unit
    and returns a small summary row.
    """
    import ray

    ds = ray.data.from_items(units, override_num_blocks=min(len(units), 4096))
    decoded = ds.map(decode, num_cpus=decode_task_cpus(actor_plan))
    if model_cls is not None:
        modelled = decoded.map_batches(
            model_cls,
            fn_constructor_kwargs=model_kwargs or {},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actor_plan.size),
            num_gpus=actor_plan.num_gpus,
            num_cpus=actor_plan.num_cpus,
        )
        written = modelled.map(lambda row: write(json.loads(row["meta"]), row[payload]), num_cpus=0.5)
    else:
        written = decoded.map(lambda row: write(json.loads(row["meta"]), None), num_cpus=0.5)
    kill_after = int(os.environ.get(FAULT_KILL_ENV, "0") or 0)
    done = 0
    for row in written.iter_rows():
        done += 1
        yield row
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def progress(stage: "BatchStage", run: "BatchRun", clock: Callable[[], float] = time.monotonic):
    """The run's :class:`pipelines.core.progress.StreamProgress`: items (the stage's :meth:`BatchStage.unit_items`)
    and units done / total, one line every ``progress_every_s`` seconds and at the last unit."""
    from pipelines.core.progress import StreamProgress

    return StreamProgress(f"{stage.name} {run.run_id}", items_total=sum(map(stage.unit_items, run.units)),
                          units_total=len(run.units), item_name=stage.item_name or stage.unit_name,
                          unit_name=stage.unit_name, every_s=stage.config.progress_every_s,
                          clock=clock)


def worker_cfg(config, run: "BatchRun") -> dict:
    """The plain dict the decode/model/write functions get: the config's fields, the run id, the lock generation and
    attempt (:meth:`BatchRun.fence`: every commit checks the lock with them), and the actor pool's device and torch
    threads (automatic: about 2 per reserved CPU on a CPU actor)."""
    cfg = dataclasses.asdict(config) | {"run_id": run.run_id} | run.fence()
    actor_plan = run.actor_plan
    if actor_plan is not None:
        cfg["device"] = actor_plan.device
        if not cfg["torch_threads"] and actor_plan.device == "cpu":
            cfg["torch_threads"] = max(1, int(round(actor_plan.num_cpus * 2)))
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# The skeleton.


@dataclass
class BatchRun:
    """One run as the skeleton tracks it; every hook gets it."""

    run_id: str
    started: float
    version: str = ""  # the model's content id ("" for a stage without one)
    units: list[dict] = field(default_factory=list)
    ok: int = 0
    error: int = 0  # this run's error rows, planned ones included
    actor_plan: Any = None  # pipelines.core.ray_env.ActorPlan once the pool is sized
    cfg: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # plan_s, execute_s and the units' summed *_ms
    generation: int = 0  # the output lock's generation this run holds (unique per acquisition)

    @property
    def attempt(self) -> str:
        """``{run_id}-g{generation}``: names this run's parts (:func:`part_uri`), unique even for a reused run id."""
        return f"{self.run_id}-g{self.generation}"

    def fence(self) -> dict[str, Any]:
        """The keys a commit needs besides ``output`` (:func:`commit_part`): the lock generation and the attempt."""
        return {"lock_generation": self.generation, "attempt": self.attempt}

    def elapsed(self) -> float:
        return time.time() - self.started


class BatchStage:
    """One Ray Data stage. Class attributes say what it is; the methods are the hooks :func:`run_batch_stage` calls,
    in this order. ``decode(unit, cfg)`` and ``write(meta, payload, cfg)`` are module-level functions (set with
    ``staticmethod``): Ray ships them with the worker cfg dict, never with the stage object and its plan."""

    name: ClassVar[str] = ""  # the summary's "stage" and the log prefix
    unit_name: ClassVar[str] = "unit"  # what progress lines call a unit ("tile", "chunk")
    item_name: ClassVar[str] = ""  # what progress lines call an item ("pair", "sample"); "": a unit is the item
    path_fields: ClassVar[tuple[str, ...]] = ()  # config fields made absolute before any path leaves the driver
    model_cls: ClassVar[type | None] = None  # the model actor (a UnitActor); None: decode -> write only
    payload: ClassVar[str] = "images"  # the model actor's output column
    timing_keys: ClassVar[tuple[str, ...]] = ("decode_ms", "model_ms", "encode_ms")  # summed from the write rows
    decode: ClassVar[Callable[[dict, dict], dict]]
    write: ClassVar[Callable[[dict, Any, dict], dict]]

    def __init__(self, config):
        self.config = config
        self.planned: Any = None  # what plan() found (the stage's own Plan), for the later hooks

    def model_version(self) -> str:
        """The model's content id, read before the lock so a bad checkpoint fails before anything is written."""
        return ""

    def plan(self, run: BatchRun) -> list[dict]:
        """The units still to do (ids/URIs only, the done set removed)."""
        raise NotImplementedError

    def unit_items(self, unit: dict) -> int:
        """How many items (the rows it commits: pairs, samples) a planned unit holds; progress counts them."""
        return 1

    def write_planned(self, run: BatchRun) -> int:
        """Write the error rows decided at planning (rejected manifest rows, missing inputs); return how many count
        as this run's errors."""
        return 0

    def uses_model(self, run: BatchRun) -> bool:
        return self.model_cls is not None

    def worker_extras(self, run: BatchRun) -> dict:
        """Keys the stage adds to the worker cfg."""
        return {}

    def model_kwargs(self, cfg: dict) -> dict:
        return {"cfg": cfg}

    def collect(self, row: dict, run: BatchRun) -> None:
        """Gather what the stage needs from one committed unit's row (ok/error and timings are summed already)."""

    def summary(self, run: BatchRun) -> dict[str, Any]:
        """The stage's own summary fields (it may set ``run.ok`` / ``run.error`` to what its error rate counts)."""
        return {}

    def gallery(self, run: BatchRun, summary: dict):
        """A :class:`pipelines.core.gallery.Sheet` to render (None: no gallery)."""
        return None


def run_batch_stage(stage: BatchStage) -> dict[str, Any]:
    """Run one stage: plan → stream units → commit parts → summary; returns the summary (also written under the
    output as ``summary.json`` and ``runs/{run_id}.json``). A run whose lock is taken over stops with
    :class:`pipelines.core.locking.LockLostError` (exit 2) and commits nothing more."""
    from pipelines.core.locking import holding, interrupt_driver, lock_output, new_run_id, write_run_summary

    stage.config.validate()
    config = stage.config = absolute_paths(stage.config, *stage.path_fields)
    run = BatchRun(run_id=new_run_id(config.run_id), started=time.time())
    run.version = stage.model_version()
    lock = lock_output(config.output, run.run_id, ttl_s=config.lock_ttl_s, force=config.force_unlock,
                       on_lost=interrupt_driver)
    run.generation = lock.generation
    run.cfg = {"output": config.output, **run.fence()}  # the driver's commits (write_planned) check the lock too
    with holding(lock):
        run.units = stage.plan(run)
        run.timings = {"plan_s": run.elapsed(), "execute_s": 0.0, **{k: 0.0 for k in stage.timing_keys}}
        run.error += stage.write_planned(run)
        if run.units:
            _execute(stage, run)
        lock.check()
        summary = _summary(stage, run)
        sheet = stage.gallery(run, summary) if getattr(config, "gallery_size", 0) > 0 else None
        if sheet is not None:
            from pipelines.core import gallery

            summary["gallery"] = gallery.write_gallery(config.output, run.run_id, sheet, config.gallery_size,
                                                       salt=run.version)
        write_run_summary(config.output, run.run_id, summary, lock)
    return summary


def _execute(stage: BatchStage, run: BatchRun) -> None:
    """Size the actor pool, stream the units and collect one row per committed unit."""
    from pipelines.core.ray_env import ensure_ray, model_actor_plan

    config = stage.config
    ensure_ray()
    if stage.uses_model(run):
        run.actor_plan = model_actor_plan(config.device, config.actors, config.cpus_per_actor)
    cfg = run.cfg = worker_cfg(config, run) | stage.worker_extras(run)
    decode, write = stage.decode, stage.write
    started = time.time()
    rows = stream_units(
        run.units,
        decode=lambda unit: decode(unit, cfg),
        write=lambda meta, payload: write(meta, payload, cfg),
        actor_plan=run.actor_plan,
        model_cls=stage.model_cls if run.actor_plan is not None else None,
        model_kwargs=stage.model_kwargs(cfg),
        payload=stage.payload,
    )
    meter = progress(stage, run)
    for row in rows:
        run.ok += int(row["ok"])
        run.error += int(row["error"])
        for key in stage.timing_keys:
            run.timings[key] += float(row[key])
        stage.collect(row, run)
        # rows arrive out of order and name their unit in stage-specific ways; a unit's rows (ok + error) are its
        # items, which is what unit_items() counted at planning for a stage that names its items
        items = int(row["ok"]) + int(row["error"]) if stage.item_name else 1
        line = meter.unit_done(items, run.ok, run.error)
        if line:
            log.info("%s", line)
    run.timings["execute_s"] = time.time() - started


def _summary(stage: BatchStage, run: BatchRun) -> dict[str, Any]:
    """The fields every stage's summary has, around the stage's own."""
    own = stage.summary(run)
    wall = run.elapsed()
    attempted = run.ok + run.error
    timings = {k: round(v, 3 if k.endswith("_s") else 1) for k, v in run.timings.items()}
    summary: dict[str, Any] = {
        "stage": stage.name,
        "run_id": run.run_id,
        "output": stage.config.output,
        **own,
        "error_rate": round(run.error / attempted, 6) if attempted else 0.0,
        "actors": run.actor_plan.size if run.actor_plan else 0,
        "device": run.actor_plan.device if run.actor_plan else None,
        "timings": {**timings, "wall_s": round(wall, 3), **own.get("timings", {})},
        "wall_s": round(wall, 3),
    }
    limit = getattr(stage.config, "max_error_rate", None)
    if limit is not None:
        summary["exceeded_error_rate"] = bool(attempted and run.error / attempted > limit)
    return summary
