#!/bin/bash
# Trains demo variants side by side on one GPU and prints each one's caption accuracy.
#
#   bash benchmarks/demo_sweep.sh STEPS BUDGET_S "name|dotted overrides" ...
#
# Every variant is `python -m prx_jax.train --config configs/demo.yaml` with its overrides, in its
# own process under /tmp/demo_sweep/<name>; add `validation.every=4000 validation.demo_prompts=128`
# to score 128 held-out captions. After BUDGET_S seconds (or when all are done) it prints, per
# variant, the demo_accuracy of every validation and appends one JSON line per variant to
# benchmarks/results/demo_sweep.jsonl. Autotuning is off (ten processes compiling at once with it
# took over six minutes on an H100) and fp32 matmuls use full precision, as on CPU.
set -u
STEPS=$1; BUDGET=$2; shift 2
T0=$(date +%s)
PY=${PYTHON:-python3}
R=/tmp/demo_sweep; mkdir -p "$R"
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0"
for spec in "$@"; do
  name=${spec%%|*}; ov=${spec#*|}
  rm -rf "${R:?}/$name"
  # shellcheck disable=SC2086
  $PY -m prx_jax.train --config configs/demo.yaml run_dir="$R/$name" train.steps="$STEPS" $ov \
    > "$R/$name.log" 2>&1 &
  sleep 1
done
while [ "$(jobs -r | wc -l)" -gt 0 ] && [ $(( $(date +%s) - T0 )) -lt "$BUDGET" ]; do sleep 5; done
for spec in "$@"; do
  name=${spec%%|*}; ov=${spec#*|}
  $PY - "$R/$name/metrics.jsonl" "$name" "$ov" "$STEPS" <<'PYEOF'
import json, os, sys, time
path, name, ov, steps = sys.argv[1:]
rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
acc = {r["step"]: round(r["demo_accuracy"], 4) for r in rows if "demo_accuracy" in r}
last = max((r["step"] for r in rows), default=0)
row = {"benchmark": "demo_sweep", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "name": name,
       "overrides": ov.split(), "steps": int(steps), "last_step": last, "demo_accuracy": acc}
try:
    import jax
    row["device"] = jax.devices()[0].device_kind
except Exception:
    pass
print(name, "last step", last, "accuracy by step", acc)
with open("benchmarks/results/demo_sweep.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
PYEOF
done
