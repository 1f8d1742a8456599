"""Loading a diffusers ``vae/`` folder (``AutoencoderKL``, Flux layout) into JAX, strictly.

The config is checked field by field: block types other than ``DownEncoderBlock2D`` /
``UpDecoderBlock2D``, another activation, quant convs, or per-channel latent statistics are refused
by name, as is any unknown field and any other class (``AutoencoderDC`` is a later issue).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from prx_jax.convert.fill import fill_from_tensors
from prx_jax.convert.sources import DIFFUSERS_WEIGHTS, diffusers_tensors
from prx_jax.convert.transformer import as_dtype
from prx_jax.models.vae import AutoencoderKL, VAEConfig
from prx_jax.parallel.rules import DEFAULT_RULES

CLASS_NAME = "AutoencoderKL"
_READ = (
    "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
    "norm_num_groups", "mid_block_add_attention", "scaling_factor", "shift_factor",
)  # fmt: skip
_REQUIRED = {
    "act_fn": "silu",
    "latents_mean": None,
    "latents_std": None,
}
# No effect on the maths: tiling size, the torch dtype policy, bookkeeping.
_IGNORED = {"sample_size", "force_upcast", "_class_name", "_diffusers_version", "_name_or_path"}


def parse_vae_config(config: Mapping[str, Any]) -> VAEConfig:
    """A ``VAEConfig`` from a diffusers ``vae/config.json`` dict."""
    name = config.get("_class_name", CLASS_NAME)
    if name != CLASS_NAME:
        raise ValueError(f"vae class {name!r} is not supported; prx_jax reads {CLASS_NAME!r}")
    known = set(_READ) | set(_REQUIRED) | _IGNORED
    known |= {"down_block_types", "up_block_types", "use_quant_conv", "use_post_quant_conv"}
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise ValueError(f"unsupported AutoencoderKL config field(s) {unknown}")
    bad = [
        f"{k}={config[k]!r} (supported: {v!r})"
        for k, v in _REQUIRED.items()
        if k in config and config[k] != v
    ]
    for k in ("use_quant_conv", "use_post_quant_conv"):  # diffusers' default is True
        if config.get(k, True):
            bad.append(f"{k}={config.get(k, True)!r} (supported: False; Flux has no quant convs)")
    n = len(config.get("block_out_channels", (64,)))
    blocks = (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D"))
    for field, block in blocks:
        types = list(config.get(field, [block]))
        if types != [block] * n:
            bad.append(f"{field}={types!r} (supported: {n} x {block!r})")
    if bad:
        raise ValueError("unsupported AutoencoderKL config value(s): " + "; ".join(bad))
    kw = {k: config[k] for k in _READ if k in config}
    # diffusers' own defaults for fields a config leaves out
    kw.setdefault("block_out_channels", (64,))
    kw.setdefault("layers_per_block", 1)
    kw.setdefault("latent_channels", 4)
    kw.setdefault("scaling_factor", 0.18215)
    if kw.get("shift_factor") is None:
        kw["shift_factor"] = 0.0
    return VAEConfig(**kw)


def vae_folder(path: str | Path) -> Path:
    path = Path(path)
    if (path / "model_index.json").exists():
        path = path / "vae"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (not a diffusers vae folder)")
    return path


def abstract_vae(cfg: VAEConfig, param_dtype=jnp.float32, dtype=None) -> AutoencoderKL:
    return nnx.eval_shape(
        lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype)
    )


def load_vae(
    path: str | Path,
    dtype="float32",
    *,
    compute_dtype=None,
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
) -> AutoencoderKL:
    """The VAE of a diffusers ``vae/`` folder (or a pipeline root). ``dtype`` is the parameter
    dtype (fp32 by default), ``compute_dtype`` the activation dtype (None: the parameters')."""
    folder = vae_folder(path)
    cfg = parse_vae_config(json.loads((folder / "config.json").read_text()))
    param_dtype = as_dtype(dtype)
    compute = None if compute_dtype is None else as_dtype(compute_dtype)
    return fill_from_tensors(
        abstract_vae(cfg, param_dtype, compute),
        diffusers_tensors(folder, DIFFUSERS_WEIGHTS),
        source=str(folder),
        param_dtype=param_dtype,
        mesh=mesh,
        rules=rules,
    )
