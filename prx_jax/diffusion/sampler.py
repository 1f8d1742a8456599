"""Euler flow-matching sampler with classifier-free guidance, one jittable function (spec §2.5).

Each step i: the model sees x and times[i] (sigma_i; see `schedules.model_times`); under CFG one
batch [uncond; cond] runs and out = u + w (c - u) is applied to the raw output (x0_hat or v); an
x-prediction becomes v = (x - x0_hat) / max(times[i], x_clamp_min); then x <- x + (sigma_{i+1} -
sigma_i) v. The step follows diffusers' FlowMatchEulerDiscreteScheduler.step numerics: x upcast to
float32, dt * v formed in v's dtype, the sum in float32, cast back (to x's dtype here, so the loop
carry keeps one dtype; diffusers casts to the model output's, the same in the PRX pipelines).

Legend: B batch, L text tokens, D text width, N steps; x is [B, ...] (latents or pixels).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from prx_jax.diffusion.objective import PREDICTIONS, Prediction

# denoise_fn(x, t_B, text_embeds_BxLxD, text_mask_BxL) -> model output shaped like x.
DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def _velocity(out, x, t, prediction: Prediction, x_clamp_min: float):
    if prediction == "velocity":
        return out
    # The pixel pipeline: (latents - x0_hat) / clamp(t, min=0.05), as torch rounds it: the
    # difference in the tensors' dtype, the division by the float32 0-d t in float32.
    t_c = jnp.maximum(t, jnp.float32(x_clamp_min))
    diff = x - out
    return (diff.astype(jnp.float32) / t_c).astype(diff.dtype)


def euler_sample(
    denoise_fn: DenoiseFn,
    x_init: jax.Array,
    sigmas,
    *,
    cond: tuple[jax.Array, jax.Array],
    uncond: tuple[jax.Array, jax.Array] | None = None,
    guidance_scale: float = 1.0,
    prediction: Prediction = "velocity",
    x_clamp_min: float = 0.05,
    times=None,
) -> jax.Array:
    """Integrate x_init from sigmas[0] down to sigmas[-1] (usually 0); x in x_init's dtype.

    sigmas: [N + 1] (numpy or jax; may be traced). times: [N] timesteps shown to the model and
    used by the x-pred clamp, default sigmas[:-1]; pass `schedules.model_times(sigmas)` to match
    the diffusers pipelines bit for bit. cond / uncond: (embeds_BxLxD, mask_BxL). CFG runs only
    when guidance_scale > 1 and uncond is given; guidance_scale must be a Python number (it picks
    the code path); scale <= 1 gives the purely conditional prediction.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    guidance_scale = float(guidance_scale)
    sigmas_N1 = jnp.asarray(sigmas, jnp.float32)
    num_steps = sigmas_N1.shape[0] - 1
    times_N = sigmas_N1[:-1] if times is None else jnp.asarray(times, jnp.float32)
    if times_N.shape != (num_steps,):
        raise ValueError(f"times must have shape ({num_steps},), got {times_N.shape}")
    batch = x_init.shape[0]
    use_cfg = uncond is not None and guidance_scale > 1.0
    if use_cfg:
        embeds = jnp.concatenate([uncond[0], cond[0]], axis=0)
        mask = jnp.concatenate([uncond[1], cond[1]], axis=0)
    else:
        embeds, mask = cond

    def model_out(x, t):
        if not use_cfg:
            return denoise_fn(x, jnp.full((batch,), t, jnp.float32), embeds, mask)
        out = denoise_fn(
            jnp.concatenate([x, x], axis=0), jnp.full((2 * batch,), t, jnp.float32), embeds, mask
        )
        out_u, out_c = out[:batch], out[batch:]
        return out_u + jnp.asarray(guidance_scale, out.dtype) * (out_c - out_u)

    def body(i, x):
        t = times_N[i]
        v = _velocity(model_out(x, t), x, t, prediction, x_clamp_min)
        dt = sigmas_N1[i + 1] - sigmas_N1[i]
        step = (dt * v.astype(jnp.float32)).astype(v.dtype).astype(jnp.float32)
        return (x.astype(jnp.float32) + step).astype(x.dtype)

    return jax.lax.fori_loop(0, num_steps, body, x_init)
