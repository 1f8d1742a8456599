"""prx_jax: train, sample and export Photoroom's PRX text-to-image diffusion transformer in JAX.

Public API: ``load_transformer``, ``save_transformer``, ``PRXConfig``, ``PRESETS``.
"""

from prx_jax.convert.transformer import load_transformer, save_transformer
from prx_jax.models.presets import PRESETS, get_preset
from prx_jax.models.prx import PRXTransformer
from prx_jax.models.prx_config import PRXConfig
from prx_jax.pipeline import load_pipeline

__all__ = [
    "PRESETS",
    "PRXConfig",
    "PRXTransformer",
    "get_preset",
    "load_pipeline",
    "load_transformer",
    "save_transformer",
]
__version__ = "0.1.0"
