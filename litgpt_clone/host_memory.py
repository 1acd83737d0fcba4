"""Host memory allocator settings for the command line: keep freed memory in the process for reuse.

By default glibc's ``malloc`` serves blocks above 128 KiB (a threshold it raises up to 32 MiB as such blocks are freed)
with ``mmap`` and gives them back to the kernel when freed, and trims the top of the heap beyond 128 KiB free. A
PyTorch step on the CPU allocates and frees the same large activations every step, so every step touches fresh
pages and pays a page fault per 4 KiB: on the 2-core VM of benchmarks/RESULTS.md, ``torch.zeros(2048, 2048)``
takes 7-8 ms against 1 ms to fill the same tensor again, and a training step of a small model spends ~10% of its
time there. PyTorch's CPU performance guide answers this with a caching allocator (jemalloc or tcmalloc through
``LD_PRELOAD``); ``keep_freed_memory`` gets most of the effect with glibc's own knobs, from inside the process:
blocks up to 32 MiB come from the heap, and the heap is not trimmed, so freed memory is reused without new faults.
The cost is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20  # the largest value glibc accepts on 64-bit systems
TUNING_VARIABLES = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to 32 MiB and turn off heap trimming; False (and nothing done) off glibc Linux or
    where the environment already tunes the allocator (``GLIBC_TUNABLES``, ``MALLOC_*_``, ``LD_PRELOAD``)."""
    if not sys.platform.startswith("linux") or any(os.environ.get(v) for v in TUNING_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
