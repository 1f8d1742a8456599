"""A strict, streaming safetensors reader and writer (no torch, no pickle, no mmap).

Tensors are read one at a time with ``pread`` into fresh buffers, so peak memory is what the caller
keeps plus one tensor (an mmap would count the whole file in RSS once touched). A truncated or
malformed file is an error that names the file. Sharded checkpoints go through ``*.index.json``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_NAMES = ("F64", "F32", "F16", "BF16")


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise SafetensorsError(f"{path}: truncated or not a safetensors file (header {n} B)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def read_index(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Every tensor of one ``.safetensors`` file, or of all shards named by an ``.index.json``."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SafetensorsError(f"{path}: index has no 'weight_map'")
        out: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path.parent / shard
            if not shard_path.exists():
                raise SafetensorsError(f"{path}: shard {shard} is missing")
            for k, info in read_index(shard_path).items():
                if k in out:
                    raise SafetensorsError(f"{path}: tensor {k} appears in two shards")
                if weight_map.get(k) != shard:
                    raise SafetensorsError(
                        f"{path}: tensor {k} is in {shard}, index says otherwise"
                    )
                out[k] = info
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise SafetensorsError(f"{path}: tensors listed but absent from shards: {missing[:10]}")
        return out
    header, base = _read_header(path)
    size = path.stat().st_size
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (a, b) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if b - a != int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize:
            raise SafetensorsError(f"{path}: tensor {name} byte range does not match its shape")
        if base + b > size:
            raise SafetensorsError(
                f"{path}: truncated file: tensor {name} ends at byte {base + b}, file has {size}"
            )
        out[name] = TensorInfo(dtype, shape, path, base + a, b - a)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a fresh, writable numpy array."""
    buf = bytearray(info.nbytes)
    with open(info.file, "rb", buffering=0) as f:
        view = memoryview(buf)
        done = 0
        while done < info.nbytes:
            n = os.preadv(f.fileno(), [view[done:]], info.start + done)
            if n <= 0:
                raise SafetensorsError(f"{info.file}: unexpected end of file")
            done += n
    return np.frombuffer(buf, DTYPES[info.dtype]).reshape(info.shape)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # called once, at write time

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def write_file(path: Path, tensors: list[PlannedTensor], metadata: Mapping[str, str]) -> None:
    """Writes one safetensors file, producing each tensor only when its bytes are due."""
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            arr = np.ascontiguousarray(t.produce())
            if arr.shape != t.shape or arr.dtype != t.dtype:
                raise ValueError(f"{t.name}: produced {arr.shape} {arr.dtype}, planned {t.shape}")
            f.write(arr.tobytes())
            del arr
    os.replace(tmp, path)


def parse_size(size: int | str) -> int:
    """``10GB`` / ``300KB`` / ``5MiB`` / bytes -> bytes (diffusers' decimal units)."""
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    for u, m in units.items():
        if s.endswith(u):
            return int(float(s[: -len(u)]) * m)
    if s.endswith("B"):
        s = s[:-1]
    return int(s)


def write_sharded(
    out_dir: Path,
    stem: str,
    tensors: Iterable[PlannedTensor],
    *,
    max_shard_size: int | str = "10GB",
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """``{stem}.safetensors``, or ``{stem}-0000K-of-0000N.safetensors`` + ``.index.json`` above the
    size limit (diffusers' layout). Returns the files written."""
    limit = parse_size(max_shard_size)
    metadata = {"format": "pt", **(metadata or {})}
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        path = out_dir / f"{stem}.safetensors"
        write_file(path, shards[0], metadata)
        return [path]
    n = len(shards)
    written, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards, 1):
        path = out_dir / f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        write_file(path, shard, metadata)
        written.append(path)
        for t in shard:
            weight_map[t.name] = path.name
            total += t.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index_path = out_dir / f"{stem}.safetensors.index.json"
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return [*written, index_path]
