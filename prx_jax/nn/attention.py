"""Scaled dot-product attention with a per-platform kernel choice.

Legend: B batch, T query length, S key length, N heads, K head_dim.

``implementation``:

* ``"xla"``: plain XLA ops computing what ``jax.nn.dot_product_attention``'s XLA path does, laid
  out head-major (every platform; the default; the parity reference).
* ``"cudnn"``: cuDNN's fused flash attention through ``jax.nn.dot_product_attention`` (NVIDIA GPUs,
  bf16/fp16 only).
* ``"splash"``: the Pallas splash-attention kernel (TPU). The text mask becomes segment ids (query
  tokens 1, kept keys 1, padded keys 0); lengths are padded to the kernel's block size. Under a mesh
  context (``jax.set_mesh``) it runs per shard through ``shard_map`` (batch over data x fsdp, heads
  over tensor). ``splash_interpret=True`` runs the kernel in the Pallas interpreter (CPU tests).
* ``"auto"``: ``"cudnn"`` on GPUs for bf16/fp16 inputs with K <= 128, ``"splash"`` on TPUs,
  ``"xla"`` otherwise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")
SPLASH_BLOCK = 128  # the splash kernel's sequence tile (lengths are padded to a multiple)


def resolve_implementation(implementation: str, dtype, head_dim: int, platform=None) -> str:
    """The concrete kernel ``implementation`` means for these inputs on ``platform``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} not in {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn" if head_dim <= 128 else "xla"
    if platform == "tpu":
        return "splash"
    return "xla"


def attention(
    q_BxTxNxK: jax.Array,
    k_BxSxNxK: jax.Array,
    v_BxSxNxK: jax.Array,
    mask_BxS: jax.Array | None = None,
    *,
    implementation: str = "xla",
    splash_interpret: bool = False,
) -> jax.Array:
    """Softmax attention with scale ``1/sqrt(K)``; ``mask_BxS`` is True where a key is attended."""
    impl = resolve_implementation(implementation, q_BxTxNxK.dtype, q_BxTxNxK.shape[-1])
    if impl == "splash":
        return splash_attention(
            q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS, interpret=splash_interpret
        )
    if impl == "xla":
        return _xla_attention(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS)
    mask = None
    if mask_BxS is not None:  # cuDNN wants the mask (as a bias) at full [B, 1, T, S]
        B, T, S = q_BxTxNxK.shape[0], q_BxTxNxK.shape[1], mask_BxS.shape[1]
        mask = jnp.broadcast_to(mask_BxS[:, None, None, :], (B, 1, T, S))
    return jax.nn.dot_product_attention(
        q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask=mask, implementation=impl
    )


def _xla_attention(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS):
    """``jax.nn.dot_product_attention``'s XLA math (fp32 logits and softmax, its mask value),
    laid out head-major so both matmuls are canonical batched GEMMs: XLA:CPU runs its BTNK einsums
    2x slower forward and 1.3x slower backward (measured on the bench config)."""
    K = q_BxTxNxK.shape[-1]
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q_BxTxNxK, k_BxSxNxK, v_BxSxNxK))
    logits_BxNxTxS = jnp.einsum("bntk,bnsk->bnts", q, k, preferred_element_type=jnp.float32)
    logits_BxNxTxS = logits_BxNxTxS * jnp.float32(K**-0.5)
    if mask_BxS is not None:
        big_neg = jnp.float32(-0.7 * float(jnp.finfo(jnp.float32).max))
        logits_BxNxTxS = jnp.where(mask_BxS[:, None, None, :], logits_BxNxTxS, big_neg)
    probs = jax.nn.softmax(logits_BxNxTxS, axis=-1).astype(k_BxSxNxK.dtype)
    return jnp.einsum("bnts,bnsk->bntk", probs, v).transpose(0, 2, 1, 3)


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    n = x.shape[axis]
    extra = -n % multiple
    if not extra:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad, constant_values=value)


def _splash_local(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, keep_BxS, *, interpret: bool):
    """Splash on local (unsharded) arrays; every query row keeps at least one key (the image)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    B, T, N, K = q_BxTxNxK.shape
    q = _pad_to(q_BxTxNxK * (K**-0.5), 1, SPLASH_BLOCK).transpose(0, 2, 1, 3)  # B N T' K
    k = _pad_to(k_BxSxNxK, 1, SPLASH_BLOCK).transpose(0, 2, 1, 3)
    v = _pad_to(v_BxSxNxK, 1, SPLASH_BLOCK).transpose(0, 2, 1, 3)
    Tp, Sp = q.shape[2], k.shape[2]
    kv_seg_BxS = _pad_to(keep_BxS.astype(jnp.int32), 1, SPLASH_BLOCK)  # padded keys: segment 0
    q_seg_BxT = jnp.ones((B, Tp), jnp.int32)
    block = lambda n: min(512, n)  # noqa: E731  (n is a multiple of 128)
    sizes = sk.BlockSizes(
        block_q=block(Tp), block_kv=block(Sp), block_kv_compute=block(Sp),
        block_q_dkv=block(Tp), block_kv_dkv=block(Sp), block_kv_dkv_compute=block(Sp),
        block_q_dq=block(Tp), block_kv_dq=block(Sp),
    )  # fmt: skip
    mask = sm.MultiHeadMask([sm.FullMask((Tp, Sp)) for _ in range(N)])
    kernel = sk.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )

    def one(q_NxTxK, k_NxSxK, v_NxSxK, q_seg, kv_seg):
        return kernel(q_NxTxK, k_NxSxK, v_NxSxK, segment_ids=sk.SegmentIds(q=q_seg, kv=kv_seg))

    out = jax.vmap(one)(q, k, v, q_seg_BxT, kv_seg_BxS)  # B N T' K
    return out.transpose(0, 2, 1, 3)[:, :T].astype(q_BxTxNxK.dtype)


def splash_attention(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, mask_BxS=None, *, interpret=False):
    """The splash kernel, per shard under a mesh context (it has no SPMD partitioning rule)."""
    B, S = k_BxSxNxK.shape[:2]
    keep_BxS = jnp.ones((B, S), bool) if mask_BxS is None else mask_BxS
    local = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, keep_BxS)
    P = jax.sharding.PartitionSpec
    names = set(mesh.axis_names)
    batch = tuple(a for a in ("data", "fsdp") if a in names) or None
    heads = "tensor" if "tensor" in names else None
    qkv = P(batch, None, heads, None)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch, None)), out_specs=qkv,
        check_vma=False,
    )(q_BxTxNxK, k_BxSxNxK, v_BxSxNxK, keep_BxS)  # fmt: skip
