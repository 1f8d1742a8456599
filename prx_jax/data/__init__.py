"""Data: the demo dataset and its scorer, dataset preparation, and the Grain input pipeline.

    from prx_jax.data import DataConfig, make_pipeline
    it = make_pipeline(DataConfig(source="demo", resolution=64, patch_size=16, global_batch_size=8))
    batch = next(it)  # {"image": [B, 3, H, W] in [-1, 1], "caption": str [B], ...}

Submodules: `demo` (procedural dataset, VOCABULARY), `scorer` (caption checking), `buckets`
(PRX aspect-ratio buckets), `preparation` (`python -m prx_jax.prepare`), `pipeline` (Grain).
The pipeline names are loaded lazily so that prepare's worker processes never import jax.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataConfig", "make_pipeline", "DataIterator"]


def __getattr__(name: str) -> Any:
    if name == "DataConfig":
        from prx_jax.data.config import DataConfig

        return DataConfig
    if name in ("make_pipeline", "DataIterator"):
        from prx_jax.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'prx_jax.data' has no attribute {name!r}")
