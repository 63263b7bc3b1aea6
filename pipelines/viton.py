"""Import a dataset in the published VITON / PF-AFN layout into a dataset root (the manifests every stage reads).

Input layout (pfafn-reference.md §4.2, §5.1; docs/datasets.md)::

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
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import dataset_root, manifests, storage
from pipelines.config import absolute_paths
from pipelines.locking import new_run_id, write_run_summary
from pipelines.errors import StageError

log = logging.getLogger(__name__)

# The published loader's IMG_EXTENSIONS (+ WebP): what counts as an image for position pairing.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
SPLITS = ("train", "test")
DENSEPOSE_PARTS = 24


@dataclass
class VitonImportConfig:
    """Config of ``jobs.import_viton``.

    source          VITON root holding train_*/ and/or test_* folders and the pairs files (local path or s3://)
    output          dataset root to write (local folder or s3://bucket/prefix)
    train_source    root of the train_* folders when they live elsewhere (default: source)
    test_source     root of the test_* folders when they live elsewhere (default: source)
    mode            reference: point manifests at the source files where the format matches (convert the rest);
                    copy: copy every file into the output root
    verify          decode and check every file (False: only names, ids and presence are checked)
    max_label       largest parsing class id accepted (13 for the 14-class ACGPN scheme)
    max_image_pixels, max_file_bytes   limits per file (decompression-bomb and size guards)
    executor, ray_min_items, chunk_size, workers, cpus_per_task   as in jobs.generate_synthetic
    """

    source: str = ""
    output: str = ""
    train_source: str = ""
    test_source: str = ""
    mode: str = "reference"
    verify: bool = True
    max_label: int = 13
    max_image_pixels: int = 40_000_000
    max_file_bytes: int = 50 * 1024 * 1024
    executor: str = "auto"
    ray_min_items: int = 2000
    chunk_size: int = 64
    workers: int = 8
    cpus_per_task: float = 1.0

    def validate(self) -> None:
        if not (self.source or self.train_source or self.test_source):
            raise StageError("import_viton: --source is required")
        if not self.output:
            raise StageError("import_viton: --output is required")
        if self.mode not in ("reference", "copy"):
            raise StageError(f"import_viton: mode must be reference or copy, got {self.mode!r}")
        if self.executor not in dataset_root.EXECUTORS:
            raise StageError(f"import_viton: executor must be one of {', '.join(dataset_root.EXECUTORS)}")
        if self.chunk_size < 1 or self.workers < 1 or self.max_label < 0 or self.cpus_per_task <= 0:
            raise StageError("import_viton: chunk_size and workers must be >= 1, max_label >= 0, cpus_per_task > 0")


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


def _find_companion(folder: dict[str, str], stem: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in folder:
            return folder[name]
    return None


def _image_companion(folder: dict[str, str], stem: str, prefer_ext: str) -> str | None:
    names = (stem + prefer_ext,) + tuple(stem + e for e in IMAGE_EXTENSIONS) + tuple(
        stem + e.upper() for e in IMAGE_EXTENSIONS)
    return _find_companion(folder, stem, names)


@dataclass
class Candidates:
    items: list[dict]  # rows to validate (kind model|garment)
    errors: list[dict]  # import_errors rows found from names alone
    person_names: dict[str, list[str]]  # split -> sorted image names in the person folder (for position pairing)
    garment_names: dict[str, list[str]]
    claimed: set[str]  # companion URIs used by some row
    seen: dict[str, int]  # files in the person ("model") and garment folders
    rejected: dict[tuple[str, str], str]  # (kind, stem) -> reason, for names rejected before validation


def _error(manifest: str, source_uri: str | None, row_index: int | None, id_: str | None, reason: str,
           row: dict | None = None) -> dict:
    return {"manifest": manifest, "source_uri": source_uri, "row_index": row_index, "id": id_, "error": reason,
            "row_json": json.dumps(row or {}, sort_keys=True, default=str)}


def collect(splits: list[SplitFiles]) -> Candidates:
    items: list[dict] = []
    errors: list[dict] = []
    person_names: dict[str, list[str]] = {}
    garment_names: dict[str, list[str]] = {}
    claimed: set[str] = set()
    ids = {"model": {}, "garment": {}}  # id -> "split/folder/name" of the first file with it
    seen = {"model": 0, "garment": 0}
    rejected: dict[tuple[str, str], str] = {}
    for sf in splits:
        for rel in sf.nested:
            errors.append(_error("files", storage.join_uri(sf.base, rel), None, None,
                                 f"{rel}: file in a sub-folder; VITON folders are flat, ignored"))
        for kind, folder_name in (("model", sf.person_dir), ("garment", sf.garment_dir)):
            manifest = "models" if kind == "model" else "garments"
            folder = sf.folders.get(folder_name, {})
            names = sorted(folder)
            seen[kind] += len(names)
            image_names = [n for n in names if _is_image_name(n)]
            (person_names if kind == "model" else garment_names)[sf.split] = image_names
            for index, name in enumerate(names):
                uri = folder[name]
                stem, ext = _stem_ext(name)
                where = f"{folder_name}/{name}"
                if not _is_image_name(name):
                    errors.append(_error(manifest, uri, index, stem, f"{where}: not an image file name (extensions: "
                                         f"{', '.join(IMAGE_EXTENSIONS)})"))
                    continue
                try:
                    manifests.validate_id(stem)
                    problem = None
                except manifests.UnsafeIdError as exc:
                    problem = exc.reason
                if problem is not None:
                    reason = f"{where}: file stem is not a safe {kind} id ({problem})"
                    errors.append(_error(manifest, uri, index, stem, reason))
                    rejected.setdefault((kind, stem), reason)
                    continue
                first = ids[kind].get(stem)
                if first is not None:
                    errors.append(_error(manifest, uri, index, stem, f"{where}: duplicate {kind}_id {stem!r} "
                                         f"(first: {first})"))
                    continue
                ids[kind][stem] = f"{sf.split}:{where}"
                item = {"kind": kind, "split": sf.split, "id": stem, "name": name, "ext": ext, "uri": uri,
                        "index": index, "required": sf.split == "train"}
                if kind == "model":
                    item["label_uri"] = _image_companion(sf.folders.get(f"{sf.split}_label", {}), stem, ".png")
                    item["pose_uri"] = _find_companion(sf.folders.get(f"{sf.split}_pose", {}), stem,
                                                       (f"{stem}_keypoints.json", f"{stem}.json"))
                    item["densepose_uri"] = _find_companion(sf.folders.get(f"{sf.split}_densepose", {}), stem,
                                                            (f"{stem}.npy",))
                    claimed.update(u for u in (item["label_uri"], item["pose_uri"], item["densepose_uri"]) if u)
                else:
                    item["edge_uri"] = _image_companion(sf.folders.get(f"{sf.split}_edge", {}), stem, ext)
                    if item["edge_uri"]:
                        claimed.add(item["edge_uri"])
                items.append(item)
    return Candidates(items, errors, person_names, garment_names, claimed, seen, rejected)


# ----------------------------------------------------------------------------------------------------------------------
# Validation and conversion (threads or Ray tasks).


class FileProblem(ValueError):
    """One-line reason a file is unusable."""


def _read(uri: str, cfg: dict) -> bytes:
    try:
        return storage.read_bytes(uri, max_bytes=cfg["max_file_bytes"])
    except storage.ObjectTooLargeError as exc:
        raise FileProblem(f"too large ({exc.reason})") from None
    except storage.ObjectNotFoundError:
        raise FileProblem("missing") from None


def _decode_photo(data: bytes, cfg: dict) -> tuple[int, int]:
    from pfafn import imageio

    try:
        img = imageio.decode_image(data, max_pixels=cfg["max_image_pixels"])
    except imageio.ImageDecodeError as exc:
        raise FileProblem(exc.reason) from None
    return img.shape[0], img.shape[1]


def _decode_edge(data: bytes, cfg: dict) -> tuple[int, int]:
    from pfafn import imageio

    try:
        mask = imageio.decode_mask(data, max_pixels=cfg["max_image_pixels"])
    except imageio.ImageDecodeError as exc:
        raise FileProblem(exc.reason) from None
    return mask.shape[0], mask.shape[1]


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
    from pfafn.data import decode_openpose

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
    size = _decode_photo(data, cfg) if cfg["verify"] else None
    if cfg["mode"] == "copy":
        row["image_uri"] = storage.join_uri(cfg["root"], f"images/{kind}/{item['id']}{item['ext']}")
        writes[row["image_uri"]] = data
    return size


def _validate_model(item: dict, cfg: dict) -> dict:
    root, copy, verify = cfg["root"], cfg["mode"] == "copy", cfg["verify"]
    mid = item["id"]
    row = {"model_id": mid, "image_uri": item["uri"], "split": item["split"], "parsing_uri": None,
           "pose_uri": None, "densepose_uri": None}
    writes: dict[str, bytes] = {}
    current = item["uri"]
    try:
        size = _take_photo(item, cfg, row, writes, "models")
        for key, folder in (("label_uri", "label"), ("pose_uri", "pose"), ("densepose_uri", "densepose")):
            if item.get(key) is None and item["required"]:
                raise FileProblem(f"{item['split']}_{folder}/ has no file for {mid} (train persons need their label, "
                                  "pose and DensePose)")
        if item.get("label_uri"):
            current = item["label_uri"]
            target = storage.join_uri(root, f"parsing/{mid}.png")
            row["parsing_uri"] = item["label_uri"]
            if verify or copy:
                data = _read(item["label_uri"], cfg)
                labels, as_is = _decode_label(data, cfg) if verify else (None, True)
                if verify:
                    _check_size("parsing label", labels.shape, size)
                if not as_is:
                    from pfafn import imageio

                    writes[target] = imageio.encode_png(labels)
                    row["parsing_uri"] = target
                elif copy:
                    writes[target] = data
                    row["parsing_uri"] = target
        if item.get("pose_uri"):
            current = item["pose_uri"]
            row["pose_uri"] = item["pose_uri"]
            if verify or copy:
                data = _read(item["pose_uri"], cfg)
                if verify:
                    _decode_pose(data)
                if copy:
                    row["pose_uri"] = storage.join_uri(root, f"pose/{mid}.json")
                    writes[row["pose_uri"]] = data
        if item.get("densepose_uri"):
            from pfafn import imageio

            current = item["densepose_uri"]
            parts = _decode_densepose(_read(item["densepose_uri"], cfg))  # always converted: read even unverified
            _check_size("DensePose", parts.shape, size)
            row["densepose_uri"] = storage.join_uri(root, f"densepose/{mid}.png")
            writes[row["densepose_uri"]] = imageio.encode_png(parts)
    except FileProblem as exc:
        return {"ok": False, "item": item, "error": f"{_short(current)}: {exc}"}
    return {"ok": True, "item": item, "row": row, "writes": writes, "size": list(size) if size else None}


def _validate_garment(item: dict, cfg: dict) -> dict:
    root, copy, verify = cfg["root"], cfg["mode"] == "copy", cfg["verify"]
    gid = item["id"]
    row = {"garment_id": gid, "image_uri": item["uri"], "mask_uri": item.get("edge_uri")}
    writes: dict[str, bytes] = {}
    current = item["uri"]
    try:
        size = _take_photo(item, cfg, row, writes, "garments")
        edge = item.get("edge_uri")
        if edge is None and item["required"]:
            raise FileProblem(f"{item['split']}_edge/ has no mask for {gid} (train garments need their edge)")
        if edge:
            current = edge
            if verify or copy:
                data = _read(edge, cfg)
                if verify:
                    _check_size("edge", _decode_edge(data, cfg), size)
                if copy:
                    row["mask_uri"] = storage.join_uri(root, f"images/garment_masks/{gid}{_stem_ext(edge)[1]}")
                    writes[row["mask_uri"]] = data
    except FileProblem as exc:
        return {"ok": False, "item": item, "error": f"{_short(current)}: {exc}"}
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


def build_pairs(sf: SplitFiles, cands: Candidates, ok_models: dict[str, dict], ok_garments: dict[str, dict],
                rejected: dict[tuple[str, str], str]) -> tuple[list[dict], list[dict], dict]:
    """``(pair rows, error rows, info)`` for one split. Train rows: model_id, garment_id; test: + paired."""
    manifest = f"{sf.split}_pairs"
    kind_spec = manifests.SPECS[manifest]
    rows: list[dict] = []
    errors: list[dict] = []
    keys: dict[tuple, int] = {}
    sources: list[tuple[str, bool | None, list[tuple[int, str, str, str]], str]] = []  # (uri, paired, lines, label)
    if sf.split == "train":
        files = [("train_pairs.txt", None)]
    else:
        files = [("test_pairs_same.txt", True), ("test_pairs.txt", False)]
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
        sources.append((uri, paired, lines, name + ":{n}"))
    info = {"pairing": "file" if sources else "position"}
    if not sources:  # the published loader: i-th person with the i-th garment, sorted names
        persons = cands.person_names.get(sf.split, [])
        garments = cands.garment_names.get(sf.split, [])
        source = storage.join_uri(sf.base, sf.person_dir)
        lines = [(k + 1, f"{p} {g}", _stem_ext(p)[0], _stem_ext(g)[0])
                 for k, (p, g) in enumerate(zip(persons, garments))]
        for k in range(len(garments), len(persons)):
            stem = _stem_ext(persons[k])[0]
            errors.append(_error(manifest, source, k, stem, f"{sf.person_dir}/{persons[k]}: no garment at sorted "
                                 f"position {k} ({sf.garment_dir}/ has {len(garments)} images)"))
        info["unpaired_garment_files"] = max(0, len(garments) - len(persons))
        sources.append((source, True if sf.split == "test" else None, lines,
                        f"sorted position {{i}} of {sf.person_dir}/ and {sf.garment_dir}/"))
    for uri, paired, lines, label in sources:
        for lineno, line, mid, gid in lines:
            where = label.format(n=lineno, i=lineno - 1)
            reason = None
            if mid not in ok_models:
                why = rejected.get(("model", mid))
                reason = (f"model {mid!r} was rejected ({why})" if why else
                          f"model {mid!r} is not in {sf.person_dir}/")
            elif ok_models[mid]["split"] != sf.split:
                reason = f"model {mid!r} is in the {ok_models[mid]['split']} split"
            elif gid not in ok_garments:
                why = rejected.get(("garment", gid))
                reason = (f"garment {gid!r} was rejected ({why})" if why else
                          f"garment {gid!r} is not in {sf.garment_dir}/")
            elif ok_garments[gid]["_split"] != sf.split:
                reason = f"garment {gid!r} is in the {ok_garments[gid]['_split']} split"
            key = tuple((mid, gid) if sf.split == "test" else (mid,))
            if reason is None and key in keys:
                reason = f"duplicate {', '.join(kind_spec.key)} (first at {label.format(n=keys[key], i=keys[key] - 1)})"
            if reason is not None:
                errors.append(_error(manifest, uri, lineno - 1, mid, f"{where}: {reason}", {"line": line}))
                continue
            keys[key] = lineno
            row = {"model_id": mid, "garment_id": gid}
            if sf.split == "test":
                row["paired"] = bool(paired)
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


def run(config: VitonImportConfig) -> dict[str, Any]:
    """Import the VITON-layout source into the output dataset root; returns (and writes there) the run summary."""
    config.validate()
    config = absolute_paths(config, "source", "output", "train_source", "test_source")
    started = time.perf_counter()
    root = dataset_root.normalize_root(config.output)
    run_id = new_run_id()
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        identity = world_identity(config)
        storage.makedirs(root)
        dataset_root.claim_root(root, identity, _IDENTITY_KEYS)
        splits = discover(config)
        cands = collect(splits)
        timings["discover_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        executor = dataset_root.choose_executor(config.executor, len(cands.items), config.ray_min_items)
        cfg = dataclasses.asdict(config) | {"root": root}
        chunks = [cands.items[k:k + config.chunk_size] for k in range(0, len(cands.items), config.chunk_size)]
        log.info("import_viton %s: %d candidate rows (%d rejected by name) in %d chunks (%s) -> %s", run_id,
                 len(cands.items), len(cands.errors), len(chunks), executor, root)
        results = dataset_root.run_chunks(validate_chunk, cfg, chunks, executor=executor, workers=config.workers,
                                          cpus_per_task=config.cpus_per_task, what="validate")
        timings["validate_s"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        errors = list(cands.errors)
        ok_models: dict[str, dict] = {}
        ok_garments: dict[str, dict] = {}
        rejected: dict[tuple[str, str], str] = dict(cands.rejected)
        sizes: Counter = Counter()
        files_written = sum(r["files_written"] for r in results)
        for res in (x for r in results for x in r["results"]):
            item = res["item"]
            manifest = "models" if item["kind"] == "model" else "garments"
            if not res["ok"]:
                rejected[(item["kind"], item["id"])] = res["error"]
                errors.append(_error(manifest, item["uri"], item["index"], item["id"], res["error"],
                                     {k: v for k, v in item.items() if k.endswith("uri")}))
                continue
            if res.get("size"):
                sizes[f"{res['size'][0]}x{res['size'][1]}"] += 1
            if item["kind"] == "model":
                ok_models[item["id"]] = res["row"]
            else:
                ok_garments[item["id"]] = dict(res["row"], _split=item["split"])
        pair_rows: dict[str, list[dict]] = {"train": [], "test": []}
        pairing: dict[str, Any] = {}
        for sf in splits:
            rows, perrs, info = build_pairs(sf, cands, ok_models, ok_garments, rejected)
            pair_rows[sf.split] = rows
            errors.extend(perrs)
            pairing[sf.split] = info
        models_tbl = pa.Table.from_pylist(list(ok_models.values()), schema=manifests.SCHEMAS["models"])
        garments_tbl = pa.Table.from_pylist([{k: v for k, v in g.items() if k != "_split"}
                                             for g in ok_garments.values()],
                                            schema=manifests.SCHEMAS["garments"])
        train_tbl = pa.Table.from_pylist(pair_rows["train"], schema=manifests.SCHEMAS["train_pairs"])
        test_tbl = pa.Table.from_pylist(pair_rows["test"], schema=manifests.SCHEMAS["test_pairs"])
        errors.sort(key=lambda e: (e["manifest"], e["source_uri"] or "", e["row_index"] if e["row_index"] is not None
                                   else -1, e["error"]))
        written = []
        for kind, table in (("models", models_tbl), ("garments", garments_tbl), ("train_pairs", train_tbl),
                            ("test_pairs", test_tbl)):
            if dataset_root.write_manifest_if_changed(table, dataset_root.manifest_uri(root, kind), kind):
                written.append(kind)
        errors_uri = storage.join_uri(root, dataset_root.IMPORT_ERRORS_FILE)
        if dataset_root.write_errors_if_changed(errors, errors_uri):
            written.append("import_errors")
        timings["manifests_s"] = round(time.perf_counter() - t0, 3)
    except storage.StorageError as exc:
        raise StageError(f"import_viton: storage error: {exc}") from None

    train_models = sum(1 for m in ok_models.values() if m["split"] == "train")
    paired_models = {r["model_id"] for r in pair_rows["train"]}
    by_manifest = Counter(e["manifest"] for e in errors)
    companions = {f"{sf.split}_{k}": sf for sf in splits for k in ("edge", "label", "pose", "densepose")}
    orphans = sorted(uri for folder, sf in companions.items() for uri in sf.folders.get(folder, {}).values()
                     if uri not in cands.claimed)
    counts = {
        "models": len(ok_models),
        "train_models": train_models,
        "test_models": len(ok_models) - train_models,
        "garments": len(ok_garments),
        "train_pairs": len(pair_rows["train"]),
        "test_pairs": len(pair_rows["test"]),
        "test_pairs_paired": sum(1 for r in pair_rows["test"] if r["paired"]),
        "test_pairs_unpaired": sum(1 for r in pair_rows["test"] if not r["paired"]),
        "import_errors": len(errors),
    }
    world = dict(identity, counts=counts, pairing=pairing)
    elapsed = time.perf_counter() - started
    timings["total_s"] = round(elapsed, 3)
    summary: dict[str, Any] = {
        "stage": "import_viton",
        "run_id": run_id,
        "output": root,
        "data": root,
        "source": identity["source_uri"],
        "mode": config.mode,
        "verify": config.verify,
        "splits": [sf.split for sf in splits],
        **counts,
        "models_rejected": by_manifest.get("models", 0),
        "garments_rejected": by_manifest.get("garments", 0),
        "pairs_rejected": by_manifest.get("train_pairs", 0) + by_manifest.get("test_pairs", 0),
        "files_rejected": by_manifest.get("files", 0),
        "person_files": cands.seen["model"],
        "garment_files": cands.seen["garment"],
        "train_models_without_pair": train_models - len(paired_models),
        "orphan_files": len(orphans),  # label/pose/DensePose/edge files no accepted-name photo claims
        "orphan_examples": [_short(u) for u in orphans[:5]],
        "files_written": files_written,
        "image_sizes": dict(sizes),
        "pairing": pairing,
        "import_errors_uri": errors_uri,
        "manifests": {k: dataset_root.manifest_uri(root, k) for k in ("models", "garments", "train_pairs",
                                                                        "test_pairs")},
        "manifests_written": written,
        "executor": executor,
        "timings": timings,
        "wall_s": round(elapsed, 3),
        "rows_per_s": round(len(cands.items) / timings["validate_s"], 2) if timings["validate_s"] > 0 else 0.0,
    }
    try:
        if dataset_root.read_world(root) != json.loads(json.dumps(world)):
            storage.write_json(storage.join_uri(root, dataset_root.WORLD_JSON), world)
        write_run_summary(root, run_id, summary)
    except storage.StorageError as exc:
        raise StageError(f"import_viton: storage error writing the summary: {exc}") from None
    return summary
