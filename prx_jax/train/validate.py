"""Validation: EMA samples of fixed prompts (one jitted Euler loop with CFG), PNG grids, the demo
scorer's caption accuracy, and the held-out loss per timestep bin."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from prx_jax.diffusion.sampler import euler_sample
from prx_jax.diffusion.schedules import flow_match_sigmas
from prx_jax.train.metrics import bin_metrics
from prx_jax.train.step import eval_loss
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
    g = grid(images, cols=max(4, math.ceil(math.sqrt(len(images)))))
    if jax.process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g).save(out)
    metrics = {}
    if spec.is_demo:
        from prx_jax.data.scorer import score

        metrics["demo_accuracy"] = float(
            np.mean([score(im, p).accuracy for im, p in zip(images, spec.prompts, strict=True)])
        )
    return metrics, g


def _host(x: jax.Array) -> np.ndarray:
    """A global array on the host of every process (gathered across hosts when needed)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_validation(cfg, prx, graphdef, towers: Towers):
    """``(spec, jitted sampler)`` for the run, or None when ``validation.every`` is 0."""
    v = cfg.validation
    if v.every == 0:
        return None
    H, W = v.height or cfg.data.resolution, v.width or cfg.data.resolution
    f = towers.spatial_factor
    spec = ValidationSpec(
        prompts=tuple(v.prompts) or default_prompts(v.demo_prompts),
        height=H,
        width=W,
        num_steps=v.num_steps,
        guidance_scale=v.guidance_scale,
        shift=v.sample_shift,
        seed=v.seed,
        prediction=cfg.objective.prediction,
        noise_scale=cfg.objective.noise_scale,
        is_demo=cfg.data.source == "demo",
    )
    return spec, make_sampler(graphdef, spec, (prx.in_channels, H // f, W // f))


def run_validation_step(val, state, run, writer, step: int) -> dict:
    """EMA samples + scorer, and the held-out loss per timestep bin; logged and returned."""
    from prx_jax.data import make_pipeline

    cfg = run.cfg
    spec, sampler = val
    out = Path(cfg.run_dir) / "samples" / f"step_{step:07d}.png"
    row, g = run_validation(sampler, state.ema, run.towers, run.frozen, spec, out)
    # Held-out batches: the demo draws other scenes; prepared data is reshuffled with another seed
    # (no separate split), so there it measures fit, not generalisation.
    held_out = dataclasses.replace(cfg.data, seed=cfg.data.seed + 1_000_003, worker_count=0)
    it = make_pipeline(held_out, batch_sharding=run.batch_sharding)
    if run.eval_fn is None:
        run.eval_fn = jax.jit(functools.partial(eval_loss, statics=run.statics))
    ev = run.eval_fn
    sums = counts = 0
    for i in range(cfg.validation.loss_batches):
        batch = run.device_batch(next(it))
        s, n = jax.device_get(ev(state.ema, batch, run.frozen, jax.random.key(10_000 + i)))
        sums, counts = sums + s, counts + n
    edges = cfg.objective.loss_bins
    row.update(bin_metrics("val_loss", edges, np.atleast_1d(sums), np.atleast_1d(counts)))
    writer.write(step, row)
    writer.image(step, "samples", g)
    if jax.process_index() == 0:
        print(f"step {step}: validation {row} -> {out}")
    return row
