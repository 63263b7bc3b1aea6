"""PF-AFN try-on model speed: ms per pair and achieved GFLOP/s per inference mode, plus reduced-precision PSNR.

Prints one JSON object (the last stdout line).  Weights are random (seed 0), BatchNorm in eval mode: speed does not
depend on the weight values, but the PSNR of a reduced-precision mode against fp32 does, so the PSNR reported
here is a sanity bound, not the value for the published weights.

    python benchmarks/model_speed.py                 # 256×192, published widths, batch 1 and 8
    python benchmarks/model_speed.py --quick         # a short run (batch 1, 2 repeats)
    python benchmarks/model_speed.py --modes fp32 bf16+channels_last --batch-sizes 1 8 --repeats 5

Modes are ``pfafn.inference.InferenceMode`` strings (``fp32``, ``bf16``, ``fp16``, ``+channels_last``,
``+compile``).  The first mode is the baseline; the modes are timed interleaved (round robin, one call each per
round) so background load on a shared machine hits them alike; the median and the fastest call are reported.
FLOPs are counted once per pair with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions only: the
correlation, grid_sample and element-wise work are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import add_malloc_flag, apply_malloc, cpu_name  # noqa: E402

from pfafn.inference import InferenceMode, TryOnPredictor  # noqa: E402
from pfafn.tryon import TryOnModel  # noqa: E402


def _machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _inputs(batch: int, height: int, width: int, device: torch.device, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    person = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    garment = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, height, width, generator=g) > 0.3).float()
    return person.to(device), garment.to(device), mask.to(device)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB for images in [-1, 1]; None (JSON null) when identical."""
    mse = (a.double() - b.double()).square().mean().item()
    return None if mse == 0 else round(10 * torch.log10(torch.tensor(4.0 / mse)).item(), 2)


def _timed(predictor: TryOnPredictor, inputs, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = predictor(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16+channels_last"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per mode and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per mode and batch size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--quick", action="store_true", help="batch 1, 2 repeats, fp32 vs bf16+channels_last")
    add_malloc_flag(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.modes = [1], 2, ["fp32", "bf16+channels_last"]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = _machine(device)  # before the run: load_avg_at_start
    machine["malloc_cache_mb"] = apply_malloc(args.malloc_cache_mb, device.type)
    modes = [InferenceMode.parse(m) for m in args.modes]

    torch.manual_seed(0)
    base = TryOnModel().eval()
    state = base.state_dict()
    predictors = {}
    for mode in modes:  # one model per mode: channels_last / compile convert in place
        model = TryOnModel().eval()
        model.load_state_dict(state)
        predictors[str(mode)] = TryOnPredictor(model.to(device), mode)
    baseline = str(modes[0])

    flop_inputs = _inputs(1, args.height, args.width, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base.to(device)(*flop_inputs)
    flops_per_pair = counter.get_total_flops()
    del base

    results = []
    for batch in args.batch_sizes:
        inputs = _inputs(batch, args.height, args.width, device)
        outputs, times = {}, {name: [] for name in predictors}
        for name, predictor in predictors.items():
            for _ in range(args.warmup):
                outputs[name] = predictor(*inputs)
        for _ in range(args.repeats):
            for name, predictor in predictors.items():  # interleaved
                seconds, outputs[name] = _timed(predictor, inputs, device)
                times[name].append(seconds)
        ref = outputs[baseline]
        for name in predictors:
            median, best = statistics.median(times[name]), min(times[name])
            out = outputs[name]
            results.append({
                "mode": name,
                "batch": batch,
                "ms_per_pair": round(1000 * median / batch, 2),
                "ms_per_pair_min": round(1000 * best / batch, 2),
                "pairs_per_s": round(batch / median, 3),
                "gflop_per_s": round(flops_per_pair * batch / median / 1e9, 1),
                "gflop_per_s_best": round(flops_per_pair * batch / best / 1e9, 1),
                "ms_per_call_all": [round(1000 * t, 1) for t in times[name]],
                "speedup_vs_baseline": round(statistics.median(times[baseline]) / median, 3),
                "speedup_vs_baseline_min": round(min(times[baseline]) / best, 3),
                "tryon_psnr_vs_baseline_db": _psnr(out.tryon, ref.tryon),
                "flow_max_abs_diff_vs_baseline": float(f"{(out.flow - ref.flow).abs().max().item():.3g}"),
            })

    summary = {
        "benchmark": "model_speed",
        "machine": machine,
        "model": {
            "name": "PF-AFN student TryOnModel (AFWM(3) + ResUnetGenerator(7, 4))",
            "widths": "published",
            "params": sum(p.numel() for p in predictors[baseline].model.parameters()),
            "weights": "random init (torch.manual_seed(0)), BatchNorm in eval mode",
            "height": args.height,
            "width": args.width,
        },
        "gflop_per_pair": round(flops_per_pair / 1e9, 2),
        "flop_counting": "torch.utils.flop_counter.FlopCounterMode, convolutions only, batch 1",
        "baseline": baseline,
        "timing": f"{args.repeats} interleaved calls per mode after {args.warmup} warm-up call(s); ms_per_pair and "
                  "gflop_per_s use the median, *_min / *_best the fastest call (less sensitive to background load)",
        "results": results,
        "load_avg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
