"""Linear layers, norms and small MLPs whose parameters carry logical axis names.

Parameters are stored in ``param_dtype`` (fp32 master weights by default) and cast to the compute
``dtype`` at use. Kernels are ``(in, out)``; converters transpose torch's ``(out, in)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type


def _init(rngs: nnx.Rngs, shape: Sequence[int], dtype: Dtype, fan_in: int) -> jax.Array:
    # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return jax.random.uniform(rngs.params(), tuple(shape), dtype, -bound, bound)


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` with logical axes ``(in_axis, out_axis)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None],
        use_bias: bool = True,
        zero_init: bool = False,
        param_dtype: Dtype = jnp.float32,
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        shape = (in_features, out_features)
        kernel = (
            jnp.zeros(shape, param_dtype)
            if zero_init
            else _init(rngs, shape, param_dtype, in_features)
        )
        self.kernel = nnx.Param(kernel, logical_axes=axes)
        bias = None
        if use_bias:
            bias = (
                jnp.zeros((out_features,), param_dtype)
                if zero_init
                else _init(rngs, (out_features,), param_dtype, in_features)
            )
        self.bias = nnx.data(None if bias is None else nnx.Param(bias, logical_axes=(axes[1],)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        # One 2-D matmul over the flattened leading dims: with [B, L, D] inputs the weight
        # gradient contracts two dims, which XLA:CPU fuses into a slow loop (2.7x slower MLP
        # backward measured); flattening keeps it a library GEMM. A free reshape elsewhere.
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x
        y = jnp.dot(x2.astype(dtype), self.kernel[...].astype(dtype))
        y = y.reshape(*lead, y.shape[-1])
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class RMSNorm(nnx.Module):
    """diffusers' RMSNorm: fp32 statistics, ``x * rsqrt(mean(x^2) + eps) * weight`` (weight init 1).

    With ``unit_offset=True`` it is Gemma's: the weight starts at 0 and multiplies as ``(1 + w)``,
    and the product is formed in fp32 before the cast back.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        unit_offset: bool = False,
        axis_name: str | None = None,
        param_dtype: Dtype = jnp.float32,
        dtype: Dtype | None = None,
    ):
        init = jnp.zeros if unit_offset else jnp.ones
        self.weight = nnx.Param(init((dim,), param_dtype), logical_axes=(axis_name,))
        self.eps = eps
        self.unit_offset = unit_offset
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...]
        if self.unit_offset:
            return (y * (1.0 + w.astype(jnp.float32))).astype(out_dtype)
        if w.dtype in (jnp.bfloat16, jnp.float16):
            y = y.astype(w.dtype)
        return (y * w).astype(out_dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters; statistics in fp32, result in the input dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class MLPEmbedder(nnx.Module):
    """``out_layer(silu(in_layer(x)))``: the timestep / resolution embedding MLP."""

    def __init__(self, in_dim: int, hidden_dim: int, *, in_axis: str, rngs: nnx.Rngs, **kw):
        self.in_layer = Linear(in_dim, hidden_dim, axes=(in_axis, "embed"), rngs=rngs, **kw)
        self.out_layer = Linear(
            hidden_dim, hidden_dim, axes=("embed", "embed_out"), rngs=rngs, **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out_layer(jax.nn.silu(self.in_layer(x)))
