"""Keep freed heap memory in the process for reuse: no page faults on large tensor allocations.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves an allocation above its mmap threshold (dynamic,
at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed, and it trims the heap top
above 128 KiB, so every forward of the try-on model touches new pages: about 560 000 minor page faults and 1.1-1.5 s
of kernel time per 4×4 tile at 256×192 on two cores, about a tenth of its CPU time (docs/model-speed.md).
Raising the thresholds once per process (``mallopt``, the same knobs as the ``MALLOC_*_`` environment variables,
but applied where the model runs, after start) makes the heap keep and reuse that memory: ~74 000 faults on the
first tiles, none once the heap is warm. The cost is that the process keeps its peak heap instead of returning it
between batches, which a model actor holds anyway. tcmalloc through ``LD_PRELOAD`` did as well here (~1 100 faults
per tile), jemalloc with its default decay did not (~925 000); this needs no package and no preload.
On a libc without ``mallopt`` (musl, macOS) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's upper bound for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2); larger values are refused.
_MAX_MMAP_THRESHOLD = 32 << 20
_INT_MAX = (1 << 31) - 1


def keep_freed_memory(cache_mb: int) -> bool:
    """Make this process's glibc heap keep up to ``cache_mb`` MiB of freed memory (0: leave malloc alone).

    Sets the mmap threshold to its maximum (32 MiB: smaller blocks come from the heap, whose memory is reused), the
    trim threshold to ``max(cache_mb, 2 GiB - 1)`` (freed heap memory is not returned to the kernel) and the top pad to
    ``cache_mb`` (the heap grows in large steps). Returns whether every setting was applied.
    """
    if cache_mb <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("malloc tuning skipped: this C library has no mallopt")
        return False
    pad = min(cache_mb << 20, _INT_MAX)
    applied = [mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD), mallopt(_M_TRIM_THRESHOLD, _INT_MAX),
               mallopt(_M_TOP_PAD, pad)]
    return all(r == 1 for r in applied)
