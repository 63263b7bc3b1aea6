"""Catalog try-on throughput: published per-pair pipeline vs tiled reuse vs the whole Ray Data job.

Variants, all at the same resolution and widths (default 256×192, published widths), in one process:

(a) reference      — the published test pipeline's way: batch 1, fp32, both encoders run for every pair
(b) tiled fp32     — encode each garment and each model once per tile, flow + generator per pair in batches
(c) tiled fast     — (b) with the fastest precision/layout whose try-on keeps PSNR >= 40 dB against (b)
(d) end to end     — ``pipelines.stages.catalog_tryon.run`` on a written catalog (read, decode, model actor, JPEG, write) with
                     (c)'s settings, measured from the job's own summary (includes actor start and model load)

Beside them, in the same run: the machine's own convolution rate at the model's shapes (``benchmarks.machine.
conv_rate``, at the start and at the end) and the model's convolution FLOPs per pair in a tile (FlopCounterMode on
(b)), so (c) is also reported as GFLOP/s and as a share of what this machine's convolutions reach; with
``--compile``, (c) once more with ``torch.compile`` (inductor, freezing): its compile time apart and its rate.

Targets from the issue: (c)/(a) >= 5, (d)/(c) >= 0.9, (c) >= 60 % of the conv rate. The weights are random (no
trained published-width student can be downloaded here), BatchNorm in eval mode: speed does not depend on the weight
values; the bf16 PSNR does a little. The process keeps freed heap memory as the catalog's CPU actors do
(``pipelines.core.allocator``, ``--malloc-cache-mb``). Prints one JSON object; ``--write-docs`` also rewrites the
results block of docs/catalog-benchmark.md.

    .venv/bin/python benchmarks/catalog.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import add_malloc_flag, apply_malloc, conv_rate, cpu_name  # noqa: E402
from pfafn.inference import InferenceMode  # noqa: E402
from pfafn.metrics import psnr, to_unit_range  # noqa: E402
from pfafn.nn.afwm import NetworkWidths  # noqa: E402
from pfafn.tiling import encode_tile, tryon_pairs  # noqa: E402
from pfafn.tryon import TryOnModel  # noqa: E402

TINY = NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)


def _machine() -> dict:
    cpu = cpu_name()
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        bf16 = False
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "native_bf16": bf16,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _inputs(n_garments: int, n_models: int, h: int, w: int, device: str):
    from pfafn.synthetic.world import SyntheticWorld, WorldConfig
    from pfafn.imageio import to_model_tensor

    world = SyntheticWorld(n_models, n_garments, WorldConfig(height=h, width=w, seed=7))
    garments = torch.stack([torch.from_numpy(to_model_tensor(world.render_garment(j).image)) for j in range(n_garments)])
    masks = torch.stack([torch.from_numpy(world.render_garment(j).mask.astype(np.float32))[None] for j in range(n_garments)])
    persons = torch.stack([torch.from_numpy(to_model_tensor(world.render_person(i).image)) for i in range(n_models)])
    return persons.to(device), garments.to(device), masks.to(device), world


def _median(rates: list[float]) -> float:
    return round(float(np.median(rates)), 3)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_reference(model, persons, garments, masks, pairs, device) -> tuple[float, torch.Tensor]:
    outs = []
    with torch.inference_mode():
        model(persons[:1], garments[:1], masks[:1])  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for g, p in pairs:
            outs.append(model(persons[p : p + 1], garments[g : g + 1], masks[g : g + 1]).tryon)
        _sync(device)
    return len(pairs) / (time.perf_counter() - t0), torch.cat(outs)


def bench_tiled(model, mode: InferenceMode, persons, garments, masks, pairs, batch, device) -> tuple[float, torch.Tensor]:
    g_idx = [g for g, _ in pairs]
    p_idx = [p for _, p in pairs]
    out = torch.empty(len(pairs), 3, persons.shape[2], persons.shape[3], device=device)
    with torch.inference_mode(), mode.autocast(device):
        tile = encode_tile(model, persons[:1], garments[:1], masks[:1])  # warm-up (oneDNN primitive creation)
        for _sl, o in tryon_pairs(model, tile, [0], [0], batch_size=1):
            pass
        _sync(device)
        t0 = time.perf_counter()
        tile = encode_tile(model, persons, garments, masks, chunk=batch)
        for sl, o in tryon_pairs(model, tile, g_idx, p_idx, batch_size=batch):
            out[sl] = o.tryon
        _sync(device)
    return len(pairs) / (time.perf_counter() - t0), out


def _prepared_copy(model, widths, mode: InferenceMode, device):
    """A copy of ``model`` prepared for ``mode`` (prepare converts in place: one model per mode)."""
    m = TryOnModel(widths).eval().to(device)
    m.load_state_dict(model.state_dict())
    return mode.prepare(m)


def _tile_flops(model, persons, garments, masks, pairs, batch) -> int:
    """Convolution FLOPs of one fp32 tile (FlopCounterMode; the fp32 correlation is elementwise, not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.profile_model import _run_tile

    with FlopCounterMode(display=False) as counter:
        _run_tile(model, InferenceMode("fp32"), persons, garments, masks, pairs, batch, str(persons.device))
    return counter.get_total_flops()


def bench_compiled(model, widths, spec, persons, garments, masks, pairs, batch, device) -> dict:
    """(c) with ``torch.compile``: the first tile (compilation of each new shape, inductor cache as configured by
    ``TORCHINDUCTOR_CACHE_DIR``) timed apart from the steady-state rate."""
    mode = InferenceMode.parse(spec + "+compile")
    m = _prepared_copy(model, widths, mode, device)
    t0 = time.perf_counter()
    bench_tiled(m, mode, persons, garments, masks, pairs, batch, device)  # compiles every shape a tile uses
    first = time.perf_counter() - t0
    rates = [bench_tiled(m, mode, persons, garments, masks, pairs, batch, device)[0] for _ in range(2)]
    return {"compiled_mode": str(mode), "compile_first_tile_s": round(first, 1),
            "compiled_pairs_per_s": _median(rates), "compiled_pairs_per_s_all": [round(r, 3) for r in rates]}


def bench_end_to_end(world, n_garments, n_models, h, w, widths, precision, channels_last, batch, tile, tmp) -> dict:

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pfafn.checkpoint import save_checkpoint
    from pipelines.stages import catalog_tryon
    from pipelines.core.ray_env import ensure_ray

    data = Path(tmp) / "catalog"
    (data / "g").mkdir(parents=True)
    (data / "m").mkdir(parents=True)
    g_rows, m_rows = {"garment_id": [], "image_uri": [], "mask_uri": []}, {"model_id": [], "image_uri": []}
    for j in range(n_garments):
        r = world.render_garment(j)
        Image.fromarray(r.image).save(data / "g" / f"{j}.png")
        Image.fromarray(r.mask.astype(np.uint8) * 255).save(data / "g" / f"{j}_mask.png")
        g_rows["garment_id"].append(world.garment_id(j))
        g_rows["image_uri"].append(str(data / "g" / f"{j}.png"))
        g_rows["mask_uri"].append(str(data / "g" / f"{j}_mask.png"))
    for i in range(n_models):
        Image.fromarray(world.render_person(i).image).save(data / "m" / f"{i}.png")
        m_rows["model_id"].append(world.model_id(i))
        m_rows["image_uri"].append(str(data / "m" / f"{i}.png"))
    pq.write_table(pa.table(g_rows), data / "garments.parquet")
    pq.write_table(pa.table(m_rows), data / "models.parquet")
    torch.manual_seed(0)
    student = TryOnModel(widths).eval()
    save_checkpoint(data / "student.pt", warp=student.warp, gen=student.gen, kind="student")
    ensure_ray()
    cfg = catalog_tryon.CatalogConfig(
        garments=str(data / "garments.parquet"), models=str(data / "models.parquet"), output=str(Path(tmp) / "out"),
        student=str(data / "student.pt"), height=h, width=w, batch_size=batch, tile_size=tile, precision=precision,
        channels_last=channels_last, actors=1, gallery_size=0,
    )
    summary = catalog_tryon.run(cfg)
    # Steady state: pairs committed after the first tile, over the time from the first to the last commit
    # (the whole-job rate also pays Ray Data start-up, actor start and model load once).
    results = catalog_tryon.load_results(cfg.output)
    times = np.sort(results["finished_at"].to_numpy().astype("datetime64[ms]").astype(np.int64))
    # The actor's own model time (``model_ms`` is the tile's model time shared over its pairs): its rate is what (c)
    # measures in-process, and its share of the wall clock says how busy the pipeline kept the actor.
    model_s = float(np.sum(results["model_ms"].to_numpy())) / 1e3
    if model_s > 0:
        summary["actor_model_pairs_per_s"] = round(len(times) / model_s, 3)
        summary["actor_busy_fraction"] = round(model_s / summary["wall_s"], 3)
    first_tile = min(tile, n_garments) * min(tile, n_models)
    if len(times) > first_tile:
        span = (times[-1] - times[first_tile - 1]) / 1e3
        summary["steady_pairs_per_s"] = round((len(times) - first_tile) / span, 3) if span > 0 else None
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs (about 1.5 minutes on 2 quiet cores)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--tiny-widths", action="store_true", help="reduced widths (smoke test of the script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=0, help="pairs per forward (default 8 CPU / 32 GPU)")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--e2e-garments", type=int, default=0, help="garments in the end-to-end catalog")
    parser.add_argument("--e2e-models", type=int, default=0, help="models in the end-to-end catalog")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed runs of (a), (b) and the chosen (c), median reported (default 2 quick / 3)")
    add_malloc_flag(parser)
    parser.add_argument("--compile", action="store_true",
                        help="also time (c) under torch.compile (inductor, freezing): compile time and rate")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    malloc_mb = apply_malloc(args.malloc_cache_mb, args.device)

    device = args.device
    gpu = device == "cuda"
    batch = args.batch_size or (32 if gpu else 8)
    n_g, n_m = (4, 4) if args.quick else (8, 8)
    if gpu:
        n_g, n_m = (16, 16) if args.quick else (32, 32)
    ref_pairs_n = 4 if args.quick else 8
    if gpu:
        ref_pairs_n = 32
    widths = TINY if args.tiny_widths else NetworkWidths()
    h, w = args.height, args.width
    torch.manual_seed(0)
    model = TryOnModel(widths).eval().to(device)
    persons, garments, masks, world = _inputs(n_g, n_m, h, w, device)
    pairs = [(g, p) for g in range(n_g) for p in range(n_m)]

    result: dict = {"benchmark": "catalog", "machine": _machine(), "device": device, "height": h, "width": w,
                    "widths": "tiny" if args.tiny_widths else "published", "batch_size": batch,
                    "tile": [n_g, n_m], "pairs": len(pairs)}
    repeats = args.repeats or (2 if args.quick else 3)
    result["repeats"] = repeats
    result["malloc_cache_mb"] = malloc_mb
    conv_dtype = "bf16" if gpu or result["machine"]["native_bf16"] else "fp32"
    conv_start = conv_rate(device, conv_dtype, channels_last=True, batch=batch)
    ref_pairs = pairs[:ref_pairs_n]
    ref_rates = [bench_reference(model, persons, garments, masks, ref_pairs, device)[0] for _ in range(repeats)]
    result["reference_pairs_per_s"] = _median(ref_rates)
    result["reference_pairs_per_s_all"] = [round(r, 3) for r in ref_rates]

    fp32_runs = [bench_tiled(model, InferenceMode("fp32"), persons, garments, masks, pairs, batch, device)
                 for _ in range(repeats)]
    fp32_out = fp32_runs[0][1]
    tile_flops = _tile_flops(model, persons, garments, masks, pairs, batch)
    result["tile_gflop_per_pair"] = round(tile_flops / len(pairs) / 1e9, 2)
    result["tiled_fp32_pairs_per_s"] = _median([r for r, _ in fp32_runs])
    result["tiled_fp32_pairs_per_s_all"] = [round(r, 3) for r, _ in fp32_runs]

    candidates = ["bf16+channels_last", "bf16", "fp32+channels_last"]
    if gpu:
        candidates = ["bf16+channels_last", "fp16+channels_last", "bf16", "fp32+channels_last"]
    trials, prepared = [], {}
    for spec in candidates:
        mode = InferenceMode.parse(spec)
        prepared[spec] = m = _prepared_copy(model, widths, mode, device)
        rate, out = bench_tiled(m, mode, persons, garments, masks, pairs, batch, device)
        q = psnr(to_unit_range(out.float()), to_unit_range(fp32_out)).min().item()
        trials.append({"mode": spec, "pairs_per_s": round(rate, 3), "min_psnr_db": round(q, 2)})
    result["fast_candidates"] = trials
    passing = [t for t in trials if t["min_psnr_db"] >= 40.0]
    best = max(passing, key=lambda t: t["pairs_per_s"]) if passing else None
    if best is None or best["pairs_per_s"] < result["tiled_fp32_pairs_per_s"]:
        best = {"mode": "fp32", "min_psnr_db": float("inf")}
        fast_rates = [r for r, _ in fp32_runs]
    else:
        # The candidates were timed once each and the fastest picked: re-time the winner so its rate is not the
        # luckiest of several noisy draws (the "winner's curse" inflated (c) by ~10 % in earlier runs).
        mode = InferenceMode.parse(best["mode"])
        fast_rates = [bench_tiled(prepared[best["mode"]], mode, persons, garments, masks, pairs, batch, device)[0]
                      for _ in range(repeats)]
    result["fast_mode"] = best["mode"]
    result["fast_dtype"] = InferenceMode.parse(best["mode"]).dtype
    result["tiled_fast_pairs_per_s"] = _median(fast_rates)
    result["tiled_fast_pairs_per_s_all"] = [round(r, 3) for r in fast_rates]
    result["fast_psnr_db"] = best["min_psnr_db"]
    if args.compile and best["mode"] != "fp32":
        result.update(bench_compiled(model, widths, best["mode"], persons, garments, masks, pairs, batch, device))
    result["in_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if not args.skip_end_to_end:
        mode = InferenceMode.parse(best["mode"])
        e_g = args.e2e_garments or (2 * n_g if args.quick else 4 * n_g)  # >= 256 pairs in the full run
        e_m = args.e2e_models or n_m
        from pfafn.synthetic.world import SyntheticWorld, WorldConfig

        e_world = SyntheticWorld(e_m, e_g, WorldConfig(height=h, width=w, seed=7))
        with tempfile.TemporaryDirectory() as tmp:
            s = bench_end_to_end(e_world, e_g, e_m, h, w, widths, mode.dtype, mode.channels_last, batch, n_g, tmp)
        result["end_to_end_pairs"] = e_g * e_m
        result["end_to_end_pairs_per_s"] = s["pairs_per_s"]
        result["end_to_end_steady_pairs_per_s"] = s.get("steady_pairs_per_s")
        if s.get("steady_pairs_per_s"):
            result["end_to_end_steady_over_fast"] = round(s["steady_pairs_per_s"] / result["tiled_fast_pairs_per_s"], 3)
        result["end_to_end_wall_s"] = s["wall_s"]
        result["end_to_end_pairs_ok"] = s["pairs_ok"]
        result["end_to_end_actor_model_pairs_per_s"] = s.get("actor_model_pairs_per_s")
        result["end_to_end_actor_busy_fraction"] = s.get("actor_busy_fraction")
        result["actor_peak_rss_mb"] = s.get("actor_peak_rss_mb")
        result["end_to_end_over_fast"] = round(s["pairs_per_s"] / result["tiled_fast_pairs_per_s"], 3)
    result["fast_over_reference"] = round(result["tiled_fast_pairs_per_s"] / result["reference_pairs_per_s"], 3)
    result["tiled_fp32_over_reference"] = round(result["tiled_fp32_pairs_per_s"] / result["reference_pairs_per_s"], 3)
    conv_end = conv_rate(device, conv_dtype, channels_last=True, batch=batch)
    rate = round((conv_start["median_gflop_per_s"] + conv_end["median_gflop_per_s"]) / 2, 1)
    result["conv_rate"] = {"gflop_per_s": rate, "at_start": conv_start, "at_end": conv_end}
    result["tiled_fast_gflop_per_s"] = round(result["tile_gflop_per_pair"] * result["tiled_fast_pairs_per_s"], 1)
    result["fast_over_conv_rate"] = round(result["tiled_fast_gflop_per_s"] / rate, 3)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = {"fast_over_reference>=5": result["fast_over_reference"] >= 5,
                         "end_to_end_over_fast>=0.9": result.get("end_to_end_over_fast", 0) >= 0.9,
                         "fast_over_conv_rate>=0.6": result["fast_over_conv_rate"] >= 0.6}
    print(json.dumps(result, sort_keys=True))
    if args.write_docs:
        doc = ROOT / "docs" / "catalog-benchmark.md"
        text = doc.read_text() if doc.exists() else ""
        marker = "<!-- results -->"
        block = f"{marker}\n```json\n{json.dumps(result, indent=2, sort_keys=True)}\n```\n"
        text = text.split(marker)[0] + block if marker in text else text + "\n" + block
        doc.write_text(text)
    return result


if __name__ == "__main__":
    main()
