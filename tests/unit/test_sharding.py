"""A jitted forward on the 8-device fake mesh equals the unsharded forward."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from prx_jax.models.prx import PRXTransformer
from prx_jax.parallel import make_mesh, shard_module, spec_for
from prx_jax.testing import FAMILIES, random_inputs


def _forward(graphdef, state, x, t, txt, mask):
    return nnx.merge(graphdef, state)(x, t, txt, mask)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 4, 1)], ids=["fsdp8", "data2xfsdp4"])
def test_sharded_forward_equals_unsharded(mesh_shape):
    assert jax.device_count() == 8
    cfg = FAMILIES["pixel-resolution"]
    model = PRXTransformer(cfg, rngs=nnx.Rngs(3))
    # Randomise the zero-initialised modulation so every block does work.
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda a: 0.1 * jax.random.normal(next(keys), a.shape), state))
    x, t, txt, mask = random_inputs(cfg, batch=8, rows=6, cols=5)
    graphdef, state = nnx.split(model)
    ref = np.asarray(jax.jit(_forward)(graphdef, state, x, t, txt, mask))

    mesh = make_mesh(*mesh_shape)
    shard_module(model, mesh)
    graphdef, state = nnx.split(model)
    kernel = model.blocks[0].gate_proj.kernel[...]
    assert kernel.sharding.spec == PartitionSpec("fsdp", None)
    assert kernel.addressable_shards[0].data.shape[0] == cfg.hidden_size // mesh_shape[1]
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    x, t, txt, mask = (jax.device_put(a, batch) for a in (x, t, txt, mask))
    out = jax.jit(_forward)(graphdef, state, x, t, txt, mask)
    assert out.sharding.num_devices == 8
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_rules_replicate_indivisible_dims_and_never_reuse_an_axis():
    mesh = make_mesh(2, 4, 1)
    assert spec_for(("embed", "mlp"), (48, 120), mesh) == PartitionSpec("fsdp", None)
    assert spec_for(("embed", "mlp"), (42, 120), mesh) == PartitionSpec(None, None)
    assert spec_for(("batch", "embed"), (8, 48), mesh) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="no rule"):
        spec_for(("nonsense",), (4,), mesh)


def test_mesh_sizes():
    assert dict(make_mesh(2, -1, 1).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert make_mesh(1, 1, 1).devices.size == 1  # explicit smaller meshes take the first devices
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(2, 8, 1)
    with pytest.raises(ValueError, match="do not divide"):
        make_mesh(3, -1, 1)


def test_the_trainer_names_its_mesh_and_an_unapplied_cpu_device_count():
    from prx_jax.config import load_config
    from prx_jax.train.loop import describe_mesh

    mesh = make_mesh(2, -1, 1)
    line = describe_mesh(load_config(None, []), mesh)
    assert line == "mesh data=2 fsdp=4 tensor=1 over 8 of 8 cpu devices (1 process)"
    asked = describe_mesh(load_config(None, ["mesh.cpu_devices=2"]), mesh)
    assert asked.startswith(line) and "mesh.cpu_devices=2 not applied" in asked
    assert describe_mesh(load_config(None, ["mesh.cpu_devices=8"]), mesh) == line
