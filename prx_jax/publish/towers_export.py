"""Writing the JAX frozen towers as transformers folders: the T5Gemma encoder (safetensors + the
composite ``t5gemma`` config PRXPipeline's loader needs) and the demo word tokenizer (a
``tokenizers`` WordLevel ``tokenizer.json`` that ``AutoTokenizer`` loads).

The tensor layout is the inverse of ``prx_jax.convert.fill``'s (same key function), so a written
folder loads back through ``load_text_encoder`` bit-exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from prx_jax.convert.fill import torch_key, torch_shape
from prx_jax.convert.safetensors_io import PlannedTensor, write_sharded
from prx_jax.models.text_encoder import T5GemmaEncoderConfig


def save_module_tensors(module: nnx.Module, folder: Path, stem: str, dtype=None) -> list[Path]:
    """Every ``nnx.Param`` of ``module`` under its torch key and layout, tensor by tensor."""
    planned = []
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        key, axes = torch_key(path, tuple(var.shape))
        inverse = None if axes is None else tuple(int(i) for i in np.argsort(axes))
        tdtype = np.dtype(dtype or var.get_value().dtype)

        def produce(var=var, inverse=inverse, tdtype=tdtype):
            arr = np.asarray(jax.device_get(var.get_value()))
            return (arr if inverse is None else arr.transpose(inverse)).astype(tdtype)

        planned.append(PlannedTensor(key, torch_shape(tuple(var.shape), axes), tdtype, produce))
    planned.sort(key=lambda t: t.name)
    return write_sharded(folder, stem, planned)


def t5gemma_module_config(cfg: T5GemmaEncoderConfig) -> dict:
    """transformers' ``T5GemmaModuleConfig`` fields for ``cfg`` (what the encoder computes)."""
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        rms_norm_eps=cfg.rms_norm_eps, sliding_window=cfg.sliding_window,
        attn_logit_softcapping=cfg.attn_logit_softcapping, layer_types=list(cfg.layer_types),
        pad_token_id=cfg.pad_token_id, hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )  # fmt: skip


def composite_config(module_config: dict) -> dict:
    """The composite ``T5GemmaConfig`` dict (encoder = decoder = ``module_config``), as
    Photoroom's converter writes it; diffusers' ``prx.T5GemmaEncoder`` reads its ``encoder``."""
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig

    kw = {k: v for k, v in module_config.items() if k not in ("model_type", "architectures")}
    kw = {k: v for k, v in kw.items() if not k.startswith("_") and k != "transformers_version"}
    return T5GemmaConfig(encoder=dict(kw), decoder=dict(kw)).to_dict()


def save_text_encoder(encoder, folder: Path, dtype=None) -> Path:
    """A JAX ``T5GemmaTextEncoder`` as a transformers ``text_encoder/`` folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_module_tensors(encoder, folder, "model", dtype)
    config = composite_config(t5gemma_module_config(encoder.config))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def save_word_tokenizer(tokenizer, folder: Path) -> Path:
    """The demo ``WordTokenizer`` as a ``tokenizers`` WordLevel tokenizer: lower-case, words
    ``[a-z0-9]+``, ``<bos>`` first, right padding with ``<pad>`` (id 0), ``<unk>`` otherwise."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(dict(tokenizer.vocab), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[a-z0-9]+"), behavior="removed", invert=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
        eos_token="<eos>", model_max_length=tokenizer.max_length, padding_side="right",
    )  # fmt: skip
    fast.save_pretrained(str(folder))
    return folder
