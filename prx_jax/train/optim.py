"""Optimizers of the PRX recipes as optax transformations: AdamW, or Muon + Adam (spec §4.9, §5).

The chain is: clip the global gradient norm (torch's formula) -> AdamW moments, or a partition
{Muon: 2-D leaves under "blocks"; Adam: the rest} -> decoupled weight decay -> scale by -lr(k).
k is optax's count of completed updates, so with warm-up the first update uses lr 0, as
Composer's scheduler does.

Muon (`scale_by_muon_prx`) follows muon_fsdp2 0.3.0 rather than `optax.contrib.muon`, which
differs: it bias-corrects the momentum (changing the Nesterov mix), uses eps 1e-8 in the
Frobenius normalisation, and its Adam branch is Nesterov Adam.

Layout: our kernels are (in, out), torch's weights (out, in). Newton-Schulz is orthogonalised
on the (min, max)-shaped orientation, which is the same matrix in both layouts, and the
non-Moonlight scale sqrt(max(1, out/in)) reads out/in from the (in, out) shape.

Legend: R rows, C columns of a 2-D leaf as stored.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

NS_DTYPES: tuple[str, ...] = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "muon"] = "adamw"  # "adamw" (every research config) or "muon"
    lr: float = 1e-4  # peak learning rate, for every parameter group
    b1: float = 0.9  # Adam beta1 (AdamW, and Muon's Adam group)
    b2: float = 0.95  # Adam beta2 (AdamW, and Muon's Adam group)
    eps: float = 1e-15  # AdamW epsilon, added to sqrt(v_hat) as torch does
    weight_decay: float = 0.0  # decoupled: W <- W (1 - lr wd); both Muon groups too
    muon_momentum: float = 0.95  # Muon beta: M <- beta M + (1 - beta) G
    muon_nesterov: bool = True  # Muon: orthogonalise (1 - beta) G + beta M instead of M
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    muon_ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)  # quintic (a, b, c)
    muon_ns_dtype: str = (
        "bfloat16"  # dtype of the Newton-Schulz iteration ("bfloat16" in muon_fsdp2)
    )
    muon_rms_scale: bool = True  # Moonlight 0.2 sqrt(max(R, C)); else sqrt(max(1, out / in))
    muon_adam_eps: float = 1e-8  # epsilon of Muon's Adam group
    clip_grad_norm: float | None = 0.2  # global L2 gradient-norm cap; None or 0 disables
    warmup_steps: int = 1000  # linear warm-up: multiplier k / warmup_steps for k < warmup_steps
    # After warm-up: "constant" 1.0; "cosine" decay to min_lr_ratio at total_steps; "wsd"
    # (warm-up, stable, decay): 1.0, then a linear decay down to min_lr_ratio over the last
    # decay_fraction of the steps between warm-up and total_steps.
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    total_steps: int | None = None  # decaying schedules: where the floor is reached (None: the
    # run's train.steps, filled in by the run config)
    min_lr_ratio: float = 0.0  # decaying schedules: the final multiplier
    decay_fraction: float = 0.2  # wsd only: the decaying share of the post-warm-up steps

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"OptimConfig.{field} {why}, got {getattr(self, field)!r}")

        if self.name not in ("adamw", "muon"):
            bad("name", "must be 'adamw' or 'muon'")
        if not self.lr >= 0:
            bad("lr", "must be >= 0")
        for f in ("b1", "b2", "muon_momentum"):
            if not 0.0 <= getattr(self, f) < 1.0:
                bad(f, "must be in [0, 1)")
        for f in ("eps", "muon_adam_eps", "weight_decay"):
            if not getattr(self, f) >= 0:
                bad(f, "must be >= 0")
        if self.muon_ns_steps < 1:
            bad("muon_ns_steps", "must be >= 1")
        if len(self.muon_ns_coeffs) != 3:
            bad("muon_ns_coeffs", "must be three numbers (a, b, c)")
        if self.muon_ns_dtype not in NS_DTYPES:
            bad("muon_ns_dtype", f"must be one of {NS_DTYPES}")
        if self.clip_grad_norm is not None and self.clip_grad_norm < 0:
            bad("clip_grad_norm", "must be None, 0 (off) or > 0")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if self.schedule not in ("constant", "cosine", "wsd"):
            bad("schedule", "must be 'constant', 'cosine' or 'wsd'")
        if self.total_steps is not None and self.total_steps <= self.warmup_steps:
            bad("total_steps", "must be > warmup_steps")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", "must be in [0, 1]")
        if not 0.0 < self.decay_fraction <= 1.0:
            bad("decay_fraction", "must be in (0, 1]")


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g * min(1, max_norm / (||g|| + 1e-6)), norm over all leaves.

    optax.clip_by_global_norm scales by max_norm / ||g|| (no 1e-6): a relative 5e-6 difference at
    max_norm 0.2 that this variant removes.
    """

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
    """lr(k), k = completed updates: lr k/warmup for k < warmup, then lr times the schedule's
    multiplier (constant 1; cosine; wsd: 1, then linear over the last decay_fraction of the
    post-warm-up steps), which reaches min_lr_ratio at total_steps and stays there."""
    if cfg.schedule != "constant" and cfg.total_steps is None:
        raise ValueError(
            f"OptimConfig.total_steps must be set for the {cfg.schedule!r} schedule "
            "(the run config fills it with train.steps)"
        )

    def schedule(count):
        k = jnp.asarray(count, jnp.float32)
        floor = cfg.min_lr_ratio
        if cfg.schedule == "cosine":
            span = cfg.total_steps - cfg.warmup_steps
            progress = jnp.clip((k - cfg.warmup_steps) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
            after = floor + (1.0 - floor) * cosine
        elif cfg.schedule == "wsd":
            span = max(1, round(cfg.decay_fraction * (cfg.total_steps - cfg.warmup_steps)))
            progress = jnp.clip((k - (cfg.total_steps - span)) / span, 0.0, 1.0)
            after = 1.0 - (1.0 - floor) * progress
        else:
            after = jnp.float32(1.0)
        warm = k / max(cfg.warmup_steps, 1)
        return cfg.lr * jnp.where(k < cfg.warmup_steps, warm, after)

    return schedule


def path_str(path) -> str:
    """A jax key path as a dotted name, e.g. "blocks.3.attention.img_qkv_proj.kernel.value"."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def is_muon_default(path: str, leaf) -> bool:
    """muon_fsdp2's rule: a 2-D parameter whose name contains "blocks"."""
    return jnp.ndim(leaf) == 2 and "blocks" in path


def is_muon_stacked(path: str, leaf) -> bool:
    """The same rule for scanned blocks, whose leaves carry a leading layers axis: a block matrix
    is 3-D [L, R, C] (and a stacked bias 2-D [L, C], which stays with Adam)."""
    return jnp.ndim(leaf) == 3 and "blocks" in path


def muon_labels(
    tree, is_muon: Callable[[str, Any], bool] | None = None, stacked_blocks: bool = False
):
    """The tree of "muon" / "adam" labels (same structure as `tree`)."""
    rule = is_muon or (is_muon_stacked if stacked_blocks else is_muon_default)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: "muon" if rule(path_str(p), x) else "adam", tree
    )


def newton_schulz(u_RxC: jax.Array, steps: int, coeffs, dtype) -> jax.Array:
    """Approximately orthogonalise u (its polar factor), muon_fsdp2 / Keller Jordan's quintic NS."""
    a, b, c = coeffs
    x = u_RxC.astype(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))).astype(dtype)
    x = x / (norm + jnp.asarray(1e-7, dtype))
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if transposed:
        x = x.T
    return x.astype(u_RxC.dtype)


class ScaleByMuonPRXState(NamedTuple):
    mu: optax.Updates  # momentum M, one leaf per Muon parameter


def _orthogonalise_all(directions: list, ns: Callable, split: Callable | None) -> list:
    """NS of every 2-D (or layer-stacked 3-D) leaf, in groups of one (min, max) shape.

    Each group is one stacked [G, R, C] array (wide orientation, R <= C) run by a vmapped NS, so
    the step has one chain of matmuls per shape rather than one per leaf. ``split(f, stack)``
    computes ``f(stack)`` (see ``muon_split_for``): over data-parallel devices, each device
    orthogonalises its share of the matrices instead of every device doing all of them.
    """
    groups: dict[tuple, list[tuple[int, bool]]] = {}
    for i, u in enumerate(directions):
        if u.ndim not in (2, 3):
            raise ValueError(f"Muon needs 2-D (or layer-stacked 3-D) leaves, got {u.shape}")
        R, C = u.shape[-2:]
        groups.setdefault((min(R, C), max(R, C), u.dtype), []).append((i, R > C))
    out: list = [None] * len(directions)
    for members in groups.values():
        mats = []
        for i, transposed in members:
            u = directions[i]
            u = jnp.swapaxes(u, -1, -2) if transposed else u
            mats.append(u.reshape(-1, *u.shape[-2:]))
        stacked_GxRxC = jnp.concatenate(mats) if len(mats) > 1 else mats[0]
        if split is None:
            result_GxRxC = jax.vmap(ns)(stacked_GxRxC)
        else:
            result_GxRxC = split(jax.vmap(ns), stacked_GxRxC)
        start = 0
        for (i, transposed), m in zip(members, mats, strict=True):
            x = result_GxRxC[start : start + m.shape[0]]
            start += m.shape[0]
            x = jnp.swapaxes(x, -1, -2) if transposed else x
            out[i] = x.reshape(directions[i].shape)
    return out


def scale_by_muon_prx(
    beta: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_dtype=jnp.bfloat16,
    rms_scale: bool = True,
    split: Callable[[Callable, jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformation:
    """Muon direction of muon_fsdp2 0.3.0 for 2-D leaves (spec §5.3 steps 1-3); lr comes later.

    M <- M + (1 - beta)(G - M) (torch's lerp); U = M + (1 - beta)(G - M) with Nesterov, else M;
    U <- NS(U) * (0.2 sqrt(max(R, C)) if rms_scale else sqrt(max(1, out / in))). 3-D leaves are
    scanned blocks: each layer's matrix is orthogonalised on its own. ``split``: see
    ``_orthogonalise_all``.
    """

    def init_fn(params):
        return ScaleByMuonPRXState(mu=jax.tree.map(jnp.zeros_like, params))

    def scale(u):
        rows_in, cols_out = u.shape[-2:]
        if rms_scale:
            return 0.2 * math.sqrt(max(rows_in, cols_out))
        return math.sqrt(max(1.0, cols_out / rows_in))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: m + (1.0 - beta) * (g - m), state.mu, updates)
        if nesterov:
            direction = jax.tree.map(lambda m, g: m + (1.0 - beta) * (g - m), mu, updates)
        else:
            direction = mu
        ns = functools.partial(newton_schulz, steps=ns_steps, coeffs=ns_coeffs, dtype=ns_dtype)
        leaves, treedef = jax.tree.flatten(direction)
        ortho = _orthogonalise_all(leaves, ns, split)
        scaled = [x * scale(u) for x, u in zip(ortho, leaves, strict=True)]
        return jax.tree.unflatten(treedef, scaled), ScaleByMuonPRXState(mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    cfg: OptimConfig,
    params_tree=None,
    *,
    is_muon: Callable[[str, Any], bool] | None = None,
    stacked_blocks: bool = False,
    muon_split: Callable[[Callable, jax.Array], jax.Array] | None = None,
) -> optax.GradientTransformation:
    """The optax transformation of `cfg` (apply with optax.apply_updates: updates are -lr * dir).

    params_tree (an nnx.State or nested dict; arrays or ShapeDtypeStructs) is only checked: for
    Muon, at least one leaf must go to the Muon group. Labels are recomputed from the tree each
    update, so the same transformation serves sharded and abstract trees. is_muon(path, leaf)
    overrides the Muon rule (default: ndim == 2 and "blocks" in the dotted path; with
    stacked_blocks, for scanned models, ndim == 3, each layer's matrix orthogonalised alone).
    muon_split spreads Muon's stacks of same-shape matrices over devices (``muon_split_for``).
    """
    parts = []
    if cfg.clip_grad_norm:
        parts.append(clip_by_global_norm_torch(cfg.clip_grad_norm))
    if cfg.name == "adamw":
        parts.append(optax.scale_by_adam(cfg.b1, cfg.b2, eps=cfg.eps, eps_root=0.0))
    else:
        label_fn = lambda tree: muon_labels(tree, is_muon, stacked_blocks)  # noqa: E731
        if params_tree is not None and "muon" not in jax.tree.leaves(label_fn(params_tree)):
            raise ValueError("OptimConfig.name is 'muon' but no parameter matches the Muon rule")
        muon = scale_by_muon_prx(
            cfg.muon_momentum,
            cfg.muon_nesterov,
            cfg.muon_ns_steps,
            tuple(cfg.muon_ns_coeffs),
            jnp.dtype(cfg.muon_ns_dtype),
            cfg.muon_rms_scale,
            muon_split,
        )
        adam = optax.scale_by_adam(cfg.b1, cfg.b2, eps=cfg.muon_adam_eps, eps_root=0.0)
        parts.append(optax.partition({"muon": muon, "adam": adam}, label_fn))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale_by_learning_rate(lr_schedule(cfg)))
    return optax.chain(*parts)


def muon_split_for(mesh) -> Callable[[Callable, jax.Array], jax.Array] | None:
    """Muon's ``split`` for a data-parallel ``mesh`` (data > 1, fsdp = tensor = 1): every device
    holds the whole (replicated) stack of matrices, runs ``f`` on its own slice of it, and one
    all-gather per stack gives every device every result. A stack whose length does not divide
    by the data axis runs whole on every device. None otherwise: with fsdp or tensor sharding the
    matrices are already spread over the devices, and XLA orthogonalises them where they lie.

    The slicing happens inside ``shard_map`` (input and output replicated), so XLA's sharding
    propagation cannot push a split back into the momentum and all-to-all every matrix."""
    from jax.sharding import PartitionSpec

    if mesh is None or mesh.shape["data"] == 1 or mesh.shape["fsdp"] * mesh.shape["tensor"] > 1:
        return None
    n = mesh.shape["data"]

    def split(f, stack):
        if stack.shape[0] % n:
            return f(stack)

        def share(x):
            k = x.shape[0] // n
            mine = jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index("data") * k, k, axis=0)
            return jax.lax.all_gather(f(mine), "data", axis=0, tiled=True)

        replicated = PartitionSpec()
        return jax.shard_map(
            share, mesh=mesh, in_specs=replicated, out_specs=replicated, check_vma=False
        )(stack)

    return split
