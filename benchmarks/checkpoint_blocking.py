"""How long an asynchronous checkpoint save blocks the training loop, for a preset's train state.

    python benchmarks/checkpoint_blocking.py --preset prx-pixel-small [--depth 4] [--optim adamw]

Builds the sharded train state (fp32 params, optimizer state, EMA) on the local devices, then
times ``Checkpointer.save`` (what the loop waits for: the device-to-host copy) and the time until
the save is committed, over ``--saves`` saves. ``--depth`` shrinks the model to fit a small host;
the blocking time scales with the state's bytes. Appends one JSON line to
benchmarks/results/checkpoint_blocking.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax

from prx_jax.config import load_config
from prx_jax.train.checkpoint import Checkpointer
from prx_jax.train.loop import setup


class _NoData:  # grain's CheckpointSave needs get_state(); the loop saves the real iterator
    def get_state(self):
        return json.dumps({"next_step": 0}).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="prx-pixel-small")
    p.add_argument("--depth", type=int, default=None, help="override the number of blocks")
    p.add_argument("--optim", default="adamw", choices=["adamw", "muon"])
    p.add_argument("--saves", type=int, default=3)
    args = p.parse_args()
    over = [
        f"model.preset={args.preset}", "model.in_channels=null", "model.patch_size=null",
        "model.hidden_size=null", "model.num_heads=null", "model.axes_dim=null",
        "model.mlp_ratio=null", f"model.depth={'null' if args.depth is None else args.depth}",
        f"optim.name={args.optim}", "validation.every=0", "mesh.fsdp=-1", "data.resolution=512",
        "data.global_batch_size=1",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", over)
        run = setup(cfg)
        nbytes = sum(x.nbytes for x in jax.tree.leaves(run.state))
        ckpt = Checkpointer(Path(tmp), keep=1)
        blocking, total = [], []
        for i in range(args.saves):
            t0 = time.perf_counter()
            ckpt.save(i + 1, run.state, _NoData())
            blocking.append(time.perf_counter() - t0)
            ckpt.wait()
            total.append(time.perf_counter() - t0)
        ckpt.close()
    row = {
        "script": "checkpoint_blocking",
        "preset": args.preset,
        "depth": run.prx.depth,
        "optim": args.optim,
        "params": sum(x.size for x in jax.tree.leaves(run.state.params)),
        "state_gb": round(nbytes / 1e9, 3),
        "blocking_s": [round(b, 3) for b in blocking],
        "blocking_median_s": round(statistics.median(blocking), 3),
        "committed_median_s": round(statistics.median(total), 3),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "host": platform.node(),
        "load_avg": os.getloadavg()[0],
    }
    print(json.dumps(row))
    out = Path(__file__).resolve().parent / "results" / "checkpoint_blocking.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
