"""Committed parts read back at catalog scale: junk-tolerant, column-projected, Arrow and numpy only.

The Ray Data stages commit one Parquet part per unit under a folder (``results/``, ``manifest/``, ``errors/``,
``scores/``). Reading them back has to survive two things:

* files that are not parts of the expected kind — a truncated upload, a stray ``notes.parquet``, another tool's
  table: each is skipped with a warning and counted (:class:`Skipped`, the summaries' ``results_files_skipped``),
  never a reason to stop every later run. A storage failure (unreachable, permission denied) is *not* junk: it
  propagates, because skipping a readable-later part would make its pairs look undone and run them twice.
* 10M rows in a bounded memory: only the columns needed are read, one part at a time; ids become integer codes
  against the manifests (``pyarrow.compute.index_in``), a pair is one int64 ``a * n_b + b``, the done set is a sorted
  int64 array, and the gallery picks its pairs by a stable hash of the pair's ids before reading any other column.
  No result row ever becomes a Python object except the few the gallery shows.

Which row of a pair counts: its newest ``ok`` row, else its newest error row. An ``ok`` row is final (a done pair is
never retried), so an ``ok`` after an error makes the pair done and its earlier error is not shown again.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core import storage

log = logging.getLogger(__name__)

#: A folder to read and the column values its rows must have (None: every row), e.g. ``(results, {"v": "x"})``.
Source = tuple[str, "dict[str, Any] | None"]


@dataclass
class Skipped:
    """Files under a parts folder that are not readable parts of the expected kind: ``uri -> reason``."""

    files: dict[str, str] = field(default_factory=dict)

    def add(self, uri: str, reason: str) -> None:
        if uri not in self.files:
            log.warning("skipping %s: %s", uri, reason)
            self.files[uri] = reason

    def __len__(self) -> int:
        return len(self.files)


def list_parts(root: str, prefix: str = "") -> list[str]:
    """The ``*.parquet`` files under ``root`` whose names start with ``prefix`` (none when ``root`` is missing)."""
    if not storage.exists(root):
        return []
    return [u for u in storage.list_files(root, suffix=".parquet") if storage.basename(u).startswith(prefix)]


def read_part(uri: str, spec, columns: Iterable[str], skipped: Skipped | None = None) -> pa.Table | None:
    """``columns`` of one part, cast to ``spec``'s types (absent optional columns are nulls); None when the file is
    not a part of ``spec``'s kind (unreadable Parquet, a required column missing, a column of another type)."""
    import pyarrow.parquet as pq

    skipped = skipped if skipped is not None else Skipped()
    try:
        data = storage.read_bytes(uri)
    except storage.ObjectNotFoundError:  # removed since it was listed
        return None
    try:
        part = pq.ParquetFile(pa.BufferReader(data))
        names = part.schema_arrow.names
        missing = [c for c in spec.required if c not in names]
        if missing:
            skipped.add(uri, f"not a {spec.name} part: no column(s) {', '.join(missing)}")
            return None
        wanted = list(columns)
        table = part.read(columns=[c for c in wanted if c in names])
        arrays = [table.column(c).cast(spec.schema.field(c).type) if c in names
                  else pa.nulls(table.num_rows, spec.schema.field(c).type) for c in wanted]
        return pa.Table.from_arrays(arrays, schema=pa.schema([spec.schema.field(c) for c in wanted]))
    except (pa.ArrowException, ValueError, TypeError, OSError) as exc:  # content errors only: the bytes are here
        skipped.add(uri, f"not a readable {spec.name} part: {' '.join(str(exc).split())[:200]}")
        return None


def _filter(table: pa.Table, where: dict[str, Any] | None) -> pa.Table:
    for column, value in (where or {}).items():
        table = table.filter(pc.fill_null(pc.equal(table[column], value), False))
    return table


def scan_parts(sources: Iterable[Source], spec, columns: Iterable[str], *, prefix: str = "",
               skipped: Skipped | None = None) -> Iterator[pa.Table]:
    """Each readable part of ``sources`` (``columns`` only, rows filtered by the source's ``where``), one at a time.
    ``where`` columns are read too, and dropped again unless asked for."""
    wanted = list(columns)
    for root, where in sources:
        read = wanted + [c for c in (where or {}) if c not in wanted]
        for uri in list_parts(root, prefix):
            table = read_part(uri, spec, read, skipped)
            if table is not None:
                yield _filter(table, where).select(wanted)


# ----------------------------------------------------------------------------------------------------------------------
# Pair codes.


def _unique_ids(ids: Iterable[str | None]) -> pa.Array:
    """Ids in first-seen order, None as "" (a rejected row without an id still has one place)."""
    seen: dict[str, None] = {}
    for x in ids:
        seen.setdefault("" if x is None else str(x), None)
    return pa.array(list(seen), pa.string())


@dataclass
class PairIndex:
    """Two id lists (garments × models, persons × garments) and a pair's code ``a * n_b + b`` (int64)."""

    a_ids: pa.Array
    b_ids: pa.Array

    @classmethod
    def of(cls, a_ids: Iterable[str | None], b_ids: Iterable[str | None]) -> PairIndex:
        return cls(_unique_ids(a_ids), _unique_ids(b_ids))

    @property
    def n_a(self) -> int:
        return len(self.a_ids)

    @property
    def n_b(self) -> int:
        return len(self.b_ids)

    def codes(self, a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """The codes of the pairs ``(a[i], b[i])``; -1 where an id is not in the index."""
        ia = pc.fill_null(pc.index_in(pc.fill_null(a, ""), value_set=self.a_ids), -1).to_numpy().astype(np.int64)
        ib = pc.fill_null(pc.index_in(pc.fill_null(b, ""), value_set=self.b_ids), -1).to_numpy().astype(np.int64)
        return np.where((ia >= 0) & (ib >= 0), ia * self.n_b + ib, -1)

    def split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return codes // self.n_b, codes % self.n_b

    def pair_hash(self, codes: np.ndarray, salt: str) -> np.ndarray:
        """A stable pseudo-random order of pairs: a hash of both ids (not of the codes, so adding a garment to the
        manifest does not reshuffle the gallery), mixed with the splitmix64 finaliser."""
        a, b = self.split(codes)
        ha, hb = _id_hashes(self.a_ids, salt + ":a"), _id_hashes(self.b_ids, salt + ":b")
        x = ha[a] ^ ((hb[b] << np.uint64(1)) | (hb[b] >> np.uint64(63)))
        with np.errstate(over="ignore"):
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _id_hashes(ids: pa.Array, salt: str) -> np.ndarray:
    """64 bits of SHA-1 per id (manifest-sized: one Python call per garment or model, never per pair)."""
    return np.fromiter((int.from_bytes(hashlib.sha1(f"{salt}:{x}".encode()).digest()[:8], "little")
                        for x in ids.to_pylist()), dtype=np.uint64, count=len(ids))


@dataclass
class PairStatus:
    """Per pair of a :class:`PairIndex`: ``ok`` = sorted codes with an ok row (the done set); ``error`` = sorted
    codes with error rows and no ok row."""

    ok: np.ndarray
    error: np.ndarray

    def recorded(self, codes: np.ndarray) -> np.ndarray:
        """Which of ``codes`` have a row (ok or error)."""
        return member(self.ok, codes) | member(self.error, codes)


def member(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``np.isin(codes, sorted_codes)`` by binary search: ``O(len(codes) · log n)``, nothing sorted again (isin
    would sort the 10M-code done set on every call)."""
    codes = np.asarray(codes, dtype=np.int64)
    if not len(sorted_codes):
        return np.zeros(len(codes), bool)
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[at] == codes


def sorted_unique(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct values by sort + compare (numpy 2's hash-based ``np.unique`` was ~8x slower on int64 codes
    here, measured with benchmarks/results_scale.py)."""
    codes = np.sort(codes)
    if len(codes) < 2:
        return codes
    return codes[np.concatenate(([True], codes[1:] != codes[:-1]))]


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    return sorted_unique(np.concatenate(arrays)) if arrays else np.zeros(0, np.int64)


def pair_status(sources: Iterable[Source], spec, index: PairIndex, a_col: str, b_col: str, *,
                skipped: Skipped | None = None) -> PairStatus:
    """The done set and the failed pairs of ``sources`` in one pass, reading three columns per part."""
    oks, errors = [], []
    for part in scan_parts(sources, spec, [a_col, b_col, "status"], skipped=skipped):
        codes = index.codes(part[a_col], part[b_col])
        ok = pc.fill_null(pc.equal(part["status"], "ok"), False).to_numpy(zero_copy_only=False)
        known = codes >= 0
        oks.append(sorted_unique(codes[known & ok]))
        errors.append(sorted_unique(codes[known & ~ok]))
    done, failed = _union(oks), _union(errors)
    return PairStatus(ok=done, error=failed[~member(done, failed)])


def _smallest(codes: np.ndarray, hashes: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or not len(codes):
        return np.zeros(0, np.int64)
    if k < len(codes):
        keep = np.argpartition(hashes, k - 1)[:k]
        codes, hashes = codes[keep], hashes[keep]
    return codes[np.argsort(hashes, kind="stable")]


def sample_pairs(status: PairStatus, index: PairIndex, size: int, salt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(error codes, ok codes)`` of a stable sample of ``size`` pairs: failed pairs first (at most a quarter of
    the sheet but at least one), then done pairs — so a QA reader always sees failures without them crowding out
    the results."""
    n_err = min(len(status.error), max(1, size // 4)) if len(status.error) else 0
    errors = _smallest(status.error, index.pair_hash(status.error, salt), n_err)
    oks = _smallest(status.ok, index.pair_hash(status.ok, salt), size - len(errors))
    return errors, oks


def best_rows(sources: Iterable[Source], spec, index: PairIndex, a_col: str, b_col: str, codes: np.ndarray, *,
              skipped: Skipped | None = None) -> list[dict]:
    """The row that counts for each pair in ``codes`` (its newest ok row, else its newest row), in ``codes`` order;
    only the rows of those pairs become Python objects."""
    wanted = sorted_unique(codes)
    best: dict[int, tuple[tuple, dict]] = {}
    if not len(wanted):
        return []
    for part in scan_parts(sources, spec, spec.schema.names, skipped=skipped):
        pair = index.codes(part[a_col], part[b_col])
        hit = np.flatnonzero(member(wanted, pair))
        if not len(hit):
            continue
        for k, row in zip(hit, part.take(pa.array(hit)).to_pylist()):
            rank = (row.get("status") == "ok", row.get("finished_at") is not None, row.get("finished_at") or 0)
            old = best.get(int(pair[k]))
            if old is None or rank >= old[0]:
                best[int(pair[k])] = (rank, row)
    return [best[int(c)][1] for c in codes if int(c) in best]
