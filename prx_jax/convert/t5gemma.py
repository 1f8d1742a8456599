"""Loading a transformers T5Gemma encoder folder (a PRX pipeline's ``text_encoder/``) into JAX.

The config is parsed strictly: either the module config (model_type ``t5_gemma_module``, what
``T5GemmaEncoder.save_pretrained`` writes) or the composite ``t5gemma`` config the official PRX
pipelines ship (its ``encoder`` sub-config is used). Fields that change the encoder's maths are
read; a value we do not implement (another RoPE type, attention biases, another activation) is
refused by name, and so is any field we do not know. Weights stream tensor by tensor.
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
from prx_jax.convert.sources import diffusers_tensors
from prx_jax.convert.transformer import as_dtype
from prx_jax.models.text_encoder import T5GemmaEncoderConfig, T5GemmaTextEncoder
from prx_jax.parallel.rules import DEFAULT_RULES

# transformers' names for our config fields (read).
_READ = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "rms_norm_eps", "sliding_window",
    "attn_logit_softcapping", "layer_types", "pad_token_id",
)  # fmt: skip
# Fields whose value must be this (anything else changes the maths and is not implemented).
_REQUIRED = {
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_act": "gelu_pytorch_tanh",  # Gemma-2's legacy name, when present
    "attention_bias": False,
    "rope_scaling": None,
}
# Fields that do not change the encoder's forward (decoder-only, training-only, bookkeeping).
_IGNORED = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "_name_or_path",
    "bos_token_id", "eos_token_id", "tie_word_embeddings", "initializer_range", "use_cache",
    "max_position_embeddings", "final_logit_softcapping", "is_decoder", "is_encoder_decoder",
    "dropout_rate", "attention_dropout", "classifier_dropout_rate", "cross_attention_hidden_size",
    "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "attn_implementation", "_attn_implementation",
}  # fmt: skip
# Top-level fields of the composite config besides its sub-configs.
_COMPOSITE = _IGNORED | {"encoder", "decoder", "vocab_size", "pad_token_id"}


def parse_t5gemma_config(config: Mapping[str, Any]) -> T5GemmaEncoderConfig:
    """A ``T5GemmaEncoderConfig`` from a transformers ``config.json`` dict (module or composite)."""
    model_type = config.get("model_type")
    if model_type == "t5gemma":
        unknown = sorted(k for k in config if k not in _COMPOSITE)
        if unknown:
            raise ValueError(f"unsupported T5Gemma composite config field(s) {unknown}")
        if not isinstance(config.get("encoder"), Mapping):
            raise ValueError("composite T5Gemma config has no 'encoder' sub-config")
        config = {"model_type": "t5_gemma_module", **config["encoder"]}
        model_type = config.get("model_type")
    if model_type != "t5_gemma_module":
        raise ValueError(
            f"text encoder config model_type is {model_type!r}; prx_jax reads 't5gemma' "
            "(composite) or 't5_gemma_module' (one stack)"
        )
    known = set(_READ) | set(_REQUIRED) | _IGNORED | {"rope_parameters", "rope_theta"}
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise ValueError(f"unsupported T5Gemma config field(s) {unknown}")
    bad = [
        f"{k}={config[k]!r} (supported: {v!r})"
        for k, v in _REQUIRED.items()
        if k in config and config[k] != v
    ]
    rope = dict(config.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", "default")
    if rope_type != "default":
        bad.append(f"rope_parameters.rope_type={rope_type!r} (supported: 'default')")
    if rope:
        bad.append(f"rope_parameters fields {sorted(rope)} (supported: rope_type, rope_theta)")
    if bad:
        raise ValueError("unsupported T5Gemma config value(s): " + "; ".join(bad))
    kw = {k: config[k] for k in _READ if k in config}
    if kw.get("layer_types") is not None:
        kw["layer_types"] = tuple(kw["layer_types"])
    if "pad_token_id" in kw and kw["pad_token_id"] is None:
        kw.pop("pad_token_id")
    return T5GemmaEncoderConfig(**kw, rope_theta=float(theta))


def text_encoder_folder(path: str | Path) -> Path:
    """A ``text_encoder/`` folder, or a pipeline root holding one."""
    path = Path(path)
    if (path / "model_index.json").exists():
        path = path / "text_encoder"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (not a transformers text encoder folder)")
    return path


def abstract_text_encoder(cfg: T5GemmaEncoderConfig, param_dtype=jnp.float32, dtype=None):
    return nnx.eval_shape(
        lambda: T5GemmaTextEncoder(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype)
    )


def load_text_encoder(
    path: str | Path,
    dtype="float32",
    *,
    compute_dtype=None,
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
) -> T5GemmaTextEncoder:
    """The T5Gemma encoder of a ``text_encoder/`` folder (or pipeline root): ``model.safetensors``
    or its sharded ``model.safetensors.index.json``. ``dtype`` is the parameter dtype (fp32 by
    default), ``compute_dtype`` the activation dtype (None: the parameters')."""
    folder = text_encoder_folder(path)
    cfg = parse_t5gemma_config(json.loads((folder / "config.json").read_text()))
    param_dtype = as_dtype(dtype)
    compute = None if compute_dtype is None else as_dtype(compute_dtype)
    tensors = diffusers_tensors(folder, stem="model")
    return fill_from_tensors(
        abstract_text_encoder(cfg, param_dtype, compute),
        tensors,
        source=str(folder),
        param_dtype=param_dtype,
        mesh=mesh,
        rules=rules,
    )
