"""Flow-matching math: time shift and sampling, noising and loss, schedules, Euler sampler.

Pure functions of arrays; nothing here imports `prx_jax.models` or torch.
"""

from prx_jax.diffusion.objective import (
    FlowObjective,
    add_noise,
    loss_per_sample,
    model_output_to_velocity,
)
from prx_jax.diffusion.sampler import euler_sample
from prx_jax.diffusion.schedules import (
    PIXEL_NOISE_SCALE,
    flow_match_sigmas,
    model_times,
    research_sigmas,
)
from prx_jax.diffusion.timesteps import (
    LOSS_BIN_EDGES,
    bin_index,
    binned_mean,
    sample_timesteps,
    time_shift,
)

__all__ = [
    "LOSS_BIN_EDGES",
    "PIXEL_NOISE_SCALE",
    "FlowObjective",
    "add_noise",
    "bin_index",
    "binned_mean",
    "euler_sample",
    "flow_match_sigmas",
    "loss_per_sample",
    "model_output_to_velocity",
    "model_times",
    "research_sigmas",
    "sample_timesteps",
    "time_shift",
]
