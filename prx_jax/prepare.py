"""`python -m prx_jax.prepare SOURCE OUT [options]`: curate and bucket a dataset for training.

SOURCE: an image folder with .txt/.json sidecars, a .jsonl/.csv/.parquet/.arrow manifest (or glob),
a `save_to_disk` dataset folder, WebDataset .tar shards (path or glob), `hf:NAME` or `demo:COUNT`.
Exits 0 when it finished, even if records were skipped (they are counted in the report and in
OUT/manifest.json). See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys

from prx_jax.data.preparation import PrepareOptions, prepare, report


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PrepareOptions]:
    d = PrepareOptions()
    p = argparse.ArgumentParser(
        prog="python -m prx_jax.prepare", description=__doc__.split("\n")[0]
    )
    p.add_argument("source", help="folder, manifest, tar path/glob, saved dataset, hf:NAME, demo:N")
    p.add_argument("out", help="output folder (rerun with the same arguments to resume)")
    p.add_argument("--resolution", type=int, default=d.resolution, help="base bucket resolution")
    p.add_argument("--patch-size", type=int, default=d.patch_size, help="bucket side multiple")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: in-process)")
    p.add_argument(
        "--min-side",
        type=int,
        default=None,
        help=f"drop images whose smaller side is below this (default {d.min_side}; for demo:N, "
        "which renders at the bucket size, no limit)",
    )
    p.add_argument("--min-aspect", type=float, default=d.min_aspect, help="lowest kept w/h")
    p.add_argument("--max-aspect", type=float, default=d.max_aspect, help="highest kept w/h")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="decompression-bomb limit")
    p.add_argument("--format", dest="image_format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality")
    p.add_argument("--caption-keys", default="", help="comma-separated caption columns (auto)")
    p.add_argument("--image-column", default=None, help="image column of a manifest (auto)")
    p.add_argument("--split", default=d.split, help="split of a saved / hub dataset")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    p.add_argument(
        "--near-dup-threshold",
        type=int,
        default=None,
        help=f"pHash bits for a near-duplicate; -1 = off (default {d.near_dup_threshold}, "
        "off for demo:N whose layouts repeat by design)",
    )
    p.add_argument("--chunk-size", type=int, default=d.chunk_size, help="items per resumable chunk")
    p.add_argument("--demo-seed", type=int, default=d.demo_seed, help="seed of demo:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    is_demo = args.source.startswith("demo:")
    near = args.near_dup_threshold
    if near is None:
        near = -1 if is_demo else d.near_dup_threshold
    min_side = args.min_side if args.min_side is not None else (1 if is_demo else d.min_side)
    opts = PrepareOptions(
        resolution=args.resolution,
        patch_size=args.patch_size,
        min_side=min_side,
        min_aspect=args.min_aspect,
        max_aspect=args.max_aspect,
        max_pixels=args.max_pixels,
        image_format=args.image_format,
        quality=args.quality,
        caption_keys=tuple(k for k in args.caption_keys.split(",") if k),
        image_column=args.image_column,
        split=args.split,
        dedup=not args.no_dedup,
        near_dup_threshold=near,
        chunk_size=args.chunk_size,
        demo_seed=args.demo_seed,
    )
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    manifest = prepare(args.source, args.out, opts, workers=args.workers, progress=not args.quiet)
    print(report(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
