"""The training loop: build everything from a ``Config``, then step, log, validate, checkpoint.

``train(cfg)`` is what ``python -m prx_jax.train`` calls; tests call it too. Metrics are fetched one
step late (no host sync on the hot path), which also keeps CPU collectives from piling up.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from prx_jax.config import Config, save_config
from prx_jax.models.presets import get_preset
from prx_jax.models.prx_config import PRXConfig
from prx_jax.parallel.rules import make_mesh
from prx_jax.train import metrics as metrics_lib
from prx_jax.train.checkpoint import Checkpointer, abstract_like
from prx_jax.train.optim import lr_schedule, make_optimizer
from prx_jax.train.state import TrainState, init_train_state, make_model
from prx_jax.train.step import StepStatics, eval_loss, train_step
from prx_jax.train.towers import Towers, build_towers
from prx_jax.train.validate import ValidationSpec, default_prompts, make_sampler, run_validation


def resolve_prx_config(cfg: Config, towers: Towers) -> PRXConfig:
    over = cfg.model.overrides()
    over.setdefault("context_in_dim", towers.text_width)
    over.setdefault("in_channels", towers.latent_channels)
    prx = get_preset(cfg.model.preset, **over)
    if prx.context_in_dim != towers.text_width:
        raise ValueError(
            f"model.context_in_dim {prx.context_in_dim} != the text encoder's width "
            f"{towers.text_width}"
        )
    if prx.in_channels != towers.latent_channels:
        raise ValueError(
            f"model.in_channels {prx.in_channels} != the input's channels "
            f"{towers.latent_channels} (vae={cfg.vae})"
        )
    grid = prx.patch_size * towers.spatial_factor
    if cfg.data.patch_size % grid:
        raise ValueError(
            f"data.patch_size {cfg.data.patch_size} must be a multiple of model patch x VAE factor "
            f"= {grid}, so every bucket patchifies exactly"
        )
    return prx


def _initial_params(cfg: Config, prx: PRXConfig, mesh):
    if cfg.init_from is None:
        return None
    from prx_jax.convert.transformer import load_transformer

    model = load_transformer(cfg.init_from, dtype=cfg.model.param_dtype, mesh=mesh)
    if model.config != prx:
        diff = {
            f.name: (getattr(model.config, f.name), getattr(prx, f.name))
            for f in dataclasses.fields(prx)
            if getattr(model.config, f.name) != getattr(prx, f.name)
        }
        raise ValueError(f"init_from {cfg.init_from} differs from the model config: {diff}")
    return nnx.state(model, nnx.Param).to_pure_dict()


def _statics(cfg: Config, graphdef, tx, towers: Towers) -> StepStatics:
    o = cfg.objective
    return StepStatics(
        graphdef=graphdef,
        tx=tx,
        lr_schedule=lr_schedule(cfg.optim),
        seed=cfg.train.seed,
        prediction=o.prediction,
        timestep_shift=o.timestep_shift,
        uniform_prob=o.uniform_prob,
        noise_scale=o.noise_scale,
        caption_dropout=o.caption_dropout,
        x_clamp_min=o.x_clamp_min,
        loss_bins=tuple(o.loss_bins),
        grad_accum=cfg.train.grad_accum,
        ema_decay=cfg.ema.decay,
        ema_every=cfg.ema.every,
        text_graphdef=towers.text_graphdef,
        vae_graphdef=towers.vae_graphdef,
    )


def _device_batch(batch: dict, towers: Towers, sharding) -> dict:
    ids, mask = towers.tokenizer.tokenize([str(c) for c in batch["caption"]])
    put = functools.partial(jax.make_array_from_process_local_data, sharding)
    return {"image": batch["image"], "text_ids": put(ids), "text_mask": put(mask)}


def _bin_metrics(prefix: str, edges, sums, counts) -> dict:
    out = {}
    for a, b, s, n in zip(edges[:-1], edges[1:], sums, counts, strict=True):
        if n:
            out[f"{prefix}/{a:g}-{b:g}"] = float(s) / float(n)
    return out


@dataclasses.dataclass
class Run:
    """Everything a run is built from; ``setup`` makes it, ``train`` drives it (tests use both)."""

    cfg: Config
    mesh: jax.sharding.Mesh
    prx: PRXConfig
    towers: Towers
    graphdef: nnx.GraphDef
    statics: StepStatics
    state: TrainState
    state_shardings: TrainState
    batch_sharding: NamedSharding
    frozen: dict
    step_fn: Callable

    def device_batch(self, batch: dict) -> dict:
        return _device_batch(batch, self.towers, self.batch_sharding)


def setup(cfg: Config) -> Run:
    """Mesh, towers, model, optimizer and the sharded train state (fresh or ``init_from``)."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.data.global_batch_size % (batch_axes * cfg.train.grad_accum):
        raise ValueError(
            f"data.global_batch_size {cfg.data.global_batch_size} must divide by data x fsdp = "
            f"{batch_axes} times train.grad_accum {cfg.train.grad_accum}"
        )
    towers = build_towers(cfg, mesh)
    prx = resolve_prx_config(cfg, towers)
    builder = functools.partial(make_model, cfg.model, prx)
    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: builder(nnx.Rngs(0))), nnx.Param)
    tx = make_optimizer(cfg.optim, abstract_params.to_pure_dict())
    state, state_sh = init_train_state(
        graphdef, builder, tx, mesh, cfg.train.seed, _initial_params(cfg, prx, mesh)
    )
    statics = _statics(cfg, graphdef, tx, towers)
    step_fn = jax.jit(
        functools.partial(train_step, statics=statics),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    batch_sh = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    frozen = towers.frozen()
    return Run(
        cfg, mesh, prx, towers, graphdef, statics, state, state_sh, batch_sh, frozen, step_fn
    )


def train(cfg: Config) -> dict:
    """Runs (or resumes) the training described by ``cfg``; returns the last logged metrics."""
    from prx_jax.data import make_pipeline

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        save_config(cfg, run_dir / "config.yaml")
    run = setup(cfg)
    prx, towers, state, state_sh = run.prx, run.towers, run.state, run.state_shardings
    batch_sh, statics, frozen, step_fn, graphdef = (
        run.batch_sharding, run.statics, run.frozen, run.step_fn, run.graphdef
    )  # fmt: skip
    data_iter = make_pipeline(cfg.data, batch_sharding=batch_sh)
    ckpt = Checkpointer(run_dir, keep=cfg.checkpoint.keep)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, abstract_like(state, state_sh), data_iter)
        print(f"resumed from {ckpt.directory / str(start)} (step {int(state.step)})")
    writer = metrics_lib.MetricsWriter(
        run_dir, tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
        config=cfg,
    )  # fmt: skip
    val = _validation(cfg, prx, graphdef, towers)
    first, steps = int(state.step), cfg.train.steps
    tokens = None
    last: dict = {}
    pending = None
    bar = _progress(cfg, first, steps)
    t_last, n_since = time.perf_counter(), 0
    for step in range(first, steps):
        batch = next(data_iter)
        if tokens is None:
            H, W = batch["image"].shape[-2:]
            p = prx.patch_size * towers.spatial_factor
            tokens = (H // p) * (W // p)
            flops = metrics_lib.train_flops_per_image(
                prx, tokens, towers.tokenizer.max_length, cfg.model.remat
            )
        state, m = step_fn(state, _device_batch(batch, towers, batch_sh), frozen)
        n_since += 1
        if pending is not None:
            last = _log(pending, cfg, writer, bar, flops, t_last, n_since - 1)
            if last:
                t_last, n_since = time.perf_counter(), 1
        pending = (step + 1, m) if (step + 1) % cfg.train.log_every == 0 else None
        if pending is None:
            jax.block_until_ready(m["loss"])  # bounded dispatch queue (CPU collectives trap)
        if bar is not None:
            bar.update(1)
        done = step + 1 == steps
        if val is not None and ((step + 1) % cfg.validation.every == 0 or done):
            last.update(_validate(val, state, towers, frozen, cfg, statics, writer, step + 1))
        if (step + 1) % cfg.checkpoint.every == 0 or done:
            ckpt.save(step + 1, state, data_iter)
    if pending is not None:
        last = _log(pending, cfg, writer, bar, flops, t_last, n_since)
    ckpt.close()
    writer.close()
    if bar is not None:
        bar.close()
    return last


def _progress(cfg: Config, first: int, steps: int):
    if not cfg.logging.progress or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=first, desc="train", unit="step", dynamic_ncols=True)


def _log(pending, cfg, writer, bar, flops, t_last, n_steps) -> dict:
    step, m = pending
    m = jax.device_get(m)
    dt = max(time.perf_counter() - t_last, 1e-9)
    img_per_s = n_steps * cfg.data.global_batch_size / dt
    tflops = flops * img_per_s / jax.device_count() / 1e12
    row = {
        "loss": float(m["loss"]),
        "lr": float(m["lr"]),
        "grad_norm": float(m["grad_norm"]),
        "img_per_s": img_per_s,
        "tflops_per_device": tflops,
    }
    peak = metrics_lib.device_peak_tflops(jax.devices()[0])
    if peak:
        row["mfu"] = tflops / peak
    row.update(_bin_metrics("loss_bin", cfg.objective.loss_bins, m["bin_loss_sum"], m["bin_count"]))
    if not np.isfinite(row["loss"]):
        raise FloatingPointError(f"non-finite loss {row['loss']} at step {step}")
    writer.write(step, row)
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{img_per_s:.1f}", tflops=f"{tflops:.3f}")
    return row


def _validation(cfg: Config, prx: PRXConfig, graphdef, towers: Towers):
    v = cfg.validation
    if v.every == 0:
        return None
    H, W = v.height or cfg.data.resolution, v.width or cfg.data.resolution
    f = towers.spatial_factor
    spec = ValidationSpec(
        prompts=tuple(v.prompts) or default_prompts(),
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
    sampler = make_sampler(graphdef, spec, (prx.in_channels, H // f, W // f))
    return spec, sampler


def _validate(val, state, towers, frozen, cfg, statics, writer, step) -> dict:
    from prx_jax.data import make_pipeline

    spec, sampler = val
    out = Path(cfg.run_dir) / "samples" / f"step_{step:07d}.png"
    row, g = run_validation(sampler, state.ema, towers, frozen, spec, out)
    held_out = dataclasses.replace(cfg.data, seed=cfg.data.seed + 1_000_003, worker_count=0)
    it = make_pipeline(held_out)
    sums = counts = 0
    ev = jax.jit(functools.partial(eval_loss, statics=statics))
    for i in range(cfg.validation.loss_batches):
        b = next(it)
        ids, mask = towers.tokenizer.tokenize([str(c) for c in b["caption"]])
        batch = {"image": np.asarray(b["image"]), "text_ids": ids, "text_mask": mask}
        s, n = jax.device_get(ev(state.ema, batch, frozen, jax.random.key(10_000 + i)))
        sums, counts = sums + s, counts + n
    row.update(
        _bin_metrics(
            "val_loss", cfg.objective.loss_bins, np.atleast_1d(sums), np.atleast_1d(counts)
        )
    )
    writer.write(step, row)
    writer.image(step, "samples", g)
    print(f"step {step}: validation {row} -> {out}")
    return row
