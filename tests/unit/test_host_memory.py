"""`prx_jax.host_memory`: with the settings, a large freed block is reused without page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, resource, sys
from prx_jax.host_memory import keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
size = 64 * 2**20  # above glibc's largest mmap threshold
faults = []
for _ in range(4):
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)  # first touch of every page
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults():
    default, kept = _run("default"), _run("keep")
    pages = 64 * 2**20 // 4096
    # Without the settings every 64 MiB block is a fresh mapping: each page faults again.
    assert min(default["faults"][1:]) > pages // 2
    # With them the block comes back from the heap: its pages are already mapped.
    assert kept["applied"] is True
    assert max(kept["faults"][1:]) < pages // 50
