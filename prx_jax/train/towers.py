"""The frozen towers of a run: text encoder + tokenizer, and the VAE (latent models only).

``text.source="demo"`` builds a tiny T5Gemma-layout encoder with fixed random weights (seed 1234)
and a word tokenizer over the demo vocabulary: no download, and frozen random features still carry
every word's identity, which is all the demo task needs. ``"pipeline"`` loads the pipeline
folder's ``text_encoder/`` and ``tokenizer/`` (T5Gemma-2B for Photoroom's checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from prx_jax.models.text_encoder import T5GemmaEncoderConfig, T5GemmaTextEncoder
from prx_jax.parallel.rules import shard_module

DEMO_TEXT_SEED = 1234


def demo_text_config(vocab_size: int) -> T5GemmaEncoderConfig:
    return T5GemmaEncoderConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
    )


@dataclasses.dataclass
class Towers:
    tokenizer: Any  # .tokenize(prompts) -> (ids [B, T] int32, mask [B, T] bool)
    text_graphdef: nnx.GraphDef
    text_params: Any
    text_width: int
    vae_graphdef: nnx.GraphDef | None = None
    vae_params: Any = None
    latent_channels: int = 3  # 3: pixel space
    spatial_factor: int = 1  # image pixels per latent pixel
    vae_module: Any = None  # for decoding validation samples

    def encode(self, prompts: list[str]) -> tuple[jax.Array, jax.Array]:
        ids, mask = self.tokenizer.tokenize(list(prompts))
        return _encode(self.text_graphdef, self.text_params, jnp.asarray(ids), jnp.asarray(mask))

    def frozen(self) -> dict:
        """What the train step needs of the towers, null (empty) prompt included."""
        null_txt, null_mask = self.encode([""])
        return {
            "text": self.text_params,
            "vae": self.vae_params,
            "null_txt": null_txt.astype(jnp.float32),
            "null_mask": null_mask,
        }


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef, params, ids, mask):
    return nnx.merge(graphdef, params)(ids, mask), mask


def build_towers(cfg, mesh: Mesh) -> Towers:
    text_dtype = jnp.dtype(cfg.text.compute_dtype)
    if cfg.text.source == "demo":
        from prx_jax.data.demo import VOCABULARY
        from prx_jax.data.word_tokenizer import WordTokenizer

        tokenizer = WordTokenizer(VOCABULARY, cfg.text.max_length)
        tcfg = demo_text_config(tokenizer.vocab_size)
        encoder = T5GemmaTextEncoder(tcfg, rngs=nnx.Rngs(DEMO_TEXT_SEED), dtype=text_dtype)
        shard_module(encoder, mesh)
    else:
        from prx_jax.convert.t5gemma import load_text_encoder
        from prx_jax.text import PromptTokenizer

        root = Path(cfg.text.path or cfg.init_from or "")
        if not (root / "model_index.json").exists():
            raise FileNotFoundError(f"text.source=pipeline needs a pipeline folder, got {root}")
        tokenizer = PromptTokenizer.from_folder(root / "tokenizer", cfg.text.max_length)
        encoder = load_text_encoder(root / "text_encoder", compute_dtype=text_dtype, mesh=mesh)
    graphdef, params = nnx.split(encoder)
    towers = Towers(tokenizer, graphdef, params, encoder.config.hidden_size)
    if cfg.vae == "pipeline":
        from prx_jax.convert.vae import load_vae

        root = Path(cfg.text.path or cfg.init_from or "")
        vae = load_vae(root / "vae", compute_dtype=jnp.dtype(cfg.model.compute_dtype), mesh=mesh)
        towers.vae_graphdef, towers.vae_params = nnx.split(vae)
        towers.latent_channels = vae.latent_channels
        towers.spatial_factor = vae.spatial_factor
        towers.vae_module = vae
    return towers


def decode(towers: Towers, latents: jax.Array) -> np.ndarray:
    """Latents (or pixels) -> float images [B, 3, H, W] in [-1, 1] on the host."""
    if towers.vae_module is None:
        return np.asarray(latents, np.float32)
    return np.asarray(jax.jit(towers.vae_module.decode)(latents), np.float32)
