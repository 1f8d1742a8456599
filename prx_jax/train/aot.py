"""Ahead-of-time fit check: lower and compile the train step for a mesh without the hardware.

``python -m prx_jax.train --config X --dry-run [--devices 8] [--device-memory-gb 80]`` builds the
abstract train state (``eval_shape``: nothing is allocated), lowers and compiles the jitted train
step with the run's shardings on N fake CPU devices, and prints per-device memory (parameters,
optimizer state, EMA, the compiler's temporaries: activations kept for the backward pass plus
workspace) and FLOPs, answering "does this preset fit on N x 80 GB?".

Caveats, printed with the report: the frozen text encoder and VAE are left out (the step is fed
precomputed prompt embeddings and, for latent models, latents), and the numbers come from XLA's
CPU compiler, whose fusion and buffer assignment differ from the GPU/TPU ones (a CPU compile may
also upcast bf16 temporaries), so treat them as an estimate within tens of percent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from prx_jax.config import Config
from prx_jax.models.presets import get_preset
from prx_jax.parallel.rules import make_mesh
from prx_jax.train.metrics import forward_flops_per_image
from prx_jax.train.optim import make_optimizer, muon_split_for
from prx_jax.train.state import TrainState, make_model, param_sharding_tree, state_shardings
from prx_jax.train.step import train_step

GB = 1024**3
FLUX_VAE_FACTOR = 8  # pixels per latent pixel of the Flux VAE (vae=pipeline)


def use_fake_cpu_devices(n: int) -> None:
    """``n`` CPU devices for the compile; must run before JAX initialises its backends."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)


def _shard_bytes(tree_abs, tree_sh) -> int:
    """Bytes one device holds of an abstract tree laid out with ``tree_sh``."""
    total = 0
    for a, s in zip(jax.tree.leaves(tree_abs), jax.tree.leaves(tree_sh), strict=True):
        total += math.prod(s.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize
    return total


def abstract_inputs(cfg: Config, prx, mesh):
    """(batch, frozen) ShapeDtypeStructs with shardings: precomputed text, latents or pixels."""
    B, R, T = cfg.data.global_batch_size, cfg.data.resolution, cfg.text.max_length
    E = prx.context_in_dim
    f = FLUX_VAE_FACTOR if cfg.vae == "pipeline" else 1
    batch_sh = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    rep = NamedSharding(mesh, PartitionSpec())

    def sds(shape, dtype, sh):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

    batch = {
        "image": sds((B, prx.in_channels, R // f, R // f), jnp.float32, batch_sh),
        "prompt_embeds": sds((B, T, E), jnp.dtype(cfg.text.compute_dtype), batch_sh),
        "prompt_mask": sds((B, T), jnp.bool_, batch_sh),
    }
    frozen = {
        "text": None,
        "vae": None,
        "null_txt": sds((1, T, E), jnp.float32, rep),
        "null_mask": sds((1, T), jnp.bool_, rep),
    }
    return batch, frozen, (R // f // prx.patch_size) ** 2


@dataclasses.dataclass
class StepParts:
    """The train step of a config without towers (precomputed text; latents or pixels)."""

    prx: object  # PRXConfig
    graphdef: nnx.GraphDef
    builder: object  # rngs -> PRXTransformer
    tx: object  # optax transformation
    step: object  # the jitted train_step (donates the state)
    abstract: TrainState  # ShapeDtypeStructs carrying the shardings
    state_sh: TrainState
    batch: dict  # abstract batch
    frozen: dict  # abstract frozen inputs
    tokens: int  # image tokens per sample


def step_parts(cfg: Config, mesh) -> StepParts:
    from prx_jax.train.loop import _statics  # the loop's own step configuration

    if cfg.data.global_batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(
            f"data.global_batch_size {cfg.data.global_batch_size} must divide by data x fsdp"
        )
    prx = get_preset(cfg.model.preset, **cfg.model.overrides())
    builder = functools.partial(make_model, cfg.model, prx)
    graphdef, abs_params = nnx.split(nnx.eval_shape(lambda: builder(nnx.Rngs(0))), nnx.Param)
    pure = abs_params.to_pure_dict()
    tx = make_optimizer(
        cfg.optim, pure, stacked_blocks=cfg.model.scan_blocks, muon_split=muon_split_for(mesh)
    )
    param_sh = param_sharding_tree(abs_params, mesh)

    def init(params):
        f32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), f32)

    abstract = jax.eval_shape(init, pure)
    state_sh = state_shardings(tx, abstract, param_sh, mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
    )
    no_towers = types.SimpleNamespace(text_graphdef=None, vae_graphdef=None)
    statics = _statics(cfg, graphdef, tx, no_towers)
    batch, frozen, tokens = abstract_inputs(cfg, prx, mesh)
    step = jax.jit(
        functools.partial(train_step, statics=statics),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    return StepParts(prx, graphdef, builder, tx, step, abstract, state_sh, batch, frozen, tokens)


def dry_run(cfg: Config, *, device_memory_gb: float | None = 80.0, devices=None) -> dict:
    """Compiles the train step of ``cfg`` for its mesh and returns the per-device report."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
    n_dev = mesh.devices.size
    parts = step_parts(cfg, mesh)
    prx, abstract, state_sh, tokens = parts.prx, parts.abstract, parts.state_sh, parts.tokens
    pure = abstract.params
    t0 = time.perf_counter()
    lowered = parts.step.lower(abstract, parts.batch, parts.frozen)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    params_b = _shard_bytes(abstract.params, state_sh.params)
    opt_b = _shard_bytes(abstract.opt_state, state_sh.opt_state)
    ema_b = _shard_bytes(abstract.ema, state_sh.ema)
    arg = int(getattr(mem, "argument_size_in_bytes", 0))
    out = int(getattr(mem, "output_size_in_bytes", 0))
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    peak = arg + out - alias + temp  # donated state aliases its output
    T = cfg.text.max_length
    analytic = (4.0 if cfg.model.remat else 3.0) * forward_flops_per_image(prx, tokens, T)
    report = {
        "preset": cfg.model.preset,
        "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(pure))),
        "devices": n_dev,
        "mesh": dict(mesh.shape),
        "global_batch": cfg.data.global_batch_size,
        "resolution": cfg.data.resolution,
        "image_tokens": tokens,
        "text_tokens": T,
        "compute_dtype": cfg.model.compute_dtype,
        "remat": cfg.model.remat,
        "remat_policy": cfg.model.remat_policy,
        "scan_blocks": cfg.model.scan_blocks,
        "optimizer": cfg.optim.name,
        "per_device_gb": {
            "params": params_b / GB,
            "opt_state": opt_b / GB,
            "ema": ema_b / GB,
            "batch_and_frozen": max(arg - params_b - opt_b - ema_b, 0) / GB,
            "temporaries": temp / GB,
            "peak_estimate": peak / GB,
        },
        "flops_per_device_compiled": float(cost.get("flops", 0.0)) if cost else 0.0,
        "flops_per_device_analytic": analytic * cfg.data.global_batch_size / n_dev,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
    }
    if device_memory_gb:
        report["device_memory_gb"] = device_memory_gb
        report["fits"] = peak / GB <= device_memory_gb
    return report


def format_report(r: dict) -> str:
    g = r["per_device_gb"]
    lines = [
        f"{r['preset']} ({r['params'] / 1e9:.2f}B params), {r['devices']} devices, mesh "
        f"{r['mesh']}, global batch {r['global_batch']} at {r['resolution']} px "
        f"({r['image_tokens']} image + {r['text_tokens']} text tokens), {r['compute_dtype']}, "
        f"{r['optimizer']}, remat={r['remat']} ({r['remat_policy']}), "
        f"scan_blocks={r['scan_blocks']}",
        "per device (GB):",
        *(f"  {k:<18}{v:10.2f}" for k, v in g.items()),
        f"FLOPs per device per step: compiled {r['flops_per_device_compiled']:.3e}, "
        f"analytic {r['flops_per_device_analytic']:.3e}"
        + (" (XLA counts the scanned block body once)" if r["scan_blocks"] else ""),
        f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s (CPU compiler)",
    ]
    if "fits" in r:
        verdict = "FITS" if r["fits"] else "DOES NOT FIT"
        lines.append(
            f"{verdict} in {r['device_memory_gb']:g} GB per device "
            f"(estimate {g['peak_estimate']:.1f} GB; frozen text encoder / VAE not included; "
            "CPU-compiler estimate)"
        )
    return "\n".join(lines)


def replace_model(cfg: Config, **model_fields) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_fields))
