"""Manifests: the pyarrow schemas of every table the stages exchange, id rules, and load / validate / write.

A manifest is Parquet (a single file, or a directory of ``*.parquet`` files such as Ray Data writes), or CSV on
input (chosen by the ``.csv`` extension). The column contract of every kind is in :data:`SPECS` and in
``docs/data-contracts.md``.

Loading separates two kinds of problems:

* **structural** — the manifest is missing or unreadable, a required column is absent, a column cannot be cast to
  its type: :class:`ManifestError`, the job cannot run as configured;
* **per row** — unsafe or missing id, duplicate key, empty required URI, unknown enum value: the row is *rejected*
  into an error table (:data:`ERRORS_SCHEMA`) with a one-line reason. Nothing is lost:
  ``len(result.rows) + len(result.rejected) == input rows``.

Relative URIs inside a manifest (no scheme and not starting with ``/``) resolve against the manifest's directory
(the directory itself for a directory manifest), so a dataset folder can be moved or uploaded as a whole. They may
not contain ``..``. Loaded rows always carry absolute URIs (local paths are made absolute).
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core import storage

__all__ = [
    "ID_PATTERN",
    "ID_MAX_LENGTH",
    "UnsafeIdError",
    "ManifestError",
    "validate_id",
    "is_safe_id",
    "ManifestSpec",
    "SPECS",
    "SCHEMAS",
    "ERRORS_SCHEMA",
    "ManifestLoad",
    "read_table",
    "conform",
    "validate_table",
    "load_manifest",
    "write_manifest",
    "error_table",
    "empty_table",
]

# ----------------------------------------------------------------------------------------------------------------------
# Ids

ID_MAX_LENGTH = 128
#: Documented id pattern; additionally an id never contains ``..``. Ids become storage keys (file names).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class UnsafeIdError(ValueError):
    """An id that must not become part of a storage key. ``reason`` is one line."""

    def __init__(self, reason: str, value: object = None):
        self.reason = reason
        self.value = value
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.value))


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _id_problem(value: object) -> str | None:
    """Why ``value`` is not a safe id, or None if it is."""
    if value is None:
        return "missing"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if value == "":
        return "empty"
    if len(value) > ID_MAX_LENGTH:
        return f"longer than {ID_MAX_LENGTH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if ".." in value:
        return "contains '..'"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if not ("0" <= value[0] <= "9" or "a" <= value[0].lower() <= "z"):
        return "must start with an ASCII letter or digit"
    if not _ID_RE.fullmatch(value):
        bad = next(c for c in value if not (c.isascii() and (c.isalnum() or c in "_.-")))
        return f"contains disallowed character {bad!r} (allowed: A-Z a-z 0-9 _ . -)"
    return None


def validate_id(value: object) -> str:
    """Return ``value`` if it is a safe id (``ID_PATTERN`` and no ``..``), else raise :class:`UnsafeIdError`."""
    problem = _id_problem(value)
    if problem is not None:
        raise UnsafeIdError(f"unsafe id {_show(value)}: {problem}", value)
    return value  # type: ignore[return-value]


def is_safe_id(value: object) -> bool:
    return _id_problem(value) is None


# ----------------------------------------------------------------------------------------------------------------------
# Schemas


class ManifestError(Exception):
    """A structural manifest problem (missing/unreadable file, missing column, uncastable type). One line."""

    def __init__(self, reason: str, uri: str | None = None):
        self.reason = " ".join(str(reason).split())
        self.uri = uri
        super().__init__(f"{self.reason} ({uri})" if uri else self.reason)

    def __reduce__(self):
        return (type(self), (self.reason, self.uri))


@dataclass(frozen=True)
class ManifestSpec:
    """The contract of one manifest kind."""

    name: str
    schema: pa.Schema
    required: tuple[str, ...]  # columns that must be present
    id_columns: tuple[str, ...] = ()  # required ids, validated with validate_id
    optional_id_columns: tuple[str, ...] = ()  # validated when not null
    key: tuple[str, ...] = ()  # unique key; later duplicates are rejected (empty: duplicates allowed)
    uri_columns: tuple[str, ...] = ()  # resolved against the manifest directory when relative
    required_uris: tuple[str, ...] = ()  # must be non-empty
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values when not null
    uri_required_when_ok: tuple[str, ...] = ()  # non-empty when status == 'ok'
    description: str = ""


_S = pa.string()
_TS = pa.timestamp("ms", tz="UTC")

MODELS_SCHEMA = pa.schema(
    [
        ("model_id", _S),
        ("image_uri", _S),
        ("split", _S),
        ("parsing_uri", _S),
        ("pose_uri", _S),
        ("densepose_uri", _S),
    ]
)
GARMENTS_SCHEMA = pa.schema([("garment_id", _S), ("image_uri", _S), ("mask_uri", _S)])
TRAIN_PAIRS_SCHEMA = pa.schema([("model_id", _S), ("garment_id", _S)])
TEST_PAIRS_SCHEMA = pa.schema([("model_id", _S), ("garment_id", _S), ("paired", pa.bool_())])
GROUND_TRUTH_SCHEMA = pa.schema([("model_id", _S), ("garment_id", _S), ("image_uri", _S)])
FAKES_SCHEMA = pa.schema(
    [
        ("model_id", _S),
        ("worn_garment_id", _S),
        ("tutor_garment_id", _S),
        ("image_uri", _S),
        ("tutor_version", _S),
        ("status", _S),
        ("error", _S),
        ("run_id", _S),
        ("finished_at", _TS),
    ]
)
TRYON_RESULTS_SCHEMA = pa.schema(
    [
        ("garment_id", _S),
        ("model_id", _S),
        ("student_version", _S),
        ("status", _S),
        ("error", _S),
        ("image_uri", _S),
        ("decode_ms", pa.float64()),
        ("model_ms", pa.float64()),
        ("encode_ms", pa.float64()),
        ("run_id", _S),
        ("finished_at", _TS),
        # the stored image's size: the model size, or the person photo's own (--output-size original); null in
        # rows without an image and in parts written before these columns existed
        ("output_height", pa.int32()),
        ("output_width", pa.int32()),
    ]
)
#: Rejected rows and dead letters: which manifest, which row, the row's id, the one-line reason, the row as JSON.
ERRORS_SCHEMA = pa.schema(
    [
        ("manifest", _S),
        ("source_uri", _S),
        ("row_index", pa.int64()),
        ("id", _S),
        ("error", _S),
        ("row_json", _S),
    ]
)

_STATUS = {"status": ("ok", "error")}

SPECS: dict[str, ManifestSpec] = {
    "models": ManifestSpec(
        "models", MODELS_SCHEMA, required=("model_id", "image_uri"), id_columns=("model_id",), key=("model_id",),
        uri_columns=("image_uri", "parsing_uri", "pose_uri", "densepose_uri"), required_uris=("image_uri",),
        enums={"split": ("train", "test")},
        description="one row per model (person) photo",
    ),
    "garments": ManifestSpec(
        "garments", GARMENTS_SCHEMA, required=("garment_id", "image_uri"), id_columns=("garment_id",),
        key=("garment_id",), uri_columns=("image_uri", "mask_uri"), required_uris=("image_uri",),
        description="one row per garment product photo",
    ),
    "train_pairs": ManifestSpec(
        "train_pairs", TRAIN_PAIRS_SCHEMA, required=("model_id", "garment_id"), id_columns=("model_id", "garment_id"),
        key=("model_id",), description="the garment each training model wears in its photo",
    ),
    "test_pairs": ManifestSpec(
        "test_pairs", TEST_PAIRS_SCHEMA, required=("model_id", "garment_id"), id_columns=("model_id", "garment_id"),
        key=("model_id", "garment_id"), description="evaluation pairs; paired=True when the model wears the garment",
    ),
    "ground_truth": ManifestSpec(
        "ground_truth", GROUND_TRUTH_SCHEMA, required=("model_id", "garment_id", "image_uri"),
        id_columns=("model_id", "garment_id"), key=("model_id", "garment_id"), uri_columns=("image_uri",),
        required_uris=("image_uri",), description="exact renders of model x garment (synthetic world only)",
    ),
    "fakes": ManifestSpec(
        "fakes", FAKES_SCHEMA, required=("model_id", "worn_garment_id", "tutor_garment_id", "image_uri",
                                         "tutor_version", "status"),
        id_columns=("model_id", "worn_garment_id", "tutor_garment_id"), key=("model_id", "tutor_garment_id",
                                                                                "tutor_version"),
        uri_columns=("image_uri",), enums=_STATUS, uri_required_when_ok=("image_uri",),
        description="tutor fakes: model wearing tutor_garment_id instead of worn_garment_id",
    ),
    "tryon_results": ManifestSpec(
        "tryon_results", TRYON_RESULTS_SCHEMA, required=("garment_id", "model_id", "student_version", "status"),
        id_columns=("garment_id", "model_id"), uri_columns=("image_uri",), enums=_STATUS,
        uri_required_when_ok=("image_uri",),
        description="catalog try-on: one row per attempted pair per run (a pair may recur across runs)",
    ),
    "errors": ManifestSpec(
        "errors", ERRORS_SCHEMA, required=("error",), description="rejected rows / dead letters",
    ),
}

#: ``kind -> pa.Schema`` for every manifest kind.
SCHEMAS: dict[str, pa.Schema] = {name: spec.schema for name, spec in SPECS.items()}


def _spec(kind: str | ManifestSpec) -> ManifestSpec:
    if isinstance(kind, ManifestSpec):
        return kind
    try:
        return SPECS[kind]
    except KeyError:
        raise ValueError(f"unknown manifest kind {kind!r} (known: {', '.join(SPECS)})") from None


def empty_table(kind: str) -> pa.Table:
    """A zero-row table with the kind's schema."""
    return _spec(kind).schema.empty_table()


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def _is_csv(uri: str) -> bool:
    return uri.lower().rstrip("/").endswith(".csv")


def _read_csv(uri: str, data: bytes, column_types: Mapping[str, pa.DataType]) -> pa.Table:
    import pyarrow.csv as pcsv

    try:
        return pcsv.read_csv(
            io.BytesIO(data),
            convert_options=pcsv.ConvertOptions(
                # Known columns are read as text and cast by conform(): ids like "007" must stay strings.
                column_types={name: pa.string() for name in column_types},
                strings_can_be_null=True,  # an empty cell is null (e.g. no mask_uri)
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"unreadable CSV: {exc}", uri) from None


def _read_parquet(uri: str) -> pa.Table:
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri)
    try:
        return pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise ManifestError("manifest not found", uri) from None
    except PermissionError:
        raise ManifestError("permission denied reading the manifest", uri) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise ManifestError(f"unreadable Parquet: {exc}", uri) from None


def _manifest_layout(uri: str) -> tuple[str, list[str]]:
    """``("file", [uri])`` or ``("dir", [part uris])``; :class:`ManifestError` when nothing is there."""
    try:
        if storage.is_local(uri):
            path = storage.local_path(uri)
            if os.path.isfile(path):
                return "file", [uri]
            if not os.path.isdir(path):
                raise ManifestError("manifest not found", uri)
        else:
            try:
                storage.size(uri)
                return "file", [uri]
            except storage.ObjectNotFoundError:
                pass
            except storage.StorageError as exc:
                if "not an object" not in exc.reason:
                    raise
        parts = storage.list_files(uri, suffix=".parquet")
        if not parts:
            parts = storage.list_files(uri, suffix=".csv")
    except storage.StorageError as exc:
        raise ManifestError(f"cannot open manifest: {exc.reason}", uri) from None
    if not parts:
        raise ManifestError("manifest not found (no file, and no .parquet/.csv files under the directory)", uri)
    return "dir", parts


def _read_parts(uri: str, parts: list[str], kind: str | None) -> pa.Table:
    column_types = {f.name: f.type for f in SCHEMAS[kind]} if kind else {}
    tables = []
    for part in parts:
        if _is_csv(part):
            try:
                data = storage.read_bytes(part)
            except storage.ObjectNotFoundError:
                raise ManifestError("manifest not found", part) from None
            except storage.StorageError as exc:
                raise ManifestError(f"cannot read manifest: {exc.reason}", part) from None
            tables.append(_read_csv(part, data, column_types))
        else:
            tables.append(_read_parquet(part))
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"manifest parts have incompatible schemas: {exc}", uri) from None


def read_table(uri: str, kind: str | None = None) -> pa.Table:
    """Read a manifest as is (no validation): CSV by extension, else Parquet; a directory concatenates its
    ``*.parquet`` parts (or ``*.csv`` parts if it has no Parquet), in name order. ``kind`` only makes CSV keep its
    known columns as text (cast later by :func:`conform`). Raises :class:`ManifestError`."""
    _, parts = _manifest_layout(uri)
    return _read_parts(uri, parts, kind)


def _cast_column(column: pa.ChunkedArray, target: pa.DataType, name: str, uri: str | None) -> pa.ChunkedArray:
    if column.type == target:
        return column
    try:
        if pa.types.is_boolean(target) and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            lowered = pc.utf8_lower(pc.utf8_trim_whitespace(column))
            truthy = pc.is_in(lowered, pa.array(["true", "1", "yes", "y", "t"]))
            falsy = pc.is_in(lowered, pa.array(["false", "0", "no", "n", "f"]))
            bad = pc.and_(pc.invert(pc.or_(truthy, falsy)), pc.is_valid(column))
            if pc.any(bad).as_py():
                raise pa.ArrowInvalid("values other than true/false/1/0/yes/no")
            return pc.if_else(pc.is_valid(column), truthy, pa.scalar(None, pa.bool_()))
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ManifestError(f"column {name!r} cannot be cast from {column.type} to {target}: {detail}", uri) from None


def conform(table: pa.Table, kind: str | ManifestSpec, *, uri: str | None = None, check_required: bool = True
            ) -> pa.Table:
    """Cast ``table`` to the kind's schema: known columns cast and in schema order, absent optional columns filled
    with nulls, extra columns kept after them. Missing required columns or an uncastable column raise
    :class:`ManifestError` naming them."""
    spec = _spec(kind)
    names = table.column_names
    if check_required:
        missing = [c for c in spec.required if c not in names]
        if missing:
            raise ManifestError(
                f"{spec.name} manifest is missing required column(s) {', '.join(missing)} "
                f"(has: {', '.join(names) or 'none'})",
                uri,
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"duplicate column name(s) {', '.join(duplicates)}", uri)
    arrays, fields = [], []
    for f in spec.schema:
        if f.name in names:
            arrays.append(_cast_column(table.column(f.name), f.type, f.name, uri))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
        fields.append(f)
    for name in names:
        if name not in spec.schema.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# ----------------------------------------------------------------------------------------------------------------------
# Validation


@dataclass
class ManifestLoad:
    """A validated manifest: ``rows`` (the kind's schema, input order) and ``rejected`` (:data:`ERRORS_SCHEMA`)."""

    kind: str
    source: str | None
    rows: pa.Table
    rejected: pa.Table

    @property
    def input_rows(self) -> int:
        return self.rows.num_rows + self.rejected.num_rows

    def summary(self) -> dict:
        return {"manifest": self.kind, "source": self.source, "input_rows": self.input_rows,
                "ok_rows": self.rows.num_rows, "rejected_rows": self.rejected.num_rows}


def _is_absolute_uri(value: str) -> bool:
    return "://" in value or value.startswith("/")


def _resolve_uri(value: str, base_dir: str | None) -> tuple[str | None, str | None]:
    """``(resolved uri, None)`` or ``(None, reason)``."""
    v = value.strip()
    if _is_absolute_uri(v):
        try:
            storage.is_local(v)  # validates the scheme
        except storage.StorageError as exc:
            return None, exc.reason
        return v, None
    if base_dir is None:
        return os.path.abspath(v), None
    if any(seg == ".." for seg in v.split("/")):
        return None, "relative URI must not contain '..'"
    try:
        joined = storage.join_uri(base_dir, v)
    except storage.StorageError as exc:
        return None, exc.reason
    if storage.is_local(joined) and not joined.lower().startswith("file://"):
        joined = os.path.abspath(joined)
    return joined, None


def _row_json(table: pa.Table, index: int) -> str:
    row = table.slice(index, 1).to_pylist()[0]
    return json.dumps(row, default=str, ensure_ascii=False, sort_keys=False)


def validate_table(table: pa.Table, kind: str | ManifestSpec, *, base_dir: str | None = None,
                   source: str | None = None) -> ManifestLoad:
    """Conform ``table`` to the kind's schema and split good rows from rejected ones (see the module docstring).

    ``base_dir`` resolves relative URIs (None: relative to the current directory). Structural problems raise
    :class:`ManifestError`; every bad row becomes one row of ``rejected`` with a one-line reason. A row is rejected
    for its first problem, checked in this order: ids, enums, URIs, duplicate key.
    """
    spec = _spec(kind)
    raw = table
    table = conform(table, spec, uri=source)
    reasons: list[str | None] = [None] * table.num_rows
    _check_ids(table, spec, reasons)
    _check_enums(table, spec, reasons)
    table = _resolve_uri_columns(table, spec, base_dir, reasons)
    _check_keys(table, spec, reasons)
    if all(r is None for r in reasons):
        return ManifestLoad(spec.name, source, table, error_table([]))
    keep = pa.array([r is None for r in reasons])
    return ManifestLoad(spec.name, source, table.filter(keep), _rejected(raw, table, spec, source, reasons))


def _reject(reasons: list[str | None], indices: Iterable[int], why) -> None:
    """Give each row in ``indices`` the reason ``why(i)`` unless it already has one."""
    for i in indices:
        if reasons[i] is None:
            reasons[i] = why(i)


def _check_ids(table: pa.Table, spec: ManifestSpec, reasons: list[str | None]) -> None:
    """Vectorised screen with RE2; exact reasons are worked out only for the failures."""
    for name in spec.id_columns + spec.optional_id_columns:
        col = table.column(name)
        ok = pc.and_kleene(pc.match_substring_regex(col, ID_PATTERN), pc.invert(pc.match_substring(col, "..")))
        if name in spec.optional_id_columns:
            ok = pc.or_kleene(ok, pc.is_null(col))
        bad = pc.indices_nonzero(pc.invert(pc.fill_null(ok, False))).to_pylist()
        if bad:
            values = col.to_pylist()
            _reject(reasons, bad, lambda i, values=values, name=name: f"missing {name}" if values[i] is None
                    else f"{name} {_show(values[i])}: {_id_problem(values[i])}")


def _check_enums(table: pa.Table, spec: ManifestSpec, reasons: list[str | None]) -> None:
    for name, allowed in spec.enums.items():
        col = table.column(name)
        outside = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array(allowed, pa.string()))))
        bad = pc.indices_nonzero(pc.fill_null(outside, False)).to_pylist()
        if name in spec.required:
            bad = sorted(set(bad) | set(pc.indices_nonzero(pc.is_null(col)).to_pylist()))
        values = col.to_pylist() if bad else []
        _reject(reasons, bad, lambda i, values=values, name=name, allowed=allowed:
                f"{name} {_show(values[i])} not one of {', '.join(allowed)}")


def _resolve_uri_columns(table: pa.Table, spec: ManifestSpec, base_dir: str | None, reasons: list[str | None]
                         ) -> pa.Table:
    """``table`` with every URI column resolved (relative ones against ``base_dir``); empty required URIs and
    unresolvable ones are rejected."""
    status = table.column("status").to_pylist() if spec.uri_required_when_ok else None
    resolved_columns: dict[str, list] = {}
    for name in spec.uri_columns:
        required = name in spec.required_uris
        out: list[str | None] = [None] * table.num_rows
        for i, v in enumerate(table.column(name).to_pylist()):
            if v is None or not str(v).strip():
                needed = required or (name in spec.uri_required_when_ok and status is not None and status[i] == "ok")
                if needed:
                    _reject(reasons, [i], lambda _, name=name: f"empty {name}")
                continue
            resolved, why = _resolve_uri(str(v), base_dir)
            if why is not None:
                _reject(reasons, [i], lambda _, name=name, v=v, why=why: f"{name} {_show(v)}: {why}")
                continue
            out[i] = resolved
        resolved_columns[name] = out
    for name, out in resolved_columns.items():
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, table.schema.field(name), pa.array(out, pa.string()))
    return table


def _fold(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _check_keys(table: pa.Table, spec: ManifestSpec, reasons: list[str | None]) -> None:
    """Duplicate keys among otherwise valid rows: the first occurrence wins. Keys equal up to case are duplicates
    too: ids become file names (``{garment_id}/{model_id}.jpg``), and ``Shirt1`` and ``shirt1`` are one file on a
    case-insensitive file system (macOS, Windows, some FUSE mounts of buckets)."""
    if not spec.key:
        return
    first: dict[tuple, tuple[int, tuple]] = {}
    for i, k in enumerate(zip(*(table.column(k).to_pylist() for k in spec.key))):
        if reasons[i] is not None:
            continue
        folded = tuple(_fold(v) for v in k)
        if folded not in first:
            first[folded] = (i, k)
            continue
        j, seen = first[folded]
        label = ", ".join(f"{c}={v!r}" for c, v in zip(spec.key, k))
        if seen == k:
            reasons[i] = f"duplicate {label} (first at row {j})"
        else:
            shown = ", ".join(f"{c}={v!r}" for c, v in zip(spec.key, seen))
            reasons[i] = f"duplicate {label} up to case (first at row {j}: {shown})"


def _rejected(raw: pa.Table, table: pa.Table, spec: ManifestSpec, source: str | None, reasons: list[str | None]
              ) -> pa.Table:
    """The :data:`ERRORS_SCHEMA` rows of the rejected rows, each with the row as it was read."""
    id_col = spec.id_columns[0] if spec.id_columns else None
    ids = table.column(id_col).to_pylist() if id_col else [None] * table.num_rows
    return error_table(
        {
            "manifest": spec.name,
            "source_uri": source,
            "row_index": i,
            "id": None if ids[i] is None else str(ids[i]),
            "error": reason,
            "row_json": _row_json(raw, i),
        }
        for i, reason in enumerate(reasons) if reason is not None
    )


def load_manifest(uri: str, kind: str) -> ManifestLoad:
    """Read and validate the ``kind`` manifest at ``uri`` (file or directory; CSV by extension)."""
    spec = _spec(kind)
    layout, parts = _manifest_layout(uri)
    table = _read_parts(uri, parts, spec.name)
    base_dir = uri.rstrip("/") if layout == "dir" else storage.parent_uri(uri)
    if storage.is_local(base_dir) and not base_dir.lower().startswith("file://"):
        base_dir = os.path.abspath(base_dir)
    return validate_table(table, spec, base_dir=base_dir, source=uri)


def error_table(rows: Iterable[Mapping]) -> pa.Table:
    """Build an :data:`ERRORS_SCHEMA` table from dicts (missing keys are null; reasons forced to one line)."""
    cols: dict[str, list] = {f.name: [] for f in ERRORS_SCHEMA}
    for row in rows:
        for name in cols:
            value = row.get(name)
            if name == "error" and value is not None:
                value = " ".join(str(value).split())
            cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=ERRORS_SCHEMA)


# ----------------------------------------------------------------------------------------------------------------------
# Writing


def write_manifest(table: pa.Table, uri: str, *, kind: str | None = None) -> None:
    """Write a manifest atomically (one object, replaced whole). ``.csv`` writes CSV, anything else Parquet (zstd).

    With ``kind`` the table is first conformed to that kind's schema (missing optional columns become nulls).
    """
    if kind is not None:
        table = conform(table, kind, uri=uri)
    buf = io.BytesIO()
    if _is_csv(uri):
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buf)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())
