"""Input-pipeline throughput: images/s at 512 and 1024 px with 0, 1 and 2 Grain workers, next to the
raw single-thread decode + ArAwareResize rate of the same records.

    python benchmarks/data_throughput.py [--prepared OUT] [--records 96] [--batches 12]

Without --prepared it prepares `demo:N` at 1024 px (JPEG q95) in a temporary folder. Prints a table
and appends one JSON line to benchmarks/results/data_throughput.jsonl. No assertions on speed.
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

from absl import flags

from prx_jax.data import DataConfig, make_pipeline, records, transforms
from prx_jax.data.buckets import bucket_sizes
from prx_jax.data.preparation import PrepareOptions, prepare

RESULTS = Path(__file__).parent / "results" / "data_throughput.jsonl"


def raw_rate(root: Path, resolution: int, repeats: int = 2) -> float:
    """Single-thread images/s of unpack + JPEG decode + ArAwareResize + [-1, 1] float conversion."""
    recs = [
        r for ps in records.list_shards(root).values() for p in ps for r in records.read_shard(p)
    ]
    grid = bucket_sizes(resolution, 32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in recs:
            img = transforms.ar_aware_resize(
                transforms.decode_image(records.unpack(data)["image"]), grid
            )
            transforms.to_model_range(__import__("numpy").asarray(img)[None])
        times.append(time.perf_counter() - start)
    return len(recs) / min(times)


def pipeline_rate(root: Path, resolution: int, workers: int, batches: int, batch: int) -> float:
    cfg = DataConfig(
        source=str(root), resolution=resolution, patch_size=32, global_batch_size=batch,
        worker_count=workers, read_threads=1, prefetch=2,
    )  # fmt: skip
    it = make_pipeline(cfg, process_index=0, process_count=1)
    for _ in range(2 + workers):  # warm up: worker start-up and the first batches
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prepared", default=None, help="a prepared dataset (default: demo:N)")
    p.add_argument("--records", type=int, default=96, help="N of demo:N when not --prepared")
    p.add_argument("--batches", type=int, default=16, help="timed batches per setting")
    p.add_argument("--batch", type=int, default=4, help="global batch size")
    args = p.parse_args()
    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()
    tmp = None
    root = Path(args.prepared) if args.prepared else None
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        opts = PrepareOptions(resolution=1024, patch_size=32, near_dup_threshold=-1)
        prepare(f"demo:{args.records}", root, opts, workers=0, progress=False)
    rows = []
    for res in (512, 1024):
        raw = raw_rate(root, res)
        for w in (0, 1, 2):
            rates = [pipeline_rate(root, res, w, args.batches, args.batch) for _ in range(2)]
            rate = statistics.median(rates)
            rows.append({"resolution": res, "workers": w, "images_per_s": round(rate, 1),
                         "raw_single_thread_images_per_s": round(raw, 1),
                         "ratio_to_raw": round(rate / raw, 3)})  # fmt: skip
            print(f"{res:>5} px  workers={w}  pipeline {rate:7.1f} img/s   "
                  f"raw decode+resize {raw:7.1f} img/s   ratio {rate / raw:.2f}")  # fmt: skip
    line = {
        "benchmark": "data_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "source": args.prepared or f"demo:{args.records} prepared at 1024 px, JPEG q95",
        "batch": args.batch,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
