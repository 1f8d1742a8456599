"""Filling an abstract NNX model from torch-layout tensors, strictly and one tensor at a time.

Shared by the frozen-tower converters (T5Gemma, VAE). The model comes from ``nnx.eval_shape``; every
parameter path is mapped to a torch state-dict key by ``torch_key`` (NNX attribute names mirror the
torch modules), all keys are matched *before* any tensor is read, then tensors are read, converted
and placed one at a time, so peak host memory is the placed model plus one tensor.

Layout rules: a 2-D ``kernel`` is a Linear ``(in, out)`` <- torch ``(out, in)``; a 4-D ``kernel``
is a channels-last convolution ``(kh, kw, in, out)`` <- torch ``(out, in, kh, kw)``; anything else
keeps its name and layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from prx_jax.convert.errors import TensorCheck
from prx_jax.convert.safetensors_io import TensorInfo, read_tensor
from prx_jax.parallel.rules import DEFAULT_RULES, spec_for

# torch layout -> prx_jax layout, by kernel rank.
_TO_JAX: dict[int, tuple[int, ...]] = {2: (1, 0), 4: (2, 3, 1, 0)}

KeyFn = Callable[[Sequence[str | int], tuple[int, ...]], tuple[str, tuple[int, ...] | None]]


def torch_key(
    path: Sequence[str | int], shape: tuple[int, ...]
) -> tuple[str, tuple[int, ...] | None]:
    """``(key, axes)``: the torch key of one NNX parameter and the transpose taking the torch
    tensor to our layout (None: same layout)."""
    *parents, leaf = (str(p) for p in path)
    if leaf == "kernel":
        if len(shape) not in _TO_JAX:
            raise ValueError(f"{'.'.join(map(str, path))}: a kernel of rank {len(shape)}")
        return ".".join([*parents, "weight"]), _TO_JAX[len(shape)]
    return ".".join([*parents, leaf]), None


def torch_shape(shape: tuple[int, ...], axes: tuple[int, ...] | None) -> tuple[int, ...]:
    """The torch shape whose transpose by ``axes`` is ``shape``."""
    if axes is None:
        return tuple(shape)
    out = [0] * len(shape)
    for i, a in enumerate(axes):
        out[a] = shape[i]
    return tuple(out)


def sharding_of(var: nnx.Variable, mesh: Mesh | None, rules=DEFAULT_RULES):
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    logical = var.get_metadata().get("logical_axes")
    return NamedSharding(mesh, spec_for(logical, var.shape, mesh, rules))


def plan_fill(
    state: nnx.State, tensors: Mapping[str, TensorInfo], source: str, key_fn: KeyFn = torch_key
) -> dict[tuple, tuple[TensorInfo, tuple[int, ...] | None]]:
    """Every target parameter to its source tensor; one error listing every problem."""
    plan, check = {}, TensorCheck(tensors)
    for path, var in nnx.to_flat_state(state):
        key, axes = key_fn(path, tuple(var.shape))
        info = check.take(key, torch_shape(tuple(var.shape), axes))
        if info is not None:
            plan[path] = (info, axes)
    check.raise_if_any(source)
    return plan


def fill_from_tensors(
    abstract: nnx.Module,
    tensors: Mapping[str, TensorInfo],
    *,
    source: str,
    param_dtype,
    key_fn: KeyFn = torch_key,
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
) -> nnx.Module:
    """``abstract`` (from ``nnx.eval_shape``) with every parameter read from ``tensors``."""
    graphdef, state = nnx.split(abstract)
    plan = plan_fill(state, tensors, source, key_fn)
    param_dtype = np.dtype(param_dtype)
    for path, var in nnx.to_flat_state(state):
        info, axes = plan[path]
        arr = read_tensor(info)
        if axes is not None:
            arr = arr.transpose(axes)
        arr = np.ascontiguousarray(arr.astype(param_dtype, copy=False))
        var.set_value(jax.device_put(arr, sharding_of(var, mesh, rules)))
        del arr
    return nnx.merge(graphdef, state)
