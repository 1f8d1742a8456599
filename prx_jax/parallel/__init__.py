"""Device meshes, the logical-axis rules table and sharding helpers."""

from prx_jax.parallel.rules import (
    DEFAULT_RULES,
    make_mesh,
    param_shardings,
    shard_module,
    spec_for,
)

__all__ = ["DEFAULT_RULES", "make_mesh", "param_shardings", "shard_module", "spec_for"]
