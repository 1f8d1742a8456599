"""EMA of the denoiser weights, as the research EMA algorithm schedules it (spec §4.1).

Convention: `step` is the 0-based index of the optimizer step that just finished, so the research
batch counter at BATCH_END is step + 1 and the EMA blends when (step + 1) % every == 0 (steps 9,
19, ... for every = 10). With `start_step` set, the EMA is first *copied* from the weights at that
step (research: ema_start "0ba" copies at the end of the first batch, then blends every 10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_update(
    ema_params,
    params,
    step,
    *,
    decay: float = 0.999,
    every: int = 10,
    start_step: int | None = None,
):
    """New EMA tree (float32 leaves): decay * ema + (1 - decay) * params on update steps.

    Pure and jittable: `step` may be traced; the choice is a `jnp.where`, so one compiled step
    serves every iteration. `params` may be in a lower precision; the blend runs in float32.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    step = jnp.asarray(step)
    blend = (step + 1) % every == 0
    copy = jnp.zeros((), bool) if start_step is None else step == start_step

    def one(ema, p):
        ema, p = ema.astype(jnp.float32), p.astype(jnp.float32)
        blended = decay * ema + (1.0 - decay) * p
        return jnp.where(copy, p, jnp.where(blend, blended, ema))

    return jax.tree.map(one, ema_params, params)
