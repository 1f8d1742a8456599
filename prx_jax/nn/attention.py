"""Scaled dot-product attention through ``jax.nn.dot_product_attention``.

Legend: B batch, T query length, S key length, N heads, K head_dim.
``implementation`` is ``"xla"`` (every platform, the default) or ``"cudnn"`` (NVIDIA GPUs: cuDNN's
fused flash attention; bf16/fp16 only).
"""

from __future__ import annotations

import jax

IMPLEMENTATIONS = ("xla", "cudnn")


def attention(
    q_BxTxNxK: jax.Array,
    k_BxSxNxK: jax.Array,
    v_BxSxNxK: jax.Array,
    mask_BxS: jax.Array | None = None,
    *,
    implementation: str = "xla",
) -> jax.Array:
    """Softmax attention with scale ``1/sqrt(K)``; ``mask_BxS`` is True where a key is attended."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} not in {IMPLEMENTATIONS}")
    mask = None if mask_BxS is None else mask_BxS[:, None, None, :]
    return jax.nn.dot_product_attention(
        q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask=mask, implementation=implementation
    )
