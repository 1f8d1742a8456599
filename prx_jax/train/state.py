"""The train state (step, fp32 master parameters, optimizer state, EMA) and its shardings.

Parameters are a plain nested dict of arrays (``nnx.State.to_pure_dict()``), merged into the NNX
graph inside the step. Every sharding derives from the logical axes of the abstract model
(``eval_shape``); optimizer-state shardings come from ``optax.tree_map_params``; initialisation runs
under ``jit(out_shardings=...)`` so full weights never sit on one device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prx_jax.models.prx import PRXTransformer
from prx_jax.parallel.rules import DEFAULT_RULES, spec_for


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nested dict of fp32 master weights
    opt_state: Any
    ema: Any  # nested dict, same structure and shardings as params


def nested_from_flat(flat: list[tuple[tuple, Any]]) -> dict:
    out: dict = {}
    for path, value in flat:
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def param_sharding_tree(abstract_params: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> dict:
    """A nested dict of NamedShardings, following each Variable's logical axes."""
    flat = [
        (
            path,
            NamedSharding(
                mesh, spec_for(v.get_metadata().get("logical_axes"), v.shape, mesh, rules)
            ),
        )
        for path, v in nnx.to_flat_state(abstract_params)
    ]
    return nested_from_flat(flat)


def state_shardings(
    tx: optax.GradientTransformation, abstract: TrainState, param_sh: dict, mesh: Mesh
) -> TrainState:
    replicated = NamedSharding(mesh, PartitionSpec())
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 (Muon/Adam partitions)
    opt_sh = optax.tree_map_params(
        tx,
        lambda p, s: p if masked(p) else s,
        abstract.opt_state,
        param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=masked,
    )
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, ema=param_sh)


def make_model(model_cfg, prx_cfg, rngs: nnx.Rngs) -> PRXTransformer:
    return PRXTransformer(
        prx_cfg,
        rngs=rngs,
        param_dtype=jnp.dtype(model_cfg.param_dtype),
        dtype=jnp.dtype(model_cfg.compute_dtype),
        attention_impl=model_cfg.attention_impl,
        remat=model_cfg.remat,
        remat_policy=model_cfg.remat_policy,
        scan_blocks=model_cfg.scan_blocks,
    )


def zero_output_layers(params: dict) -> dict:
    """PRX's from-scratch init: the final projection and every adaLN modulation start at zero,
    so the untrained model outputs zeros and each block starts as the identity."""

    def zero(path, x):
        names = [getattr(k, "key", k) for k in path]
        if "final_layer" in names or "modulation" in names:
            return jnp.zeros_like(x)
        return x

    return jax.tree_util.tree_map_with_path(zero, params)


def init_train_state(
    graphdef: nnx.GraphDef,
    model_builder,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    seed: int,
    initial_params: dict | None = None,
) -> tuple[TrainState, TrainState]:
    """``(state, shardings)``. ``initial_params`` (already placed, e.g. from ``init_from``) replace
    the random init; otherwise the init runs sharded under jit."""
    abstract_model = nnx.eval_shape(lambda: model_builder(nnx.Rngs(0)))
    param_abs = nnx.state(abstract_model, nnx.Param)
    param_sh = param_sharding_tree(param_abs, mesh)

    def init(key, given):
        if given is None:
            params = nnx.state(model_builder(nnx.Rngs(key)), nnx.Param).to_pure_dict()
            params = zero_output_layers(params)
        else:
            params = given
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema=jax.tree.map(lambda p: p.astype(jnp.float32), params),
        )

    key = jax.random.key(seed)
    abstract = jax.eval_shape(init, key, initial_params)
    shardings = state_shardings(tx, abstract, param_sh, mesh)
    state = jax.jit(init, out_shardings=shardings)(key, initial_params)
    return state, shardings
