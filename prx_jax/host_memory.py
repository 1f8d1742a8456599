"""glibc malloc settings for training on the CPU backend (``mesh.cpu_keep_memory``).

XLA:CPU allocates every step's temporaries and outputs anew, with the host's ``malloc``. glibc
serves large blocks with fresh ``mmap`` regions and hands freed heap tops back to the kernel, so
each step page-faults its buffers in again. On this project's 2-core VM that is hundreds to tens
of thousands of faults per step, and their cost varies with the host: the demo ran 6-16% slower
with them, and its speed swung more (``benchmarks/demo_feed_ab.py``, processes alternated: 228,
228 and 192 img/s with the settings below, 197, 215 and 169 without).

``keep_freed_memory()`` changes two glibc settings for the whole process: ``M_MMAP_MAX = 0`` serves
large blocks from the heap, and ``M_TRIM_THRESHOLD = 2 GiB`` keeps freed memory for the next
allocation instead of returning it. The cost is that the process's resident memory stays near its
peak. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Applies the settings; returns whether the C library accepted both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt in this C library
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
