"""Logical axis names -> mesh axes.

Every parameter names its dimensions with logical axes (``("embed", "mlp")``); this one table maps
them onto the mesh axes ``data``, ``fsdp`` and ``tensor``. A dimension whose size does not divide by
the mesh axes it maps to is replicated instead (tiny test models, odd dims), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated)
DEFAULT_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",  # the model width D: FSDP shards every large matrix along it
    "mlp": "tensor",  # MLP hidden
    "heads": "tensor",  # fused heads x head_dim projections (q, k, v, attention output)
    "kv_heads": "tensor",
    "mod": "tensor",  # adaLN modulation outputs (2D or 6D)
    "vocab": "tensor",
    "embed_out": None,  # the second D of square D x D matrices (one mesh axis per spec)
    "context": None,  # text-encoder width feeding txt_in
    "patch": None,  # C * p * p
    "bottleneck": None,
    "freq": None,  # sinusoidal embedding width (256)
    "head_dim": None,  # per-head norms
    "norm": None,  # full-width norm scales (the text encoder's RMSNorms)
    "conv_in": None,  # VAE convolution channels: small enough to replicate
    "conv_out": None,
    "conv_k": None,
    "layers": None,  # the leading axis of stacked (scanned) blocks: never sharded
}


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices``; one size may be -1 for "the rest"."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide by data*fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if -1 not in (data, fsdp, tensor) and int(np.prod(sizes)) < len(devices):
        devices = devices[: int(np.prod(sizes))]  # an explicit smaller mesh uses the first devices
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{int(np.prod(sizes))} devices, {len(devices)} are available"
        )
    # Auto axes: jax.make_mesh defaults to Explicit, which rejects FSDP contractions.
    return Mesh(
        np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
    )


def spec_for(
    logical: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, str | tuple[str, ...] | None] = DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec of one array; indivisible dims and reused mesh axes are replicated."""
    if not logical:
        return PartitionSpec()
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    out = []
    for name, size in zip(logical, shape, strict=True):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in used)
        n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size % n:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def param_shardings(state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    """NamedShardings for every Variable of an (abstract or concrete) NNX state."""

    def one(v):
        logical = v.get_metadata().get("logical_axes")
        return NamedSharding(mesh, spec_for(logical, v.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Places every variable of ``module`` on ``mesh`` following the rules (in place)."""
    state = nnx.state(module)
    shardings = param_shardings(state, mesh, rules)
    nnx.update(module, jax.device_put(state, shardings))
    return module
