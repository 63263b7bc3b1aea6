"""Write a small dataset root (the ``jobs.generate_synthetic`` layout) from :class:`pfafn.data.synthetic.SyntheticWorld`.

Used by the training tests and benchmarks. ``pipelines.synthetic_dataset.run`` (the real stage, Ray Data, with
noise and scale options; written in parallel with this code) writes the same documented layout; this small
sequential writer only exists so the training code is tested against that contract without depending on it:

``models.parquet`` (model_id, image_uri, split, parsing_uri, pose_uri, densepose_uri), ``garments.parquet``,
``train_pairs.parquet``, ``test_pairs.parquet``, ``ground_truth.parquet`` and the files they point to.
"""
from __future__ import annotations

import json

import pyarrow as pa

from pipelines import manifests, storage


def write_root_sequential(uri: str, *, n_models: int, n_garments: int, n_test: int = 2, height: int = 64,
                          width: int = 64, seed: int = 0, unpaired_per_test: int = 1) -> str:
    """Render and write the dataset root at ``uri``; return ``uri``. Models ``n_models - n_test ..`` are the test split."""
    from pfafn.data.synthetic import SyntheticWorld, WorldConfig
    from pfafn.data.openpose import encode_openpose_json
    from pfafn.imageio import encode_png

    world = SyntheticWorld(n_models, n_garments, WorldConfig(height=height, width=width, seed=seed))
    models, garments, train_pairs, test_pairs, gts = [], [], [], [], []
    for j in range(n_garments):
        g = world.render_garment(j)
        gid = world.garment_id(j)
        img_uri = storage.join_uri(uri, "images", "garments", f"{gid}.png")
        mask_uri = storage.join_uri(uri, "images", "garment_masks", f"{gid}.png")
        storage.write_bytes(img_uri, encode_png(g.image), fsync=False)
        storage.write_bytes(mask_uri, encode_png((g.mask > 0).astype("uint8") * 255), fsync=False)
        garments.append({"garment_id": gid, "image_uri": img_uri, "mask_uri": mask_uri})
    for i in range(n_models):
        p = world.render_person(i)
        mid = world.model_id(i)
        split = "test" if i >= n_models - n_test else "train"
        uris = {
            "image_uri": storage.join_uri(uri, "images", "models", f"{mid}.png"),
            "parsing_uri": storage.join_uri(uri, "parsing", f"{mid}.png"),
            "pose_uri": storage.join_uri(uri, "pose", f"{mid}.json"),
            "densepose_uri": storage.join_uri(uri, "densepose", f"{mid}.png"),
        }
        storage.write_bytes(uris["image_uri"], encode_png(p.image), fsync=False)
        storage.write_bytes(uris["parsing_uri"], encode_png(p.parsing), fsync=False)
        storage.write_bytes(uris["pose_uri"], encode_openpose_json(p.keypoints).encode(), fsync=False)
        storage.write_bytes(uris["densepose_uri"], encode_png(p.densepose), fsync=False)
        models.append({"model_id": mid, "split": split, **uris})
        worn = world.garment_id(world.worn_garment(i))
        if split == "train":
            train_pairs.append({"model_id": mid, "garment_id": worn})
        else:
            test_pairs.append({"model_id": mid, "garment_id": worn, "paired": True})
            for j in world.unpaired_garments(i, unpaired_per_test):
                gid = world.garment_id(j)
                test_pairs.append({"model_id": mid, "garment_id": gid, "paired": False})
                gt_uri = storage.join_uri(uri, "ground_truth", f"{mid}__{gid}.png")
                storage.write_bytes(gt_uri, encode_png(world.render_person(i, j).image), fsync=False)
                gts.append({"model_id": mid, "garment_id": gid, "image_uri": gt_uri})
    for name, kind, rows in (("models", "models", models), ("garments", "garments", garments),
                             ("train_pairs", "train_pairs", train_pairs), ("test_pairs", "test_pairs", test_pairs),
                             ("ground_truth", "ground_truth", gts)):
        table = pa.Table.from_pylist(rows, schema=manifests.SCHEMAS[kind]) if rows else manifests.empty_table(kind)
        manifests.write_manifest(table, storage.join_uri(uri, f"{name}.parquet"), kind=kind)
    storage.write_bytes(storage.join_uri(uri, "world.json"), json.dumps({
        "generator": "pipelines.training.synthetic_root", "seed": seed, "height": height, "width": width,
        "counts": {"models": n_models, "garments": n_garments}}).encode())
    return uri


def write_root(uri: str, **kwargs) -> str:
    """Alias of :func:`write_root_sequential` (kept small and dependency-free for tests)."""
    return write_root_sequential(uri, **kwargs)
