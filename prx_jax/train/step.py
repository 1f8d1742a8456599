"""The pure train step: flow matching on one global batch, jitted once over the mesh.

Legend: B global batch, U micro-batches, b = B / U, C/H/W image or latent dims, T text tokens,
E text width. RNG derives from ``fold_in(seed, step)``, so resume and determinism are trivial, and
every draw is made for the whole global batch before the micro-batch split, so the result does not
depend on ``grad_accum``.

Batch: ``image`` [B,3,H,W] in [-1, 1], and either ``text_ids`` [B,T] int32 + ``text_mask`` [B,T]
(the frozen encoder runs here) or ``prompt_embeds`` [B,T,E] + ``prompt_mask`` [B,T] (precomputed).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from prx_jax.diffusion.objective import add_noise, loss_per_sample
from prx_jax.diffusion.timesteps import sample_timesteps
from prx_jax.train.ema import ema_update
from prx_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepStatics:
    """Everything static about the step (hashable: it is closed over by the jitted function)."""

    graphdef: nnx.GraphDef  # the denoiser's graph
    tx: optax.GradientTransformation
    lr_schedule: Any  # step -> learning rate, for logging
    seed: int
    prediction: str  # "x" | "velocity"
    timestep_shift: float
    uniform_prob: float
    noise_scale: float
    caption_dropout: float
    x_clamp_min: float
    loss_bins: tuple[float, ...]
    grad_accum: int
    skip_nonfinite: bool  # a NaN/Inf loss or gradient leaves the state as it was
    ema_decay: float
    ema_every: int
    text_graphdef: nnx.GraphDef | None = None  # the frozen text encoder (None: precomputed)
    vae_graphdef: nnx.GraphDef | None = None  # the frozen VAE (None: pixel space)


def encode_text(statics: StepStatics, frozen: dict, batch: dict) -> tuple[jax.Array, jax.Array]:
    if "prompt_embeds" in batch:
        return batch["prompt_embeds"], batch["prompt_mask"].astype(bool)
    encoder = nnx.merge(statics.text_graphdef, frozen["text"])
    mask_BxT = batch["text_mask"].astype(bool)
    return jax.lax.stop_gradient(encoder(batch["text_ids"], mask_BxT)), mask_BxT


def prepare_inputs(statics: StepStatics, frozen: dict, batch: dict, key: jax.Array):
    """Clean inputs x0, text (after caption dropout), timesteps, noise and x_t."""
    k_t, k_noise, k_drop, k_vae = jax.random.split(key, 4)
    image = batch["image"]
    if statics.vae_graphdef is None:
        x0 = image.astype(jnp.float32)
    else:
        vae = nnx.merge(statics.vae_graphdef, frozen["vae"])
        x0 = jax.lax.stop_gradient(vae.encode(image, k_vae)).astype(jnp.float32)
    B = x0.shape[0]
    txt_BxTxE, mask_BxT = encode_text(statics, frozen, batch)
    txt_BxTxE = txt_BxTxE.astype(jnp.float32)
    drop_B = jax.random.uniform(k_drop, (B,)) < statics.caption_dropout
    txt_BxTxE = jnp.where(drop_B[:, None, None], frozen["null_txt"].astype(jnp.float32), txt_BxTxE)
    mask_BxT = jnp.where(drop_B[:, None], frozen["null_mask"], mask_BxT)
    t_B = sample_timesteps(k_t, B, shift=statics.timestep_shift, uniform_prob=statics.uniform_prob)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32) * statics.noise_scale
    return x0, txt_BxTxE, mask_BxT, t_B, noise, add_noise(x0, noise, t_B)


def bin_stats(loss_B: jax.Array, t_B: jax.Array, edges: tuple[float, ...]):
    """Per-timestep-bin (sum, count): bin i holds edges[i] <= t < edges[i+1]."""
    lo, hi = jnp.asarray(edges[:-1]), jnp.asarray(edges[1:])
    in_bin = (t_B[None, :] >= lo[:, None]) & (t_B[None, :] < hi[:, None])
    return (in_bin * loss_B[None, :]).sum(-1), in_bin.sum(-1)


def _split(x, u):
    return x.reshape(u, x.shape[0] // u, *x.shape[1:])


def train_step(state: TrainState, batch: dict, frozen: dict, *, statics: StepStatics):
    key = jax.random.fold_in(jax.random.key(statics.seed), state.step)
    x0, txt, mask, t_B, noise, x_t = prepare_inputs(statics, frozen, batch, key)

    def loss_fn(params, mb):
        model = nnx.merge(statics.graphdef, params)
        out = model(mb["x_t"], mb["t"], mb["txt"], mb["mask"])
        per_sample = loss_per_sample(
            out, mb["x0"], mb["noise"], mb["x_t"], mb["t"], statics.prediction, statics.x_clamp_min
        )
        return per_sample.mean(), per_sample

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    inputs = {"x0": x0, "noise": noise, "x_t": x_t, "t": t_B, "txt": txt, "mask": mask}
    U = statics.grad_accum
    if U == 1:
        (_, loss_B), grads = grad_fn(state.params, inputs)
    else:

        def micro(acc, mb):
            (_, l_b), g = grad_fn(state.params, mb)
            return jax.tree.map(jnp.add, acc, g), l_b

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, loss_Uxb = jax.lax.scan(micro, zeros, jax.tree.map(lambda a: _split(a, U), inputs))
        grads = jax.tree.map(lambda g: g / U, grads)
        loss_B = loss_Uxb.reshape(-1)
    updates, opt_state = statics.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(
        state.ema, params, state.step, decay=statics.ema_decay, every=statics.ema_every
    )
    loss, grad_norm = loss_B.mean(), optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if statics.skip_nonfinite:
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        ema = keep(ema, state.ema)
    bin_sum, bin_count = bin_stats(loss_B, t_B, statics.loss_bins)
    metrics = {
        "loss": loss,
        "finite": finite,
        "grad_norm": grad_norm,
        "lr": jnp.asarray(statics.lr_schedule(state.step), jnp.float32),
        "bin_loss_sum": bin_sum,
        "bin_count": bin_count,
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new_state, metrics


def eval_loss(params: dict, batch: dict, frozen: dict, key: jax.Array, *, statics: StepStatics):
    """Held-out loss per timestep bin (no caption dropout), for validation."""
    statics = dataclasses.replace(statics, caption_dropout=0.0)
    x0, txt, mask, t_B, noise, x_t = prepare_inputs(statics, frozen, batch, key)
    out = nnx.merge(statics.graphdef, params)(x_t, t_B, txt, mask)
    loss_B = loss_per_sample(out, x0, noise, x_t, t_B, statics.prediction, statics.x_clamp_min)
    return bin_stats(loss_B, t_B, statics.loss_bins)
