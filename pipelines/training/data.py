"""Training ingest: dataset root → id/URI sample tables → per-epoch order → CPU decode map → worker tensors.

Rows stay ids and URIs until :func:`decode_batch`, which runs as Ray Data CPU tasks and emits fixed-shape numpy
arrays (uint8 images ``H×W×3``, uint8 label maps / masks ``H×W``, float32 keypoints ``18×3``). A row that cannot be
decoded (missing file, corrupt image, bad OpenPose JSON, out-of-range labels) is dropped from training, logged, and
written as one error row (``pipelines.core.manifests.ERRORS_SCHEMA``) under ``{output}/errors/rows/`` whose reason
names the input that failed (``person image: ...``, ``parsing: ...``: the words of ``pipelines.batch.error_reason``);
the driver folds those into ``{output}/errors/errors.parquet`` and counts them in the summary. Training never dies
on one bad sample.

The whole run's sample order is fixed on the driver, in id space: epoch ``e`` is a seeded permutation of the samples
truncated to a multiple of ``batch × workers``, so every worker runs the same whole steps (the original
``PF-AFN_train/train_*.py`` scripts pad the sample list with ``DistributedSampler`` and keep a partial last batch).
The tutor's *unpaired* garment for (sample, epoch) is drawn from a hash of (seed, sample key, epoch) over every
garment except the worn one (``color_un`` of ``PF-AFN_train/data/aligned_dataset.py``, drawn at random there). All
epochs form one table, so the decode map knows each row's epoch, and a resumed run starts the table at the
checkpoint's step instead of re-decoding what was already trained on (see ``docs/training.md``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from pipelines.core import manifests, storage

log = logging.getLogger(__name__)

ERRORS_DIR = "errors"
ERROR_ROWS_DIR = "errors/rows"
ERRORS_FILE = "errors/errors.parquet"

# Every decodable field and its column name in the decoded batch.
IMAGE_FIELDS = ("person", "garment", "unpaired", "fake", "fake_garment", "target")
MASK_FIELDS = ("garment_mask", "unpaired_mask", "fake_garment_mask")
LABEL_FIELDS = ("parsing", "densepose")


class DatasetRootError(ValueError):
    """The dataset root cannot be used for training (missing manifest, no usable samples)."""


# ----------------------------------------------------------------------------------------------------------------------
# Dataset root


@dataclass
class DatasetRoot:
    """The validated manifests of a dataset root (``docs/architecture.md`` "Data contracts")."""

    uri: str
    models: dict[str, dict]
    garments: dict[str, dict]
    train_pairs: list[dict]
    test_pairs: list[dict]
    ground_truth: list[dict]
    errors: list[dict] = field(default_factory=list)

    @property
    def garment_ids(self) -> list[str]:
        return sorted(self.garments)


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def load_root(uri: str) -> DatasetRoot:
    """Load ``models``, ``garments``, ``train_pairs``, ``test_pairs`` (and ``ground_truth`` when present)."""
    errors: list[dict] = []

    def load(name: str, kind: str, required: bool = True) -> list[dict]:
        path = storage.join_uri(uri, f"{name}.parquet")
        if not storage.exists(path):
            if required:
                raise DatasetRootError(f"dataset root {uri} has no {name}.parquet")
            return []
        try:
            loaded = manifests.load_manifest(path, kind)
        except manifests.ManifestError as exc:
            raise DatasetRootError(f"{path}: {exc}") from None
        errors.extend(_rows(loaded.rejected))
        return _rows(loaded.rows)

    models = {r["model_id"]: r for r in load("models", "models")}
    garments = {r["garment_id"]: r for r in load("garments", "garments")}
    train_pairs = load("train_pairs", "train_pairs")
    test_pairs = load("test_pairs", "test_pairs", required=False)
    ground_truth = load("ground_truth", "ground_truth", required=False)
    return DatasetRoot(uri, models, garments, train_pairs, test_pairs, ground_truth, errors)


def error_row(manifest: str, ident: str | None, reason: str, row: Mapping[str, Any] | None = None,
              source: str | None = None) -> dict:
    return {
        "manifest": manifest,
        "source_uri": source,
        "row_index": None,
        "id": ident,
        "error": " ".join(str(reason).split())[:500],
        "row_json": json.dumps(dict(row or {}), default=str, sort_keys=True),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Sample tables (ids and URIs only)

#: Columns of a sample row; the decode map reads the ``*_uri`` columns that its :class:`DecodeSpec` asks for.
SAMPLE_URI_COLUMNS = {
    "person": "image_uri",
    "parsing": "parsing_uri",
    "pose": "pose_uri",
    "densepose": "densepose_uri",
    "garment": "garment_uri",
    "garment_mask": "garment_mask_uri",
    "unpaired": "unpaired_uri",
    "unpaired_mask": "unpaired_mask_uri",
    "fake": "fake_uri",
    "fake_garment": "fake_garment_uri",
    "fake_garment_mask": "fake_garment_mask_uri",
    "target": "target_uri",
}


def person_columns(model: Mapping[str, Any]) -> dict:
    return {
        "model_id": model["model_id"],
        "image_uri": model.get("image_uri"),
        "parsing_uri": model.get("parsing_uri"),
        "pose_uri": model.get("pose_uri"),
        "densepose_uri": model.get("densepose_uri"),
    }


def garment_columns(garment: Mapping[str, Any], prefix: str) -> dict:
    return {f"{prefix}_id": garment["garment_id"], f"{prefix}_uri": garment.get("image_uri"),
            f"{prefix}_mask_uri": garment.get("mask_uri")}


def paired_samples(root: DatasetRoot, pairs: Iterable[Mapping[str, Any]], manifest: str,
                   errors: list[dict]) -> list[dict]:
    """One sample per (model, worn garment) pair with its URIs; unknown ids become error rows."""
    out = []
    for pair in pairs:
        model = root.models.get(pair["model_id"])
        garment = root.garments.get(pair["garment_id"])
        key = f"{pair['model_id']}__{pair['garment_id']}"
        if model is None:
            errors.append(error_row(manifest, key, f"model {pair['model_id']} is not in models.parquet", pair))
            continue
        if garment is None:
            errors.append(error_row(manifest, key, f"garment {pair['garment_id']} is not in garments.parquet", pair))
            continue
        row = {"sample_key": key, **person_columns(model), **garment_columns(garment, "garment")}
        out.append(row)
    return out


def split_train_val(root: DatasetRoot, val_max: int, val_fraction: float, seed: int,
                    errors: list[dict]) -> tuple[list[dict], list[dict]]:
    """Training samples (train pairs of non-test models) and paired validation samples.

    Validation uses ``test_pairs`` rows with ``paired = true`` (held-out models in their own garment); a root
    without such rows holds out ``val_fraction`` of the train pairs instead (deterministic by key hash).
    """
    test_models = {m for m, r in root.models.items() if r.get("split") == "test"}
    train_pairs = [p for p in root.train_pairs if p["model_id"] not in test_models]
    train = paired_samples(root, train_pairs, "train_pairs", errors)
    val_pairs = [p for p in root.test_pairs if p.get("paired")]
    if val_pairs:
        val = paired_samples(root, val_pairs, "test_pairs", errors)
    else:
        n_val = max(1, int(round(len(train) * val_fraction))) if len(train) > 1 and val_fraction > 0 else 0
        ranked = sorted(train, key=lambda r: _hash_int(seed, "val", r["sample_key"]))
        held = {r["sample_key"] for r in ranked[:n_val]}
        val = [r for r in train if r["sample_key"] in held]
        train = [r for r in train if r["sample_key"] not in held]
    val = sorted(val, key=lambda r: r["sample_key"])[: max(0, val_max)] if val_max >= 0 else val
    return train, val


def unpaired_ground_truth_samples(root: DatasetRoot, limit: int, errors: list[dict]) -> list[dict]:
    """Unpaired evaluation samples (model × garment it does not wear) with the exact ground-truth render."""
    out: list[dict] = []
    if limit <= 0:
        return out
    for gt in sorted(root.ground_truth, key=lambda r: (r["model_id"], r["garment_id"])):
        model = root.models.get(gt["model_id"])
        garment = root.garments.get(gt["garment_id"])
        key = f"{gt['model_id']}__{gt['garment_id']}"
        if model is None or garment is None:
            errors.append(error_row("ground_truth", key, "model or garment missing from the manifests", gt))
            continue
        out.append({"sample_key": key, **person_columns(model), **garment_columns(garment, "garment"),
                    "target_uri": gt["image_uri"]})
        if len(out) >= limit:
            break
    return out


def _hash_int(*parts: Any) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def choose_unpaired(garment_ids: list[str], worn: str, sample_key: str, epoch: int, seed: int) -> str | None:
    """The tutor's unpaired garment for (sample, epoch): uniform over ``garment_ids`` minus ``worn``, from a hash.

    Deterministic (same inputs, same garment on any machine), never the worn garment; None when no other exists.
    ``garment_ids`` must be sorted (``DatasetRoot.garment_ids``).
    """
    others = len(garment_ids) - (1 if worn in garment_ids else 0)
    if others <= 0:
        return None
    k = _hash_int(seed, "unpaired", sample_key, epoch) % others
    if worn in garment_ids:
        worn_index = garment_ids.index(worn)
        if k >= worn_index:
            k += 1
    return garment_ids[k]


@dataclass(frozen=True)
class EpochPlan:
    """How samples become steps: ``steps_per_epoch`` global steps of ``global_batch`` rows, ``total_steps``."""

    samples: int
    global_batch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int


def plan_epochs(samples: int, batch_size: int, workers: int, epochs: int, max_steps: int = 0) -> EpochPlan:
    global_batch = batch_size * workers
    steps = samples // global_batch
    if steps < 1:
        raise DatasetRootError(
            f"{samples} training samples are fewer than one global batch (batch_size {batch_size} × {workers} workers)"
        )
    total = steps * epochs
    if max_steps > 0:
        total = min(total, max_steps)
    return EpochPlan(samples, global_batch, steps, epochs, total)


def epoch_table(samples: list[dict], plan: EpochPlan, seed: int, start_step: int = 0,
                unpaired_garments: DatasetRoot | None = None) -> pa.Table:
    """The id table of the whole run from global step ``start_step`` on: per epoch a seeded permutation, truncated.

    With ``unpaired_garments`` (the dataset root) every row also gets ``unpaired_id/_uri/_mask_uri``.
    """
    rows: list[dict] = []
    first_epoch = start_step // plan.steps_per_epoch
    last_epoch = (plan.total_steps - 1) // plan.steps_per_epoch if plan.total_steps else -1
    per_epoch = plan.steps_per_epoch * plan.global_batch
    garment_ids = unpaired_garments.garment_ids if unpaired_garments is not None else []
    for epoch in range(first_epoch, last_epoch + 1):
        order = np.random.default_rng([seed, 7919, epoch]).permutation(len(samples))[:per_epoch]
        for pos, idx in enumerate(order):
            step = epoch * plan.steps_per_epoch + pos // plan.global_batch
            if step < start_step or step >= plan.total_steps:
                continue
            row = dict(samples[int(idx)])
            row["epoch"] = epoch
            if unpaired_garments is not None:
                un = choose_unpaired(garment_ids, row["garment_id"], row["sample_key"], epoch, seed)
                if un is None:
                    raise DatasetRootError("the tutor needs at least two garments (an unpaired one per sample)")
                g = unpaired_garments.garments[un]
                row.update(unpaired_id=un, unpaired_uri=g["image_uri"], unpaired_mask_uri=g.get("mask_uri"))
            rows.append(row)
    return _to_table(rows)


def _to_table(rows: list[dict]) -> pa.Table:
    if not rows:
        return pa.table({"sample_key": pa.array([], pa.string())})
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    cols = {}
    for name in names:
        values = [r.get(name) for r in rows]
        cols[name] = pa.array(values, pa.int64() if name in ("epoch", "index") else pa.string())
    return pa.table(cols)


def sample_table(samples: list[dict]) -> pa.Table:
    rows = [dict(s, epoch=0) for s in samples]
    return _to_table(rows)


# ----------------------------------------------------------------------------------------------------------------------
# Decode (CPU tasks)


@dataclass(frozen=True)
class DecodeSpec:
    """What :func:`decode_batch` emits per row, at which size, and where bad rows go."""

    height: int
    width: int
    fields: tuple[str, ...]
    errors_uri: str = ""  # {output}/errors/rows ("" = do not write error rows)
    manifest: str = "train"  # the error rows' ``manifest`` column
    max_image_bytes: int = 50 * 2**20  # larger input files are not read
    max_image_pixels: int = 40_000_000  # larger images are not decoded (checked from the header)
    # Where inputs may be read from (TrainingConfig.input_roots); None: no root check — a direct library call (a test,
    # a benchmark) whose caller chose the URIs, as in pipelines.batch.read_input.
    roots: tuple[str, ...] | None = None
    read_timeout_s: float | None = None  # one input read; past it the sample is an error row


def decode_spec(config, fields: tuple[str, ...], errors_uri: str, manifest: str) -> DecodeSpec:
    """The :class:`DecodeSpec` of a training config (``pipelines.training.config.TrainingConfig``): its size, limits,
    input roots and read timeout."""
    return DecodeSpec(config.height, config.width, fields, errors_uri, manifest,
                      max_image_bytes=config.max_image_bytes, max_image_pixels=config.max_image_pixels,
                      roots=config.input_roots(), read_timeout_s=config.read_timeout_s)


#: The input each decode field reads, as error reasons name it (``pipelines.batch.ERROR_SOURCES``).
FIELD_SOURCES = {
    "person": "person image",
    "garment": "garment image",
    "unpaired": "garment image",
    "fake_garment": "garment image",
    "fake": "try-on image",
    "target": "ground truth image",
    "garment_mask": "garment mask",
    "unpaired_mask": "garment mask",
    "fake_garment_mask": "garment mask",
    "parsing": "parsing",
    "densepose": "densepose",
    "keypoints": "pose",
}
MAX_POSE_BYTES = 16 * 2**20
LABEL_MAX = {"parsing": 13, "densepose": 24}  # highest label of the 14-class parsing / 24 DensePose parts


class SampleDecodeError(ValueError):
    """One input of a sample could not be used; ``reason`` is the error row's one line (``"parsing: ..."``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


def _read(uri: str | None, max_bytes: int, spec: DecodeSpec) -> bytes:
    """One input's bytes: inside ``spec.roots`` (unless None), a regular file, within the size and time limits."""
    if not uri:
        raise ValueError("no URI in the sample row")
    if spec.roots is None:
        return storage.read_bytes(uri, max_bytes=max_bytes, timeout_s=spec.read_timeout_s)
    return storage.read_input(uri, roots=spec.roots, max_bytes=max_bytes, timeout_s=spec.read_timeout_s)


def _fit_labels(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour fit of a label map with :func:`pfafn.imageio.fit_image`'s geometry, padded with 0."""
    from PIL import Image

    from pfafn.imageio import fit_geometry

    if arr.shape == (height, width):
        return arr
    g = fit_geometry(arr.shape[0], arr.shape[1], height, width)
    resized = np.asarray(Image.fromarray(arr, "L").resize((g.new_width, g.new_height), Image.Resampling.NEAREST))
    out = np.zeros((height, width), np.uint8)
    out[g.top:g.top + g.new_height, g.left:g.left + g.new_width] = resized
    return out


def _decode_labels(data: bytes, spec: DecodeSpec, max_value: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > spec.max_image_pixels:
                raise ValueError(f"label map too large: {im.width}x{im.height} pixels > limit {spec.max_image_pixels}")
            im.load()
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"must be a single-channel label PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image ({' '.join(str(exc).split())[:120]})") from None
    if arr.ndim != 2:
        raise ValueError(f"must be H×W, got shape {arr.shape}")
    if arr.size and int(arr.max()) > max_value:
        raise ValueError(f"holds label {int(arr.max())} > {max_value}")
    return _fit_labels(arr.astype(np.uint8), spec.height, spec.width)


def _decode_keypoints(data: bytes, spec: DecodeSpec, geometry) -> np.ndarray:
    """OpenPose keypoints (18×3) mapped with the person image's fit (``geometry``; None: the person is not decoded)."""
    from pfafn.synthetic.openpose import decode_openpose

    kp = decode_openpose(data).astype(np.float32)
    if geometry is not None and (geometry.src_height, geometry.src_width) != (spec.height, spec.width):
        present = (kp[:, 0] > 1) & (kp[:, 1] > 1)
        kp[:, :2] = np.where(present[:, None], geometry.map_points(kp[:, :2]), kp[:, :2])
    return kp


def _decode_field(name: str, uri: str | None, spec: DecodeSpec, geometry) -> tuple[np.ndarray, Any]:
    """One field of a sample and (for the person image) its fit geometry, which the keypoints follow."""
    from pfafn.imageio import decode_image, decode_mask, fit_geometry, fit_image, fit_mask

    h, w = spec.height, spec.width
    if name == "keypoints":
        return _decode_keypoints(_read(uri, MAX_POSE_BYTES, spec), spec, geometry), geometry
    data = _read(uri, spec.max_image_bytes, spec)
    if name in LABEL_FIELDS:
        return _decode_labels(data, spec, LABEL_MAX[name]), geometry
    if name in MASK_FIELDS:
        mask = decode_mask(data, max_pixels=spec.max_image_pixels)
        return np.round(fit_mask(mask, h, w) * 255.0).astype(np.uint8), geometry
    img = decode_image(data, max_pixels=spec.max_image_pixels)
    if name == "fake" and img.shape[:2] != (h, w):
        # A fake is the tutor's output at its own size, aligned with the person fitted to that size: fitting it again
        # would misalign it with the person (issue 12 item 9), so only the stage's own size is accepted.
        raise ValueError(f"fake is {img.shape[0]}x{img.shape[1]} but the stage runs at {h}x{w} (height x width)")
    if name == "person":
        geometry = fit_geometry(img.shape[0], img.shape[1], h, w)
    return fit_image(img, h, w), geometry


def decode_row(row: Mapping[str, Any], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """Decode one sample; a field that fails raises :class:`SampleDecodeError` naming its input
    (``pipelines.batch.error_reason``: ``"person image: ..."``, ``"garment mask: ..."``, ``"pose: ..."``)."""
    from pipelines.batch import error_reason

    unknown = [f for f in spec.fields if f not in FIELD_SOURCES]
    if unknown:
        raise ValueError(f"unknown decode field(s) {unknown}")
    out: dict[str, np.ndarray] = {}
    geometry = None
    for name in spec.fields:
        uri = row.get("pose_uri" if name == "keypoints" else SAMPLE_URI_COLUMNS[name])
        try:
            out[name], geometry = _decode_field(name, uri, spec, geometry)
        except Exception as exc:  # noqa: BLE001 - every failure of an input is that input's error row
            raise SampleDecodeError(error_reason(FIELD_SOURCES[name], exc)) from exc
    return out


def _empty(name: str, spec: DecodeSpec) -> np.ndarray:
    h, w = spec.height, spec.width
    if name in IMAGE_FIELDS:
        return np.zeros((0, h, w, 3), np.uint8)
    if name == "keypoints":
        return np.zeros((0, 18, 3), np.float32)
    return np.zeros((0, h, w), np.uint8)


def _write_error_rows(spec: DecodeSpec, rows: list[dict]) -> None:
    if not spec.errors_uri or not rows:
        return
    for r in rows:
        # One deterministic object per (sample, reason): every epoch that meets the same bad row rewrites it.
        key = f"{r['id']}__{hashlib.blake2b(r['error'].encode(), digest_size=4).hexdigest()}"
        safe = key if manifests.is_safe_id(key) else hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        buf = io.BytesIO()
        import pyarrow.parquet as pq

        pq.write_table(manifests.error_table([r]), buf)
        try:
            storage.write_bytes(storage.join_uri(spec.errors_uri, f"{safe}.parquet"), buf.getvalue())
        except storage.StorageError as exc:  # an unwritable error row must not kill training either
            log.error("could not write error row for %s: %s", r["id"], exc)


def decode_batch(batch: Mapping[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` UDF: decode every row; bad rows are dropped and written as error rows."""
    from pipelines.batch import one_line

    n = len(batch["sample_key"])
    keep: list[dict[str, np.ndarray]] = []
    epochs: list[int] = []
    errors: list[dict] = []
    for i in range(n):
        row = {k: (v[i] if v[i] is None or not isinstance(v[i], bytes) else v[i].decode()) for k, v in batch.items()}
        try:
            keep.append(decode_row(row, spec))
            epochs.append(int(row.get("epoch") or 0))
        except Exception as exc:  # noqa: BLE001 - any failure of one sample drops that sample only
            reason = one_line(exc)
            log.warning("dropping sample %s (epoch %s): %s", row.get("sample_key"), row.get("epoch"), reason)
            errors.append(error_row(spec.manifest, str(row.get("sample_key")), reason,
                                    {k: v for k, v in row.items() if k.endswith("_uri") or k.endswith("_id")}))
    _write_error_rows(spec, errors)
    out: dict[str, np.ndarray] = {"epoch": np.asarray(epochs, np.int64)}
    for name in spec.fields:
        out[name] = np.stack([k[name] for k in keep]) if keep else _empty(name, spec)
    return out


def build_dataset(table: pa.Table, spec: DecodeSpec, *, block_rows: int, decode_cpus: float):
    """A Ray Data dataset over ``table`` (ids/URIs) with the decode map; blocks of ``block_rows`` rows."""
    import ray.data

    block_rows = max(1, int(block_rows))
    if table.num_rows == 0:
        parts = [table]
    else:
        parts = [table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]
    ds = ray.data.from_arrow(parts)
    return ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec},
        batch_size=block_rows,
        batch_format="numpy",
        num_cpus=decode_cpus,
        zero_copy_batch=True,
    )


def collect_error_rows(output: str, extra: list[dict] | None = None) -> int:
    """Fold ``{output}/errors/rows/*.parquet`` and ``extra`` into ``{output}/errors/errors.parquet``; return the
    number of error rows."""
    import pyarrow.parquet as pq

    tables = [manifests.error_table(extra or [])]
    rows_uri = storage.join_uri(output, ERROR_ROWS_DIR)
    try:
        files = storage.list_files(rows_uri, suffix=".parquet")
    except storage.ObjectNotFoundError:
        files = []
    for uri in files:
        try:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(uri))).cast(manifests.ERRORS_SCHEMA))
        except Exception as exc:  # noqa: BLE001
            log.error("unreadable error row file %s: %s", uri, exc)
    table = pa.concat_tables(tables)
    if table.num_rows:
        manifests.write_manifest(table, storage.join_uri(output, ERRORS_FILE))
    return table.num_rows


# ----------------------------------------------------------------------------------------------------------------------
# Worker side: numpy/torch batch -> model tensors


def image_tensor(x, device):
    """uint8 B×H×W×3 (numpy or torch) → float32 B×3×H×W in [-1, 1] on ``device``."""
    import torch

    t = torch.as_tensor(x).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def mask_tensor(x, device):
    """uint8 B×H×W (0..255) → float32 B×1×H×W in [0, 1]."""
    import torch

    return torch.as_tensor(x).to(device, non_blocking=True).float().div_(255.0).unsqueeze(1)


def label_tensor(x, device):
    import torch

    return torch.as_tensor(x).to(device, non_blocking=True).long()


def tutor_inputs(batch, device) -> dict:
    """Model tensors of a decoded paired batch, built on the worker: the images, label maps and garment mask, the
    tutor's 45-channel person representation and the person's own garment region (the warp target), as
    ``PF-AFN_train/train_PBAFN_stage1.py`` builds them (``pfafn.person``). The student's phases use them too: the
    frozen tutor warps the same garment on the same representation."""
    from pfafn.person import person_clothes, tutor_warp_input

    person = image_tensor(batch["person"], device)
    parsing = label_tensor(batch["parsing"], device)
    densepose = label_tensor(batch["densepose"], device)
    garment = image_tensor(batch["garment"], device)
    mask = mask_tensor(batch["garment_mask"], device)
    rep = tutor_warp_input(parsing, densepose, batch["keypoints"].to(device))
    target, target_mask = person_clothes(person, parsing)
    out = {"person": person, "parsing": parsing, "densepose": densepose, "rep": rep, "garment": garment,
           "mask": mask, "binary": (mask > 0.5).float(), "target": target, "target_mask": target_mask}
    if "unpaired" in batch:
        out["unpaired"] = image_tensor(batch["unpaired"], device)
        out["unpaired_mask"] = mask_tensor(batch["unpaired_mask"], device)
    return out
