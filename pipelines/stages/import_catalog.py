"""Import a retail catalog — folders of photos or a CSV/Parquet export — as the garments and models manifests the
catalog try-on reads (issue #14, "Bring your own catalog").

Sources (``--garments SRC``, ``--models SRC``; local paths or ``s3://``):

* a **folder**, searched recursively; every file is checked (magic bytes + a Pillow header open, no pixel decoded,
  at most ``max_file_bytes`` read): images become rows, anything else is listed in the summary with a one-line reason
  (``not an image`` / ``unsupported format`` / ``too large`` / ``unreadable``; never file content). Hidden files
  (a path segment starting with ``.``) are listed as skipped. In the garments folder ``<name>_mask.<ext>`` is the
  mask of ``<name>.<ext>`` in the same folder (same stem, case-sensitive), never a garment of its own;
* a **table** (``.csv``, read as text; ``.parquet``, types kept) with an id column and an image column (names set by
  ``id_column`` / ``image_column`` / ``mask_column``, else the first present of :data:`AUTO_COLUMNS`). Relative
  paths resolve against the table's folder. Every other column is kept in the manifest (``gender``, ``season`` ...:
  the catalog's ``--match`` compares them), except names the manifest itself uses (listed as dropped).

Ids (:func:`assign_ids`): a readable slug of the source name — the path relative to the folder without its extension,
or the table's id value — lower-cased, ``/`` → ``-``, accents transliterated (NFKD), every run of other characters
→ ``-``, at most 100 characters. When the slug changes the name beyond lower-casing and ``/`` → ``-`` (a space, a
bracket, an accent, a truncation), or when two ids would be equal up to case, ``-`` + 8 hex digits of SHA-256 of
the *source name* (NFC; never the file's content) is appended. An id is therefore a function of the set of source
names only: the same on every re-run, whatever the listing order. A table id that is already safe
(``pipelines.core.manifests.ID_PATTERN``) is kept as written (then hashed only on a collision); the same id on two
rows keeps the first row. The source name is the ``source`` column.

Output (``--output ROOT``): ``ROOT/garments.parquet`` and ``ROOT/models.parquet`` (the manifest schemas of
``pipelines.core.manifests`` plus ``source`` and the kept columns; rows sorted by id; Parquet schema metadata
``pfafn.producer = import_catalog``, which makes the catalog's ``--output-size auto`` mean ``original``), rewritten
only when their content changes, plus ``world.json`` (this import's sources: a different import into the same root
is refused) and the run summary (``summary.json``, ``runs/{run_id}.json``). Images are referenced in place: the
summary's ``allowed_roots`` are the folders the catalog must be allowed to read (``--allowed-root DIR``, once per folder).
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import posixpath
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa

from pipelines import dataset_root
from pipelines.core import manifests, storage
from pipelines.core.config import ConfigError, absolute_paths, require
from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

PRODUCER = "import_catalog"
PRODUCER_KEY = b"pfafn.producer"  # Parquet schema metadata key naming the job that wrote a manifest
IMPORT_FORMAT = "pfafn-catalog-import/1"
MANIFESTS = ("garments", "models")
WRITTEN = MANIFESTS + ("test_pairs",)  # the manifests an import writes
ID_COLUMN = {"garments": "garment_id", "models": "model_id"}
#: Column names tried, in order, when the config leaves a column name empty.
AUTO_COLUMNS = {
    "id": ("{kind_id}", "id", "sku"),
    "image": ("image_uri", "image", "image_path", "picture", "photo", "path", "file", "url"),
    "mask": ("mask_uri", "mask", "mask_path"),
}
MASK_SUFFIX = "_mask"
WEARS_COLUMN = "wears"  # models table: the garment (its id in the garments table) the model wears in the photo
SLUG_MAX = 100
HASH_HEX = 8
_IDENTITY_KEYS = ("format", "producer", "garments_source", "models_source", "id_column", "image_column",
                  "mask_column")
# Letters NFKD does not decompose into ASCII (Unicode has no decomposition for them).
_TRANSLIT = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o", "œ": "oe", "Œ": "oe", "ł": "l",
                           "Ł": "l", "đ": "d", "Đ": "d", "ð": "d", "Ð": "d", "þ": "th", "Þ": "th", "ı": "i"})


@dataclass
class ImportCatalogConfig(dataset_root.DatasetWriterConfig):
    """Config of ``python -m jobs.import_catalog`` (the shared writer fields: :class:`DatasetWriterConfig`).

    garments        garment source: a folder (searched recursively) or a .csv / .parquet table; local or s3://
    models          model (person photo) source, the same kinds
    id_column       table column of the ids ("" = the first present of garment_id/model_id, id, sku; none: ids
                    from the image paths)
    image_column    table column of the image paths/URIs ("" = first present of image_uri, image, image_path,
                    picture, photo, path, file, url)
    (the three column names apply to both tables; a name set here must exist in each table that needs it)
    mask_column     table column of the garment mask paths/URIs ("" = first present of mask_uri, mask, mask_path)
    max_file_bytes  a file above this many bytes is skipped as too large (nothing more is read)
    max_image_pixels  an image whose header declares more pixels is skipped as too large
    read_timeout_s  one file read; past it the file is skipped as unreadable
    """

    garments: str = ""
    models: str = ""
    id_column: str = ""
    image_column: str = ""
    mask_column: str = ""
    max_file_bytes: int = 50 * 2**20
    max_image_pixels: int = 40_000_000
    read_timeout_s: float = 120.0
    workers: int = 8  # checking a file is mostly waiting for storage

    def validate(self) -> None:
        where = "import_catalog"
        self.check_writer(where)
        require(self, where, "garments", "models")
        if self.max_file_bytes < 1 or self.max_image_pixels < 1 or self.read_timeout_s <= 0:
            raise ConfigError(f"{where}: max_file_bytes and max_image_pixels must be >= 1, read_timeout_s > 0")


PRESETS: dict[str, dict[str, Any]] = {}


# ----------------------------------------------------------------------------------------------------------------------
# Ids


def slugify(name: str) -> str:
    """``"tops/Blue Shirt (1)"`` → ``"tops-blue-shirt-1"``: ASCII ``[a-z0-9_-]``, no leading/trailing ``-``/``_``,
    at most :data:`SLUG_MAX` characters; ``""`` when nothing transliterable is left."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFC", name).translate(_TRANSLIT))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    slug = re.sub(r"[^a-z0-9_]+", "-", text).strip("-_")
    return slug[:SLUG_MAX].rstrip("-_")


def name_hash(source: str, length: int = HASH_HEX) -> str:
    """Hex digits of SHA-256 of the source *name* (NFC, so a macOS NFD file name hashes like its NFC twin)."""
    return hashlib.sha256(unicodedata.normalize("NFC", source).encode("utf-8")).hexdigest()[:length]


def _hashed(name: str, source: str, fallback: str, length: int) -> str:
    return f"{slugify(name) or fallback}-{name_hash(source, length)}"


def _first_id(name: str, source: str, fallback: str, verbatim: bool = False) -> str:
    """The id before collisions: the name itself (a safe table id), its slug (when the slug only lower-cased it and
    turned ``/`` into ``-``), or the slug with the source name's hash."""
    if verbatim and manifests.is_safe_id(name):
        return name
    slug = slugify(name)
    if slug and slug == unicodedata.normalize("NFC", name).replace("/", "-").lower():
        return slug
    return _hashed(name, source, fallback, HASH_HEX)


def assign_ids(cands: list[dict], fallback: str) -> tuple[dict[int, str], dict[int, int]]:
    """Ids for candidates (``name``: what is slugged, ``source``: what is hashed, ``order``: who comes first,
    ``verbatim``: a table id kept as written when safe), and ``{duplicate: first}`` for candidates with the same
    source name as an earlier one (the same table id twice; no hash can tell them apart).

    Ids equal up to case are collisions (the catalog refuses them, and they are one file on case-insensitive file
    systems): every member of a clash gets the 8-hex hash, then 16 hex digits where 8 still clash."""
    first: dict[str, int] = {}
    duplicates: dict[int, int] = {}
    for k in sorted(range(len(cands)), key=lambda k: cands[k]["order"]):
        duplicates.update({k: first[key]} if (key := unicodedata.normalize("NFC", cands[k]["source"])) in first
                          else {})
        first.setdefault(key, k)
    ids = {k: _first_id(c["name"], c["source"], fallback, c.get("verbatim", False))
           for k, c in enumerate(cands) if k not in duplicates}
    for length in (HASH_HEX, 2 * HASH_HEX):
        for ks in [ks for ks in _groups(ids).values() if len(ks) > 1]:
            for k in ks:
                ids[k] = _hashed(cands[k]["name"], cands[k]["source"], fallback, length)
    if any(len(ks) > 1 for ks in _groups(ids).values()):  # distinct names, equal 64-bit hashes: not in practice
        raise StageError(f"id collision left after hashing among {sorted(_groups(ids))[:3]}")
    return ids, duplicates


def _groups(ids: Mapping[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for k, i in ids.items():
        out[i.lower()].append(k)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Discovery: what each source holds (names and URIs only)


@dataclass
class Source:
    """One source's candidates (dicts: name, source, order, uri, mask, extra), skipped entries and kept columns."""

    kind: str
    uri: str
    table: bool
    cands: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    masks: dict[tuple[str, str], str] = field(default_factory=dict)  # folder import: (dir, stem) -> mask URI
    extra_fields: list[pa.Field] = field(default_factory=list)
    dropped_columns: list[str] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"manifest": self.kind, "source": source, "reason": reason})


def _is_table(uri: str) -> bool:
    return uri.lower().rstrip("/").endswith((".csv", ".parquet"))


def discover(kind: str, uri: str, config: ImportCatalogConfig) -> Source:
    """The candidates of one source; :class:`StageError` (exit 2) when it is missing, empty or lacks a column."""
    src = Source(kind, uri, _is_table(uri))
    if src.table:
        _discover_table(src, config)
    else:
        _discover_folder(src)
    return src


def _split_name(rel: str) -> tuple[str, str, str]:
    """``"tops/Shirt.v2.JPG"`` → ``("tops", "Shirt.v2", "tops/Shirt.v2")``: folder, stem, name without extension."""
    folder, _, base = rel.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return folder, stem, f"{folder}/{stem}" if folder else stem


def _discover_folder(src: Source) -> None:
    base = src.uri.rstrip("/")
    if storage.is_local(base) and not storage.exists(base):
        raise StageError(f"{src.kind}: {src.uri} does not exist (a folder of images, or a .csv / .parquet table)")
    files = storage.list_files(base)
    if not files:
        raise StageError(f"{src.kind}: no files under {src.uri} (a folder of images, or a .csv / .parquet table)")
    src.roots = [base]
    src.extra_fields = [pa.field("folder", pa.string())]  # the sub-folder ("" at the top): --match folder pairs them
    for uri in files:
        rel = uri[len(base) + 1:]
        folder, stem, name = _split_name(rel)
        if any(seg.startswith(".") for seg in rel.split("/")):
            src.skip(rel, "hidden file")
        elif src.kind == "garments" and stem.lower().endswith(MASK_SUFFIX) and len(stem) > len(MASK_SUFFIX):
            src.masks[(folder, stem[: -len(MASK_SUFFIX)])] = uri
        else:
            src.cands.append({"name": name, "source": rel, "order": rel, "label": rel, "uri": uri, "mask": None,
                              "extra": {"folder": folder}, "stem": (folder, stem)})
    stems = {c["stem"] for c in src.cands}
    for key, mask_uri in sorted(src.masks.items()):
        if key not in stems:
            src.skip(mask_uri[len(base) + 1:], f"mask without a garment: no {key[1]}.<ext> beside it")
    for c in src.cands:
        c["mask"] = src.masks.get(c.pop("stem"))


def _column(kind: str, role: str, wanted: str, names: list[str], src: str) -> str | None:
    """The table column for ``role`` (id / image / mask): the configured one (must exist) or the first present of
    :data:`AUTO_COLUMNS`; None when an optional role has none."""
    if wanted:
        if wanted not in names:
            raise StageError(f"{kind}: {src} has no column {wanted!r} (columns: {', '.join(names)})")
        return wanted
    for name in AUTO_COLUMNS[role]:
        name = name.format(kind_id=ID_COLUMN[kind])
        if name in names:
            return name
    if role == "image":
        raise StageError(f"{kind}: {src} has no image column (tried {', '.join(AUTO_COLUMNS['image'])}; set "
                         f"--image-column; columns: {', '.join(names)})")
    return None


def _read_source_table(kind: str, uri: str) -> pa.Table:
    """A CSV (every column as text: ids like ``007`` stay strings; empty cells null) or a Parquet table."""
    if not uri.lower().endswith(".csv"):
        return manifests.read_table(uri)
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError:
        raise StageError(f"{kind}: {uri} is not UTF-8 text") from None
    except csv.Error as exc:
        raise StageError(f"{kind}: {uri}: unreadable CSV: {exc}") from None
    if not rows:
        raise StageError(f"{kind}: {uri} is empty (a header line is needed)")
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated or "" in header:
        raise StageError(f"{kind}: {uri}: empty or repeated column names {repeated or ['']}")
    body = [r for r in rows[1:] if any(v.strip() for v in r)]
    bad = next((n for n, r in enumerate(body, 1) if len(r) > len(header)), None)
    if bad is not None:
        raise StageError(f"{kind}: {uri}: data row {bad} has more fields than the header ({len(header)})")
    columns = {h: [r[j] if j < len(r) and r[j].strip() else None for r in body] for j, h in enumerate(header)}
    return pa.table({h: pa.array(v, pa.string()) for h, v in columns.items()})


def _resolve(value: str, base: str) -> str:
    """A table's path or URI: absolute ones (``/...``, ``file://``, ``s3://``) as written, relative ones against the
    table's folder (``..`` allowed, but not out of the bucket)."""
    if "://" in value or value.startswith("/"):
        storage.is_local(value)  # an unsupported scheme: InvalidURIError
        return value
    if storage.is_s3(base):
        bucket = base[len("s3://"):].split("/", 1)[0]
        key = posixpath.normpath(posixpath.join(base[len("s3://"):], value))
        if not key.startswith(bucket + "/"):
            raise storage.InvalidURIError("relative path climbs out of the bucket", value)
        return "s3://" + key
    return posixpath.normpath(posixpath.join(storage.local_path(base), value))


def _path_name(image: str) -> str:
    """The name a table row without an id is known by: a relative path without its extension and leading ``..``
    steps (``../photos/a.jpg`` → ``photos/a``), an absolute one's file stem."""
    if "://" in image or image.startswith("/"):
        return _split_name(image.rstrip("/").rsplit("/", 1)[-1])[2]
    segments = [seg for seg in posixpath.normpath(image).split("/") if seg not in ("..", ".")]
    return _split_name("/".join(segments))[2]


def _discover_table(src: Source, config: ImportCatalogConfig) -> None:
    table = _read_source_table(src.kind, src.uri)
    names = table.column_names
    id_col = _column(src.kind, "id", config.id_column, names, src.uri)
    image_col = _column(src.kind, "image", config.image_column, names, src.uri)
    mask_col = _column(src.kind, "mask", config.mask_column, names, src.uri) if src.kind == "garments" else None
    reserved = set(manifests.SCHEMAS[src.kind].names) | {"source"}
    for f in table.schema:
        if f.name not in (id_col, image_col, mask_col):
            (src.dropped_columns.append(f.name) if f.name in reserved else src.extra_fields.append(f))
    base = storage.parent_uri(src.uri)
    for i, row in enumerate(table.to_pylist()):
        image = str(row[image_col]).strip() if row[image_col] is not None else ""
        label = f"row {i + 1}" + (f" ({image})" if image else "")
        ident = str(row[id_col]).strip() if id_col and row[id_col] is not None else ""
        mask = str(row[mask_col]).strip() if mask_col and row[mask_col] is not None else ""
        if not image:
            src.skip(label, f"empty {image_col}")
            continue
        try:
            uri, mask_uri = _resolve(image, base), (_resolve(mask, base) if mask else None)
        except storage.StorageError as exc:
            src.skip(label, f"unreadable: {exc.reason}")
            continue
        name = ident or _path_name(image)
        src.cands.append({"name": name, "source": ident or image, "order": i, "label": label, "uri": uri,
                          "mask": mask_uri, "extra": {f.name: row[f.name] for f in src.extra_fields},
                          "verbatim": bool(ident)})


# ----------------------------------------------------------------------------------------------------------------------
# Checking files (threads or Ray tasks): bounded read, magic bytes, Pillow header


def skip_reason(exc: BaseException) -> str:
    """The summary's one-line reason for a file that is not imported (what it is, never what it says)."""
    from pfafn import imageio

    reason = getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, imageio.EmptyImageError):
        return "not an image: empty file"
    if isinstance(exc, imageio.NotAnImageError):
        return reason
    if isinstance(exc, imageio.UnsupportedImageError):
        return reason if reason.startswith("unsupported format") else \
            "unsupported format: " + reason.removeprefix("unsupported ")
    if isinstance(exc, (imageio.ImageTooLargeError, storage.ObjectTooLargeError)):
        return "too large: " + reason.removeprefix("image too large: ")
    if isinstance(exc, storage.OutsideRootsError):
        return "unreadable: a link to a file outside the source folder"
    return f"unreadable: {reason}"


def probe_chunk(spec: dict, items: list[dict]) -> dict:
    """``{"results": [{uri, format, width, height} or {uri, reason}]}`` for one chunk of files."""
    from pfafn import imageio

    out = []
    for item in items:
        uri = item["uri"]
        try:
            limits = {"max_bytes": spec["max_file_bytes"], "timeout_s": spec["read_timeout_s"]}
            data = storage.read_input(uri, roots=[item["root"]], **limits) if item["root"] else \
                storage.read_bytes(uri, **limits)
            info = imageio.probe_image(data, max_pixels=spec["max_image_pixels"])
            out.append({"uri": uri, "format": info.format, "width": info.width, "height": info.height})
        except (imageio.ImageDecodeError, storage.StorageError) as exc:
            out.append({"uri": uri, "reason": skip_reason(exc)})
    return {"results": out}


def _probe_items(sources: list[Source]) -> list[dict]:
    items: dict[str, dict] = {}
    for src in sources:
        root = None if src.table else src.uri.rstrip("/")
        for c in src.cands:
            for uri in (c["uri"], c["mask"]):
                if uri and uri not in items:
                    items[uri] = {"uri": uri, "root": root}
    return list(items.values())


# ----------------------------------------------------------------------------------------------------------------------
# Manifests


def accept(src: Source, probed: Mapping[str, dict]) -> tuple[list[dict], dict[int, str]]:
    """The candidates whose image (and mask) passed, and their ids; the others become skipped entries."""
    rows = []
    for c in src.cands:
        image, mask = probed[c["uri"]], probed.get(c["mask"]) if c["mask"] else None
        if "reason" in image:
            src.skip(c["label"], image["reason"])
        elif mask is not None and "reason" in mask:
            src.skip(c["label"], f"its mask {_short(c['mask'], src)}: {mask['reason']}")
        else:
            rows.append(dict(c, format=image["format"]))
    ids, losers = assign_ids(rows, fallback=src.kind[:-1])
    for k, winner in sorted(losers.items()):
        src.skip(rows[k]["label"], f"duplicate id {rows[k]['source']!r} (kept {rows[winner]['label']})")
    return rows, ids


def _short(uri: str, src: Source) -> str:
    base = src.uri.rstrip("/") + "/" if not src.table else storage.parent_uri(src.uri).rstrip("/") + "/"
    return uri[len(base):] if uri.startswith(base) else uri


def manifest_table(src: Source, rows: list[dict], ids: Mapping[int, str]) -> pa.Table:
    """The manifest of one source: the kind's schema, ``source``, the kept columns; sorted by id; producer-tagged."""
    order = sorted(ids, key=lambda k: ids[k])
    cols: dict[str, pa.Array] = {
        ID_COLUMN[src.kind]: pa.array([ids[k] for k in order], pa.string()),
        "image_uri": pa.array([rows[k]["uri"] for k in order], pa.string()),
    }
    if src.kind == "garments":
        cols["mask_uri"] = pa.array([rows[k]["mask"] for k in order], pa.string())
    cols["source"] = pa.array([rows[k]["source"] for k in order], pa.string())
    for f in src.extra_fields:
        cols[f.name] = pa.array([rows[k]["extra"][f.name] for k in order], f.type)
    table = manifests.conform(pa.table(cols), src.kind)
    return table.replace_schema_metadata({PRODUCER_KEY: PRODUCER.encode()})


def worn_pairs(models: Source, accepted: Mapping[str, tuple[list[dict], dict[int, str]]]) -> pa.Table:
    """``test_pairs.parquet``: the model photos that show a catalog garment, ``paired=True`` — the pairs whose
    try-on has a ground truth (the model's own photo), which ``jobs.evaluate --ground-truth ROOT`` scores. A folder
    model photo shows the garment with its name (same sub-folder and stem: product and on-model shots share a product
    number, as in VITON's ``000001_0.jpg`` / ``000001_1.jpg``); a table row names it in its ``wears`` column (the
    garment's id as written in the garments table)."""
    g_rows, g_ids = accepted["garments"]
    by_name = {g_rows[k]["name"]: gid for k, gid in g_ids.items()}
    m_rows, m_ids = accepted["models"]
    pairs = []
    for k, mid in m_ids.items():
        worn = m_rows[k]["extra"].get(WEARS_COLUMN) if models.table else m_rows[k]["name"]
        gid = by_name.get(str(worn).strip()) if worn is not None else None
        if gid is not None:
            pairs.append((mid, gid))
    pairs.sort()
    return manifests.conform(pa.table({"model_id": pa.array([m for m, _ in pairs], pa.string()),
                                       "garment_id": pa.array([g for _, g in pairs], pa.string()),
                                       "paired": pa.array([True] * len(pairs), pa.bool_())}), "test_pairs")


def write_if_changed(table: pa.Table, uri: str) -> bool:
    """Write the manifest unless the same rows with the same schema and metadata are there (True: written)."""
    try:
        if storage.exists(uri):
            existing = manifests.read_table(uri)
            if existing.schema.equals(table.schema, check_metadata=True) and existing.equals(table):
                return False
    except manifests.ManifestError:
        pass  # unreadable: replace it
    manifests.write_manifest(table, uri)
    return True


def _roots(src: Source, rows: list[dict]) -> list[str]:
    """The folders the catalog must be allowed to read this source's images from (``allowed_roots``)."""
    if not src.table:
        return [src.uri.rstrip("/")]
    uris = {u for r in rows for u in (r["uri"], r["mask"]) if u}
    home = storage.parent_uri(src.uri).rstrip("/")
    if all(u.startswith(home + "/") for u in uris):
        return [home]
    parents = sorted({storage.parent_uri(u).rstrip("/") for u in uris})
    return [p for p in parents if not any(p.startswith(q + "/") for q in parents if q != p)]


# ----------------------------------------------------------------------------------------------------------------------
# The run


def _identity(config: ImportCatalogConfig) -> dict[str, Any]:
    return {"format": IMPORT_FORMAT, "producer": PRODUCER, "garments_source": config.garments,
            "models_source": config.models, "id_column": config.id_column, "image_column": config.image_column,
            "mask_column": config.mask_column}


def run(config: ImportCatalogConfig) -> dict[str, Any]:
    """Import both sources into ``config.output``; returns (and writes there) the run summary."""
    config.validate()
    config = absolute_paths(config, "garments", "models", "output")
    job = dataset_root.WriterRun(PRODUCER, config.output)
    with job.step("discover_s"):
        sources = [discover(kind, getattr(config, kind), config) for kind in MANIFESTS]
    with job.step("probe_s"):
        items = _probe_items(sources)
        spec = {k: getattr(config, k) for k in ("max_file_bytes", "max_image_pixels", "read_timeout_s")}
        results = job.execute(probe_chunk, spec, dataset_root.chunked(items, config.chunk_size), config,
                              units=len(items), what="probe")
        probed = {r["uri"]: r for res in results for r in res["results"]}
    with job.step("manifests_s"):
        accepted = {src.kind: accept(src, probed) for src in sources}
        tables = {src.kind: manifest_table(src, *accepted[src.kind]) for src in sources}
        for src in sources:
            if tables[src.kind].num_rows == 0:
                first = f"; first: {src.skipped[0]['source']}: {src.skipped[0]['reason']}" if src.skipped else ""
                raise StageError(f"{src.kind}: no images found in {src.uri} ({len(src.skipped)} skipped{first})")
        storage.makedirs(job.root)
        dataset_root.claim_root(job.root, _identity(config), _IDENTITY_KEYS)
        tables["test_pairs"] = worn_pairs(sources[1], accepted)
        written = [kind for kind, t in tables.items() if write_if_changed(t, dataset_root.manifest_uri(job.root, kind))]
    counts = {"garments": tables["garments"].num_rows, "models": tables["models"].num_rows,
              "garments_with_mask": tables["garments"].num_rows - tables["garments"].column("mask_uri").null_count,
              "skipped": sum(len(src.skipped) for src in sources), "paired_models": tables["test_pairs"].num_rows}
    log.info("import_catalog %s: %d garments (%d with masks), %d models, %d files skipped -> %s", job.run_id,
             counts["garments"], counts["garments_with_mask"], counts["models"], counts["skipped"], job.root)
    summary = job.summary(
        WRITTEN, producer=PRODUCER, sources={src.kind: src.uri for src in sources}, **counts,
        formats=dict(sorted(Counter(r["format"] for rows, ids in accepted.values() for k, r in enumerate(rows)
                                    if k in ids).items())),
        kept_columns={src.kind: [f.name for f in src.extra_fields] for src in sources},
        dropped_columns={src.kind: src.dropped_columns for src in sources},
        allowed_roots=sorted({r for src in sources for r in _roots(src, accepted[src.kind][0])}),
        manifests_written=written, skipped_files=[e for src in sources for e in src.skipped],
    )
    return job.finish(summary, world=dict(_identity(config), counts=counts))
