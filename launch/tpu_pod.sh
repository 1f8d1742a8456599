#!/usr/bin/env bash
# Runs the same prx_jax command on every worker of a TPU VM pod, with environment and logs.
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- --config configs/speedrun-512.yaml data.source=...
#
# Every worker must hold the repository at $REPO (default: this checkout's path) with its
# virtualenv in $REPO/.venv; SETUP=1 creates it there first (pip install -e '.[hf]' 'jax[tpu]').
# JAX discovers the pod itself: jax.distributed.initialize() needs no arguments on TPU VMs.
# Environment for the workers: WORKER_ENV="KEY=VALUE KEY2=VALUE2". Project: CLOUDSDK_CORE_PROJECT.
# Logs: each worker writes $REPO/logs/<run>/<hostname>.log; this terminal shows every worker's
# lines prefixed with its hostname (gcloud ... --worker=all).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 TPU_NAME ZONE -- TRAIN_ARGS..." >&2; exit 2; }
TPU=$1; ZONE=$2; shift 2
[ "${1:-}" = "--" ] && shift
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
RUN=${RUN_NAME:-$TPU-$(date +%Y%m%d-%H%M%S)}
ARGS=$(printf '%q ' "$@")
SETUP_CMD=":"
if [ "${SETUP:-0}" = "1" ]; then
  SETUP_CMD="python3 -m venv .venv && .venv/bin/pip install -q -e '.[hf]' 'jax[tpu]'"
fi
REMOTE="cd $REPO && mkdir -p logs/$RUN && $SETUP_CMD && \
env ${WORKER_ENV:-} .venv/bin/python -m prx_jax.train $ARGS 2>&1 \
| tee logs/$RUN/\$(hostname).log | sed -u \"s/^/[\$(hostname)] /\"; exit \${PIPESTATUS[0]}"
echo "launching on every worker of $TPU ($ZONE); worker logs in $REPO/logs/$RUN/"
exec gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE"
