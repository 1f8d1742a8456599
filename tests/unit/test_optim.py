"""Optimizers (AdamW, Muon + Adam), clipping, LR schedule and EMA against independent references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prx_jax.train.ema import ema_update
from prx_jax.train.optim import (
    OptimConfig,
    clip_by_global_norm_torch,
    lr_schedule,
    make_optimizer,
    muon_labels,
    newton_schulz,
)

LR = 0.01
STEPS = 3


def _tree(seed=0):
    """Odd-shaped leaves: (in, out) kernels inside and outside "blocks", biases, a 3-D leaf."""
    r = np.random.default_rng(seed)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "blocks": [
            {"x": {"kernel": f(5, 7), "bias": f(7)}, "y": {"kernel": f(7, 3)}},
            {"x": {"kernel": f(5, 7), "bias": f(7)}, "z": f(3, 5, 2)},
        ],
        "final": {"kernel": f(7, 3), "bias": f(3)},
    }


def _grads(step):
    return jax.tree.map(lambda x: 0.1 * x, _tree(seed=100 + step))


def _run(tx, params, steps=STEPS):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(steps):
        upd, state = update(_grads(k), state, params)
        params = optax.apply_updates(params, upd)
    return params


# ---- independent numpy references, written from spec §5 in torch's (out, in) layout ----


def _np_clip(grads, max_norm):
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in jax.tree.leaves(grads)))
    return jax.tree.map(lambda g: g * min(1.0, max_norm / (norm + 1e-6)), grads)


def _np_ns(u, steps=5, abc=(3.4445, -4.7750, 2.0315)):
    a, b, c = abc
    x = u / (np.linalg.norm(u) + 1e-7)
    tr = x.shape[0] > x.shape[1]
    x = x.T if tr else x
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tr else x


def _np_muon_adam(params, lr, clip, beta=0.95, b1=0.9, b2=0.95, eps=1e-8):
    paths = ["blocks.0.x.kernel", "blocks.0.y.kernel", "blocks.1.x.kernel"]
    w = {p: np.asarray(v, np.float64) for p, v in _flat(params).items()}
    state = {p: [np.zeros_like(v.T), np.zeros_like(v.T)] for p, v in w.items()}
    for k in range(1, STEPS + 1):
        g = {p: np.asarray(v, np.float64) for p, v in _flat(_np_clip(_grads(k - 1), clip)).items()}
        for p in w:
            if p in paths:  # torch layout: W (out, in) = our kernel transposed
                G, M = g[p].T, state[p][0]
                M[...] = beta * M + (1 - beta) * G
                U = (1 - beta) * G + beta * M
                U = _np_ns(U) * 0.2 * np.sqrt(max(U.shape))
                w[p] = (w[p].T - lr * U).T
            else:
                m, v = state[p][0].T, state[p][1].T  # views: Adam is elementwise
                m[...] = b1 * m + (1 - b1) * g[p]
                v[...] = b2 * v + (1 - b2) * g[p] ** 2
                w[p] = w[p] - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
    return w


def _flat(tree):
    from prx_jax.train.optim import path_str

    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_partition_puts_exactly_block_matrices_in_muon():
    labels = _flat(muon_labels(_tree()))
    muon = sorted(p for p, lab in labels.items() if lab == "muon")
    assert muon == ["blocks.0.x.kernel", "blocks.0.y.kernel", "blocks.1.x.kernel"]


def test_muon_matches_numpy_reference_over_three_steps():
    cfg = OptimConfig(name="muon", lr=LR, warmup_steps=0, muon_ns_dtype="float32")
    got = _flat(_run(make_optimizer(cfg, _tree()), _tree()))
    ref = _np_muon_adam(_tree(), LR, clip=0.2)
    assert got.keys() == ref.keys()
    for p in ref:
        np.testing.assert_allclose(got[p], ref[p], rtol=0, atol=2e-6, err_msg=p)


def test_newton_schulz_bf16_is_close_to_float32():
    u = np.random.default_rng(1).standard_normal((48, 144)).astype(np.float32)
    x32 = newton_schulz(jnp.asarray(u), 5, (3.4445, -4.7750, 2.0315), jnp.float32)
    x16 = newton_schulz(jnp.asarray(u), 5, (3.4445, -4.7750, 2.0315), jnp.bfloat16)
    assert x16.dtype == jnp.float32
    np.testing.assert_allclose(x32, _np_ns(u.astype(np.float64)), atol=2e-5)
    assert float(jnp.abs(x16 - x32).max()) < 0.05
    # Singular values pushed towards ~[0.7, 1.2]: the update is close to orthogonal.
    s = np.linalg.svd(np.asarray(x32), compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.3


def test_adamw_matches_optax_and_torch():
    import torch

    cfg = OptimConfig(lr=LR, warmup_steps=0, clip_grad_norm=None, weight_decay=0.1)
    got = _flat(_run(make_optimizer(cfg), _tree()))
    ref_tx = optax.adamw(LR, b1=0.9, b2=0.95, eps=1e-15, eps_root=0.0, weight_decay=0.1)
    ref = _flat(_run(ref_tx, _tree()))
    tparams = {p: torch.tensor(v, requires_grad=True) for p, v in _flat(_tree()).items()}
    opt = torch.optim.AdamW(tparams.values(), lr=LR, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.1)
    for k in range(STEPS):
        for p, g in _flat(_grads(k)).items():
            tparams[p].grad = torch.tensor(np.asarray(g))
        opt.step()
    for p in ref:
        np.testing.assert_allclose(got[p], ref[p], rtol=0, atol=1e-7, err_msg=p)
        np.testing.assert_allclose(got[p], tparams[p].detach().numpy(), rtol=0, atol=1e-6)


def test_warmup_first_update_is_zero_and_schedules():
    cfg = OptimConfig(lr=1.0, warmup_steps=4)
    sched = lr_schedule(cfg)
    np.testing.assert_allclose([sched(k) for k in range(6)], [0, 0.25, 0.5, 0.75, 1, 1])
    params = _tree()
    tx = make_optimizer(cfg)
    upd, _ = tx.update(_grads(0), tx.init(params), params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(upd))
    cos = lr_schedule(dataclasses.replace(cfg, schedule="cosine", total_steps=14, min_lr_ratio=0.1))
    np.testing.assert_allclose([cos(k) for k in (4, 9, 14, 20)], [1.0, 0.55, 0.1, 0.1], atol=1e-6)
    # wsd over 4 + 10 steps, the last 40% (4 steps: 10..14) linear from 1 down to 0.2.
    wsd = lr_schedule(
        dataclasses.replace(
            cfg, schedule="wsd", total_steps=14, decay_fraction=0.4, min_lr_ratio=0.2
        )
    )
    np.testing.assert_allclose(
        [wsd(k) for k in (2, 4, 10, 11, 13, 14, 30)], [0.5, 1, 1, 0.8, 0.4, 0.2, 0.2], atol=1e-6
    )


def test_clipping_caps_global_norm():
    clip = clip_by_global_norm_torch(0.2)
    big = jax.tree.map(lambda g: 100.0 * g, _grads(0))
    out, _ = clip.update(big, clip.init(big))
    assert float(optax.tree.norm(out)) == pytest.approx(0.2, rel=1e-5)
    # The whole optimizer with lr 1 and no momentum history: Adam's direction is scale-free, so
    # check the clip sits first by comparing against clipping by hand.
    cfg = OptimConfig(lr=1.0, warmup_steps=0, clip_grad_norm=0.2, eps=1.0)
    params = _tree()
    tx, tx_off = make_optimizer(cfg), make_optimizer(dataclasses.replace(cfg, clip_grad_norm=0))
    want, _ = tx_off.update(out, tx_off.init(params), params)
    got, _ = tx.update(big, tx.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got, want)
    small = jax.tree.map(lambda g: 1e-4 * g, _grads(0))
    out, _ = clip.update(small, clip.init(small))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), out, small))


def test_muon_on_sharded_nnx_state_and_state_is_mappable():
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from prx_jax.models.prx import PRXTransformer
    from prx_jax.parallel.rules import make_mesh
    from prx_jax.testing import FAMILIES

    model = PRXTransformer(FAMILIES["latent-flux"], rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = _flat(muon_labels(params))
    muon = {p for p, lab in labels.items() if lab == "muon"}
    assert len(muon) == 14 and all(p.startswith("blocks.") and ".kernel" in p for p in muon)
    assert "blocks.0.modulation.lin.kernel.value" in muon and "img_in.kernel.value" not in muon

    tx = make_optimizer(OptimConfig(name="muon", warmup_steps=0), params)
    grads = jax.tree.map(
        lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), params
    )
    mesh = make_mesh(data=1, fsdp=8, tensor=1)

    def shard(x):
        spec = PartitionSpec("fsdp") if x.ndim and x.shape[0] % 8 == 0 else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    def step(p, g):
        upd, st = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, upd), st

    want, _ = jax.jit(step)(params, grads)
    got, opt_state = jax.jit(step)(jax.tree.map(shard, params), jax.tree.map(shard, grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)
    # The optimizer state mirrors the params, so shardings can be derived from the params'.
    marks = optax.tree_map_params(
        tx, lambda x: "param", opt_state, transform_non_params=lambda x: "other"
    )
    n_params, n_muon = len(labels), len(muon)
    # Muon momentum (14) + Adam's mu and nu (2 per other leaf), every one recognised as a param.
    assert jax.tree.leaves(marks).count("param") == n_muon + 2 * (n_params - n_muon)


def test_optim_config_names_the_bad_field():
    for field, value in [("name", "sgd"), ("b2", 1.0), ("muon_ns_dtype", "float16"),
                         ("clip_grad_norm", -1.0), ("schedule", "linear")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            OptimConfig(**{field: value})
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="cosine", warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="decay_fraction"):
        OptimConfig(schedule="wsd", decay_fraction=0.0)
    with pytest.raises(ValueError, match="total_steps"):  # None is only filled in by a run config
        lr_schedule(OptimConfig(schedule="wsd"))
    with pytest.raises(ValueError, match="Muon rule"):
        make_optimizer(OptimConfig(name="muon"), {"final": jnp.ones((3, 5))})


def test_ema_updates_every_tenth_completed_step_in_fp32():
    params = {"w": jnp.full((3, 5), 2.0, jnp.bfloat16), "b": jnp.ones(7)}
    ema = {"w": jnp.zeros((3, 5), jnp.float32), "b": jnp.zeros(7)}
    update = jax.jit(ema_update, static_argnames=("decay", "every", "start_step"))
    # step = index of the step just taken; (step + 1) is the research "batch counter".
    for step, expect in [(3, 0.0), (8, 0.0), (9, 0.002), (10, 0.0), (19, 0.002)]:
        out = update(ema, params, jnp.int32(step), decay=0.999, every=10, start_step=None)
        assert out["w"].dtype == jnp.float32
        np.testing.assert_allclose(out["w"], expect, rtol=1e-6)
        np.testing.assert_allclose(out["b"], expect / 2, rtol=1e-6)
    # start_step: the research EMA copies the weights at the first batch end, then blends.
    out = update(ema, params, jnp.int32(0), decay=0.999, every=10, start_step=0)
    np.testing.assert_allclose(out["w"], 2.0)
    out = update(ema, params, jnp.int32(4), decay=0.999, every=10, start_step=0)
    np.testing.assert_allclose(out["w"], 0.0)


@pytest.mark.parametrize("data", [2, 8])
def test_muon_split_over_data_parallel_devices_equals_the_whole_update(data):
    """muon_split_for(mesh): each data-parallel device orthogonalises its share of every stack of
    same-shape matrices (a stack that does not divide runs whole), then all-gathers. Three steps
    equal the unsplit optimizer's, and the compiled update really holds the smaller stacks."""
    import re

    from jax.sharding import NamedSharding, PartitionSpec

    from prx_jax.parallel.rules import make_mesh
    from prx_jax.train.optim import muon_split_for

    mesh = make_mesh(data=data, fsdp=1, tensor=1)
    r = np.random.default_rng(3)
    # (in, out) kernels: 16 of one shape (in either orientation), 3 of another, one alone.
    shapes = [(7, 11)] * 10 + [(11, 7)] * 6 + [(5, 13)] * 3 + [(9, 9)]
    tree = {
        "blocks": {f"m{i}": r.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    }
    tree["blocks"]["bias"] = r.standard_normal(11).astype(np.float32)
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(tree, replicated)
    cfg = OptimConfig(name="muon", lr=LR, warmup_steps=0, muon_ns_dtype="float32")
    split = muon_split_for(mesh)
    assert split is not None and muon_split_for(make_mesh(data=1, fsdp=data, tensor=1)) is None

    def run(tx):
        p, state = params, tx.init(params)
        update = jax.jit(tx.update, out_shardings=replicated)
        for k in range(STEPS):
            g = jax.tree.map(lambda x: jnp.sin(k + 2.0 * x), p)  # noqa: B023
            upd, state = update(g, state, p)
            p = optax.apply_updates(p, upd)
        return p, update.lower(g, state, p).compile().as_text()

    want, _ = run(make_optimizer(cfg, tree))
    got, hlo = run(make_optimizer(cfg, tree, muon_split=split))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    # The stack of sixteen 7x11 matrices is split (16 / data per device); the 3-stack is not.
    stacks = set(re.findall(r"f32\[(\d+),7,7\]", hlo))
    assert str(16 // data) in stacks and "16" not in stacks
    assert "3" in set(re.findall(r"f32\[(\d+),5,5\]", hlo))
    assert "all-gather" in hlo
