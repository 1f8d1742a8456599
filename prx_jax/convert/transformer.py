"""Loading and saving the PRX denoiser: diffusers folders, research checkpoints, prx_jax folders.

Loading is strict and streaming: the abstract model comes from ``nnx.eval_shape``, every source key
is matched against it before any tensor is read, then tensors are read, converted and placed one
at a time (on the mesh when one is given), so peak host memory is the model plus one tensor.

The prx_jax weights folder is ``config.json`` (diffusers' transformer config), ``prx_jax.json``
(format marker and parameter dtype) and ``params/``, an Orbax checkpoint of the NNX parameter tree;
the trainer initialises from it and restores it onto any mesh.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from prx_jax.convert.errors import ConversionError, TensorCheck
from prx_jax.convert.prx_keys import (
    RESEARCH_PREFIX,
    diffusers_key,
    is_stacked,
    layer_paths,
    research_to_diffusers,
)
from prx_jax.convert.safetensors_io import (
    PlannedTensor,
    TensorInfo,
    read_index,
    read_tensor,
    write_sharded,
)
from prx_jax.convert.sources import (
    DIFFUSERS_WEIGHTS,
    PRX_JAX_MARKER,
    Source,
    diffusers_tensors,
    find_source,
)
from prx_jax.models.presets import PRESETS
from prx_jax.models.prx import PRXTransformer, stack_block_params
from prx_jax.models.prx_config import PRXConfig
from prx_jax.parallel.rules import DEFAULT_RULES, spec_for

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype) -> np.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not in {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    return np.dtype(dtype)


def abstract_model(cfg: PRXConfig, param_dtype=jnp.float32, **kw) -> PRXTransformer:
    return nnx.eval_shape(
        lambda: PRXTransformer(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, **kw)
    )


def _sharding(var: nnx.Variable, mesh: Mesh | None, rules) -> jax.sharding.Sharding:
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return NamedSharding(
        mesh, spec_for(var.get_metadata().get("logical_axes"), var.shape, mesh, rules)
    )


def match_tensors(
    state: nnx.State, tensors: Mapping[str, TensorInfo], source: str
) -> dict[tuple, list[tuple[TensorInfo, bool]]]:
    """Every target parameter to its source tensor(s) (one per layer for stacked blocks); raises
    one error listing every problem."""
    plan, check = {}, TensorCheck(tensors)
    for path, var in nnx.to_flat_state(state):
        stacked = is_stacked(path)
        shape = tuple(var.shape)[1:] if stacked else tuple(var.shape)
        entries = []
        for sub in layer_paths(path, var.shape[0] if stacked else 1):
            key, transpose = diffusers_key(sub)
            info = check.take(key, shape[::-1] if transpose else shape)
            if info is not None:
                entries.append((info, transpose))
        plan[path] = entries
    check.raise_if_any(source)
    return plan


def build_from_tensors(
    cfg: PRXConfig,
    tensors: Mapping[str, TensorInfo],
    *,
    source: str,
    dtype=jnp.float32,
    compute_dtype=None,
    attention_impl: str = "xla",
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
    scan_blocks: bool = False,
) -> PRXTransformer:
    param_dtype = as_dtype(dtype)
    graphdef, state = nnx.split(
        abstract_model(
            cfg, param_dtype, dtype=compute_dtype, attention_impl=attention_impl,
            scan_blocks=scan_blocks,
        )
    )  # fmt: skip
    plan = match_tensors(state, tensors, source)
    for path, var in nnx.to_flat_state(state):
        entries = plan[path]
        if is_stacked(path):  # one [depth, ...] tensor filled layer by layer
            arr = np.empty(var.shape, param_dtype)
            for i, (info, transpose) in enumerate(entries):
                layer = read_tensor(info)
                arr[i] = layer.T if transpose else layer
        else:
            ((info, transpose),) = entries
            arr = read_tensor(info)
            arr = (arr.T if transpose else arr).astype(param_dtype)
        var.set_value(jax.device_put(arr, _sharding(var, mesh, rules)))
        del arr
    return nnx.merge(graphdef, state)


def resolve_config(config: PRXConfig | str | Mapping | None, source: Source) -> PRXConfig:
    if isinstance(config, PRXConfig):
        return config
    if isinstance(config, str):
        if config in PRESETS:
            return PRESETS[config]
        return PRXConfig.from_diffusers(json.loads(Path(config).read_text()))
    if isinstance(config, Mapping):
        return PRXConfig.from_diffusers(config)
    found = source.config_dict()
    if found is None:
        raise ValueError(
            f"{source.path} is a research checkpoint without a config: pass config= a preset "
            f"({', '.join(sorted(PRESETS))}) or a config.json path"
        )
    return PRXConfig.from_diffusers(found)


def research_tensors(path: Path, prefix: str | None = None) -> dict[str, TensorInfo]:
    """A research checkpoint's denoiser tensors under diffusers names (prefix auto-detected)."""
    raw = read_index(path)
    if prefix is None:
        prefix = RESEARCH_PREFIX if any(k.startswith(RESEARCH_PREFIX) for k in raw) else ""
    out = {}
    for k, info in raw.items():
        if k.startswith(prefix):
            out[research_to_diffusers(k[len(prefix) :])] = info
    if not out:
        raise ConversionError(f"{path}: no tensor under the prefix {prefix!r}")
    return out


def load_transformer(
    path: str | Path,
    dtype="float32",
    *,
    compute_dtype=None,
    attention_impl: str = "xla",
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
    config: PRXConfig | str | Mapping | None = None,
    research_prefix: str | None = None,
    scan_blocks: bool = False,
) -> PRXTransformer:
    """The PRX denoiser from a diffusers ``transformer/`` folder, a pipeline root, a prx_jax
    weights folder, or a research checkpoint file (then ``config=`` names a preset or a JSON).

    ``dtype`` is the parameter dtype (fp32 master weights by default; bf16/fp16 sources upcast
    exactly); ``compute_dtype`` the activation dtype (None: the input's). ``scan_blocks`` builds
    the stacked-blocks model (the files are the same either way)."""
    src = find_source(path)
    cfg = resolve_config(config, src)
    kw = dict(
        dtype=dtype, compute_dtype=compute_dtype, attention_impl=attention_impl,
        scan_blocks=scan_blocks,
    )  # fmt: skip
    if src.kind == "prx_jax":
        return _load_prx_jax(src.path, cfg, mesh=mesh, rules=rules, **kw)
    if src.kind == "diffusers":
        tensors = diffusers_tensors(src.path)
    else:
        tensors = research_tensors(src.path, research_prefix)
    return build_from_tensors(cfg, tensors, source=str(src.path), mesh=mesh, rules=rules, **kw)


def _load_prx_jax(
    folder: Path, cfg: PRXConfig, *, dtype, compute_dtype, attention_impl, mesh, rules,
    scan_blocks=False,
):  # fmt: skip
    import orbax.checkpoint as ocp

    if scan_blocks:  # the folder holds per-block params: load them, then stack on device
        per_block = _load_prx_jax(
            folder, cfg, dtype=dtype, compute_dtype=compute_dtype,
            attention_impl=attention_impl, mesh=mesh, rules=rules,
        )  # fmt: skip
        return _restack(per_block, as_dtype(dtype), mesh, rules)
    param_dtype = as_dtype(dtype)
    graphdef, state = nnx.split(
        abstract_model(cfg, param_dtype, dtype=compute_dtype, attention_impl=attention_impl)
    )
    ckpt = ocp.StandardCheckpointer()
    params_dir = (folder / "params").absolute()
    meta = ckpt.metadata(params_dir)
    meta = getattr(meta, "item_metadata", meta)
    have = {
        tuple(str(k.key) for k in p): tuple(m.shape)
        for p, m in jax.tree_util.tree_leaves_with_path(meta)
    }
    want = {tuple(str(k) for k in p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}
    problems = {
        "missing": sorted(".".join(k) for k in want.keys() - have.keys()),
        "unexpected": sorted(".".join(k) for k in have.keys() - want.keys()),
        "mis-shaped": sorted(
            f"{'.'.join(k)}: checkpoint {have[k]}, model needs {want[k]}"
            for k in want.keys() & have.keys()
            if have[k] != want[k]
        ),
    }
    if any(problems.values()):
        raise ConversionError.from_problems(str(folder), problems)
    target = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, param_dtype, sharding=_sharding(v, mesh, rules)),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    ).to_pure_dict()
    restored = ckpt.restore(params_dir, target)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)


def _restack(model: PRXTransformer, param_dtype, mesh: Mesh | None, rules) -> PRXTransformer:
    """The scan_blocks model with ``model``'s (per-block) weights."""
    graphdef, state = nnx.split(
        abstract_model(
            model.config, param_dtype, dtype=model.dtype,
            attention_impl=model.attention_impl, scan_blocks=True,
        )
    )  # fmt: skip
    params = stack_block_params(nnx.state(model, nnx.Param).to_pure_dict())
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        tree = params
        for p in path:
            tree = tree[p]
        var.set_value(jax.device_put(tree, _sharding(var, mesh, rules)))
    return nnx.merge(graphdef, state)


def _per_block_params(model: PRXTransformer) -> dict:
    """The parameter tree in the per-block layout (``blocks.<i>...``), whatever the model's."""
    params = nnx.state(model, nnx.Param).to_pure_dict()
    if getattr(model, "scan_blocks", False):
        stacked = params.pop("blocks")
        depth = model.config.depth
        params["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(depth)}
    return params


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.39.0"  # the first release with bottleneck_size / resolution_embeds


def write_config(cfg: PRXConfig, folder: Path) -> None:
    d = cfg.to_diffusers()
    d = {"_class_name": d.pop("_class_name"), "_diffusers_version": _diffusers_version(), **d}
    (folder / "config.json").write_text(json.dumps(d, indent=2) + "\n")


def save_transformer(
    model: PRXTransformer,
    out_dir: str | Path,
    format: str = "diffusers",
    dtype=None,
    max_shard_size: int | str = "10GB",
) -> Path:
    """Writes ``model`` as a diffusers ``transformer/`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``, sharded above ``max_shard_size``) or as a prx_jax
    weights folder. ``dtype`` None keeps the parameters' dtype. Tensor by tensor."""
    out = Path(out_dir)
    if format not in ("diffusers", "prx_jax"):
        raise ValueError(f"format {format!r} must be 'diffusers' or 'prx_jax'")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    if format == "prx_jax":
        import orbax.checkpoint as ocp

        target = None if dtype is None else as_dtype(dtype)
        params = _per_block_params(model)
        if target is not None:
            params = jax.tree.map(lambda a: a.astype(target), params)
        # Bounded staging and writes: at 1.17B this peaks at 1.25x the model instead of 1.6x
        # (Orbax's defaults copy every array to host at once).
        handler = ocp.PyTreeCheckpointHandler(
            save_concurrent_gb=1, save_device_host_concurrent_gb=1
        )
        with ocp.Checkpointer(handler) as ckpt:
            ckpt.save((out / "params").absolute(), args=ocp.args.PyTreeSave(params))
        pdtype = str(target or flat[0][1].get_value().dtype) if flat else "float32"
        (out / PRX_JAX_MARKER).write_text(
            json.dumps({"format": "prx_jax.transformer", "version": 1, "param_dtype": pdtype})
        )
        write_config(model.config, out)
        return out

    planned = []
    for path, var in flat:
        stacked = is_stacked(path)
        for i, sub in enumerate(layer_paths(path, var.shape[0] if stacked else 1)):
            key, transpose = diffusers_key(sub)
            shape = tuple(var.shape)[1:] if stacked else tuple(var.shape)
            shape = shape[::-1] if transpose else shape
            tdtype = np.dtype(var.get_value().dtype) if dtype is None else as_dtype(dtype)

            def produce(var=var, transpose=transpose, tdtype=tdtype, i=i if stacked else None):
                value = var.get_value() if i is None else var.get_value()[i]
                arr = np.asarray(jax.device_get(value))
                return (arr.T if transpose else arr).astype(tdtype)

            planned.append(PlannedTensor(key, shape, tdtype, produce))
    planned.sort(key=lambda t: t.name)
    write_sharded(out, DIFFUSERS_WEIGHTS, planned, max_shard_size=max_shard_size)
    write_config(model.config, out)
    return out
