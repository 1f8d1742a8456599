"""XLA flags the entry points add before JAX starts its backends (``python -m prx_jax.train`` and
``python -m prx_jax.sample``; library calls and tests are left alone).

``--xla_cpu_experimental_ynn_fusion_type=`` (empty: no YNNPACK fusions) sends XLA:CPU's small
matmuls to its own dot emitter instead of YNNPACK. On a 2-core AMD EPYC (Zen 3, AVX2) the demo
step's matmuls took 69 ms of thread time instead of 119 ms (a profile of 10 steps), and the step
about 15% less wall time; on an AMX Intel CPU an earlier session saw no difference. The flag only
concerns the CPU backend, so GPU and TPU runs are unaffected.

A flag already named in ``XLA_FLAGS`` (with any value) is kept as the user set it, and
``PRX_JAX_XLA_DEFAULTS=0`` turns the defaults off. XLA aborts the process on a flag it does not
know, so the defaults are added only for the jaxlib releases they were checked on
(``CHECKED_JAXLIB``; ``tests/unit/test_xla_flags.py`` compiles with them on the installed one).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULT_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=",)
CHECKED_JAXLIB: tuple[str, ...] = ("0.10.",)  # version prefixes


def _jaxlib_version() -> str:
    from jaxlib import version

    return version.__version__


def with_default_flags(xla_flags: str, defaults: tuple[str, ...] = DEFAULT_FLAGS) -> str:
    """``xla_flags`` plus each default whose flag name it does not already contain."""
    out = xla_flags.split()
    for flag in defaults:
        name = flag.split("=", 1)[0]
        if not any(f.split("=", 1)[0] == name for f in out):
            out.append(flag)
    return " ".join(out)


CPU_DEVICES = "--xla_force_host_platform_device_count"


def apply_cpu_devices(n: int, env: MutableMapping[str, str] = os.environ) -> bool:
    """Asks XLA:CPU for ``n`` host devices (``mesh.cpu_devices``) unless ``XLA_FLAGS`` names a
    count already; ``n == 0`` does nothing. Returns whether the flag was added."""
    if n <= 0:
        return False
    before = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = with_default_flags(before, (f"{CPU_DEVICES}={n}",))
    return env["XLA_FLAGS"] != before


def apply_default_flags(env: MutableMapping[str, str] = os.environ) -> None:
    """Adds the defaults to ``env["XLA_FLAGS"]``; effective only before JAX's first device use."""
    if env.get("PRX_JAX_XLA_DEFAULTS", "1") == "0":
        return
    if not _jaxlib_version().startswith(CHECKED_JAXLIB):
        return
    env["XLA_FLAGS"] = with_default_flags(env.get("XLA_FLAGS", ""))
