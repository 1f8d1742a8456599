"""A whole diffusers PRX pipeline folder in JAX: ``pipe = prx_jax.load_pipeline(path)``.

``model_index.json`` names the components; each is loaded by its strict converter (transformer,
T5Gemma text encoder, tokenizer, Flux VAE) or read as a config (scheduler). A component or class
prx_jax does not implement (DC-AE, the Qwen3-VL text tower, another scheduler) is refused with an
error naming the component and its class; pixel models without a VAE get the identity.

Model calls are jitted once per method over the split parameter state (``nnx.split`` /
``nnx.merge`` inside a module-level ``jax.jit``), so calling them in a loop never retraces for the
same shapes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from prx_jax.convert.t5gemma import load_text_encoder
from prx_jax.convert.transformer import load_transformer
from prx_jax.convert.vae import load_vae
from prx_jax.models.prx import PRXTransformer
from prx_jax.models.text_encoder import T5GemmaTextEncoder
from prx_jax.models.vae import AutoencoderKL, IdentityVAE
from prx_jax.parallel.rules import DEFAULT_RULES
from prx_jax.text import PromptTokenizer

PIPELINE_CLASSES = ("PRXPipeline", "PRXPixelPipeline")
# component -> accepted [library, class] pairs (the first library listed is diffusers' own name).
SUPPORTED: dict[str, set[tuple[str, str]]] = {
    "transformer": {("diffusers", "PRXTransformer2DModel")},
    "text_encoder": {("prx", "T5GemmaEncoder"), ("transformers", "T5GemmaEncoder")},
    "tokenizer": {
        ("transformers", c)
        for c in ("GemmaTokenizerFast", "GemmaTokenizer", "AutoTokenizer", "T5TokenizerFast")
    }
    # a tokenizers WordLevel tokenizer.json: the demo text tower as prx_jax exports it
    | {("transformers", "PreTrainedTokenizerFast")},
    "vae": {("diffusers", "AutoencoderKL")},
    "scheduler": {("diffusers", "FlowMatchEulerDiscreteScheduler")},
}
REQUIRED = ("transformer", "text_encoder", "tokenizer", "scheduler")
_LATER = {
    "AutoencoderDC": "DC-AE is not implemented in prx_jax yet",
    "Qwen3VLTextModel": "the Qwen3-VL text tower is not implemented in prx_jax yet",
}


def read_model_index(root: Path) -> tuple[dict[str, tuple[str, str] | None], dict[str, Any]]:
    """``(components, pipeline config)``; refuses every unsupported component at once."""
    index = json.loads((root / "model_index.json").read_text())
    name = index.get("_class_name")
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{root}: pipeline class {name!r} is not one of {PIPELINE_CLASSES}")
    components, config, problems = {}, {}, []
    for key, value in index.items():
        is_entry = isinstance(value, list) and len(value) == 2
        if key.startswith("_") or not is_entry:
            config[key] = value
            continue
        lib, cls = value
        if lib is None and cls is None:
            components[key] = None
            continue
        if key not in SUPPORTED:
            problems.append(f"unknown component {key!r} ({lib}.{cls})")
        elif (lib, cls) not in SUPPORTED[key]:
            why = _LATER.get(cls, f"supported: {sorted(c for _, c in SUPPORTED[key])}")
            problems.append(f"component {key!r} has class {cls!r} from {lib!r}: {why}")
        components[key] = (lib, cls)
    problems += [f"component {k!r} is missing" for k in REQUIRED if components.get(k) is None]
    if problems:
        raise ValueError(f"cannot load the pipeline {root}:\n  " + "\n  ".join(problems))
    return components, config


@partial(jax.jit, static_argnums=0)
def _encode_text(graphdef, state, ids_BxL, mask_BxL):
    return nnx.merge(graphdef, state)(ids_BxL, mask_BxL)


@partial(jax.jit, static_argnums=0)
def _vae_encode(graphdef, state, images_BxCxHxW, key):
    return nnx.merge(graphdef, state).encode(images_BxCxHxW, key)


@partial(jax.jit, static_argnums=0)
def _vae_decode(graphdef, state, latents_BxZxhxw):
    return nnx.merge(graphdef, state).decode(latents_BxZxhxw)


@dataclasses.dataclass
class Pipeline:
    """The frozen towers and the denoiser of one PRX pipeline folder, as JAX objects."""

    transformer: PRXTransformer  # the denoiser
    text_encoder: T5GemmaTextEncoder
    tokenizer: PromptTokenizer
    vae: AutoencoderKL | IdentityVAE
    scheduler_config: dict[str, Any]  # scheduler/scheduler_config.json
    model_index: dict[str, Any]  # the pipeline config (default_sample_size, ...) and class
    path: Path

    def __post_init__(self):
        self._text = nnx.split(self.text_encoder)
        self._vae = None if isinstance(self.vae, IdentityVAE) else nnx.split(self.vae)

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.spatial_factor

    def tokenize(self, prompts: Sequence[str], skip_text_cleaning: bool = False):
        """``(ids [B, 256] int32, mask [B, 256] bool)`` after diffusers' prompt cleaning."""
        return self.tokenizer.tokenize(prompts, skip_text_cleaning=skip_text_cleaning)

    def encode_prompt(
        self, prompts: Sequence[str], skip_text_cleaning: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """``(embeddings [B, 256, D], mask [B, 256] bool)``: cleaning, tokenization and the
        encoder's last hidden state, as diffusers' ``PRXPipeline.encode_prompt`` computes them
        (no negative prompt is added: encode ``[""]`` for the unconditional branch)."""
        ids, mask = self.tokenize(prompts, skip_text_cleaning)
        graphdef, state = self._text
        mask_BxL = jnp.asarray(mask)
        return _encode_text(graphdef, state, jnp.asarray(ids), mask_BxL), mask_BxL

    def encode_images(self, images_BxCxHxW, sample: bool = False, key: jax.Array | None = None):
        """Images in [-1, 1] -> scaled latents ``(z - shift) * scale``: the posterior mean, or a
        sample when ``sample=True`` (needs ``key``); pixel models return the images."""
        if self._vae is None:
            return jnp.asarray(images_BxCxHxW)
        if sample and key is None:
            raise ValueError("encode_images(sample=True) needs a PRNG key=")
        graphdef, state = self._vae
        return _vae_encode(graphdef, state, jnp.asarray(images_BxCxHxW), key if sample else None)

    def decode_latents(self, latents_BxZxhxw) -> jax.Array:
        """Scaled latents -> images ``[B, 3, H, W]`` in [-1, 1] (identity for pixel models)."""
        if self._vae is None:
            return jnp.asarray(latents_BxZxhxw)
        graphdef, state = self._vae
        return _vae_decode(graphdef, state, jnp.asarray(latents_BxZxhxw))


def load_pipeline(
    path: str | Path,
    dtype="float32",
    *,
    compute_dtype=None,
    text_compute_dtype=None,
    mesh: Mesh | None = None,
    rules=DEFAULT_RULES,
    max_length: int | None = None,
) -> Pipeline:
    """Every component of a diffusers PRX pipeline folder (``model_index.json``).

    ``dtype``: parameter dtype of every model (fp32 master weights by default).
    ``compute_dtype``: activation dtype of the denoiser and the VAE (None: the parameters').
    ``text_compute_dtype``: the text encoder's (None: ``compute_dtype``).
    ``max_length``: tokens per prompt (None: the tokenizer's ``model_max_length``, 256 for PRX).
    """
    root = Path(path)
    if not (root / "model_index.json").exists():
        raise FileNotFoundError(f"{root}: no model_index.json (not a diffusers pipeline folder)")
    components, config = read_model_index(root)
    kw = dict(mesh=mesh, rules=rules)
    transformer = load_transformer(root / "transformer", dtype, compute_dtype=compute_dtype, **kw)
    text_encoder = load_text_encoder(
        root / "text_encoder", dtype, compute_dtype=text_compute_dtype or compute_dtype, **kw
    )
    if components.get("vae") is None:
        vae = IdentityVAE(transformer.config.in_channels)
    else:
        vae = load_vae(root / "vae", dtype, compute_dtype=compute_dtype, **kw)
    if transformer.config.in_channels != vae.latent_channels:
        raise ValueError(
            f"{root}: the transformer takes {transformer.config.in_channels} channels, the vae "
            f"gives {vae.latent_channels}"
        )
    if transformer.config.context_in_dim != text_encoder.config.hidden_size:
        raise ValueError(
            f"{root}: the transformer's context_in_dim {transformer.config.context_in_dim} is not "
            f"the text encoder's width {text_encoder.config.hidden_size}"
        )
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    return Pipeline(
        transformer=transformer,
        text_encoder=text_encoder,
        tokenizer=PromptTokenizer.from_folder(root / "tokenizer", max_length),
        vae=vae,
        scheduler_config=sched,
        model_index={**config, "components": components},
        path=root,
    )
