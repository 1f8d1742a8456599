"""Inference sigma schedules (host-side numpy, float32), from the highest noise level down to 0.

* `flow_match_sigmas`: diffusers' `FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)`
  with every other option at its default, after `.set_timesteps(N)`: PRXPipeline and
  PRXPixelPipeline both sample with it. The shift is applied twice at the low end: `__init__`
  shifts the 1000 training sigmas, so the schedule ends at shift(1/1000), and `set_timesteps`
  shifts `linspace(sigma_max, sigma_min, N)` again.
* `research_sigmas`: the research code's `set_timesteps(N)`, shift(linspace(1, 0, N + 1)) (§2.5).
* `model_times`: the timestep the diffusers pipelines feed the transformer at each step,
  `(sigma * 1000) / 1000` in float32. It is sigma up to one float32 ulp (for some N the rounding
  differs), so a bit-faithful sampler passes these rather than `sigmas[:-1]`.

Legend: N number of steps.
"""

from __future__ import annotations

import numpy as np

from prx_jax.diffusion.timesteps import time_shift

# PRXPixelPipeline starts from randn * noise_scale with this default (its `noise_scale` config).
PIXEL_NOISE_SCALE: float = 2.0


def _check(num_steps: int, shift: float) -> None:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")


def flow_match_sigmas(
    num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000
) -> np.ndarray:
    """sigmas_N1 [N + 1] float32 of diffusers' FlowMatchEulerDiscreteScheduler, terminal 0 included.

    Reproduces its arithmetic: training sigmas shifted in float32, then a float64 linspace between
    the (float32) extremes times num_train_timesteps, divided back, shifted in float64, cast to
    float32.
    """
    _check(num_steps, shift)
    train_t = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
    train_sigmas = time_shift(train_t / np.float32(num_train_timesteps), shift).astype(np.float32)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    t_N = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas_N = time_shift(t_N / num_train_timesteps, shift).astype(np.float32)
    return np.concatenate([sigmas_N, np.zeros(1, np.float32)])


def research_sigmas(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """sigmas_N1 [N + 1] float32 of the research scheduler: shift(linspace(1, 0, N + 1))."""
    _check(num_steps, shift)
    lin = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float32)
    return time_shift(lin, np.float32(shift)).astype(np.float32)


def model_times(sigmas_N1: np.ndarray, num_train_timesteps: int = 1000) -> np.ndarray:
    """times_N [N] float32: the timestep the diffusers PRX pipelines pass, t/1000 (~ sigma)."""
    timesteps_N = np.asarray(sigmas_N1[:-1], np.float32) * np.float32(num_train_timesteps)
    return (timesteps_N / np.float32(num_train_timesteps)).astype(np.float32)
