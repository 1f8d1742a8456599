"""`prepare`: any SOURCE -> curated, aspect-ratio-bucketed ArrayRecord shards plus manifest.json.

The source is cut into chunks of `chunk_size` items, processed in order. Worker processes decode,
check, hash, resize (LANCZOS, to the PRX bucket closest in aspect ratio at `resolution`) and encode;
the main process de-duplicates (exact pixel hash, then 64-bit pHash within `near_dup_threshold`
bits), writes one shard per bucket and chunk, and finally a marker `_prepare/chunk-NNNNN.json` with
the chunk's counts and hashes. A rerun skips every chunk that has a marker, so an interrupted run
resumes where it stopped, with the same result.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import platform
import time
from collections import Counter
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from prx_jax.data import demo, images, records
from prx_jax.data.buckets import Size, bucket_name, bucket_sizes, closest_bucket
from prx_jax.data.sources import RawItem, iter_source

SKIP_REASONS = (
    "unreadable_image",  # not an image file, or the file could not be read
    "corrupt_image",  # the decoder failed part-way
    "truncated_image",  # the file ends early
    "decompression_bomb",  # more pixels than max_pixels
    "missing_caption",  # no caption column / sidecar at all
    "empty_caption",  # caption columns present but all empty
    "too_small",  # smaller side below min_side
    "aspect_ratio",  # w / h outside [min_aspect, max_aspect]
    "duplicate",  # same decoded pixels as an earlier record
    "near_duplicate",  # pHash within near_dup_threshold bits of an earlier record
)


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    resolution: int = 1024  # base resolution of the bucket grid images are resized to
    patch_size: int = 32  # bucket sides are multiples of this (PRX: 32 px)
    min_side: int = 256  # drop images whose smaller side is below this
    min_aspect: float = 0.5  # drop images with w / h below this ...
    max_aspect: float = 2.0  # ... or above this
    max_pixels: int = images.DEFAULT_MAX_PIXELS  # refuse larger images (decompression bombs)
    image_format: str = "jpeg"  # "jpeg" or "png"
    quality: int = 95  # JPEG quality
    caption_keys: tuple[str, ...] = ()  # caption columns to keep; () = auto (caption*, prompt, ...)
    image_column: str | None = None  # image column of a manifest / dataset; None = auto
    split: str = "train"  # split of a saved or hub dataset
    dedup: bool = True  # drop exact duplicates (same decoded pixels)
    near_dup_threshold: int = 6  # pHash bits (of 64) that may differ in a near-duplicate; -1 = off
    chunk_size: int = 1000  # source items per resumable chunk (and per shard file)
    demo_seed: int = 0  # seed of `demo:COUNT` sources

    def __post_init__(self):
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")
        if not 0 < self.min_aspect <= 1 <= self.max_aspect:
            raise ValueError(f"need 0 < min_aspect <= 1 <= max_aspect: {self}")
        if self.chunk_size < 1 or self.min_side < 1:
            raise ValueError("chunk_size and min_side must be >= 1")
        if not -1 <= self.near_dup_threshold <= 31:
            raise ValueError(
                f"near_dup_threshold must be in [-1, 31], got {self.near_dup_threshold}"
            )
        bucket_sizes(self.resolution, self.patch_size)  # validates resolution / patch_size


def process_item(item: RawItem, opts: PrepareOptions) -> tuple[str, dict[str, Any] | str]:
    """("ok", processed fields) or ("skip", reason). Runs in worker processes."""
    if item.captions is None:
        return "skip", "missing_caption"
    captions = {k: v.strip() for k, v in item.captions.items()}
    if not any(captions.values()):
        return "skip", "empty_caption"
    buckets = bucket_sizes(opts.resolution, opts.patch_size)
    try:
        if item.demo is not None:
            seed, index = item.demo
            # Spread demo images over the buckets whose aspect ratio passes the filter.
            ok = [b for b in buckets if opts.min_aspect <= b[0] / b[1] <= opts.max_aspect]
            size = ok[(index * 7919) % len(ok)]
            img = images.Image.fromarray(demo.render(demo.sample_scene(seed, index), *size))
        else:
            data = item.data
            if data is None:
                try:
                    data = Path(item.path).read_bytes()
                except OSError as e:
                    raise images.SkipRecord("unreadable_image", str(e)) from e
            img = images.load_rgb(data, opts.max_pixels)
    except images.SkipRecord as e:
        return "skip", e.reason
    w, h = img.size
    if min(w, h) < opts.min_side:
        return "skip", "too_small"
    if not opts.min_aspect <= w / h <= opts.max_aspect:
        return "skip", "aspect_ratio"
    bucket = closest_bucket(w, h, buckets)
    fields = {
        "record": {
            "image": images.encode(images.resize(img, bucket), opts.image_format, opts.quality),
            "format": opts.image_format,
            "captions": captions,
            "width": bucket[0],
            "height": bucket[1],
            "original_width": w,
            "original_height": h,
            "key": item.key,
        },
        "bucket": bucket,
        "hash": images.content_hash(img) if opts.dedup else "",
        "phash": images.perceptual_hash(img) if opts.near_dup_threshold >= 0 else 0,
    }
    return "ok", fields


def _process_packed(args: tuple[RawItem, PrepareOptions]) -> tuple[str, dict[str, Any] | str]:
    return process_item(*args)


class _NearDupIndex:
    """pHashes split into threshold+1 bands: a match within `threshold` bits shares one band."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        n = threshold + 1
        self.bands = [(64 * i // n, 64 * (i + 1) // n) for i in range(n)]
        self.table: dict[tuple[int, int], list[int]] = {}

    def _keys(self, h: int) -> list[tuple[int, int]]:
        return [(i, (h >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(self.bands)]

    def contains(self, h: int) -> bool:
        return any(
            images.hamming(h, other) <= self.threshold
            for key in self._keys(h)
            for other in self.table.get(key, ())
        )

    def add(self, h: int) -> None:
        for key in self._keys(h):
            self.table.setdefault(key, []).append(h)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("prx_jax", "numpy", "pillow", "array_record", "grain", "msgpack", "datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _options_record(source: str, opts: PrepareOptions) -> dict[str, Any]:
    return {"source": source, "options": dataclasses.asdict(opts)}


def _check_options(out: Path, source: str, opts: PrepareOptions) -> None:
    path = out / "_prepare" / "options.json"
    want = json.loads(json.dumps(_options_record(source, opts)))
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            raise ValueError(
                f"{out} was prepared with different source/options:\n  before: {have}\n"
                f"  now:    {want}\nuse another OUT folder, or delete this one to start over"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(want, indent=2))


def _chunks(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def prepare(
    source: str, out: str | Path, opts: PrepareOptions, *, workers: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Prepare `source` into `out`; returns the manifest (also written to out/manifest.json)."""
    out = Path(out)
    items, total = iter_source(
        source, caption_keys=opts.caption_keys, image_column=opts.image_column,
        split=opts.split, demo_seed=opts.demo_seed,
    )  # fmt: skip
    _check_options(out, source, opts)
    seen: set[str] = set()
    near = _NearDupIndex(opts.near_dup_threshold) if opts.near_dup_threshold >= 0 else None
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold jax threads
    pool = ctx.Pool(workers) if workers > 0 else None
    started = time.time()
    bar = tqdm(total=total, unit="img", desc="prepare", disable=not progress)
    try:
        for index, chunk in enumerate(_chunks(items, opts.chunk_size)):
            marker = out / "_prepare" / f"chunk-{index:05d}.json"
            if marker.exists():
                done = json.loads(marker.read_text())
                seen.update(done["hashes"])
                for h in done["phashes"] if near else ():
                    near.add(h)
                bar.update(len(chunk))
                continue
            args = [(item, opts) for item in chunk]
            if pool:
                results = pool.imap(_process_packed, args, chunksize=4)
            else:
                results = map(_process_packed, args)
            _write_chunk(out, index, results, seen, near, bar)
    finally:
        bar.close()
        if pool:
            pool.terminate()
    manifest = _write_manifest(out, source, opts, time.time() - started)
    return manifest


def _write_chunk(out, index, results, seen, near, bar) -> None:
    skipped: Counter[str] = Counter()
    per_bucket: dict[Size, list[bytes]] = {}
    hashes, phashes, caption_keys = [], [], set()
    for status, fields in results:
        bar.update(1)
        if status == "skip":
            skipped[fields] += 1
            continue
        if fields["hash"] and fields["hash"] in seen:
            skipped["duplicate"] += 1
            continue
        if near is not None and near.contains(fields["phash"]):
            skipped["near_duplicate"] += 1
            continue
        if fields["hash"]:
            seen.add(fields["hash"])
            hashes.append(fields["hash"])
        if near is not None:
            near.add(fields["phash"])
            phashes.append(fields["phash"])
        caption_keys.update(fields["record"]["captions"])
        per_bucket.setdefault(tuple(fields["bucket"]), []).append(records.pack(fields["record"]))
    shards = []
    for bucket, recs in sorted(per_bucket.items()):
        path = out / bucket_name(bucket) / f"shard-{index:05d}{records.SHARD_SUFFIX}"
        records.write_shard(path, recs)
        shards.append(str(path.relative_to(out)))
    done = {
        "buckets": {bucket_name(b): len(r) for b, r in sorted(per_bucket.items())},
        "skipped": dict(skipped),
        "caption_keys": sorted(caption_keys),
        "shards": shards,
        "hashes": hashes,
        "phashes": phashes,
    }
    marker = out / "_prepare" / f"chunk-{index:05d}.json"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(done))
    tmp.replace(marker)


def _write_manifest(out: Path, source: str, opts: PrepareOptions, seconds: float) -> dict:
    buckets: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    caption_keys: set[str] = set()
    shards: list[str] = []
    for marker in sorted((out / "_prepare").glob("chunk-*.json")):
        done = json.loads(marker.read_text())
        buckets.update(done["buckets"])
        skipped.update(done["skipped"])
        caption_keys.update(done["caption_keys"])
        shards += done["shards"]
    manifest = {
        "format": "prx_jax.prepared/1",
        "num_records": sum(buckets.values()),
        "buckets": dict(sorted(buckets.items())),
        "caption_keys": sorted(caption_keys),
        "skipped": {r: skipped[r] for r in SKIP_REASONS if skipped[r]},
        "num_skipped": sum(skipped.values()),
        "num_shards": len(shards),
        **_options_record(source, opts),
        "versions": _versions(),
        "seconds_this_run": round(seconds, 2),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def report(manifest: dict[str, Any], out: str | Path) -> str:
    """The short human-readable summary printed at the end of `python -m prx_jax.prepare`."""
    opts = manifest["options"]
    lines = [
        f"prepared {manifest['source']} -> {out}",
        f"  kept     {manifest['num_records']} records in {len(manifest['buckets'])} buckets, "
        f"{manifest['num_shards']} shards ({opts['image_format']}, base {opts['resolution']} px, "
        f"patch {opts['patch_size']})",
        f"  skipped  {manifest['num_skipped']}"
        + "".join(f"\n    {r:<20}{n}" for r, n in manifest["skipped"].items()),
        "  buckets  " + ", ".join(f"{k[7:]}: {v}" for k, v in manifest["buckets"].items()),
        f"  captions {', '.join(manifest['caption_keys']) or '-'}",
        f"  time     {manifest['seconds_this_run']} s",
    ]
    return "\n".join(lines)
