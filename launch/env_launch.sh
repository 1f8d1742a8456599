#!/usr/bin/env bash
# Plain multi-process launcher for any cluster: run this on every host with its own process id.
#
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=4 PROCESS_ID=0 launch/env_launch.sh --config ...
#
# It exports JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which prx_jax passes
# to jax.distributed.initialize(). Each process uses every local accelerator; logs go to
# logs/process-$PROCESS_ID.log (only process 0 writes metrics, samples and TensorBoard).
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=host:port of process 0}"
: "${NUM_PROCESSES:?set NUM_PROCESSES}"
: "${PROCESS_ID:?set PROCESS_ID (0 .. NUM_PROCESSES-1)}"
cd "$(dirname "$0")/.."
mkdir -p logs
export JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$NUM_PROCESSES JAX_PROCESS_ID=$PROCESS_ID
.venv/bin/python -m prx_jax.train "$@" 2>&1 | tee "logs/process-$PROCESS_ID.log"
