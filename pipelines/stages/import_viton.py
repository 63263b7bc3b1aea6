"""Import a dataset in the published VITON / PF-AFN layout into a dataset root (the manifests every stage reads).

Input layout: the VITON dataset (Han et al., "VITON: An Image-based Virtual Try-on Network", CVPR 2018) as PF-AFN
packages it (github.com/geyuying/PF-AFN: ``PF-AFN_train/data/aligned_dataset.py`` reads the train folders,
``PF-AFN_test/data/aligned_dataset_test.py`` the test ones; docs/datasets.md)::

    {source}/train_img/000003_0.jpg                person photos (model_id = file stem)
    {source}/train_color/000003_1.jpg              garment product photos (garment_id = file stem)
    {source}/train_edge/000003_1.jpg               garment masks (white garment on black), same stem as the garment
    {source}/train_label/000003_0.png              parsing: class ids 0..13 (ACGPN 14-class), 'L' or palette PNG
    {source}/train_pose/000003_0_keypoints.json    OpenPose COCO-18 ('pose_keypoints' or 'pose_keypoints_2d')
    {source}/train_densepose/000003_0.npy          H x W DensePose part index 0..24
    {source}/train_pairs.txt                       optional "person garment" lines
    {source}/test_img/, test_clothes/ (or test_color/), test_edge/ [, test_label/, test_pose/, test_densepose/]
    {source}/test_pairs.txt                        optional unpaired "person garment" lines (paired=False)
    {source}/test_pairs_same.txt                   optional paired lines (paired=True)

Pairing: a pairs file, when present, is used line by line. Without one, persons and garments are paired by position in
their sorted file lists, as the published loader does (``000003_0.jpg`` <-> ``000003_1.jpg``); test pairs made that
way are paired. Positions are taken over every image file in the folders (rejected ones included), so one bad file
never shifts the pairing of the others.

What is written under the output root: ``models.parquet``, ``garments.parquet``, ``train_pairs.parquet``,
``test_pairs.parquet``, ``import_errors.parquet`` (every rejected file and pair line with a one-line reason),
``world.json`` and the run summary. Files are *referenced in place* where the format already matches the contract
(person and garment photos, edges, 'L' PNG labels, OpenPose JSON) and *converted* where it does not: DensePose
``.npy`` -> ``densepose/{model_id}.png`` (uint8), palette/16-bit labels -> ``parsing/{model_id}.png``. With
``mode="copy"`` every file is copied (or converted) into the root, so the dataset no longer depends on the source.

Validation (``verify=True``): every person/garment photo and edge is decoded (``pfafn.imageio``), labels must be
lossless PNG class ids within ``0..max_label`` of the photo's size, poses must parse, DensePose must be a numeric
H x W array of part indices 0..24 of the photo's size (loaded with ``allow_pickle=False``). Train persons need their
label, pose and DensePose and train garments their edge (the tutor trains on them); for the test split they are
optional. A person or garment that fails becomes an ``import_errors`` row, and so does every pair line that names it.
A file's error row starts with the input that failed (``person image: ``, ``garment image: ``, ``garment mask: ``,
``parsing: ``, ``pose: ``, ``densepose: ``; docs/data-contracts.md), a pair line's with its file and line number.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipelines import dataset_root
from pipelines.batch import InputError, error_reason
from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError, absolute_paths
from pipelines.core.errors import StageError
from pipelines.dataset_root import DatasetWriterConfig

log = logging.getLogger(__name__)

# The published loader's IMG_EXTENSIONS (+ WebP): what counts as an image for position pairing.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
SPLITS = ("train", "test")
DENSEPOSE_PARTS = 24
# Which input a file of each VITON folder kind is, as error rows name it ({split}_{kind}/).
FOLDER_SOURCES = {"img": "person image", "color": "garment image", "clothes": "garment image", "edge": "garment mask",
                  "label": "parsing", "pose": "pose", "densepose": "densepose"}
MANIFESTS = ("models", "garments", "train_pairs", "test_pairs")


@dataclass
class VitonImportConfig(DatasetWriterConfig):
    """Config of ``jobs.import_viton``.

    output, executor, ray_min_items, chunk_size, workers, cpus_per_task   see ``DatasetWriterConfig``; a work unit is
                    one person or garment row
    source          VITON root holding train_*/ and/or test_* folders and the pairs files (local path or s3://)
    train_source    root of the train_* folders when they live elsewhere (default: source)
    test_source     root of the test_* folders when they live elsewhere (default: source)
    mode            reference: point manifests at the source files where the format matches (convert the rest);
                    copy: copy every file into the output root
    verify          decode and check every file (False: only names, ids and presence are checked)
    max_label       largest parsing class id accepted (13 for the 14-class ACGPN scheme)
    max_image_pixels, max_image_bytes   limits per file (decompression-bomb and size guards), as in every stage
    """

    ray_min_items: int = 2000
    chunk_size: int = 64
    workers: int = 8
    source: str = ""
    train_source: str = ""
    test_source: str = ""
    mode: Literal["reference", "copy"] = "reference"
    verify: bool = True
    max_label: int = 13
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 50 * 1024 * 1024

    def validate(self) -> None:
        where = "import_viton"
        if not (self.source or self.train_source or self.test_source):
            raise ConfigError(f"{where}: --source is required")
        self.check_writer(where)
        if self.max_label < 0:
            raise ConfigError(f"{where}: max_label must be >= 0, got {self.max_label}")


PRESETS: dict[str, dict[str, Any]] = {}


# ----------------------------------------------------------------------------------------------------------------------
# Discovery: one listing per source root, grouped by top-level folder.


def _stem_ext(name: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(name)
    return stem, ext.lower()


def _is_image_name(name: str) -> bool:
    return _stem_ext(name)[1] in IMAGE_EXTENSIONS


@dataclass
class SplitFiles:
    split: str
    base: str  # root URI of this split's folders
    folders: dict[str, dict[str, str]]  # folder -> {file name -> uri} (direct children only)
    nested: list[str]  # files in sub-folders of a known folder (reported, not used)
    person_dir: str
    garment_dir: str
    pairs_files: dict[str, str]  # name -> uri of the pairs files present at base


_FOLDER_KINDS = ("img", "color", "clothes", "edge", "label", "pose", "densepose")


def _listing(base: str) -> tuple[dict[str, dict[str, str]], list[str], dict[str, str]]:
    prefix = base.rstrip("/") + "/"
    folders: dict[str, dict[str, str]] = {}
    nested: list[str] = []
    top: dict[str, str] = {}
    for uri in storage.list_files(base):
        rel = uri[len(prefix):] if uri.startswith(prefix) else storage.basename(uri)
        parts = rel.split("/")
        if len(parts) == 1:
            top[parts[0]] = uri
            continue
        folder = parts[0]
        if not any(folder == f"{s}_{k}" for s in SPLITS for k in _FOLDER_KINDS):
            continue  # not a VITON folder (e.g. our own output written next to it)
        if len(parts) > 2:
            nested.append(rel)
            continue
        folders.setdefault(folder, {})[parts[1]] = uri
    return folders, nested, top


def discover(config: VitonImportConfig) -> list[SplitFiles]:
    """The splits present under the configured roots (one listing per distinct root)."""
    cache: dict[str, tuple] = {}
    out = []
    for split in SPLITS:
        base = (config.train_source if split == "train" else config.test_source) or config.source
        if not base:
            continue
        base = dataset_root.normalize_root(base)
        if base not in cache:
            cache[base] = _listing(base)
        folders, nested, top = cache[base]
        person_dir = f"{split}_img"
        if not folders.get(person_dir):
            continue
        if split == "train":
            garment_dir = "train_color"
        else:
            # PF-AFN's test pack says test_clothes/, DM-VTON's test_color/; test_clothes/ wins when both exist.
            garment_dir = "test_clothes" if folders.get("test_clothes") else "test_color"
        wanted = ("train_pairs.txt",) if split == "train" else ("test_pairs.txt", "test_pairs_same.txt")
        pairs = {n: top[n] for n in wanted if n in top}
        split_nested = [n for n in nested if n.startswith(f"{split}_")]
        out.append(SplitFiles(split, base, folders, split_nested, person_dir, garment_dir, pairs))
    if not out:
        roots = sorted({(config.train_source or config.source), (config.test_source or config.source)} - {""})
        raise StageError(f"import_viton: no train_img/ or test_img/ folder with files under {', '.join(roots)}")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Candidate rows (names only) and their companions.


def _find_companion(folder: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in folder:
            return folder[name]
    return None


def _image_companion(folder: dict[str, str], stem: str, prefer_ext: str) -> str | None:
    names = (stem + prefer_ext,) + tuple(stem + e for e in IMAGE_EXTENSIONS) + tuple(
        stem + e.upper() for e in IMAGE_EXTENSIONS)
    return _find_companion(folder, names)


@dataclass
class Candidates:
    items: list[dict] = field(default_factory=list)  # rows to validate (kind model|garment)
    errors: list[dict] = field(default_factory=list)  # import_errors rows found from names alone
    # split -> sorted image names in the person / garment folder (for position pairing)
    person_names: dict[str, list[str]] = field(default_factory=dict)
    garment_names: dict[str, list[str]] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # companion URIs used by some row
    seen: dict[str, int] = field(default_factory=lambda: {"model": 0, "garment": 0})  # files in the photo folders
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, stem) -> reason, rejected by name
    ids: dict[str, dict[str, str]] = field(default_factory=lambda: {"model": {}, "garment": {}})  # id -> first file


def _error(manifest: str, source_uri: str | None, row_index: int | None, id_: str | None, reason: str,
           row: dict | None = None) -> dict:
    return {"manifest": manifest, "source_uri": source_uri, "row_index": row_index, "id": id_, "error": reason,
            "row_json": json.dumps(row or {}, sort_keys=True, default=str)}


def _blamed(source: str, where: str, problem: str) -> str:
    """``"parsing: train_label/000003_0.png: truncated PNG"``: the input that failed, the file, the problem."""
    return error_reason(source, FileProblem(f"{where}: {problem}"))


def collect(splits: list[SplitFiles]) -> Candidates:
    """Every person and garment photo of every split as a row to validate, with its companion files; names that
    cannot become rows (not an image, unsafe or duplicate id, nested files) become error rows."""
    cands = Candidates()
    for sf in splits:
        for rel in sf.nested:
            source = FOLDER_SOURCES[rel.split("/", 1)[0].split("_", 1)[1]]
            cands.errors.append(_error("files", storage.join_uri(sf.base, rel), None, None,
                                       _blamed(source, rel, "file in a sub-folder; VITON folders are flat, ignored")))
        for kind, folder_name in (("model", sf.person_dir), ("garment", sf.garment_dir)):
            _collect_folder(cands, sf, kind, folder_name)
    return cands


def _collect_folder(cands: Candidates, sf: SplitFiles, kind: str, folder_name: str) -> None:
    manifest = "models" if kind == "model" else "garments"
    source = "person image" if kind == "model" else "garment image"
    folder = sf.folders.get(folder_name, {})
    names = sorted(folder)
    cands.seen[kind] += len(names)
    (cands.person_names if kind == "model" else cands.garment_names)[sf.split] = [n for n in names
                                                                                 if _is_image_name(n)]
    for index, name in enumerate(names):
        uri = folder[name]
        stem, ext = _stem_ext(name)
        where = f"{folder_name}/{name}"
        if not _is_image_name(name):
            cands.errors.append(_error(manifest, uri, index, stem, _blamed(
                source, where, f"not an image file name (extensions: {', '.join(IMAGE_EXTENSIONS)})")))
            continue
        try:
            manifests.validate_id(stem)
        except manifests.UnsafeIdError as exc:
            reason = _blamed(source, where, f"file stem is not a safe {kind} id ({exc.reason})")
            cands.errors.append(_error(manifest, uri, index, stem, reason))
            cands.rejected.setdefault((kind, stem), reason)
            continue
        first = cands.ids[kind].get(stem)
        if first is not None:
            cands.errors.append(_error(manifest, uri, index, stem, _blamed(
                source, where, f"duplicate {kind}_id {stem!r} (first: {first})")))
            continue
        cands.ids[kind][stem] = f"{sf.split}:{where}"
        item = {"kind": kind, "split": sf.split, "id": stem, "name": name, "ext": ext, "uri": uri, "index": index,
                "required": sf.split == "train"}
        companions = sf.folders.get
        if kind == "model":
            item["label_uri"] = _image_companion(companions(f"{sf.split}_label", {}), stem, ".png")
            item["pose_uri"] = _find_companion(companions(f"{sf.split}_pose", {}),
                                               (f"{stem}_keypoints.json", f"{stem}.json"))
            item["densepose_uri"] = _find_companion(companions(f"{sf.split}_densepose", {}), (f"{stem}.npy",))
        else:
            item["edge_uri"] = _image_companion(companions(f"{sf.split}_edge", {}), stem, ext)
        cands.claimed.update(item[k] for k in ("label_uri", "pose_uri", "densepose_uri", "edge_uri") if item.get(k))
        cands.items.append(item)


# ----------------------------------------------------------------------------------------------------------------------
# Validation and conversion (threads or Ray tasks).


class FileProblem(ValueError):
    """One-line reason a file is unusable."""

    @property
    def reason(self) -> str:
        return str(self)


@contextmanager
def _blame(source: str, uri: str):
    """Turn a :class:`FileProblem` raised inside into the row's :class:`InputError`, naming ``source`` and the file.
    Other errors (storage failing) propagate: they are the run's problem, not the row's."""
    try:
        yield
    except FileProblem as exc:
        raise InputError(_blamed(source, _short(uri), str(exc))) from None


def _read(uri: str, cfg: dict) -> bytes:
    try:
        return storage.read_bytes(uri, max_bytes=cfg["max_image_bytes"])
    except storage.ObjectTooLargeError as exc:
        raise FileProblem(f"too large ({exc.reason})") from None
    except storage.ObjectNotFoundError:
        raise FileProblem("missing") from None


def _decoded_size(data: bytes, cfg: dict, decoder: str) -> tuple[int, int]:
    """(H, W) of a photo (``decoder="decode_image"``) or an edge (``"decode_mask"``) decoded by ``pfafn.imageio``."""
    from pfafn import imageio

    try:
        pixels = getattr(imageio, decoder)(data, max_pixels=cfg["max_image_pixels"])
    except imageio.ImageDecodeError as exc:
        raise FileProblem(exc.reason) from None
    return pixels.shape[0], pixels.shape[1]


def _decode_label(data: bytes, cfg: dict) -> tuple[np.ndarray, bool]:
    """``(class ids uint8 H x W, already_in_contract_format)``: an 8-bit 'L' PNG is used as is."""
    from PIL import Image

    from pfafn import imageio

    fmt = imageio.sniff_format(data)
    if fmt != "PNG":
        raise FileProblem(f"parsing labels must be PNG (lossless class ids), got {fmt or 'not an image'}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            w, h = im.size
            if w * h > cfg["max_image_pixels"]:
                raise FileProblem(f"too large: {w}x{h}")
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileProblem:
        raise
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError/... for corrupt data
        raise FileProblem(f"truncated or corrupt PNG: {' '.join(str(exc).split())[:160] or type(exc).__name__}"
                          ) from None
    if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise FileProblem(f"parsing label must be single-channel class ids ('L' or palette PNG), got mode {mode}")
    if arr.ndim != 2:
        raise FileProblem(f"parsing label must be H x W, got shape {arr.shape}")
    top = int(arr.max(initial=0))
    if top > cfg["max_label"] or int(arr.min(initial=0)) < 0:
        raise FileProblem(f"parsing class ids must be within 0..{cfg['max_label']}, found {top}")
    return arr.astype(np.uint8), mode == "L"


def _decode_pose(data: bytes) -> None:
    from pfafn.synthetic import decode_openpose

    try:
        decode_openpose(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileProblem(" ".join(str(exc).split())[:200]) from None


def _decode_densepose(data: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise FileProblem(f"not a readable .npy array: {' '.join(str(exc).split())[:160]}") from None
    if not isinstance(arr, np.ndarray):
        raise FileProblem("not a single .npy array (an .npz archive?)")
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise FileProblem(f"DensePose must be an H x W part-index map, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise FileProblem(f"DensePose must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FileProblem("DensePose contains NaN or infinity")
        if not np.array_equal(arr, np.round(arr)):
            raise FileProblem("DensePose part indices must be whole numbers")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > DENSEPOSE_PARTS:
        raise FileProblem(f"DensePose part indices must be within 0..{DENSEPOSE_PARTS}, found {lo}..{hi}")
    return arr.astype(np.uint8)


def _check_size(what: str, shape: tuple[int, int], expected: tuple[int, int] | None) -> None:
    if expected is not None and tuple(shape) != tuple(expected):
        raise FileProblem(f"{what} is {shape[1]}x{shape[0]} but the photo is {expected[1]}x{expected[0]}")


def _short(uri: str) -> str:
    parts = uri.rstrip("/").split("/")
    return "/".join(parts[-2:])


def _take_photo(item: dict, cfg: dict, row: dict, writes: dict[str, bytes], kind: str) -> tuple[int, int] | None:
    """Read the item's photo when verifying or copying; return its (H, W) when verified, and in copy mode point
    ``row["image_uri"]`` at ``images/<kind>/<id><ext>`` under the root with the bytes queued in ``writes``."""
    if not (cfg["verify"] or cfg["mode"] == "copy"):
        return None
    data = _read(item["uri"], cfg)
    size = _decoded_size(data, cfg, "decode_image") if cfg["verify"] else None
    if cfg["mode"] == "copy":
        row["image_uri"] = storage.join_uri(cfg["root"], f"images/{kind}/{item['id']}{item['ext']}")
        writes[row["image_uri"]] = data
    return size


def _take_label(uri: str, mid: str, cfg: dict, row: dict, writes: dict[str, bytes], size) -> None:
    """Reference an 'L' PNG label in place; convert any other (palette, 16-bit) to ``parsing/{mid}.png``."""
    row["parsing_uri"] = uri
    copy = cfg["mode"] == "copy"
    if not (cfg["verify"] or copy):
        return
    data = _read(uri, cfg)
    labels, as_is = _decode_label(data, cfg) if cfg["verify"] else (None, True)
    if cfg["verify"]:
        _check_size("parsing label", labels.shape, size)
    target = storage.join_uri(cfg["root"], f"parsing/{mid}.png")
    if not as_is:
        from pfafn import imageio

        writes[target] = imageio.encode_png(labels)
        row["parsing_uri"] = target
    elif copy:
        writes[target] = data
        row["parsing_uri"] = target


def _take_pose(uri: str, mid: str, cfg: dict, row: dict, writes: dict[str, bytes]) -> None:
    row["pose_uri"] = uri
    if not (cfg["verify"] or cfg["mode"] == "copy"):
        return
    data = _read(uri, cfg)
    if cfg["verify"]:
        _decode_pose(data)
    if cfg["mode"] == "copy":
        row["pose_uri"] = storage.join_uri(cfg["root"], f"pose/{mid}.json")
        writes[row["pose_uri"]] = data


def _take_densepose(uri: str, mid: str, cfg: dict, row: dict, writes: dict[str, bytes], size) -> None:
    """DensePose is always converted to ``densepose/{mid}.png``, so it is read even unverified."""
    from pfafn import imageio

    parts = _decode_densepose(_read(uri, cfg))
    _check_size("DensePose", parts.shape, size)
    row["densepose_uri"] = storage.join_uri(cfg["root"], f"densepose/{mid}.png")
    writes[row["densepose_uri"]] = imageio.encode_png(parts)


_MODEL_COMPANIONS = (("label_uri", "label", "parsing"), ("pose_uri", "pose", "pose"),
                     ("densepose_uri", "densepose", "densepose"))


def _validate_model(item: dict, cfg: dict) -> dict:
    mid = item["id"]
    row = {"model_id": mid, "image_uri": item["uri"], "split": item["split"], "parsing_uri": None,
           "pose_uri": None, "densepose_uri": None}
    writes: dict[str, bytes] = {}
    try:
        with _blame("person image", item["uri"]):
            size = _take_photo(item, cfg, row, writes, "models")
        for key, folder, source in _MODEL_COMPANIONS:
            if item.get(key) is None and item["required"]:
                raise InputError(_blamed(source, f"{item['split']}_{folder}/", f"no file for {mid} (train persons "
                                          "need their label, pose and DensePose)"))
        if item.get("label_uri"):
            with _blame("parsing", item["label_uri"]):
                _take_label(item["label_uri"], mid, cfg, row, writes, size)
        if item.get("pose_uri"):
            with _blame("pose", item["pose_uri"]):
                _take_pose(item["pose_uri"], mid, cfg, row, writes)
        if item.get("densepose_uri"):
            with _blame("densepose", item["densepose_uri"]):
                _take_densepose(item["densepose_uri"], mid, cfg, row, writes, size)
    except InputError as exc:
        return {"ok": False, "item": item, "error": exc.reason}
    return {"ok": True, "item": item, "row": row, "writes": writes, "size": list(size) if size else None}


def _validate_garment(item: dict, cfg: dict) -> dict:
    copy, verify = cfg["mode"] == "copy", cfg["verify"]
    gid = item["id"]
    row = {"garment_id": gid, "image_uri": item["uri"], "mask_uri": item.get("edge_uri")}
    writes: dict[str, bytes] = {}
    edge = item.get("edge_uri")
    try:
        with _blame("garment image", item["uri"]):
            size = _take_photo(item, cfg, row, writes, "garments")
        if edge is None and item["required"]:
            raise InputError(_blamed("garment mask", f"{item['split']}_edge/",
                                      f"no mask for {gid} (train garments need their edge)"))
        if edge and (verify or copy):
            with _blame("garment mask", edge):
                data = _read(edge, cfg)
                if verify:
                    _check_size("edge", _decoded_size(data, cfg, "decode_mask"), size)
            if copy:
                row["mask_uri"] = storage.join_uri(cfg["root"], f"images/garment_masks/{gid}{_stem_ext(edge)[1]}")
                writes[row["mask_uri"]] = data
    except InputError as exc:
        return {"ok": False, "item": item, "error": exc.reason}
    return {"ok": True, "item": item, "row": row, "writes": writes, "size": list(size) if size else None}


def validate_chunk(cfg: dict, items: list[dict]) -> dict:
    """Validate (and convert/copy) one chunk of rows; writes happen here, on the worker. Storage errors other than
    a missing or oversized file propagate (they are the run's problem, not the row's)."""
    started = time.perf_counter()
    out = []
    written = 0
    for item in items:
        res = _validate_model(item, cfg) if item["kind"] == "model" else _validate_garment(item, cfg)
        for uri, data in res.pop("writes", {}).items():
            storage.write_bytes(uri, data)
            written += 1
        out.append(res)
    return {"results": out, "files_written": written, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------------------------
# Pairs.


def _pair_stem(token: str) -> str:
    stem, ext = _stem_ext(token)
    return stem if ext in IMAGE_EXTENSIONS else token


def _read_pairs(uri: str) -> list[tuple[int, str]]:
    try:
        text = storage.read_bytes(uri, max_bytes=256 * 2**20).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StageError(f"import_viton: {uri} is not UTF-8 text ({exc})") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


@dataclass
class _PairSource:
    uri: str
    paired: bool | None  # the test_pairs "paired" value of its lines (None for train)
    lines: list[tuple[int, str, str, str]]  # (line number, line, model id, garment id)
    label: str  # where a line is, with {n} (line number) and {i} (position)


def _file_sources(sf: SplitFiles, manifest: str, errors: list[dict]) -> list[_PairSource]:
    """The split's pairs files, line by line; a line without two fields is an error row."""
    files = [("train_pairs.txt", None)] if sf.split == "train" else [("test_pairs_same.txt", True),
                                                                     ("test_pairs.txt", False)]
    sources = []
    for name, paired in files:
        uri = sf.pairs_files.get(name)
        if uri is None:
            continue
        lines = []
        for lineno, line in _read_pairs(uri):
            tokens = line.split()
            if len(tokens) != 2:
                errors.append(_error(manifest, uri, lineno - 1, None,
                                     f"{name}:{lineno}: expected 'person garment', got {len(tokens)} field(s)",
                                     {"line": line}))
                continue
            lines.append((lineno, line, _pair_stem(tokens[0]), _pair_stem(tokens[1])))
        sources.append(_PairSource(uri, paired, lines, name + ":{n}"))
    return sources


def _position_source(sf: SplitFiles, cands: Candidates, manifest: str, errors: list[dict], info: dict
                     ) -> _PairSource:
    """The published loader's pairing: the i-th person with the i-th garment of the sorted folders."""
    persons = cands.person_names.get(sf.split, [])
    garments = cands.garment_names.get(sf.split, [])
    source = storage.join_uri(sf.base, sf.person_dir)
    lines = [(k + 1, f"{p} {g}", _stem_ext(p)[0], _stem_ext(g)[0]) for k, (p, g) in enumerate(zip(persons, garments))]
    for k in range(len(garments), len(persons)):
        errors.append(_error(manifest, source, k, _stem_ext(persons[k])[0], f"{sf.person_dir}/{persons[k]}: no "
                             f"garment at sorted position {k} ({sf.garment_dir}/ has {len(garments)} images)"))
    info["unpaired_garment_files"] = max(0, len(garments) - len(persons))
    return _PairSource(source, True if sf.split == "test" else None, lines,
                       f"sorted position {{i}} of {sf.person_dir}/ and {sf.garment_dir}/")


def _pair_problem(sf: SplitFiles, mid: str, gid: str, accepted: Accepted) -> str | None:
    """Why the pair cannot be used (a rejected, missing or other-split model or garment), or None."""
    for kind, id_, ok, folder in (("model", mid, accepted.models, sf.person_dir),
                                  ("garment", gid, accepted.garments, sf.garment_dir)):
        if id_ not in ok:
            why = accepted.rejected.get((kind, id_))
            return f"{kind} {id_!r} was rejected ({why})" if why else f"{kind} {id_!r} is not in {folder}/"
        if ok[id_]["split"] != sf.split:
            return f"{kind} {id_!r} is in the {ok[id_]['split']} split"
    return None


def build_pairs(sf: SplitFiles, cands: Candidates, accepted: Accepted) -> tuple[list[dict], list[dict], dict]:
    """``(pair rows, error rows, info)`` for one split. Train rows: model_id, garment_id; test: + paired."""
    manifest = f"{sf.split}_pairs"
    key_columns = manifests.SPECS[manifest].key
    rows: list[dict] = []
    errors: list[dict] = []
    sources = _file_sources(sf, manifest, errors)
    info: dict[str, Any] = {"pairing": "file" if sources else "position"}
    if not sources:
        sources.append(_position_source(sf, cands, manifest, errors, info))
    keys: dict[tuple, int] = {}
    for src in sources:
        for lineno, line, mid, gid in src.lines:
            reason = _pair_problem(sf, mid, gid, accepted)
            key = (mid, gid) if sf.split == "test" else (mid,)
            if reason is None and key in keys:
                first = src.label.format(n=keys[key], i=keys[key] - 1)
                reason = f"duplicate {', '.join(key_columns)} (first at {first})"
            if reason is not None:
                errors.append(_error(manifest, src.uri, lineno - 1, mid,
                                     f"{src.label.format(n=lineno, i=lineno - 1)}: {reason}", {"line": line}))
                continue
            keys[key] = lineno
            row = {"model_id": mid, "garment_id": gid}
            if sf.split == "test":
                row["paired"] = bool(src.paired)
            rows.append(row)
    return rows, errors, info


# ----------------------------------------------------------------------------------------------------------------------
# The stage.


def world_identity(config: VitonImportConfig) -> dict[str, Any]:
    norm = lambda u: dataset_root.normalize_root(u) if u else None  # noqa: E731
    return {
        "format": dataset_root.DATASET_FORMAT,
        "source": "viton",
        "source_uri": norm(config.source),
        "train_source": norm(config.train_source or config.source),
        "test_source": norm(config.test_source or config.source),
        "mode": config.mode,
    }


_IDENTITY_KEYS = ("format", "source", "source_uri", "train_source", "test_source", "mode")


@dataclass
class Accepted:
    """What validation kept and rejected: manifest rows by id (garments carry their split), reasons by (kind, id)."""

    models: dict[str, dict] = field(default_factory=dict)
    garments: dict[str, dict] = field(default_factory=dict)
    rejected: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # "HxW" -> photos


def accept(results: list[dict], cands: Candidates) -> Accepted:
    """Fold the validation results into accepted rows and error rows (the name-level errors first)."""
    out = Accepted(rejected=dict(cands.rejected), errors=list(cands.errors))
    for res in (x for r in results for x in r["results"]):
        item = res["item"]
        if not res["ok"]:
            out.rejected[(item["kind"], item["id"])] = res["error"]
            out.errors.append(_error("models" if item["kind"] == "model" else "garments", item["uri"], item["index"],
                                     item["id"], res["error"], {k: v for k, v in item.items() if k.endswith("uri")}))
            continue
        if res.get("size"):
            out.sizes[f"{res['size'][0]}x{res['size'][1]}"] += 1
        if item["kind"] == "model":
            out.models[item["id"]] = res["row"]
        else:
            out.garments[item["id"]] = dict(res["row"], split=item["split"])
    return out


def _manifest_tables(accepted: Accepted, pairs: dict[str, list[dict]]) -> dict[str, pa.Table]:
    schemas = manifests.SCHEMAS
    garments = [{k: v for k, v in g.items() if k != "split"} for g in accepted.garments.values()]
    return {
        "models": pa.Table.from_pylist(list(accepted.models.values()), schema=schemas["models"]),
        "garments": pa.Table.from_pylist(garments, schema=schemas["garments"]),
        "train_pairs": pa.Table.from_pylist(pairs["train"], schema=schemas["train_pairs"]),
        "test_pairs": pa.Table.from_pylist(pairs["test"], schema=schemas["test_pairs"]),
    }


def run(config: VitonImportConfig) -> dict[str, Any]:
    """Import the VITON-layout source into the output dataset root; returns (and writes there) the run summary."""
    config.validate()
    config = absolute_paths(config, "source", "output", "train_source", "test_source")
    job = dataset_root.WriterRun("import_viton", config.output)
    with job.step("discover_s"):
        identity = world_identity(config)
        storage.makedirs(job.root)
        dataset_root.claim_root(job.root, identity, _IDENTITY_KEYS)
        splits = discover(config)
        cands = collect(splits)
    with job.step("validate_s"):
        log.info("import_viton %s: %d candidate rows, %d rejected by name", job.run_id, len(cands.items),
                 len(cands.errors))
        results = job.execute(validate_chunk, dataclasses.asdict(config) | {"root": job.root},
                              dataset_root.chunked(cands.items, config.chunk_size), config, units=len(cands.items),
                              what="validate")
    with job.step("manifests_s"):
        accepted = accept(results, cands)
        pairs: dict[str, list[dict]] = {"train": [], "test": []}
        pairing: dict[str, Any] = {}
        for sf in splits:
            pairs[sf.split], pair_errors, pairing[sf.split] = build_pairs(sf, cands, accepted)
            accepted.errors.extend(pair_errors)
        errors = sorted(accepted.errors, key=lambda e: (e["manifest"], e["source_uri"] or "", -1 if e["row_index"]
                                                        is None else e["row_index"], e["error"]))
        written = dataset_root.write_manifests(job.root, _manifest_tables(accepted, pairs))
        errors_uri = storage.join_uri(job.root, dataset_root.IMPORT_ERRORS_FILE)
        if dataset_root.write_errors_if_changed(errors, errors_uri):
            written.append("import_errors")
    counts = _counts(accepted, pairs, errors)
    summary = job.summary(
        MANIFESTS, source=identity["source_uri"], mode=config.mode, verify=config.verify,
        splits=[sf.split for sf in splits], **counts, **_file_counts(splits, cands, accepted, pairs, errors),
        files_written=sum(r["files_written"] for r in results), image_sizes=dict(accepted.sizes), pairing=pairing,
        import_errors_uri=errors_uri, manifests_written=written,
        rows_per_s=round(len(cands.items) / job.timings["validate_s"], 2) if job.timings["validate_s"] > 0 else 0.0,
    )
    return job.finish(summary, world=dict(identity, counts=counts, pairing=pairing))


def _counts(accepted: Accepted, pairs: dict[str, list[dict]], errors: list[dict]) -> dict[str, int]:
    """The dataset's counts (world.json and the summary)."""
    train_models = sum(1 for m in accepted.models.values() if m["split"] == "train")
    return {
        "models": len(accepted.models),
        "train_models": train_models,
        "test_models": len(accepted.models) - train_models,
        "garments": len(accepted.garments),
        "train_pairs": len(pairs["train"]),
        "test_pairs": len(pairs["test"]),
        "test_pairs_paired": sum(1 for r in pairs["test"] if r["paired"]),
        "test_pairs_unpaired": sum(1 for r in pairs["test"] if not r["paired"]),
        "import_errors": len(errors),
    }


def _file_counts(splits: list[SplitFiles], cands: Candidates, accepted: Accepted, pairs: dict[str, list[dict]],
                 errors: list[dict]) -> dict[str, Any]:
    """Where the source's files went: rejected rows per manifest, unpaired train models, unclaimed companions."""
    by_manifest = Counter(e["manifest"] for e in errors)
    train_models = sum(1 for m in accepted.models.values() if m["split"] == "train")
    companions = {f"{sf.split}_{k}": sf for sf in splits for k in ("edge", "label", "pose", "densepose")}
    orphans = sorted(uri for folder, sf in companions.items() for uri in sf.folders.get(folder, {}).values()
                     if uri not in cands.claimed)
    return {
        "models_rejected": by_manifest.get("models", 0),
        "garments_rejected": by_manifest.get("garments", 0),
        "pairs_rejected": by_manifest.get("train_pairs", 0) + by_manifest.get("test_pairs", 0),
        "files_rejected": by_manifest.get("files", 0),
        "person_files": cands.seen["model"],
        "garment_files": cands.seen["garment"],
        "train_models_without_pair": train_models - len({r["model_id"] for r in pairs["train"]}),
        "orphan_files": len(orphans),  # label/pose/DensePose/edge files no accepted-name photo claims
        "orphan_examples": [_short(u) for u in orphans[:5]],
    }
