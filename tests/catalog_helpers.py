"""Small catalogs for catalog-stage tests: synthetic garments/models written as real image files + manifests."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from pfafn.checkpoint import save_checkpoint
from pfafn.synthetic.world import SyntheticWorld, WorldConfig
from pfafn.nn.afwm import NetworkWidths
from pfafn.tryon import TryOnModel
from pipelines.core import storage

TINY = NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)
SIZE = 64


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_student(dest: str, seed: int = 0) -> str:
    """A tiny random student checkpoint at ``dest``; returns its version."""
    torch.manual_seed(seed)
    model = TryOnModel(TINY).eval()
    return save_checkpoint(dest, warp=model.warp, gen=model.gen, kind="student", meta={"test": True})


def write_catalog(root: str, n_garments: int, n_models: int, *, with_masks: bool = True, seed: int = 0,
                  first_garment: int = 0) -> tuple[str, str]:
    """Write garments ``g{first..}`` and models under ``root`` (local path or s3://); return the two manifest URIs."""
    world = SyntheticWorld(n_models, first_garment + n_garments, WorldConfig(height=SIZE, width=SIZE, seed=seed))
    g_rows = {"garment_id": [], "image_uri": [], "mask_uri": []}
    for j in range(first_garment, first_garment + n_garments):
        render = world.render_garment(j)
        gid = world.garment_id(j)
        uri = storage.join_uri(root, "garments", f"{gid}.png")
        storage.write_bytes(uri, png_bytes(render.image))
        mask_uri = None
        if with_masks:
            mask_uri = storage.join_uri(root, "garments", f"{gid}_mask.png")
            storage.write_bytes(mask_uri, png_bytes(render.mask.astype(np.uint8) * 255))
        g_rows["garment_id"].append(gid)
        g_rows["image_uri"].append(uri)
        g_rows["mask_uri"].append(mask_uri)
    m_rows = {"model_id": [], "image_uri": []}
    for i in range(n_models):
        render = world.render_person(i)
        mid = world.model_id(i)
        uri = storage.join_uri(root, "models", f"{mid}.png")
        storage.write_bytes(uri, png_bytes(render.image))
        m_rows["model_id"].append(mid)
        m_rows["image_uri"].append(uri)
    g_uri = storage.join_uri(root, "garments.parquet")
    m_uri = storage.join_uri(root, "models.parquet")
    write_parquet(pa.table(g_rows), g_uri)
    write_parquet(pa.table(m_rows), m_uri)
    return g_uri, m_uri


def write_parquet(table: pa.Table, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


def append_rows(manifest_uri: str, rows: dict) -> None:
    fs, path = storage.pyarrow_filesystem(manifest_uri)
    table = pq.read_table(path, filesystem=fs)
    extra = pa.table({name: rows.get(name, [None] * len(next(iter(rows.values())))) for name in table.column_names},
                     schema=table.schema)
    write_parquet(pa.concat_tables([table, extra]), manifest_uri)


def image_files(output: str, version: str) -> list[str]:
    root = storage.join_uri(output, version)
    return sorted(storage.list_files(root, suffix=".jpg")) if storage.exists(root) else []


def ok_rows(output: str, version: str) -> list[dict]:
    from pipelines.stages.catalog_tryon import load_results

    rows = load_results(output, version).to_pylist()
    return [r for r in rows if r["status"] == "ok"]


def local(path: os.PathLike | str) -> str:
    return str(Path(path))
