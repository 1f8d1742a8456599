"""The PRX denoiser in Flax NNX, computing exactly what diffusers' ``PRXTransformer2DModel`` does.

Legend: B batch, C channels, H/W spatial size, P patch size, L image tokens, T text tokens,
D hidden size, N heads, K head_dim, M MLP hidden, E text-encoder width.

Image tokens attend to ``[text | image]`` keys; text tokens are projected once (``txt_in``) and
never updated. Attribute names mirror diffusers' module names, so weight conversion is a rename plus
transposes (see ``prx_jax.convert.prx_keys``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prx_jax.models.prx_config import PRXConfig
from prx_jax.nn.attention import attention
from prx_jax.nn.embeddings import sinusoidal_embedding
from prx_jax.nn.linear import Linear, MLPEmbedder, RMSNorm, layer_norm
from prx_jax.nn.rope import apply_rope, grid_ids, rope_tables


class PRXAttention(nnx.Module):
    def __init__(self, cfg: PRXConfig, *, rngs: nnx.Rngs, **kw):
        D, K = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.head_dim = cfg.num_heads, K
        self.img_qkv_proj = Linear(
            D, 3 * D, axes=("embed", "heads"), use_bias=False, rngs=rngs, **kw
        )
        self.txt_kv_proj = Linear(
            D, 2 * D, axes=("embed", "heads"), use_bias=False, rngs=rngs, **kw
        )
        norm_kw = {"axis_name": "head_dim", "param_dtype": kw.get("param_dtype", jnp.float32)}
        self.norm_q = RMSNorm(K, **norm_kw)
        self.norm_k = RMSNorm(K, **norm_kw)
        self.norm_added_k = RMSNorm(K, **norm_kw)
        self.to_out = nnx.List(
            [Linear(D, D, axes=("heads", "embed"), use_bias=False, rngs=rngs, **kw)]
        )

    def __call__(self, img_BxLxD, txt_BxTxD, rope, mask_BxT, implementation):
        B, L, _ = img_BxLxD.shape
        T = txt_BxTxD.shape[1]
        N, K = self.num_heads, self.head_dim
        qkv = self.img_qkv_proj(img_BxLxD).reshape(B, L, 3, N, K)
        q_BxLxNxK = self.norm_q(qkv[:, :, 0])
        k_BxLxNxK = self.norm_k(qkv[:, :, 1])
        v_BxLxNxK = qkv[:, :, 2]
        kv = self.txt_kv_proj(txt_BxTxD).reshape(B, T, 2, N, K)
        tk_BxTxNxK = self.norm_added_k(kv[:, :, 0])
        tv_BxTxNxK = kv[:, :, 1]
        q_BxLxNxK = apply_rope(q_BxLxNxK, *rope)
        k_BxLxNxK = apply_rope(k_BxLxNxK, *rope)
        k_BxSxNxK = jnp.concatenate([tk_BxTxNxK, k_BxLxNxK.astype(tk_BxTxNxK.dtype)], axis=1)
        v_BxSxNxK = jnp.concatenate([tv_BxTxNxK, v_BxLxNxK], axis=1)
        mask_BxS = None
        if mask_BxT is not None:
            mask_BxS = jnp.concatenate([mask_BxT, jnp.ones((B, L), bool)], axis=1)
        dtype = v_BxSxNxK.dtype
        out = attention(
            q_BxLxNxK.astype(dtype),
            k_BxSxNxK.astype(dtype),
            v_BxSxNxK,
            mask_BxS,
            implementation=implementation,
        )
        return self.to_out[0](out.reshape(B, L, N * K))


class Modulation(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, **kw):
        self.lin = Linear(dim, 6 * dim, axes=("embed", "mod"), zero_init=True, rngs=rngs, **kw)

    def __call__(self, vec_BxD):
        return jnp.split(self.lin(jax.nn.silu(vec_BxD))[:, None, :], 6, axis=-1)


class PRXBlock(nnx.Module):
    def __init__(self, cfg: PRXConfig, *, rngs: nnx.Rngs, **kw):
        D, M = cfg.hidden_size, cfg.mlp_hidden
        self.attention = PRXAttention(cfg, rngs=rngs, **kw)
        self.gate_proj = Linear(D, M, axes=("embed", "mlp"), use_bias=False, rngs=rngs, **kw)
        self.up_proj = Linear(D, M, axes=("embed", "mlp"), use_bias=False, rngs=rngs, **kw)
        self.down_proj = Linear(M, D, axes=("mlp", "embed"), use_bias=False, rngs=rngs, **kw)
        self.modulation = Modulation(D, rngs=rngs, **kw)

    def __call__(self, img_BxLxD, txt_BxTxD, vec_BxD, rope, mask_BxT, implementation):
        sh1, sc1, g1, sh2, sc2, g2 = self.modulation(vec_BxD)
        h = (1 + sc1) * layer_norm(img_BxLxD) + sh1
        img_BxLxD = img_BxLxD + g1 * self.attention(h, txt_BxTxD, rope, mask_BxT, implementation)
        x = (1 + sc2) * layer_norm(img_BxLxD) + sh2
        mlp = self.down_proj(jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x))
        return img_BxLxD + g2 * mlp


class FinalLayer(nnx.Module):
    def __init__(self, cfg: PRXConfig, *, rngs: nnx.Rngs, **kw):
        D = cfg.hidden_size
        self.linear = Linear(D, cfg.patch_dim, axes=("embed", "patch"), rngs=rngs, **kw)
        # diffusers' adaLN_modulation is Sequential(SiLU, Linear): the converter maps index 1.
        self.adaLN_modulation = Linear(D, 2 * D, axes=("embed", "mod"), rngs=rngs, **kw)

    def __call__(self, x_BxLxD, vec_BxD):
        shift, scale = jnp.split(self.adaLN_modulation(jax.nn.silu(vec_BxD)), 2, axis=-1)
        x = (1 + scale[:, None, :]) * layer_norm(x_BxLxD) + shift[:, None, :]
        return self.linear(x)


class ResolutionEmbedder(nnx.Module):
    def __init__(self, cfg: PRXConfig, *, rngs: nnx.Rngs, **kw):
        self.max_period = cfg.time_max_period
        self.mlp = MLPEmbedder(256, cfg.hidden_size, in_axis="freq", rngs=rngs, **kw)

    def __call__(self, h_B, w_B, dtype):
        e_h = sinusoidal_embedding(h_B, 128, max_period=self.max_period)
        e_w = sinusoidal_embedding(w_B, 128, max_period=self.max_period)
        return self.mlp(jnp.concatenate([e_h, e_w], axis=-1).astype(dtype))


# Rematerialisation policies: what a block keeps from its forward pass for the backward pass.
REMAT_POLICIES = {
    "full": None,  # keep nothing: recompute the whole block (least memory)
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_with_no_batch_dims_saveable": (
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable  # weight matmuls, not attention
    ),
}


def _block_forward(graphdef, state, impl, *args):
    return nnx.merge(graphdef, state)(*args, impl)


def _stack_blocks(blocks: list[PRXBlock]) -> PRXBlock:
    """One PRXBlock whose every parameter is the blocks' parameters stacked on a "layers" axis."""
    graphdef, first = nnx.split(blocks[0])
    states = [first, *(nnx.state(b) for b in blocks[1:])]

    def stack(*vs):
        value = jnp.stack([v.get_value() for v in vs])
        axes = vs[0].get_metadata().get("logical_axes") or (None,) * (value.ndim - 1)
        return vs[0].replace(value, logical_axes=("layers", *axes))

    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=is_var))


def stack_block_params(params: dict) -> dict:
    """A pure parameter dict of the per-block layout (``blocks: {0: ..., 1: ...}``) in the scanned
    layout: the same dict with every block leaf stacked on a leading layers axis."""
    out = dict(params)
    blocks = out.pop("blocks")
    out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(blocks[i] for i in sorted(blocks)))
    return out


def patchify(x_BxCxHxW: jax.Array, p: int) -> jax.Array:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C*p*p]``: row-major tokens, ``(c, ph, pw)`` features."""
    B, C, H, W = x_BxCxHxW.shape
    x = x_BxCxHxW.reshape(B, C, H // p, p, W // p, p)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x_BxLxF: jax.Array, p: int, H: int, W: int) -> jax.Array:
    B, _, F = x_BxLxF.shape
    C = F // (p * p)
    x = x_BxLxF.reshape(B, H // p, W // p, C, p, p)
    return x.transpose(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


class PRXTransformer(nnx.Module):
    """``model(hidden_states[B,C,H,W], timestep[B], encoder_hidden_states[B,T,E], mask[B,T]|None)``.

    ``timestep`` is the flow-matching sigma in [0, 1] (one per row, or a single one for all).
    Parameters live in ``param_dtype``; activations run in ``dtype`` (default: the input's dtype).
    """

    def __init__(
        self,
        config: PRXConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        dtype=None,
        attention_impl: str = "xla",
        remat: bool = False,
        remat_policy: str = "full",
        scan_blocks: bool = False,
    ):
        cfg = self.config = config
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        self.remat = remat  # recompute each block's activations in the backward pass
        self.remat_policy = remat_policy
        # Blocks stacked on a leading "layers" axis and run by one lax.scan: the step compiles
        # one block instead of `depth` copies. Parameter paths lose the block index
        # (blocks.attention... with shape [depth, ...]); the converters map them to blocks.{i}.
        self.scan_blocks = scan_blocks and cfg.depth > 0
        kw = {"param_dtype": param_dtype, "dtype": dtype}
        D = cfg.hidden_size
        self.dtype = dtype
        self.attention_impl = attention_impl
        if cfg.bottleneck_size is None:
            self.img_in = Linear(cfg.patch_dim, D, axes=("patch", "embed"), rngs=rngs, **kw)
        else:
            b = cfg.bottleneck_size
            self.img_in = nnx.List(
                [
                    Linear(cfg.patch_dim, b, axes=("patch", "bottleneck"), rngs=rngs, **kw),
                    Linear(b, D, axes=("bottleneck", "embed"), rngs=rngs, **kw),
                ]
            )
        self.time_in = MLPEmbedder(256, D, in_axis="freq", rngs=rngs, **kw)
        self.txt_in = Linear(cfg.context_in_dim, D, axes=("context", "embed"), rngs=rngs, **kw)
        self.resolution_embedder = (
            ResolutionEmbedder(cfg, rngs=rngs, **kw) if cfg.resolution_embeds else None
        )
        # The same random draws in both layouts: a seed gives the same model either way.
        blocks = [PRXBlock(cfg, rngs=rngs, **kw) for _ in range(cfg.depth)]
        self.blocks = _stack_blocks(blocks) if self.scan_blocks else nnx.List(blocks)
        self.final_layer = FinalLayer(cfg, rngs=rngs, **kw)

    def embed_image(self, tokens_BxLxF):
        if isinstance(self.img_in, Linear):
            return self.img_in(tokens_BxLxF)
        return self.img_in[1](self.img_in[0](tokens_BxLxF))

    def _block_fn(self):
        """``f(graphdef, state, impl, img, txt, vec, rope, mask) -> img``, rematerialised or not."""
        if not self.remat:
            return _block_forward
        policy = REMAT_POLICIES[self.remat_policy]
        return jax.checkpoint(_block_forward, static_argnums=(0, 2), policy=policy)

    def _run_blocks(self, img_BxLxD, txt_BxTxD, vec_BxD, rope, mask_BxT):
        f = self._block_fn()
        args = (txt_BxTxD, vec_BxD, rope, mask_BxT)
        if not self.scan_blocks:
            for block in self.blocks:
                if self.remat:
                    graphdef, state = nnx.split(block)
                    img_BxLxD = f(graphdef, state, self.attention_impl, img_BxLxD, *args)
                else:
                    img_BxLxD = block(img_BxLxD, *args, self.attention_impl)
            return img_BxLxD
        graphdef, stacked = nnx.split(self.blocks)

        def body(img, layer_state):
            return f(graphdef, layer_state, self.attention_impl, img, *args), None

        img_BxLxD, _ = jax.lax.scan(body, img_BxLxD, stacked)
        return img_BxLxD

    def __call__(self, hidden_states, timestep, encoder_hidden_states, attention_mask=None):
        cfg = self.config
        B, C, H, W = hidden_states.shape
        p = cfg.patch_size
        if C != cfg.in_channels or H % p or W % p:
            raise ValueError(
                f"hidden_states {hidden_states.shape} must be [B, {cfg.in_channels}, H, W] with H "
                f"and W divisible by patch_size {p}"
            )
        x = hidden_states if self.dtype is None else hidden_states.astype(self.dtype)
        txt_BxTxD = self.txt_in(encoder_hidden_states.astype(x.dtype))
        img_BxLxD = self.embed_image(patchify(x, p))
        cos, sin = rope_tables(grid_ids(H // p, W // p), cfg.axes_dim, cfg.theta)
        t_B = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (B,))
        temb = sinusoidal_embedding(t_B, 256, scale=cfg.time_factor, max_period=cfg.time_max_period)
        vec_BxD = self.time_in(temb.astype(img_BxLxD.dtype))
        if self.resolution_embedder is not None:
            h_B, w_B = jnp.full((B,), H, jnp.float32), jnp.full((B,), W, jnp.float32)
            vec_BxD = vec_BxD + self.resolution_embedder(h_B, w_B, vec_BxD.dtype)
        mask_BxT = None if attention_mask is None else attention_mask.astype(bool)
        img_BxLxD = self._run_blocks(img_BxLxD, txt_BxTxD, vec_BxD, (cos, sin), mask_BxT)
        out = self.final_layer(img_BxLxD, vec_BxD)
        return unpatchify(out, p, H, W)


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
