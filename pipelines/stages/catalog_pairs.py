"""The catalog's pair selection and tiles: which garment × model pairs a run covers (every pair, ``--match`` groups,
a ``--pairs`` file, or both) and how they are cut into tiles whose garments and models are encoded once.

:func:`grouped` sorts the manifests' valid rows by their ``--match`` values so each group is one contiguous range of
garments and of models (its pairs are the product of the two ranges); :func:`pair_codes` narrows that to a pairs
file's pairs (sorted int64 codes ``g·M + m``); :func:`blocks` cuts the selection, minus the done pairs, into tiles.
No per-pair Python object anywhere: ranges per group, int64 codes per block. Used by
:mod:`pipelines.stages.catalog_tryon`'s planning.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from pipelines.core import manifests, parts
from pipelines.core.errors import StageError


#: The ``--pairs`` file (Parquet or CSV, local or s3://): one row per wanted pair; other columns are ignored.
PAIRS_SPEC = manifests.ManifestSpec("pairs", pa.schema([("garment_id", pa.string()), ("model_id", pa.string())]),
                                    required=("garment_id", "model_id"), description="catalog pair selection")


def match_columns(match: str) -> list[str]:
    """``--match "gender, season"`` → ``["gender", "season"]`` (empty: no matching)."""
    return [c.strip() for c in match.split(",")] if match.strip() else []


@dataclass
class Selection:
    """The pairs a run covers, over the planning order of the valid rows. Garments and models are sorted (stably) by
    their ``--match`` group, so each group is one contiguous range of each and its pairs are the product of the two
    ranges; a ``--pairs`` file narrows them to ``codes`` (sorted tile codes ``g·M + m``). Without ``--match`` every
    row is in group 0 and nothing moves. No per-pair Python object: ranges per group, int64 codes per block."""

    g_group: np.ndarray  # per garment (sorted): its group; n_groups = in none (a null --match value)
    m_group: np.ndarray  # per model (sorted)
    groups: dict  # --match values (a tuple) -> group
    codes: np.ndarray | None = None

    def __post_init__(self):
        self.keys = list(self.groups)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_of(self, key) -> int:
        return self.groups.get(key, self.n_groups)

    def key_of(self, group: int):
        return self.keys[group] if group < self.n_groups else None

    def models_of(self, group: int) -> tuple[int, int]:
        if group >= self.n_groups:
            return 0, 0
        m0, m1 = np.searchsorted(self.m_group, [group, group + 1])
        return int(m0), int(m1)

    def size(self) -> int:
        if self.codes is not None:
            return len(self.codes)
        g = np.bincount(self.g_group, minlength=self.n_groups + 1)[:self.n_groups]
        m = np.bincount(self.m_group, minlength=self.n_groups + 1)[:self.n_groups]
        return int((g * m).sum())

    def blocks(self, t: int) -> Iterator[tuple[np.ndarray, int, int]]:
        """``(garments, m0, m1)``: blocks of at most ``t`` garments of one group (with a selected pair) and the
        group's model range."""
        n_m = len(self.m_group)
        chosen = None
        if self.codes is not None:
            chosen = np.zeros(len(self.g_group), bool)
            chosen[self.codes // max(n_m, 1)] = True
        for k in range(self.n_groups):
            m0, m1 = self.models_of(k)
            g = np.arange(*np.searchsorted(self.g_group, [k, k + 1]))
            if chosen is not None:
                g = g[chosen[g]]
            for s in range(0, len(g) if m1 > m0 else 0, t):
                yield g[s:s + t], m0, m1

    def todo(self, g: np.ndarray, m0: int, m1: int, done: np.ndarray) -> np.ndarray:
        """The block's selected pairs not in ``done`` (sorted codes ``g·M + m``)."""
        n_m = len(self.m_group)
        if self.codes is None:
            lo, hi = g * n_m + m0, g * n_m + m1
            if int((np.searchsorted(done, hi) - np.searchsorted(done, lo)).sum()) == len(g) * (m1 - m0):
                return np.zeros(0, np.int64)  # a fully done block: two searchsorted per garment, no per-pair work
            codes = (lo[:, None] + np.arange(m1 - m0)).ravel()
        else:
            starts, ends = np.searchsorted(self.codes, g * n_m), np.searchsorted(self.codes, (g + 1) * n_m)
            codes = np.concatenate([self.codes[a:b] for a, b in zip(starts, ends)])
        return codes[~parts.member(done, codes)]


def _value_kind(t: pa.DataType) -> str:
    """What ``--match`` compares: text with text, numbers with numbers (1 == 1.0); an all-null column is "null"."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    return "nested" if pa.types.is_nested(t) else "null" if pa.types.is_null(t) else str(t)


def check_match(garments: pa.Table, models: pa.Table, columns: list[str]) -> None:
    """Each ``--match`` column must be in both manifests and hold plain values of one kind (else exit 2): a season
    stored as 2024 in one manifest and "2024" in the other would silently match nothing."""
    for c in columns:
        missing = [name for name, t in (("garments", garments), ("models", models)) if c not in t.column_names]
        if missing:
            raise StageError(f"--match column {c!r} is not in the {' and '.join(missing)} manifest "
                             f"(garments: {', '.join(garments.column_names)}; models: {', '.join(models.column_names)})")
        types = [t.schema.field(c).type for t in (garments, models)]
        kinds = {_value_kind(t) for t in types} - {"null"}
        if len(kinds) > 1 or "nested" in kinds:
            raise StageError(f"--match column {c!r} is {types[0]} in the garments and {types[1]} in the models "
                             "manifest; it needs plain values of one kind (text or numbers) in both")


def _key(values: tuple) -> tuple | None:
    """A row's ``--match`` values; None (matches nothing) when one is null or NaN."""
    return None if any(v is None or v != v for v in values) else values


def _row_keys(table: pa.Table, columns: list[str]) -> list[tuple | None]:
    if not columns:
        return [()] * table.num_rows
    return [_key(row) for row in zip(*(table.column(c).to_pylist() for c in columns))]


def _rejected_keys(rejected: pa.Table, columns: list[str]) -> list[tuple | None]:
    """A rejected row's ``--match`` values, as the row was read (``row_json``: it never passed validation)."""
    if not columns:
        return [()] * rejected.num_rows
    rows = [json.loads(text or "{}") for text in rejected.column("row_json").to_pylist()]
    return [_key(tuple(r.get(c) for c in columns)) for r in rows]


def grouped(g_load: manifests.ManifestLoad, m_load: manifests.ManifestLoad, columns: list[str]):
    """``(selection, garments, models, rejected garments, rejected models)``: the valid rows sorted by ``--match``
    group (stable, so the manifest order within a group, and no move at all without ``--match``), every pair
    within a group selected; rejected rows as ``(id, reason, --match values)``."""
    g_keys, m_keys = _row_keys(g_load.rows, columns), _row_keys(m_load.rows, columns)
    rg_keys, rm_keys = _rejected_keys(g_load.rejected, columns), _rejected_keys(m_load.rejected, columns)
    groups: dict = {}
    for key in (*g_keys, *m_keys, *rg_keys, *rm_keys):
        if key is not None:
            groups.setdefault(key, len(groups))
    g_group = np.array([groups.get(k, len(groups)) for k in g_keys], np.int64)
    m_group = np.array([groups.get(k, len(groups)) for k in m_keys], np.int64)
    g_order, m_order = np.argsort(g_group, kind="stable"), np.argsort(m_group, kind="stable")
    g_rows, m_rows = g_load.rows.to_pylist(), m_load.rows.to_pylist()
    rejected = [[(r["id"], r["error"], key) for r, key in zip(load.rejected.to_pylist(), keys)]
                for load, keys in ((g_load, rg_keys), (m_load, rm_keys))]
    return (Selection(g_group[g_order], m_group[m_order], groups), [g_rows[i] for i in g_order],
            [m_rows[i] for i in m_order], *rejected)


def rejected_pairs(sel: Selection, garments: list[dict], models: list[dict], rejected_g: list[tuple],
                    rejected_m: list[tuple]) -> list[tuple[str | None, str | None, str]]:
    """Error pairs of the rejected manifest rows that fall in the selection (all of them without ``--match``): each
    rejected garment with the models of its group (valid, then rejected), then each valid garment with the rejected
    models of its group."""
    m_ids = [m["model_id"] for m in models]
    rejected_by_key: dict = {}
    for mid, why, key in rejected_m:
        if key is not None:
            rejected_by_key.setdefault(key, []).append((mid, why))
    pairs = []
    for gid, why, key in rejected_g:
        m0, m1 = sel.models_of(sel.group_of(key))
        pairs += [(gid, mid, f"garment row rejected: {why}")
                  for mid in m_ids[m0:m1] + [mid for mid, _ in rejected_by_key.get(key, ())]]
    for g, group in zip(garments, sel.g_group.tolist()) if rejected_by_key else ():
        pairs += [(g["garment_id"], mid, f"model row rejected: {why}")
                  for mid, why in rejected_by_key.get(sel.key_of(group), ())]
    return pairs


def _id_problem(side: str, value: str | None, valid: set, rejected: dict) -> str | None:
    """Why a pairs file's garment or model id names no valid row, or None."""
    if value in valid:
        return None
    if value is not None and value in rejected:
        return f"{side} row rejected: {rejected[value]}"
    try:
        manifests.validate_id(value)
    except manifests.UnsafeIdError as exc:
        return f"pairs file: {side}_id: {exc.reason}"
    return f"pairs file: {side}_id {value!r} is not in the {side}s manifest"


def read_pairs(uri: str) -> pa.Table:
    """The ``--pairs`` file's two id columns (ids read as text, "007" stays "007"). A file that is missing,
    unreadable or lacks a column raises :class:`pipelines.core.manifests.ManifestError`: the run cannot start (exit
    2); bad ids in it are error rows, not a failed run."""
    table = manifests.conform(manifests.read_table(uri, "train_pairs"), PAIRS_SPEC, uri=uri)
    return table.select(["garment_id", "model_id"])


def pair_codes(uri: str, sel: Selection, garments: list[dict], models: list[dict], rejected_g: list[tuple],
                rejected_m: list[tuple]) -> tuple[np.ndarray, list[tuple[str | None, str | None, str]]]:
    """The pairs file as the sorted distinct tile codes of its pairs of valid rows within one ``--match`` group,
    and one error pair per distinct pair that names a rejected, unsafe or unknown id (whatever ``--match`` says: such
    a row has no values to match). Duplicate rows count once."""
    table = read_pairs(uri)
    valid = parts.PairIndex.of([g["garment_id"] for g in garments], [m["model_id"] for m in models])
    codes = valid.codes(table["garment_id"], table["model_id"])
    ok = codes[codes >= 0]
    if len(ok):
        g_group, m_group = sel.g_group[ok // len(models)], sel.m_group[ok % len(models)]
        ok = parts.sorted_unique(ok[(g_group == m_group) & (g_group < sel.n_groups)])
    known = (set(valid.a_ids.to_pylist()), set(valid.b_ids.to_pylist()))
    why = ({gid: w for gid, w, _ in rejected_g}, {mid: w for mid, w, _ in rejected_m})
    bad: dict[tuple, str | None] = {}
    for row in table.filter(pa.array(codes < 0)).to_pylist():
        pair = (row["garment_id"], row["model_id"])
        if pair not in bad:
            bad[pair] = (_id_problem("garment", pair[0], known[0], why[0])
                         or _id_problem("model", pair[1], known[1], why[1]))
    return ok.astype(np.int64), [(gid, mid, reason) for (gid, mid), reason in bad.items()]


def tile_unit(garments: list[dict], models: list[dict], g: np.ndarray, m_rows: np.ndarray, m_local: np.ndarray,
          index: int) -> dict:
    """One unit: pairs of garment rows ``g`` (sorted) with models ``m_rows[m_local]``. Each garment and model is
    listed once — decoded and encoded once per tile — and only if it has a pair here; the pairs are tile-local codes
    ``i·n_models + j``, an int64 array (no Python object per pair)."""
    first = np.concatenate(([True], g[1:] != g[:-1]))
    g_rows, g_local = g[first], np.cumsum(first) - 1
    return {
        "tile": index,
        "garment_ids": [garments[i]["garment_id"] for i in g_rows],
        "garment_uris": [garments[i]["image_uri"] for i in g_rows],
        "mask_uris": [garments[i].get("mask_uri") or "" for i in g_rows],
        "model_ids": [models[i]["model_id"] for i in m_rows],
        "model_uris": [models[i]["image_uri"] for i in m_rows],
        "todo": (g_local * len(m_rows) + m_local).astype(np.int64),
    }


def blocks(garments: list[dict], models: list[dict], done: np.ndarray, t: int, selection: Selection) -> list[dict]:
    """Tiles of at most ``t`` garments × ``t`` models holding the selected pairs not in ``done`` (sorted codes
    ``g·M + m``): per block of ``t`` garments of one group, its pairs to do, cut by the models they use into chunks of
    ``t``. For the full product these are the fixed ``t × t`` blocks; for a sparse selection the chunks gather the
    models a garment block uses, so encodings are still shared. Linear in the block's pairs (no per-tile scan)."""
    tiles: list[dict] = []
    n_m = len(models)
    for g, m0, m1 in selection.blocks(t):
        codes = selection.todo(g, m0, m1, done)
        if not len(codes):
            continue
        g_of, m_of = np.divmod(codes, n_m)
        used = np.bincount(m_of, minlength=n_m) > 0
        pos = (np.cumsum(used) - 1)[m_of]  # each pair's model among the models the block uses
        used, chunk = np.flatnonzero(used), pos // t
        # a stable sort keeps each chunk's (g, m) order; 16-bit keys let numpy use its linear radix sort
        order = np.argsort(chunk.astype(np.int16) if len(used) < t * 2**15 else chunk, kind="stable")
        for piece in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1):
            k = int(chunk[piece[0]])
            tiles.append(tile_unit(garments, models, g_of[piece], used[k * t:(k + 1) * t], pos[piece] - k * t,
                               len(tiles)))
    return tiles
