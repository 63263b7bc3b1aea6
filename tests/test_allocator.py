"""pipelines.core.allocator: freed memory stays in the heap, so growing tensor sizes stop costing page faults."""
from __future__ import annotations

import subprocess
import sys

from pipelines.core.allocator import keep_freed_memory

# Tensors of 1, 2, ... 30 MiB, each written once and freed; prints the minor page faults of the 11-30 MiB ones
# (410 MiB: ~105 000 faults of 4 KiB pages). glibc's default serves each block larger than any freed before from a
# fresh mmap (its dynamic threshold only rises on free); kept heap memory is reused and faults in only its growth.
_PROBE = """
import resource, sys, torch
from pipelines.core.allocator import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
for n in range(1, 31):
    if n == 11:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(n << 18)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(cache_mb: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(cache_mb)], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_kept_memory_is_reused_without_page_faults():
    applied, faults = _faults(64)
    default_applied, default_faults = _faults(0)
    assert applied == "True" and default_applied == "False"
    assert default_faults > 50_000 and faults < 20_000, (faults, default_faults)  # seen: 5 120-10 240 vs 104 980


def test_zero_leaves_malloc_alone():
    assert keep_freed_memory(0) is False
