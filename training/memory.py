"""Memory: what the machine can still give (checked before a big allocation), and a CPU allocator
setting that makes training steps faster.
"""

from __future__ import annotations

import ctypes
from contextlib import suppress


def available_memory() -> int | None:
    """Bytes the kernel says can still be allocated without swapping (Linux MemAvailable); None elsewhere."""
    with suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as handle:
            line = next(line for line in handle if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


def keep_freed_memory_in_heap() -> bool:
    """Let glibc reuse freed large blocks instead of returning them to the OS (CPU training speed).

    glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mmap and unmaps
    it on free. A SMALL step allocates several such blocks anew every step: the (B*T, V) logits,
    log-probabilities and their gradient (206 MB each at 1024 x 50257 fp32), the (V, D) gradients.
    Each first touch of a fresh page is a page fault plus zeroing by the kernel (measured: a fresh
    206 MB buffer costs 60-160 ms more to fill than a reused one). With a high mmap threshold and no
    trimming, freed blocks stay in the heap and are reused from the second step on (what jemalloc or
    tcmalloc, the allocators PyTorch's CPU tuning guide recommends, do anyway): SMALL trains ~25%
    faster on a 2-core CPU (benchmarks/train.py). The cost: the process keeps its peak memory until
    it exits. Process-wide, so opt-in: train.py and the
    training benchmark call it, a notebook kernel is left alone. Returns False where this is not glibc
    (macOS, Windows, musl): a no-op.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                # <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
