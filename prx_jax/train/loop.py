"""The training loop: build everything from a ``Config``, then step, log, validate, checkpoint.

``train(cfg)`` is what ``python -m prx_jax.train`` calls; tests call it too. Metrics are fetched one
step late (no host sync on the hot path), which also keeps CPU collectives from piling up.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from prx_jax.config import Config, save_config
from prx_jax.host_memory import keep_freed_memory
from prx_jax.models.presets import get_preset
from prx_jax.models.prx_config import PRXConfig
from prx_jax.parallel.distributed import maybe_initialize
from prx_jax.parallel.rules import make_mesh
from prx_jax.train import metrics as metrics_lib
from prx_jax.train.checkpoint import Checkpointer, CheckpointError, abstract_like, check_writable
from prx_jax.train.optim import lr_schedule, make_optimizer, muon_split_for
from prx_jax.train.preemption import StopSignal
from prx_jax.train.prefetch import Prefetcher
from prx_jax.train.state import TrainState, init_train_state, make_model
from prx_jax.train.step import StepStatics, train_step
from prx_jax.train.towers import Towers, build_towers
from prx_jax.train.validate import make_validation, run_validation_step


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

    model = load_transformer(
        cfg.init_from, dtype=cfg.model.param_dtype, mesh=mesh, scan_blocks=cfg.model.scan_blocks
    )
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
        skip_nonfinite=cfg.train.on_nonfinite == "skip",
        ema_decay=cfg.ema.decay,
        ema_every=cfg.ema.every,
        text_graphdef=towers.text_graphdef,
        vae_graphdef=towers.vae_graphdef,
    )


def _device_batch(batch: dict, towers: Towers, sharding) -> dict:
    ids, mask = towers.tokenizer.tokenize([str(c) for c in batch["caption"]])
    put = functools.partial(jax.make_array_from_process_local_data, sharding)
    return {"image": batch["image"], "text_ids": put(ids), "text_mask": put(mask)}


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
    eval_fn: Callable | None = None  # the jitted held-out loss, built at first validation

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
    tx = make_optimizer(
        cfg.optim,
        abstract_params.to_pure_dict(),
        stacked_blocks=cfg.model.scan_blocks,
        muon_split=muon_split_for(mesh),
    )
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


def describe_mesh(cfg: Config, mesh: jax.sharding.Mesh) -> str:
    """One line: the mesh axes, the devices, and why ``mesh.cpu_devices`` did not apply if so."""
    platform = jax.devices()[0].platform
    line = (
        f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} tensor={mesh.shape['tensor']}"
        f" over {mesh.size} of {jax.device_count()} {platform} devices"
        f" ({jax.process_count()} process{'es' if jax.process_count() > 1 else ''})"
    )
    want = cfg.mesh.cpu_devices
    if want and platform == "cpu" and jax.local_device_count() != want:
        line += (
            f"; mesh.cpu_devices={want} not applied: python -m prx_jax.train sets it before JAX "
            "starts, and a --xla_force_host_platform_device_count in XLA_FLAGS wins"
        )
    return line


def train(cfg: Config) -> dict:
    """Runs (or resumes) the training described by ``cfg``; returns the last logged metrics.

    Stops cleanly on SIGTERM/SIGINT (saves, waits for the save, returns); a non-finite loss stops
    the run naming the step (``train.on_nonfinite=skip`` skips such steps instead), and no
    checkpoint is ever written from a state that saw one."""
    from prx_jax.data import make_pipeline

    maybe_initialize()
    if cfg.mesh.cpu_keep_memory and jax.default_backend() == "cpu":
        keep_freed_memory()
    run_dir = Path(cfg.run_dir)
    check_writable(run_dir)
    ckpt = Checkpointer(
        run_dir, keep=cfg.checkpoint.keep, keep_period=cfg.checkpoint.keep_period
    )  # fails early when the folder is not writable
    if jax.process_index() == 0:
        save_config(cfg, run_dir / "config.yaml")
    run = setup(cfg)
    if jax.process_index() == 0:
        print(describe_mesh(cfg, run.mesh))
    state = run.state
    data_iter = make_pipeline(cfg.data, batch_sharding=run.batch_sharding)
    state = _resume(cfg, ckpt, state, run.state_shardings, data_iter)
    batches = Prefetcher(data_iter, put=run.device_batch, size=2)  # H2D overlaps the step
    writer = metrics_lib.MetricsWriter(
        run_dir, tensorboard=cfg.logging.tensorboard, wandb_project=cfg.logging.wandb_project,
        config=cfg,
    )  # fmt: skip
    val = make_validation(cfg, run.prx, run.graphdef, run.towers)
    first, steps = int(state.step), cfg.train.steps
    logger = metrics_lib.StepLogger(cfg, writer, run.prx, run.towers, first, steps)
    stop = StopSignal()
    last: dict = {}
    try:
        for step in range(first, steps):
            batch = next(batches)
            state, m = run.step_fn(state, batch, run.frozen)
            last = logger.after_step(step + 1, m, batch) or last
            done = step + 1 == steps
            preempted = stop.should_stop(step + 1)
            if val is not None and ((step + 1) % cfg.validation.every == 0 or done):
                last.update(run_validation_step(val, state, run, writer, step + 1))
            if (step + 1) % cfg.checkpoint.every == 0 or done or preempted:
                logger.check_finite(step + 1, m)  # never save a state that saw a NaN
                ckpt.save(step + 1, state, batches)
            if preempted:
                ckpt.wait()
                print(
                    f"{stop.requested}: saved step {step + 1} to {ckpt.directory}; exiting. "
                    "Rerun the same command to resume."
                )
                break
        last = logger.flush() or last
    finally:
        stop.close()
        logger.close()
        writer.close()
        ckpt.close()
    return last


def _resume(cfg: Config, ckpt: Checkpointer, state, shardings, data_iter):
    abstract = abstract_like(state, shardings)
    if cfg.resume == "never":
        if ckpt.steps():
            raise CheckpointError(
                f"resume=never but {ckpt.directory} holds checkpoints {ckpt.steps()}; choose "
                "another run_dir or resume=auto"
            )
        return state
    if cfg.resume != "auto":
        src = Checkpointer(Path(cfg.resume), keep=1_000_000) if Path(cfg.resume).is_dir() else None
        step = src.steps()[-1] if src and src.steps() else None
        if step is None:
            raise CheckpointError(f"resume={cfg.resume}: no checkpoint found there")
        restored = src.restore(step, abstract, data_iter)
        print(f"resumed from {src.directory / str(step)}")
        return restored
    restored, step = ckpt.restore_latest(abstract, data_iter)
    if restored is None:
        return state
    print(f"resumed from {ckpt.directory / str(step)} (step {int(restored.step)})")
    return restored
