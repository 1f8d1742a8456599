"""The fast path: scanned blocks equal the loop (forward, gradients, every remat policy), the
converters map stacked blocks to diffusers' per-block keys and back bit-exactly, attention kernel
selection and the splash kernel (Pallas interpreter) equal XLA, the prefetcher's resumable state,
and the AOT dry run on 8 fake devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from prx_jax import load_transformer, save_transformer
from prx_jax.convert.errors import ConversionError
from prx_jax.models.prx import PRXTransformer, stack_block_params
from prx_jax.nn.attention import attention, resolve_implementation
from prx_jax.testing import FAMILIES, random_inputs, save_random_diffusers
from prx_jax.train.prefetch import Prefetcher

CFG = FAMILIES["pixel-resolution"]


@jax.jit
def _run(graphdef, state, x, t, txt, mask):
    return nnx.merge(graphdef, state)(x, t, txt, mask)


def _forward(model, *inputs):
    return np.asarray(_run(*nnx.split(model), *inputs))


def _randomised_pair(**scan_kw):
    """A loop-layout and a scan-layout model with the same random (non-zero) weights."""
    loop = PRXTransformer(CFG, rngs=nnx.Rngs(5))
    state = nnx.state(loop, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    nnx.update(loop, jax.tree.map(lambda a: 0.2 * jax.random.normal(next(keys), a.shape), state))
    scan = PRXTransformer(CFG, rngs=nnx.Rngs(0), scan_blocks=True, **scan_kw)
    params = stack_block_params(nnx.state(loop, nnx.Param).to_pure_dict())
    scan_state = nnx.state(scan, nnx.Param)
    nnx.replace_by_pure_dict(scan_state, params)
    nnx.update(scan, scan_state)
    return loop, scan


def test_same_seed_gives_same_weights_in_both_layouts():
    loop = PRXTransformer(CFG, rngs=nnx.Rngs(3))
    scan = PRXTransformer(CFG, rngs=nnx.Rngs(3), scan_blocks=True)
    k = scan.blocks.attention.img_qkv_proj.kernel
    assert k.shape == (CFG.depth, CFG.hidden_size, 3 * CFG.hidden_size)
    assert k.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
    for i in range(CFG.depth):
        np.testing.assert_array_equal(k[...][i], loop.blocks[i].attention.img_qkv_proj.kernel[...])


@pytest.mark.parametrize("policy", [None, "full", "dots_saveable"])
def test_scan_equals_loop_forward_and_gradients(policy):
    kw = {} if policy is None else {"remat": True, "remat_policy": policy}
    loop, scan = _randomised_pair(**kw)
    x, t, txt, mask = random_inputs(CFG, batch=3, rows=5, cols=3)

    def loss_and_grad(model):
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, txt, mask)))

        return jax.jit(jax.value_and_grad(loss))(params)

    l_loop, g_loop = loss_and_grad(loop)
    l_scan, g_scan = loss_and_grad(scan)
    np.testing.assert_allclose(float(l_scan), float(l_loop), rtol=1e-5)
    g_loop, g_scan = stack_block_params(g_loop.to_pure_dict()), g_scan.to_pure_dict()
    for a, b in zip(jax.tree.leaves(g_loop), jax.tree.leaves(g_scan), strict=True):
        np.testing.assert_allclose(
            np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * (1 + np.abs(a).max())
        )


def test_converter_round_trip_with_scan(tmp_path):
    save_random_diffusers(CFG, tmp_path / "src", seed=4)
    loop = load_transformer(tmp_path / "src")
    scan = load_transformer(tmp_path / "src", scan_blocks=True)
    assert scan.scan_blocks and scan.blocks.gate_proj.kernel.shape[0] == CFG.depth
    inputs = random_inputs(CFG, rows=4, cols=3)
    ref = _forward(loop, *inputs)
    np.testing.assert_allclose(_forward(scan, *inputs), ref, rtol=0, atol=1e-5)
    # diffusers export from the scanned model: the same keys and bytes as the source
    save_transformer(scan, tmp_path / "out")
    from safetensors.numpy import load_file

    a = load_file(tmp_path / "src" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    # prx_jax weights folders are layout-independent: scan -> folder -> loop and -> scan
    save_transformer(scan, tmp_path / "jax", format="prx_jax")
    again = load_transformer(tmp_path / "jax")
    for a, b in zip(
        jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(loop)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = load_transformer(tmp_path / "jax", scan_blocks=True)
    np.testing.assert_allclose(_forward(again, *inputs), ref, rtol=0, atol=1e-5)


def test_scan_converter_names_missing_layer_keys(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_random_diffusers(CFG, tmp_path / "src", seed=4)
    f = tmp_path / "src" / "diffusion_pytorch_model.safetensors"
    t = load_file(f)
    del t["blocks.1.up_proj.weight"]
    save_file(t, f)
    with pytest.raises(ConversionError, match=r"blocks\.1\.up_proj\.weight"):
        load_transformer(tmp_path / "src", scan_blocks=True)


def test_attention_selection():
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert resolve_implementation("auto", bf16, 64, platform="gpu") == "cudnn"
    assert resolve_implementation("auto", f32, 64, platform="gpu") == "xla"  # cuDNN: bf16/fp16
    assert resolve_implementation("auto", bf16, 256, platform="gpu") == "xla"
    assert resolve_implementation("auto", f32, 64, platform="tpu") == "splash"
    assert resolve_implementation("auto", bf16, 64, platform="cpu") == "xla"
    assert resolve_implementation("cudnn", f32, 64, platform="cpu") == "cudnn"  # explicit wins
    with pytest.raises(ValueError, match="not in"):
        resolve_implementation("flash", f32, 64)
    # "auto" on this CPU is the XLA path, bit for bit
    loop = PRXTransformer(CFG, rngs=nnx.Rngs(2))
    auto = PRXTransformer(CFG, rngs=nnx.Rngs(2), attention_impl="auto")
    x, t, txt, mask = random_inputs(CFG)
    np.testing.assert_array_equal(
        np.asarray(auto(x, t, txt, mask)), np.asarray(loop(x, t, txt, mask))
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_xla_path_is_jax_dot_product_attention_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((3, n, 3, 8)), dtype) for n in (7, 11, 11))
    mask = jnp.asarray(rng.uniform(size=(3, 11)) < 0.7).at[:, -1].set(True)
    ours = attention(q, k, v, mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(ref, np.float32))


def test_splash_equals_xla_in_the_pallas_interpreter():
    """The TPU kernel's math (padding to the block, segment-id mask, scale) run by the Pallas
    interpreter on CPU; on a TPU the same call compiles the real kernel."""
    rng = np.random.default_rng(0)
    B, T, S, N, K = 2, 5, 11, 3, 8
    q, k, v = (jnp.asarray(rng.standard_normal((B, n, N, K)), jnp.float32) for n in (T, S, S))
    mask = np.ones((B, S), bool)
    mask[1, :4] = False
    mask = jnp.asarray(mask)

    def f(impl, q):
        out = attention(q, k, v, mask, implementation=impl, splash_interpret=True)
        return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size), out

    (_, ref), g_ref = jax.value_and_grad(lambda q: f("xla", q), has_aux=True)(q)
    (_, out), g = jax.value_and_grad(lambda q: f("splash", q), has_aux=True)(q)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=0, atol=1e-5)


class _Source:
    """A resumable iterator with a dict state, like a Grain dataset iterator."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return self.i - 1

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_prefetcher_state_replays_unused_batches():
    src = _Source()
    it = Prefetcher(src, put=lambda b: jnp.asarray(b), size=2)
    assert [int(next(it)) for _ in range(3)] == [0, 1, 2]
    assert src.i == 5  # two batches ahead
    state = it.get_state()
    assert isinstance(state, bytes)
    assert [int(next(it)) for _ in range(2)] == [3, 4]
    it.set_state(state)
    assert [int(next(it)) for _ in range(2)] == [3, 4]


def test_aot_dry_run_on_8_fake_devices():
    from prx_jax.config import load_config
    from prx_jax.train import aot

    assert jax.device_count() == 8
    cfg = load_config(
        None,
        [
            "model.preset=tiny", "model.in_channels=3", "model.patch_size=8",
            "model.hidden_size=36", "model.num_heads=3", "model.depth=3", "model.axes_dim=[6,6]",
            "model.scan_blocks=true", "model.remat=true", "model.compute_dtype=float32",
            "text.max_length=16", "data.resolution=32", "data.patch_size=32",
            "data.global_batch_size=8", "mesh.fsdp=8",
        ],
    )  # fmt: skip
    r = aot.dry_run(cfg, device_memory_gb=0.001)
    assert r["devices"] == 8 and r["mesh"]["fsdp"] == 8
    g = r["per_device_gb"]
    n_params = r["params"]
    # fp32 params + Adam mu/nu + EMA, each at most 1/8 per device plus the replicated small dims
    assert 0 < g["params"] * aot.GB <= 4 * n_params
    assert g["opt_state"] == pytest.approx(2 * g["params"], rel=0.01)
    assert g["temporaries"] > 0 and r["flops_per_device_compiled"] > 0
    assert r["fits"] is (g["peak_estimate"] <= 0.001)
    assert "per device (GB)" in aot.format_report(r)


def test_cudnn_gets_a_full_length_mask(monkeypatch):
    """cuDNN's layout check rejects a [B, 1, 1, S] mask ("Bias must have same seq length as QKV",
    seen on an H100): the cuDNN path hands jax.nn.dot_product_attention a [B, 1, T, S] mask. The
    call is captured (no cuDNN here) and replayed on XLA against our own XLA path."""
    import prx_jax.nn.attention as attn

    seen = {}
    real = jax.nn.dot_product_attention

    def capture(q, k, v, *, mask=None, implementation=None):
        seen["mask"], seen["impl"] = mask, implementation
        return real(q, k, v, mask=mask, implementation="xla")

    monkeypatch.setattr(attn.jax.nn, "dot_product_attention", capture)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 5, 3, 8))
    k = jax.random.normal(keys[1], (2, 7, 3, 8))
    v = jax.random.normal(keys[2], (2, 7, 3, 8))
    mask = jnp.array([[1, 1, 0, 1, 1, 1, 1], [1, 0, 0, 0, 1, 1, 1]], bool)
    out = attention(q, k, v, mask, implementation="cudnn")
    assert seen["impl"] == "cudnn" and seen["mask"].shape == (2, 1, 5, 7)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(attention(q, k, v, mask, implementation="xla")), atol=1e-6
    )


@pytest.mark.parametrize("sharded", [False, True])
def test_muon_on_scanned_blocks_equals_the_unrolled_update(sharded):
    """Muon orthogonalises each layer's matrix of a stacked [L, R, C] leaf on its own: two steps on
    the scanned model give the unrolled model's parameters, stacked; stacked biases stay with Adam.
    Sharded: the stacked leaves split over fsdp=8 on their first non-layer axis when it divides."""
    from jax.sharding import NamedSharding, PartitionSpec

    from prx_jax.parallel.rules import make_mesh
    from prx_jax.train.optim import OptimConfig, make_optimizer, muon_labels

    loop, scan = _randomised_pair()
    p_loop = nnx.state(loop, nnx.Param).to_pure_dict()
    p_scan = nnx.state(scan, nnx.Param).to_pure_dict()
    labels = muon_labels(p_scan, stacked_blocks=True)
    assert labels["blocks"]["attention"]["img_qkv_proj"]["kernel"] == "muon"
    assert labels["blocks"]["modulation"]["lin"]["bias"] == "adam"  # stacked [L, C]
    assert labels["txt_in"]["kernel"] == "adam"
    n_muon = jax.tree.leaves(labels).count("muon")
    assert n_muon == jax.tree.leaves(muon_labels(p_loop)).count("muon") // CFG.depth

    cfg = OptimConfig(name="muon", lr=0.02, warmup_steps=0, muon_ns_dtype="float32")

    def grads(params, k):
        return jax.tree.map(lambda x: jnp.sin(k + 3.0 * x), params)

    def run(tx, params, to_layout):
        state = tx.init(params)
        for k in range(2):
            upd, state = jax.jit(tx.update)(grads(params, k), state, params)
            params = optax.apply_updates(params, upd)
        return to_layout(params)

    want = run(make_optimizer(cfg, p_loop), p_loop, stack_block_params)
    if sharded:
        mesh = make_mesh(data=1, fsdp=8, tensor=1)

        def put(x):
            spec = [None] * x.ndim
            if x.ndim >= 2 and x.shape[1] % 8 == 0:
                spec[1] = "fsdp"
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))

        p_scan = jax.tree.map(put, p_scan)
    got = run(make_optimizer(cfg, p_scan, stacked_blocks=True), p_scan, lambda t: t)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=2e-6)
