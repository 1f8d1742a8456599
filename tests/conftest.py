"""Shared test setup: 8 fake CPU devices (sharding is tested everywhere), fp32 matmuls, offline."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

# Parity is judged in true fp32: XLA's CPU default already is, this pins it on every backend.
jax.config.update("jax_default_matmul_precision", "highest")
