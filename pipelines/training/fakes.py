"""A small sequential fakes writer (tests, benchmarks): the tutor renders each training person in another garment.

Writes the ``pipelines.tutor_inference`` layout that ``jobs.distill --fakes`` reads: PNGs under
``{output}/fakes/{tutor_version}/{model_id}/{garment_id}.png`` and the ok rows (``fakes`` manifest kind) as
``{output}/manifest/part-0.parquet``. The real stage (Ray Data, actor pool, resumable) is ``jobs.tutor_inference``.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipelines import manifests, storage
from pipelines.training import data as tdata


def write_fakes(data: str, tutor_uri: str, output: str, *, height: int, width: int, per_model: int = 1,
                seed: int = 0) -> str:
    import numpy as np
    import torch

    from pfafn.checkpoint import load_checkpoint
    from pfafn.imageio import encode_png, from_model_tensor
    from pfafn.tutor import TutorModel
    from pipelines.train_tutor import tutor_inputs

    loaded = load_checkpoint(tutor_uri)
    tutor = TutorModel.from_checkpoint(loaded).eval()
    root = tdata.load_root(data)
    samples, _ = tdata.split_train_val(root, 0, 0.0, seed, [])
    spec = tdata.DecodeSpec(height, width, ("person", "keypoints", "parsing", "densepose", "garment", "garment_mask"))
    rows = []
    now = dt.datetime.now(dt.timezone.utc)
    for s in samples:
        dec = tdata.decode_row(s, spec)
        batch = {k: torch.as_tensor(v[None]) for k, v in dec.items()}
        x = tutor_inputs(batch, torch.device("cpu"))
        for e in range(per_model):
            gid = tdata.choose_unpaired(root.garment_ids, s["garment_id"], s["sample_key"], e, seed + 1)
            g = root.garments[gid]
            gdec = tdata.decode_row({"garment_uri": g["image_uri"], "garment_mask_uri": g["mask_uri"]},
                                    tdata.DecodeSpec(height, width, ("garment", "garment_mask")))
            with torch.no_grad():
                out = tutor(x["rep"], x["person"], x["parsing"], x["densepose"],
                            tdata.image_tensor(gdec["garment"][None], "cpu"),
                            tdata.mask_tensor(gdec["garment_mask"][None], "cpu"), cloth_region="warped")
            uri = storage.join_uri(output, "fakes", loaded.version, s["model_id"], f"{gid}.png")
            storage.write_bytes(uri, encode_png(np.ascontiguousarray(from_model_tensor(out.tryon[0]))), fsync=False)
            rows.append({"model_id": s["model_id"], "worn_garment_id": s["garment_id"], "tutor_garment_id": gid,
                         "image_uri": uri, "tutor_version": loaded.version, "status": "ok", "error": None,
                         "run_id": "test", "finished_at": now})
    table = pa.Table.from_pylist(rows, schema=manifests.SCHEMAS["fakes"])
    manifests.write_manifest(table, storage.join_uri(output, "manifest", "part-0.parquet"), kind="fakes")
    return output
