"""Memory: what the machine can still give (checked before a big allocation), and a CPU allocator
setting that makes training steps faster.
"""

from __future__ import annotations

import ctypes
from contextlib import suppress

import torch

from utils import build_memory_bytes


def available_memory() -> int | None:
    """Bytes the kernel says can still be allocated without swapping (Linux MemAvailable); None elsewhere."""
    with suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as handle:
            line = next(line for line in handle if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


def step_memory_problem(model_cfg, batch_size: int, device: str | torch.device = "cpu") -> str | None:
    """None when one training step can fit on `device`; else the clause saying what it needs and what is free.

    A lower bound, so that what it refuses cannot run: the weights with their gradients and AdamW's two
    moments (4 fp32 copies, RoPE tables counted) plus one micro-batch's (batch x context, vocab) fp32 logits.
    Activations come on top. `--batch-size 1000000000` is one line, not a failed allocation at step 1."""
    device = torch.device(device)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    logits = 4 * batch_size * model_cfg.context_length * model_cfg.vocab_size
    needed = 4 * build_memory_bytes(model_cfg) + logits
    if free is None or needed <= free:
        return None
    return (f"a training step needs at least {needed / 2**30:,.1f} GiB ({logits / 2**30:,.1f} GiB of logits for "
            f"batch size {batch_size} x context {model_cfg.context_length}), only {free / 2**30:,.1f} GiB are free "
            f"on {device.type}")


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
