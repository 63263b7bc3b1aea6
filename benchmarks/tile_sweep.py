"""Tile side × pair batch size for the catalog's CPU/GPU fast path, measured interleaved in one process.

For each (tile, batch) the tiled forward of a tile×tile catalog block (``pfafn.tiling``: encoders once per tile, flow
+ generator per batch of pairs, the fast mode the catalog actor runs) is timed ``--repeats`` times, round-robin over
the settings so background load hits them alike; prints one JSON object with the median pairs/s of each. The
catalog's ``cpu`` preset takes its ``tile_size`` / ``batch_size`` from this (docs/model-speed.md).

    .venv/bin/python benchmarks/tile_sweep.py --tiles 4 8 16 --batches 4 8 16
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import add_malloc_flag, apply_malloc, cpu_name  # noqa: E402
from benchmarks.profile_model import _run_tile  # noqa: E402  (what the catalog actor runs per tile)
from pfafn.inference import InferenceMode  # noqa: E402
from pfafn.tryon import TryOnModel  # noqa: E402


def _tile_seconds(model, mode, persons, garments, masks, n: int, batch: int, device: str) -> float:
    start = time.perf_counter()
    _run_tile(model, mode, persons[:n], garments[:n], masks[:n], list(itertools.product(range(n), range(n))), batch,
              device)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--mode", default="bf16+channels_last")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_malloc_flag(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_mb = apply_malloc(args.malloc_cache_mb, args.device)
    mode, device = InferenceMode.parse(args.mode), args.device
    torch.manual_seed(0)
    model = mode.prepare(TryOnModel().eval().to(device))
    n, h, w = max(args.tiles), args.height, args.width
    g = torch.Generator().manual_seed(1)
    persons = mode.input(torch.rand(n, 3, h, w, generator=g) * 2 - 1, device)
    garments = mode.input(torch.rand(n, 3, h, w, generator=g) * 2 - 1, device)
    masks = mode.input((torch.rand(n, 1, h, w, generator=g) > 0.3).float(), device)
    settings = list(itertools.product(args.tiles, args.batches))
    times: dict = {s: [] for s in settings}
    for s in settings:  # warm-up: oneDNN primitives for every shape
        _tile_seconds(model, mode, persons, garments, masks, min(s[0], 2), s[1], device)
    for _ in range(args.repeats):
        for tile, batch in settings:
            times[(tile, batch)].append(_tile_seconds(model, mode, persons, garments, masks, tile, batch, device))
    results = [{"tile": t, "batch": b, "pairs_per_s": round(t * t / statistics.median(times[(t, b)]), 3),
                "pairs_per_s_all": [round(t * t / x, 3) for x in times[(t, b)]]} for t, b in settings]
    result = {"benchmark": "tile_sweep", "mode": str(mode), "device": device, "height": h, "width": w,
              "repeats": args.repeats, "malloc_cache_mb": malloc_mb,
              "machine": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
              "results": results, "best": max(results, key=lambda r: r["pairs_per_s"])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
