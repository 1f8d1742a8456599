"""Flow-matching objective: noising, v-space targets, the per-sample MSE (spec §2.3-2.4, §3.4).

x_t = (1 - t) x0 + t eps. The model predicts either the velocity v = eps - x0 ("velocity") or x0
("x", the JIT / "Back to Basics" pixel model). Both are compared in v-space; x-predictions are
mapped there with v = (x_t - x0) / max(t, x_clamp_min).

Legend: B batch, C channels, H height, W width (any trailing dims work the same: ... below).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

Prediction = Literal["velocity", "x"]
PREDICTIONS: tuple[str, ...] = ("velocity", "x")


@dataclasses.dataclass(frozen=True)
class FlowObjective:
    prediction: Prediction = "velocity"  # what the denoiser outputs: the velocity eps - x0, or x0
    x_clamp_min: float = 0.05  # x-pred: t is clamped to >= this when mapping x0 to a velocity
    noise_scale: float = 1.0  # eps ~ N(0, I) * noise_scale (1.0 in every research config)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not self.x_clamp_min > 0:
            raise ValueError(f"x_clamp_min must be > 0, got {self.x_clamp_min}")
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale}")


def _per_sample(t_B: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(t_B, t_B.shape + (1,) * (ndim - 1))


def add_noise(x0_BCHW: jax.Array, noise_BCHW: jax.Array, t_B: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t noise, t broadcast per sample; computed in x0's dtype (t cast to it).

    The caller scales `noise` by noise_scale first.
    """
    t = _per_sample(jnp.asarray(t_B).astype(x0_BCHW.dtype), x0_BCHW.ndim)
    return (1 - t) * x0_BCHW + t * noise_BCHW.astype(x0_BCHW.dtype)


def model_output_to_velocity(
    out_BCHW: jax.Array,
    x_t_BCHW: jax.Array,
    t_B: jax.Array,
    prediction: Prediction,
    clamp: float = 0.05,
) -> jax.Array:
    """The model output as a velocity: itself for "velocity", (x_t - x0_hat)/max(t, clamp) for "x".

    Computed in float32 and returned in float32.
    """
    out = out_BCHW.astype(jnp.float32)
    if prediction == "velocity":
        return out
    if prediction != "x":
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    t_c = _per_sample(jnp.maximum(jnp.asarray(t_B, jnp.float32), clamp), out.ndim)
    return (x_t_BCHW.astype(jnp.float32) - out) / t_c


def loss_per_sample(
    pred_BCHW: jax.Array,
    x0_BCHW: jax.Array,
    noise_BCHW: jax.Array,
    x_t_BCHW: jax.Array,
    t_B: jax.Array,
    prediction: Prediction = "velocity",
    x_clamp_min: float = 0.05,
) -> jax.Array:
    """Per-sample mean over non-batch dims of the squared v-space error, float32 [B].

    velocity: (v_hat - (eps - x0))^2. x: v_hat = (x_t - x0_hat)/t_c, v = (x_t - x0)/t_c with
    t_c = max(t, x_clamp_min), i.e. an x-space MSE weighted by 1/t_c^2; for t >= x_clamp_min the
    target v equals eps - x0. The research loss is `loss_per_sample(...).mean()` (every sample has
    the same number of elements, so that is the mean over all elements).
    """
    pred = pred_BCHW.astype(jnp.float32)
    if prediction == "velocity":
        target = noise_BCHW.astype(jnp.float32) - x0_BCHW.astype(jnp.float32)
    elif prediction == "x":
        pred = model_output_to_velocity(pred, x_t_BCHW, t_B, "x", x_clamp_min)
        target = model_output_to_velocity(x0_BCHW, x_t_BCHW, t_B, "x", x_clamp_min)
    else:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    sq = jnp.square(pred - target)
    return sq.reshape(sq.shape[0], -1).mean(axis=1)
