"""The record format of a prepared dataset and its ArrayRecord shard files.

A record is msgpack of `{"image": bytes, "format": "jpeg"|"png", "captions": {key: str},
"width", "height" (bucket size), "original_width", "original_height", "key": source id}`.
Shards live in `OUT/bucket_{W}x{H}/shard-{chunk:05d}.array_record`, one per bucket and prepare
chunk; they are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack

from prx_jax.data.buckets import Size, parse_bucket_name

SHARD_SUFFIX = ".array_record"


def pack(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    """Decode one record; raises ValueError on anything that is not a well-formed record."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"record is not valid msgpack: {e}") from e
    missing = {"image", "captions", "width", "height"} - set(
        record if isinstance(record, dict) else ()
    )
    if missing:
        raise ValueError(f"record lacks {sorted(missing)}")
    return record


def write_shard(path: Path, records: list[bytes]) -> None:
    """Write `records` to `path` atomically (temporary file, then rename)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for rec in records:
        writer.write(rec)
    writer.close()
    os.replace(tmp, path)


def read_shard(path: Path) -> list[bytes]:
    """All records of one shard (for tests and inspection; training reads through Grain)."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(path))
    try:
        return list(reader.read_all())
    finally:
        reader.close()


def list_shards(root: Path) -> dict[Size, list[Path]]:
    """Bucket size -> its shard files (sorted) under a prepared dataset root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"prepared dataset folder not found: {root}")
    out: dict[Size, list[Path]] = {}
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and sub.name.startswith("bucket_"):
            shards = sorted(sub.glob(f"*{SHARD_SUFFIX}"))
            if shards:
                out[parse_bucket_name(sub.name)] = shards
    if not out:
        raise FileNotFoundError(f"no bucket_*/*{SHARD_SUFFIX} shards under {root}")
    return out
