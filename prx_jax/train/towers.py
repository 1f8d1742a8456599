"""The frozen towers of a run: text encoder + tokenizer, and the VAE (latent models only).

``text.source="demo"`` builds a tiny T5Gemma-layout encoder with fixed random weights (seed 1234)
and a word tokenizer over the demo vocabulary: no download. Word identity is not enough: PRX gives
text tokens no positions, so which colour, size and place belong to which shape must be in the
features, and the demo encoder's local attention puts it there (``demo_text_config``).
``"pipeline"`` loads the pipeline folder's ``text_encoder/`` and ``tokenizer/`` (T5Gemma-2B for
Photoroom's checkpoints).
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
# The demo encoder's post-attention norms scale by this (Gemma's (1 + w), w = gain - 1), so each
# layer's attention adds about half as much as the sqrt(D)-scaled word embedding it sits on.
DEMO_CONTEXT_GAIN = 4.0


def demo_text_config(vocab_size: int) -> T5GemmaEncoderConfig:
    """Two sliding-window layers that see 4 words either side: a random encoder cannot learn which
    words belong together, so locality does it. "a red circle ... and a blue star" then gives
    "circle" a feature that carries "red" and not "blue" (a linear probe on the shape word of
    two-object captions reads its colour 100% / position 95%, against 78% / 64% with the earlier
    window 8 + full attention, which mixed the whole caption into every word)."""
    return T5GemmaEncoderConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=("sliding_attention", "sliding_attention"),
    )


def demo_text_encoder(vocab_size: int, dtype=None) -> T5GemmaTextEncoder:
    """The demo's frozen encoder: fixed random weights (``DEMO_TEXT_SEED``), post-attention norms
    at ``DEMO_CONTEXT_GAIN``. With unit norms the context is 1/8 of each feature and the shape
    word of "red circle" and "blue circle" has cosine 0.998."""
    encoder = T5GemmaTextEncoder(
        demo_text_config(vocab_size), rngs=nnx.Rngs(DEMO_TEXT_SEED), dtype=dtype
    )
    for layer in encoder.layers:
        w = layer.post_self_attn_layernorm.weight
        w[...] = jnp.full_like(w[...], DEMO_CONTEXT_GAIN - 1.0)
    return encoder


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
        encoder = demo_text_encoder(tokenizer.vocab_size, text_dtype)
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
