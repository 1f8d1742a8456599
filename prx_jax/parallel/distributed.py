"""Multi-process start-up: ``jax.distributed.initialize()`` when launched on several hosts.

Detected, in order: explicit ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` +
``JAX_PROCESS_ID`` (any cluster; the plain launcher in ``launch/``); SLURM with more than one
task (JAX reads the SLURM variables itself); TPU VM pods (``TPU_WORKER_HOSTNAMES`` lists several
workers; JAX reads the TPU metadata). A single-process run does nothing.
"""

from __future__ import annotations

import os

import jax


def launched_multiprocess(env=os.environ) -> str | None:
    """The kind of multi-process launch the environment describes, or None."""
    if env.get("JAX_COORDINATOR_ADDRESS") and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
        return "explicit"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return None


def maybe_initialize(env=os.environ) -> bool:
    """Initialises ``jax.distributed`` for a multi-process launch; True when it did."""
    kind = launched_multiprocess(env)
    if kind is None or jax.distributed.is_initialized():
        return False
    if kind == "explicit":
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()  # SLURM and TPU pods are auto-detected by JAX
    return True
