"""Validation: EMA samples of fixed prompts (one jitted Euler loop with CFG), PNG grids, the demo
scorer's caption accuracy, and the held-out loss per timestep bin."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from prx_jax.diffusion.sampler import euler_sample
from prx_jax.diffusion.schedules import flow_match_sigmas
from prx_jax.train.towers import Towers, decode

DEMO_VALIDATION_SEED = 987_654  # held-out demo scenes: not the training stream's seed


@dataclasses.dataclass(frozen=True)
class ValidationSpec:
    prompts: tuple[str, ...]
    height: int  # pixels
    width: int
    num_steps: int
    guidance_scale: float
    shift: float
    seed: int
    prediction: str
    noise_scale: float
    is_demo: bool


def default_prompts(count: int = 16) -> tuple[str, ...]:
    from prx_jax.data.demo import sample_scene

    return tuple(sample_scene(DEMO_VALIDATION_SEED, i).caption for i in range(count))


def make_sampler(graphdef: nnx.GraphDef, spec: ValidationSpec, latent_shape: tuple[int, ...]):
    """A jitted ``(params, cond_txt, cond_mask, null_txt, null_mask) -> samples``."""
    sigmas = flow_match_sigmas(spec.num_steps, shift=spec.shift)

    def sample(params, txt, mask, null_txt, null_mask):
        model = nnx.merge(graphdef, params)
        B = txt.shape[0]
        x = jax.random.normal(jax.random.key(spec.seed), (B, *latent_shape), jnp.float32)
        uncond = (jnp.broadcast_to(null_txt, txt.shape), jnp.broadcast_to(null_mask, mask.shape))
        return euler_sample(
            lambda x, t, e, m: model(x, t, e, m).astype(jnp.float32),
            x * spec.noise_scale,
            sigmas,
            cond=(txt, mask),
            uncond=uncond,
            guidance_scale=spec.guidance_scale,
            prediction=spec.prediction,
        )

    return jax.jit(sample)


def to_uint8(images_Bx3xHxW: np.ndarray) -> np.ndarray:
    x = (np.clip(images_Bx3xHxW, -1.0, 1.0) + 1.0) * 127.5
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


def grid(images_BxHxWx3: np.ndarray, cols: int = 4) -> np.ndarray:
    B, H, W, _ = images_BxHxWx3.shape
    rows = -(-B // cols)
    out = np.full((rows * H, cols * W, 3), 255, np.uint8)
    for i, im in enumerate(images_BxHxWx3):
        r, c = divmod(i, cols)
        out[r * H : (r + 1) * H, c * W : (c + 1) * W] = im
    return out


def run_validation(sampler, params, towers: Towers, frozen: dict, spec: ValidationSpec, out: Path):
    """Samples the fixed prompts with ``params`` (the EMA), writes the grid, scores demo captions.
    Returns ``(metrics, grid_HxWx3)``."""
    txt, mask = towers.encode(list(spec.prompts))
    latents = sampler(
        params, txt.astype(jnp.float32), mask, frozen["null_txt"], frozen["null_mask"]
    )
    images = to_uint8(decode(towers, latents))
    g = grid(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g).save(out)
    metrics = {}
    if spec.is_demo:
        from prx_jax.data.scorer import score

        metrics["demo_accuracy"] = float(
            np.mean([score(im, p).accuracy for im, p in zip(images, spec.prompts, strict=True)])
        )
    return metrics, g
