"""Shared benchmark helpers: the bench model config, timing, the CPU matmul peak, the JSON record.

Every benchmark warms up, times with ``block_until_ready``, reports medians, and appends one JSON
line (device, versions, host load, config, numbers) to ``benchmarks/results/<script>.jsonl``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from prx_jax.models.prx_config import PRXConfig

RESULTS = Path(__file__).resolve().parent / "results"

# The CPU bench: hidden 384, 6 heads, depth 6, 16 x 32 x 32 latents (patch 2: 256 image
# tokens), 64 text tokens of width 256, batch 8, fp32, AdamW.
BENCH = PRXConfig(
    in_channels=16, patch_size=2, context_in_dim=256, hidden_size=384, num_heads=6, depth=6,
    axes_dim=(32, 32),
)  # fmt: skip
BENCH_LATENT = 32
BENCH_TEXT = 64
BENCH_BATCH = 8


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict:
    """Device, versions and host load for the JSON record."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    dev = jax.devices()[0]
    return {
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg": load_average(),
        "versions": {n: v(n) for n in ("jax", "jaxlib", "flax", "optax", "torch", "diffusers")},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def time_calls(fn, n: int, warmup: int = 2) -> list[float]:
    """Seconds per call of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs) -> float:
    return float(statistics.median(xs))


def matmul_peak_tflops(dtype=jnp.float32, n: int = 1024, reps: int = 8) -> float:
    """Measured dense matmul TFLOP/s on the default device (the CPU's "peak" for MFU)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    times = time_calls(lambda: f(a, b).block_until_ready(), reps, warmup=2)
    return 2 * n**3 / min(times) / 1e12


def append_result(script: str, row: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{script}.jsonl"
    row = {"benchmark": script, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return path
