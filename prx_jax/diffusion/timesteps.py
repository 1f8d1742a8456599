"""Training timesteps: the shift, the truncated logit-normal sampler and loss-per-bin bookkeeping.

t is the noise level in [0, 1]: x_t = (1 - t) x0 + t eps, so t = 0 is data and t = 1 is noise
(PRX spec §2.1-2.2, §3.5).

Legend: B batch, K number of timestep bins.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr, ndtri

# The research configs' "MeanSquaredError-bin-{a}-to-{b}" bins: [0,.3) [.3,.6) [.6,1).
LOSS_BIN_EDGES: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)

Distribution = Literal["logit_normal", "uniform"]


def time_shift(t, shift: float):
    """s t / (1 + (s - 1) t): identity at s = 1, fixes 0 and 1, s > 1 moves t towards noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def _inverse_time_shift(t, shift: float):
    return t / (shift - (shift - 1.0) * t)


def _truncated_logit_normal(key, batch: int, shift: float, t_min: float, t_max: float):
    """shift(sigmoid(u)), u ~ N(0, 1), conditioned on t_min <= t < t_max, by inverse CDF.

    shift∘sigmoid is increasing, so the truncation is a truncation of u to [u_lo, u_hi): draw the
    normal CDF uniformly between its values there. Exact up to float32 resolution of the CDF (the
    same resolution `jax.random.normal` itself has).
    """
    u_lo = jax.scipy.special.logit(_inverse_time_shift(jnp.float32(t_min), shift))
    p_lo = ndtr(u_lo)
    p_hi = (
        jnp.float32(1.0)
        if t_max >= 1.0
        else ndtr(jax.scipy.special.logit(_inverse_time_shift(jnp.float32(t_max), shift)))
    )
    p_B = p_lo + jax.random.uniform(key, (batch,), jnp.float32) * (p_hi - p_lo)
    return time_shift(jax.nn.sigmoid(ndtri(p_B)), shift)


def sample_timesteps(
    key: jax.Array,
    batch: int,
    *,
    shift: float = 1.0,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    uniform_prob: float = 0.1,
    distribution: Distribution = "logit_normal",
) -> jax.Array:
    """Training timesteps t_B (float32) as PRX samples them (spec §2.2).

    logit_normal: shift(sigmoid(N(0,1))) truncated exactly to [t_min, t_max); then each sample is
    independently replaced, with probability `uniform_prob`, by an UNSHIFTED U[t_min, t_max).
    uniform: shift(t_min + U (t_max - t_min)), with no mixing.
    Jittable (shapes static in `batch`); the result always lies in [t_min, t_max).
    """
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if not 0.0 <= uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
    key_t, key_mix, key_u = jax.random.split(key, 3)
    uniform_B = t_min + jax.random.uniform(key_u, (batch,), jnp.float32) * (t_max - t_min)
    if distribution == "uniform":
        t_B = time_shift(uniform_B, shift)
    elif distribution == "logit_normal":
        t_B = _truncated_logit_normal(key_t, batch, shift, t_min, t_max)
        mix_B = jax.random.uniform(key_mix, (batch,)) < uniform_prob
        t_B = jnp.where(mix_B, uniform_B, t_B)
    else:
        raise ValueError(f"distribution must be 'logit_normal' or 'uniform', got {distribution!r}")
    # Float32 rounding of sigmoid/shift must not leak outside the interval the spec promises.
    below_max = jnp.nextafter(jnp.float32(t_max), jnp.float32(0.0))
    return jnp.clip(t_B, jnp.float32(t_min), below_max).astype(jnp.float32)


def bin_index(t, edges: tuple[float, ...] = LOSS_BIN_EDGES) -> jax.Array:
    """Bin k with edges[k] <= t < edges[k+1] (int32); t outside the edges goes to the end bins."""
    edges_K1 = jnp.asarray(edges, jnp.float32)
    k = jnp.searchsorted(edges_K1, jnp.asarray(t, jnp.float32), side="right") - 1
    return jnp.clip(k, 0, len(edges) - 2).astype(jnp.int32)


def binned_mean(
    values_B: jax.Array, t_B: jax.Array, edges: tuple[float, ...] = LOSS_BIN_EDGES
) -> tuple[jax.Array, jax.Array]:
    """(mean_K, count_K) of per-sample values grouped by timestep bin; empty bins have mean 0.

    Mean of per-sample means equals the element mean of the bin when samples have equal shapes,
    as torchmetrics' MeanSquaredError in the research code computes it. To aggregate over steps,
    sum mean_K * count_K and count_K.
    """
    onehot_BK = jax.nn.one_hot(bin_index(t_B, edges), len(edges) - 1, dtype=jnp.float32)
    count_K = onehot_BK.sum(axis=0)
    sum_K = (onehot_BK * values_B.astype(jnp.float32)[:, None]).sum(axis=0)
    return jnp.where(count_K > 0, sum_K / jnp.maximum(count_K, 1.0), 0.0), count_K
