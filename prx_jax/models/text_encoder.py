"""The T5Gemma encoder (Gemma-2 layout) in Flax NNX, computing what transformers'
``T5GemmaEncoder`` computes with its default eager attention.

Legend: B batch, T tokens (queries), S tokens (keys), D hidden size, N query heads, G key/value
heads, R = N / G queries per key/value head, K head_dim, M MLP hidden, V vocabulary.

Embeddings are scaled by ``sqrt(D)``; every layer is pre-norm and post-norm around grouped-query
attention (rotate-half RoPE, logits scaled by ``query_pre_attn_scalar ** -0.5`` then soft-capped,
fp32 softmax) and a GeGLU-tanh MLP; sliding-window layers see keys with ``|q - k| <= window``.
Attention is *bidirectional*: the mask only hides padded keys. Norms are Gemma's ``(1 + w)``.
Attribute names mirror transformers' modules so the converter is a rename plus transposes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prx_jax.nn.linear import Linear, RMSNorm

LAYER_TYPES = ("sliding_attention", "full_attention")


@dataclasses.dataclass(frozen=True)
class T5GemmaEncoderConfig:
    vocab_size: int = 256000  # V
    hidden_size: int = 2304  # D, the width PRX's context_in_dim must equal
    intermediate_size: int = 9216  # M
    num_hidden_layers: int = 26
    num_attention_heads: int = 8  # N
    num_key_value_heads: int = 4  # G (grouped-query attention)
    head_dim: int = 256  # K
    query_pre_attn_scalar: float = 256  # attention logits are scaled by its inverse square root
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    sliding_window: int = 4096  # sliding layers attend to keys with |q - k| <= window
    attn_logit_softcapping: float | None = 50.0  # cap * tanh(logits / cap); None disables
    layer_types: tuple[str, ...] | None = None  # None: sliding on even layers, full on odd ones
    pad_token_id: int = 0

    def __post_init__(self):
        types = self.layer_types
        if types is None:
            types = tuple(LAYER_TYPES[i % 2] for i in range(self.num_hidden_layers))
        object.__setattr__(self, "layer_types", tuple(types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"unsupported layer_types {bad}; supported: {list(LAYER_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must divide by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )


class T5GemmaAttention(nnx.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, sliding: bool, *, rngs: nnx.Rngs, **kw):
        D, N, G, K = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = N, G, K
        self.scaling = float(cfg.query_pre_attn_scalar) ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        self.window = cfg.sliding_window if sliding else None
        lin = dict(use_bias=False, rngs=rngs, **kw)
        self.q_proj = Linear(D, N * K, axes=("embed", "heads"), **lin)
        self.k_proj = Linear(D, G * K, axes=("embed", "kv_heads"), **lin)
        self.v_proj = Linear(D, G * K, axes=("embed", "kv_heads"), **lin)
        self.o_proj = Linear(N * K, D, axes=("heads", "embed"), **lin)

    def __call__(self, x_BxTxD, cos_TxK, sin_TxK, pad_BxS):
        B, T, _ = x_BxTxD.shape
        N, G, K = self.num_heads, self.num_kv_heads, self.head_dim
        q_BxTxNxK = rotate(self.q_proj(x_BxTxD).reshape(B, T, N, K), cos_TxK, sin_TxK)
        k_BxSxGxK = rotate(self.k_proj(x_BxTxD).reshape(B, T, G, K), cos_TxK, sin_TxK)
        v_BxSxGxK = self.v_proj(x_BxTxD).reshape(B, T, G, K)
        # query head n uses key/value head n // R (transformers' repeat_kv)
        q_BxTxGxRxK = q_BxTxNxK.reshape(B, T, G, N // G, K)
        s_BxGxRxTxS = jnp.einsum("btgrk,bsgk->bgrts", q_BxTxGxRxK, k_BxSxGxK) * jnp.asarray(
            self.scaling, q_BxTxNxK.dtype
        )
        if self.softcap is not None:
            s_BxGxRxTxS = jnp.tanh(s_BxGxRxTxS / self.softcap) * self.softcap
        mask_BxTxS = pad_BxS[:, None, :]
        if self.window is not None:
            idx = np.arange(T)
            mask_BxTxS = mask_BxTxS & (np.abs(idx[:, None] - idx[None, :]) <= self.window)
        # masked logits become the dtype's minimum, as transformers' additive eager mask does: a
        # query that sees no key at all then attends uniformly to every key.
        s32 = s_BxGxRxTxS.astype(jnp.float32)
        s32 = jnp.where(mask_BxTxS[:, None, None], s32, jnp.finfo(s_BxGxRxTxS.dtype).min)
        p_BxGxRxTxS = jax.nn.softmax(s32, axis=-1).astype(v_BxSxGxK.dtype)
        o_BxTxGxRxK = jnp.einsum("bgrts,bsgk->btgrk", p_BxGxRxTxS, v_BxSxGxK)
        return self.o_proj(o_BxTxGxRxK.reshape(B, T, N * K))


def rotate(x_BxTxHxK: jax.Array, cos_TxK: jax.Array, sin_TxK: jax.Array) -> jax.Array:
    """Rotate-half RoPE, ``x * cos + rotate_half(x) * sin``, in the activation dtype."""
    half = x_BxTxHxK.shape[-1] // 2
    rot = jnp.concatenate([-x_BxTxHxK[..., half:], x_BxTxHxK[..., :half]], axis=-1)
    c = cos_TxK[None, :, None, :].astype(x_BxTxHxK.dtype)
    s = sin_TxK[None, :, None, :].astype(x_BxTxHxK.dtype)
    return x_BxTxHxK * c + rot * s


def rope_cos_sin(T: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """``(cos, sin)`` of shape ``[T, K]`` for positions ``0..T-1`` (fp32, as transformers)."""
    inv_freq = 1.0 / (
        jnp.float32(theta) ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    )
    freqs_TxF = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb_TxK = jnp.concatenate([freqs_TxF, freqs_TxF], axis=-1)
    return jnp.cos(emb_TxK), jnp.sin(emb_TxK)


class T5GemmaMLP(nnx.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, *, rngs: nnx.Rngs, **kw):
        D, M = cfg.hidden_size, cfg.intermediate_size
        lin = dict(use_bias=False, rngs=rngs, **kw)
        self.gate_proj = Linear(D, M, axes=("embed", "mlp"), **lin)
        self.up_proj = Linear(D, M, axes=("embed", "mlp"), **lin)
        self.down_proj = Linear(M, D, axes=("mlp", "embed"), **lin)

    def __call__(self, x_BxTxD):
        h_BxTxM = jax.nn.gelu(self.gate_proj(x_BxTxD), approximate=True) * self.up_proj(x_BxTxD)
        return self.down_proj(h_BxTxM)


class T5GemmaEncoderLayer(nnx.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, index: int, *, rngs: nnx.Rngs, **kw):
        sliding = cfg.layer_types[index] == "sliding_attention"
        self.self_attn = T5GemmaAttention(cfg, sliding, rngs=rngs, **kw)
        self.mlp = T5GemmaMLP(cfg, rngs=rngs, **kw)
        norm = dict(eps=cfg.rms_norm_eps, unit_offset=True, axis_name="norm", **kw)
        self.pre_self_attn_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.post_self_attn_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, **norm)

    def __call__(self, h_BxTxD, cos, sin, pad_BxS):
        a = self.self_attn(self.pre_self_attn_layernorm(h_BxTxD), cos, sin, pad_BxS)
        h_BxTxD = h_BxTxD + self.post_self_attn_layernorm(a)
        m = self.mlp(self.pre_feedforward_layernorm(h_BxTxD))
        return h_BxTxD + self.post_feedforward_layernorm(m)


class Embedding(nnx.Module):
    """A ``[V, D]`` table stored like torch's ``nn.Embedding.weight`` (no transpose)."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None):
        table = jax.random.normal(rngs.params(), (num, dim), param_dtype)
        self.weight = nnx.Param(table, logical_axes=("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids_BxT):
        # gather, then cast: casting the [V, D] table first would copy all of it per call
        rows_BxTxD = jnp.take(self.weight[...], ids_BxT, axis=0)
        return rows_BxTxD if self.dtype is None else rows_BxTxD.astype(self.dtype)


class T5GemmaTextEncoder(nnx.Module):
    """``encoder(input_ids[B,T] int, attention_mask[B,T] bool) -> last_hidden_state [B,T,D]``.

    Parameters live in ``param_dtype``; activations run in ``dtype`` (None: the parameters').
    """

    def __init__(
        self, config: T5GemmaEncoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None
    ):
        cfg = self.config = config
        kw = {"param_dtype": param_dtype, "dtype": dtype}
        self.dtype = dtype or param_dtype
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.layers = nnx.List(
            [T5GemmaEncoderLayer(cfg, i, rngs=rngs, **kw) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, unit_offset=True, axis_name="norm", **kw
        )

    def __call__(self, input_ids, attention_mask=None):
        cfg = self.config
        _, T = input_ids.shape
        # no mask: hide the pad token, as transformers does
        pad_BxS = (
            input_ids != cfg.pad_token_id if attention_mask is None else attention_mask.astype(bool)
        )
        h_BxTxD = self.embed_tokens(input_ids).astype(self.dtype)
        h_BxTxD = h_BxTxD * jnp.asarray(cfg.hidden_size**0.5, self.dtype)
        cos, sin = rope_cos_sin(T, cfg.head_dim, cfg.rope_theta)
        tie = jax.default_backend() == "cpu"
        for layer in self.layers:
            if tie:
                layer = _tied_to(layer, h_BxTxD)
            h_BxTxD = layer(h_BxTxD, cos, sin, pad_BxS)
        return self.norm(h_BxTxD)


def _tied_to(layer: nnx.Module, h: jax.Array) -> nnx.Module:
    """``layer`` whose weights depend on ``h`` (``w + z`` where ``z`` is a zero computed from
    ``h``), so XLA cannot compute their conversions before ``h`` exists.

    XLA on CPU runs bf16 matmuls in fp32 and hoists every weight's conversion to the start of the
    program, holding an fp32 copy of the whole model (+10 GB for T5Gemma-2B); it removes
    optimization barriers, but not this data dependence. Only one layer's copy is then alive.
    """
    graphdef, state = nnx.split(layer)
    h0 = h.reshape(-1)[0].astype(jnp.float32)
    zero = jnp.where(jnp.isnan(h0), 0.0, jnp.minimum(jnp.abs(h0), 0.0))  # 0, even for inf/nan
    state = jax.tree.map(lambda w: w + zero.astype(w.dtype), state)
    return nnx.merge(graphdef, state)
