"""The demo's training loop fed three ways, interleaved in one process: img/s per variant.

    python benchmarks/demo_feed_ab.py [--reps 4] [--block 120] [--keep-memory 0|1] [overrides ...]

Builds the train step of ``configs/demo.yaml`` as ``python -m prx_jax.train`` does (two CPU devices,
the entry point's XLA flags), then runs blocks of ``--block`` steps, cycling through:

* ``normal``: the real demo pipeline with ``data.thread_priority=normal``;
* ``idle``: the real pipeline with ``data.thread_priority=idle`` (the CPU default, ``auto``);
* ``cached``: 32 batches already on device, over and over (no data work at all: the ceiling).

This machine's speed drifts by ±15% over minutes, so variants are compared block by block in one
process, never across runs. ``--keep-memory`` applies (1) or skips (0) ``prx_jax.host_memory``'s
malloc settings for the whole process; being process-wide, that comparison takes two runs
(alternate them). Appends one JSON line to ``benchmarks/results/demo_feed_ab.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time

from prx_jax.xla_flags import apply_cpu_devices, apply_default_flags


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--block", type=int, default=120, help="steps per block")
    p.add_argument("--keep-memory", type=int, default=1, choices=(0, 1))
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = p.parse_args(argv)

    from prx_jax.config import load_config

    cfg = load_config("configs/demo.yaml", ["run_dir=/tmp/demo_feed_ab", *args.overrides])
    apply_default_flags()
    apply_cpu_devices(cfg.mesh.cpu_devices)
    import jax
    from common import append_result, environment

    from prx_jax.data import make_pipeline
    from prx_jax.host_memory import keep_freed_memory
    from prx_jax.train.loop import setup
    from prx_jax.train.prefetch import Prefetcher

    if args.keep_memory:
        keep_freed_memory()
    run = setup(cfg)

    def feed(priority: str):
        data = dataclasses.replace(cfg.data, thread_priority=priority)
        return Prefetcher(make_pipeline(data, batch_sharding=run.batch_sharding), run.device_batch)

    feeds = {"normal": feed("normal"), "idle": feed("idle")}
    cache = [next(feeds["normal"]) for _ in range(32)]
    feeds["cached"] = (cache[i % 32] for i in itertools.count())
    state = run.state
    for _ in range(30):  # compile and warm up
        state, _ = run.step_fn(state, next(feeds["normal"]), run.frozen)
    jax.block_until_ready(state)
    rates: dict[str, list[float]] = {k: [] for k in feeds}
    for rep in range(args.reps):
        order = list(feeds) if rep % 2 == 0 else list(reversed(feeds))
        for name in order:
            t = time.perf_counter()
            for _ in range(args.block):
                state, _ = run.step_fn(state, next(feeds[name]), run.frozen)
            jax.block_until_ready(state)
            rates[name].append(args.block * cfg.data.global_batch_size / (time.perf_counter() - t))
    summary = {k: round(statistics.mean(v), 1) for k, v in rates.items()}
    for k, v in rates.items():
        print(f"{k:7s} img/s {[round(x) for x in v]}  mean {summary[k]}")
    print(f"idle / normal {summary['idle'] / summary['normal']:.3f}  "
          f"cached / normal {summary['cached'] / summary['normal']:.3f}")  # fmt: skip
    append_result(
        "demo_feed_ab",
        {**environment(), "keep_memory": bool(args.keep_memory), "block": args.block,
         "overrides": args.overrides, "img_per_s": rates, "mean_img_per_s": summary,
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
