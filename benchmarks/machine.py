"""Machine facts the benchmarks print with their numbers."""
from __future__ import annotations

import platform
import statistics


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: 3×3 convolutions (Cin, Cout, H, W) that the try-on model runs at 256×192: the generator's first level, the
#: encoders' middle levels, the FPN's 512→256 lateral-plus-smooth input. Their rate is what the model's
#: convolutions can reach on this machine: the yardstick for the whole model's GFLOP/s.
CONV_SHAPES = ((64, 64, 128, 96), (128, 128, 64, 48), (256, 256, 32, 24), (512, 256, 64, 48))


def conv_rate(device: str = "cpu", dtype: str = "bf16", channels_last: bool = True, batch: int = 8,
              repeats: int = 3) -> dict:
    """GFLOP/s of plain 3×3 convolutions (stride 1, padding 1, bias) at :data:`CONV_SHAPES`, batch ``batch``,
    best of ``repeats`` calls each after one warm-up; FLOPs = 2 · N · Cout · Cin · 9 · H · W (a multiply-add is
    2). Weights and inputs are already in ``dtype`` and the memory format (no autocast casts)."""
    import time

    import torch
    import torch.nn.functional as F

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rates = []
    with torch.inference_mode():
        for cin, cout, h, w in CONV_SHAPES:
            x = torch.randn(batch, cin, h, w, device=device, dtype=torch_dtype).contiguous(memory_format=fmt)
            weight = torch.randn(cout, cin, 3, 3, device=device, dtype=torch_dtype).contiguous(memory_format=fmt)
            bias = torch.randn(cout, device=device, dtype=torch_dtype)
            best = float("inf")
            for i in range(repeats + 1):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                F.conv2d(x, weight, bias, padding=1)
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first call creates the oneDNN / cuDNN primitive
                    best = min(best, time.perf_counter() - t0)
            rates.append(2 * batch * cout * cin * 9 * h * w / best / 1e9)
    return {"dtype": dtype, "channels_last": channels_last, "batch": batch, "shapes": [list(s) for s in CONV_SHAPES],
            "gflop_per_s": [round(r, 1) for r in rates], "median_gflop_per_s": round(statistics.median(rates), 1)}


def add_malloc_flag(parser) -> None:
    """``--malloc-cache-mb``: what the catalog's CPU actors keep (``pipelines.core.allocator``), so in-process
    numbers match the job's; 0 measures with malloc's defaults."""
    parser.add_argument("--malloc-cache-mb", type=int, default=512,
                        help="heap kept for reuse, as the catalog's CPU actors (pipelines.core.allocator); 0 = off")


def apply_malloc(cache_mb: int, device: str) -> int:
    """Apply ``--malloc-cache-mb`` on CPU; returns the MiB in effect (0 when off or not applicable)."""
    from pipelines.core.allocator import keep_freed_memory

    return cache_mb if device == "cpu" and keep_freed_memory(cache_mb) else 0
