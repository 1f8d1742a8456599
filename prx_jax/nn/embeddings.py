"""Sinusoidal embeddings, computed in float32 exactly as diffusers' ``get_timestep_embedding``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(
    t_B: jax.Array, dim: int, *, scale: float = 1.0, max_period: float = 10000.0
) -> jax.Array:
    """``[cos(scale*t*f_k), sin(scale*t*f_k)]`` with ``f_k = exp(-ln(max_period) k / (dim/2))``.

    The operation order (``t * f`` first, then ``* scale``) follows diffusers, so fp32 rounding
    agrees.
    """
    half = dim // 2
    exponent = jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(max_period))
    freqs_K = jnp.exp(exponent / jnp.float32(half))
    args_BxK = t_B.astype(jnp.float32)[:, None] * freqs_K[None, :]
    args_BxK = jnp.float32(scale) * args_BxK
    emb = jnp.concatenate([jnp.cos(args_BxK), jnp.sin(args_BxK)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb
