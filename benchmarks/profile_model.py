"""Per-operator profile of the catalog fast path: where the time of the tiled (bf16) forward goes.

Runs exactly what ``pipelines.stages.catalog_tryon.TryOnActor`` runs for one tile — ``InferenceMode.prepare`` (eval,
BatchNorm folding, channels_last), then ``pfafn.tiling.encode_tile`` + ``tryon_pairs`` under
``torch.inference_mode`` and the mode's autocast — once to warm up (oneDNN primitive creation), then once under
``torch.profiler``. Every op's *self* CPU time is attributed to the innermost model scope it ran in
(``record_function`` scopes opened by forward hooks on the encoders, FPNs, flow heads and generator; the rest of the
flow network — correlation, grid_sample, flow composition — stays in ``flow_network``) and summed by op name. Layout
copies (``aten::copy_``, ``contiguous``, ``to``, ``clone``, ...) are counted: their call counts do not depend on
machine load, unlike the times.

Prints one JSON object (last stdout line); ``--markdown FILE`` also writes the two tables (by scope, top ops by self
CPU time with their share of the total), ``--output FILE`` the JSON.

    .venv/bin/python benchmarks/profile_model.py --quick                      # toy size, seconds
    .venv/bin/python benchmarks/profile_model.py --markdown runs/profile.md   # 256×192, published widths
    .venv/bin/python benchmarks/profile_model.py --mode bf16+nofold --fp32-correlation   # before #15's changes
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import add_malloc_flag, apply_malloc, cpu_name  # noqa: E402
from pfafn.inference import InferenceMode  # noqa: E402
from pfafn.nn.afwm import NetworkWidths  # noqa: E402
from pfafn.tiling import encode_tile, tryon_pairs  # noqa: E402
from pfafn.tryon import TryOnModel  # noqa: E402

TINY = NetworkWidths(encoder_channels=(8, 16, 32, 32, 32), fpn_dim=16, flow_channels=(16, 8, 8), ngf=8)

#: Ops that only move data between layouts / dtypes (the profile counts them; channels_last work aims to cut them).
LAYOUT_OPS = ("aten::copy_", "aten::contiguous", "aten::to", "aten::_to_copy", "aten::clone", "aten::permute",
              "aten::as_strided_")

_SCOPE = "scope::"


def _scopes(model: TryOnModel) -> dict[str, torch.nn.Module]:
    warp = model.warp
    return {"garment_encoder": warp.image_features, "garment_FPN": warp.image_FPN,
            "person_encoder": warp.cond_features, "person_FPN": warp.cond_FPN, "flow_network": warp.aflow_net,
            "flow_network.netMain": warp.aflow_net.netMain, "flow_network.netRefine": warp.aflow_net.netRefine,
            "generator": model.gen}


def _add_scope_hooks(model: TryOnModel) -> list:
    """A ``record_function`` scope around every call of each module in :func:`_scopes`. The flow heads
    (ModuleLists of Sequentials) are run layer by layer by ``AFlowNet._offset`` (its last, fp32 conv is a
    functional call), so their layers get the hooks."""
    handles = []
    for name, module in _scopes(model).items():
        targets = [layer for head in module for layer in head] if isinstance(module, torch.nn.ModuleList) else [module]
        for target in targets:
            stack: list = []

            def pre(_m, _args, name=name, stack=stack):
                rf = record_function(_SCOPE + name)
                rf.__enter__()
                stack.append(rf)

            def post(_m, _args, _out, stack=stack):
                stack.pop().__exit__(None, None, None)

            handles += [target.register_forward_pre_hook(pre), target.register_forward_hook(post)]
    return handles


def _run_tile(model, mode: InferenceMode, persons, garments, masks, pairs, batch: int, device: str) -> None:
    with torch.inference_mode(), mode.autocast(device):
        with record_function(_SCOPE + "encode_tile"):
            tile = encode_tile(model, persons, garments, masks, chunk=batch)
        with record_function(_SCOPE + "tryon_pairs"):
            for _sl, out in tryon_pairs(model, tile, [g for g, _ in pairs], [p for _, p in pairs], batch_size=batch):
                out.tryon.float()  # what the actor reads back
    if device == "cuda":
        torch.cuda.synchronize()


def _innermost_scope(event) -> str:
    parent = event
    while parent is not None:
        if parent.name.startswith(_SCOPE):
            return parent.name[len(_SCOPE):]
        parent = parent.cpu_parent
    return "other"


def summarize(events, top: int) -> dict:
    """Self CPU time by innermost scope and by op name, and the layout-copy counts, from profiler events."""
    by_scope: dict[str, float] = defaultdict(float)
    by_op: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])  # calls, self CPU µs, self device (GPU) µs
    for e in events:
        if e.name.startswith(_SCOPE):
            continue
        self_us = float(e.self_cpu_time_total)
        by_scope[_innermost_scope(e)] += self_us
        by_op[e.name][0] += 1
        by_op[e.name][1] += self_us
        by_op[e.name][2] += float(getattr(e, "self_device_time_total", 0.0) or 0.0)
    total = sum(by_scope.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1][1])
    device_total = sum(v[2] for v in by_op.values())
    return {
        "total_self_cpu_ms": round(total / 1e3, 2),
        "total_self_device_ms": round(device_total / 1e3, 2),
        "by_scope": [{"scope": s, "self_cpu_ms": round(us / 1e3, 2), "share": round(us / total, 4)}
                     for s, us in sorted(by_scope.items(), key=lambda kv: -kv[1])],
        "top_ops": [{"op": name, "calls": calls, "self_cpu_ms": round(us / 1e3, 2), "share": round(us / total, 4),
                     "self_device_ms": round(dev_us / 1e3, 2)}
                    for name, (calls, us, dev_us) in ops[:top]],
        "top_device_ops": [{"op": name, "calls": calls, "self_device_ms": round(dev_us / 1e3, 2),
                            "share": round(dev_us / device_total, 4)}
                           for name, (calls, _us, dev_us) in sorted(by_op.items(), key=lambda kv: -kv[1][2])[:top]
                           if dev_us > 0],
        "layout_ops": {name: {"calls": by_op[name][0], "self_cpu_ms": round(by_op[name][1] / 1e3, 2)}
                       for name in LAYOUT_OPS if name in by_op},
    }


def markdown(result: dict) -> str:
    p = result["profile"]
    lines = [f"Mode `{result['mode']}`, {result['height']}×{result['width']} ({result['widths']} widths), tile "
             f"{result['tile'][0]}×{result['tile'][1]} = {result['pairs']} pairs, batch {result['batch_size']}, "
             f"{result['machine']['torch_threads']} threads; self CPU time total {p['total_self_cpu_ms']} ms, "
             f"unprofiled tile {result['unprofiled_tile_s']} s (median of {len(result['unprofiled_tile_s_all'])}), "
             f"{result['minor_page_faults_per_tile']} minor page "
             f"faults per tile (load average {result['machine']['load_avg_at_start'][0]} at start).", "",
             "| scope | self CPU ms | share |", "|---|---|---|"]
    lines += [f"| {s['scope']} | {s['self_cpu_ms']} | {100 * s['share']:.1f} % |" for s in p["by_scope"]]
    lines += ["", "| op | calls | self CPU ms | share |", "|---|---|---|---|"]
    lines += [f"| `{o['op']}` | {o['calls']} | {o['self_cpu_ms']} | {100 * o['share']:.1f} % |" for o in p["top_ops"]]
    layout = ", ".join(f"`{k}` {v['calls']}" for k, v in p["layout_ops"].items()) or "none"
    return "\n".join(lines + ["", f"Layout/dtype copy calls: {layout}.", ""])


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy size: 128×96, reduced widths, a 2×2 tile")
    parser.add_argument("--mode", default="bf16+channels_last", help="InferenceMode spec (pfafn.inference)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--tiny-widths", action="store_true", help="reduced widths")
    parser.add_argument("--garments", type=int, help="garments in the tile (default 4; 2 with --quick)")
    parser.add_argument("--models", type=int, help="models in the tile (default 4; 2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (and encoder chunk)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32-correlation", action="store_true",
                        help="the correlation's fp32 loop even under bf16 (the 'before' of the bf16 GEMM path)")
    add_malloc_flag(parser)
    parser.add_argument("--repeats", type=int, default=3, help="unprofiled timed tiles (median reported)")
    parser.add_argument("--top", type=int, default=25, help="ops in the table")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--markdown", help="also write the Markdown tables here")
    args = parser.parse_args(argv)
    tile = 2 if args.quick else 4
    if args.quick:
        args.height, args.width, args.tiny_widths = 128, 96, True
    args.garments, args.models = args.garments or tile, args.models or tile
    return args


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode, device = InferenceMode.parse(args.mode), args.device
    malloc_mb = apply_malloc(args.malloc_cache_mb, device)
    if args.fp32_correlation:
        import pfafn.nn.correlation as correlation

        correlation._bf16_gemm_applies = lambda first, second: False
    widths = TINY if args.tiny_widths else NetworkWidths()
    torch.manual_seed(0)
    model = mode.prepare(TryOnModel(widths).eval().to(device))
    g = torch.Generator().manual_seed(1)
    h, w, n_g, n_m = args.height, args.width, args.garments, args.models
    persons = mode.input(torch.rand(n_m, 3, h, w, generator=g) * 2 - 1, device)  # as the catalog's actor feeds it
    garments = mode.input(torch.rand(n_g, 3, h, w, generator=g) * 2 - 1, device)
    masks = mode.input((torch.rand(n_g, 1, h, w, generator=g) > 0.3).float(), device)
    pairs = [(i, j) for i in range(n_g) for j in range(n_m)]
    load_start = [round(x, 2) for x in os.getloadavg()]
    _run_tile(model, mode, persons, garments, masks, pairs, args.batch_size, device)  # warm-up
    walls, faults = [], []
    for _ in range(args.repeats):  # unprofiled: the wall clock (median) and the page faults (the last tile's)
        faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        _run_tile(model, mode, persons, garments, masks, pairs, args.batch_size, device)
        walls.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)  # load-independent, unlike time
    unprofiled_s, faults = statistics.median(walls), faults[-1]
    handles = _add_scope_hooks(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        _run_tile(model, mode, persons, garments, masks, pairs, args.batch_size, device)
    for handle in handles:
        handle.remove()
    result = {"benchmark": "profile_model", "mode": str(mode), "fp32_correlation": args.fp32_correlation,
              "device": device, "height": h, "width": w,
              "widths": "tiny" if args.tiny_widths else "published", "tile": [n_g, n_m], "pairs": len(pairs),
              "batch_size": args.batch_size, "malloc_cache_mb": malloc_mb,
              "unprofiled_tile_s": round(unprofiled_s, 3), "unprofiled_tile_s_all": [round(w, 3) for w in walls],
              "minor_page_faults_per_tile": faults,
              "unprofiled_pairs_per_s": round(len(pairs) / unprofiled_s, 3),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_avg_at_start": load_start, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
              "profile": summarize(prof.events(), args.top)}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(result))
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
