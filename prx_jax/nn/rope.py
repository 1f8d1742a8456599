"""Flux-style N-axis rotary embeddings on interleaved pairs ``(x[2j], x[2j+1])``.

Legend: L tokens, N heads, K head_dim, F = K // 2 rotation frequencies.
Tables are built with numpy in float64 at trace time (shapes are static), then cast to float32,
as diffusers does; the rotation itself runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def grid_ids(rows: int, cols: int) -> np.ndarray:
    """Integer (row, col) positions of a row-major token grid, shape ``[rows*cols, 2]``."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([r.reshape(-1), c.reshape(-1)], axis=-1).astype(np.float64)


def rope_tables(
    ids_Lx2: np.ndarray, axes_dim: Sequence[int], theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` of shape ``[L, F]``: axis i contributes ``axes_dim[i] // 2`` frequencies."""
    angles = []
    for i, d in enumerate(axes_dim):
        if d % 2:
            raise ValueError(f"RoPE axis dims must be even, got {tuple(axes_dim)}")
        omega = 1.0 / (float(theta) ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles.append(ids_Lx2[:, i : i + 1].astype(np.float64) * omega[None, :])
    ang_LxF = np.concatenate(angles, axis=-1)
    return np.cos(ang_LxF).astype(np.float32), np.sin(ang_LxF).astype(np.float32)


def apply_rope(x_BxLxNxK: jax.Array, cos_LxF: jax.Array, sin_LxF: jax.Array) -> jax.Array:
    """Rotates adjacent pairs: ``(c x0 - s x1, s x0 + c x1)``, in float32, cast back."""
    shape = x_BxLxNxK.shape
    x = x_BxLxNxK.astype(jnp.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
    c = jnp.asarray(cos_LxF)[None, :, None, :]
    s = jnp.asarray(sin_LxF)[None, :, None, :]
    x0, x1 = x[..., 0], x[..., 1]
    out = jnp.stack([c * x0 - s * x1, s * x0 + c * x1], axis=-1)
    return out.reshape(shape).astype(x_BxLxNxK.dtype)
