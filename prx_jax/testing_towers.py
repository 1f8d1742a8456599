"""Tiny random frozen towers and a whole tiny PRX pipeline folder, for tests and demos.

Every builder randomises *every* parameter, norm weights included: transformers zero-initialises
Gemma's ``(1 + w)`` norms and torch sets group norms to the identity, which would hide bugs.
torch, transformers, diffusers and sentencepiece are imported inside the functions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from prx_jax.testing import FAMILIES, random_diffusers_transformer

# A tiny T5Gemma encoder: GQA (4 query heads over 2 key/value heads), window 5, prime-ish dims.
TINY_T5GEMMA = dict(
    vocab_size=300, hidden_size=40, intermediate_size=56, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=10,
    sliding_window=5, max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)  # fmt: skip

# A tiny Flux-layout AutoencoderKL: 3 levels (x4), 16 latent channels, group norms of 4 groups.
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 12, 16),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=2, norm_num_groups=4, act_fn="silu", sample_size=32,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, force_upcast=True,
)  # fmt: skip

_WORDS = (
    "a the red blue green small big cat dog tree house sun over under on in with of and sky "
    "bright dark photo of painting portrait city street river mountain field flower light"
).split()


def _randomise(model, seed: int, norm_base: float = 0.0) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name
            std = (
                0.5 if is_norm else 1.0 / max(p.shape[-1] if p.ndim < 4 else p[0].numel(), 1) ** 0.5
            )
            base = norm_base if is_norm and name.endswith("weight") else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=gen))
    model.eval()


def random_t5gemma_encoder(seed: int = 0, **overrides):
    """A transformers ``T5GemmaEncoder`` (tiny by default) with every parameter random."""
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

    kw = {**TINY_T5GEMMA, **overrides}
    model = T5GemmaEncoder(T5GemmaConfig(encoder=kw, decoder=kw).encoder)
    _randomise(model, seed)  # Gemma norms multiply by (1 + w): base 0
    return model


def random_vae(seed: int = 0, **overrides):
    """A diffusers ``AutoencoderKL``, Flux layout (tiny by default), every parameter random."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(**{**TINY_VAE, **overrides})
    _randomise(model, seed, norm_base=1.0)
    return model


def train_tokenizer(folder: str | Path, vocab_size: int = 300, model_max_length: int = 256):
    """A Gemma-style SentencePiece BPE tokenizer trained here (byte fallback, pad 0, eos 1, bos 2,
    unk 3), saved as ``tokenizer.model`` + ``tokenizer_config.json``; returns the folder."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))) for _ in range(300)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "tokenizer"), model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        user_defined_symbols=["<mask>"], minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink(missing_ok=True)
    config = {"tokenizer_class": "GemmaTokenizer", "model_max_length": model_max_length}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def build_tiny_pipeline_folder(path: str | Path, kind: str = "latent", seed: int = 0) -> Path:
    """A complete diffusers ``PRXPipeline`` folder, as Photoroom's converter writes it:
    ``model_index.json`` naming ``["prx", "T5GemmaEncoder"]`` and a composite T5Gemma config.

    ``kind="latent"``: tiny Flux-layout VAE and a latent denoiser (16 channels, patch 2);
    ``kind="pixel"``: no VAE and a pixel denoiser (3 channels)."""
    import dataclasses

    from diffusers import FlowMatchEulerDiscreteScheduler, PRXPipeline
    from transformers import AutoTokenizer
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaConfig

    if kind not in ("latent", "pixel"):
        raise ValueError(f"kind {kind!r} must be 'latent' or 'pixel'")
    path = Path(path)
    enc = random_t5gemma_encoder(seed)
    width = enc.config.hidden_size
    family = FAMILIES["latent-flux" if kind == "latent" else "pixel-bottleneck"]
    transformer = random_diffusers_transformer(
        dataclasses.replace(family, context_in_dim=width), seed=seed + 1
    )
    vae = random_vae(seed + 2) if kind == "latent" else None
    tokenizer = AutoTokenizer.from_pretrained(str(train_tokenizer(path / "_spm")))
    pipe = PRXPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=enc,
        tokenizer=tokenizer,
        vae=vae,
        default_sample_size=256,
    )
    pipe.save_pretrained(str(path))
    index_path = path / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_encoder"] = ["prx", "T5GemmaEncoder"]
    index["tokenizer"] = ["transformers", "GemmaTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    kw = {**TINY_T5GEMMA}
    T5GemmaConfig(encoder=kw, decoder=kw).save_pretrained(str(path / "text_encoder"))
    for f in sorted((path / "_spm").iterdir()):
        f.unlink()
    (path / "_spm").rmdir()
    return path
