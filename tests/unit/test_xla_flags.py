"""The entry points' default XLA flags: merged without overriding the user's, and accepted by the
installed jaxlib (XLA aborts on an unknown flag, so a jax upgrade that drops one fails here)."""

import os
import subprocess
import sys
from pathlib import Path

from prx_jax import xla_flags
from prx_jax.xla_flags import DEFAULT_FLAGS, apply_default_flags, with_default_flags

ROOT = Path(__file__).resolve().parents[2]
YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_appended_once_and_user_values_win():
    assert with_default_flags("") == f"{YNN}="
    merged = with_default_flags("--xla_force_host_platform_device_count=8")
    assert merged == f"--xla_force_host_platform_device_count=8 {YNN}="
    assert with_default_flags(merged) == merged
    mine = f"{YNN}=LIBRARY_FUSION_TYPE_DOT"
    assert with_default_flags(mine) == mine


def test_opt_out_and_unchecked_jaxlib_leave_the_flags_alone(monkeypatch):
    env = {"XLA_FLAGS": "--a=1", "PRX_JAX_XLA_DEFAULTS": "0"}
    apply_default_flags(env)
    assert env["XLA_FLAGS"] == "--a=1"
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "99.0.0")
    env = {"XLA_FLAGS": "--a=1"}
    apply_default_flags(env)
    assert env["XLA_FLAGS"] == "--a=1"
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.10.2")
    apply_default_flags(env)
    assert env["XLA_FLAGS"] == f"--a=1 {YNN}="


def test_installed_jaxlib_accepts_the_defaults_and_drops_ynnpack_dots():
    code = (
        "import jax, jax.numpy as jnp\n"
        "f = jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 16)), jnp.ones((16, 24))).compile()\n"
        "print('YNN' if 'ynn' in f.as_text() else 'NO-YNN')\n"
    )
    env = dict(os.environ, XLA_FLAGS=" ".join(DEFAULT_FLAGS), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "NO-YNN"


def test_cpu_device_count_is_added_unless_the_user_names_one():
    env = {"XLA_FLAGS": f"{YNN}="}
    assert xla_flags.apply_cpu_devices(2, env)
    assert env["XLA_FLAGS"] == f"{YNN}= --xla_force_host_platform_device_count=2"
    assert not xla_flags.apply_cpu_devices(4, env)  # already set: the first count stays
    assert env["XLA_FLAGS"].count("device_count") == 1
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert not xla_flags.apply_cpu_devices(2, env) and env["XLA_FLAGS"].endswith("=8")
    env = {}
    assert not xla_flags.apply_cpu_devices(0, env) and env == {}
