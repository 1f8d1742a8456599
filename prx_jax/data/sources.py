"""Inputs of `prx_jax.prepare`: every kind of SOURCE becomes an ordered stream of `RawItem`s.

SOURCE is one of: a folder of images with `.txt` / `.json` caption sidecars; a `.jsonl`, `.csv`,
`.parquet` or `.arrow` manifest (or a glob of them, or a folder holding only such files); a Hugging
Face dataset saved with `save_to_disk`; WebDataset `.tar` shards (a path or a glob); `hf:NAME`
(downloaded with `datasets`, needs network); `demo:COUNT` (the built-in demo). The order is
deterministic, which is what makes chunked, resumable preparation possible.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prx_jax.data.demo import sample_scene

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".parquet", ".arrow")
IMAGE_COLUMNS = (
    "image",
    "jpg",
    "jpeg",
    "png",
    "img",
    "image_path",
    "file_name",
    "filename",
    "path",
)
_CAPTION_NAMES = ("caption", "prompt", "text", "txt", "enhanced_prompt", "description")


@dataclasses.dataclass(frozen=True)
class RawItem:
    key: str  # a stable id within the source (path, row number, tar key)
    captions: dict[str, str] | None  # caption columns found; None when the item has none at all
    data: bytes | None = None  # encoded image bytes ...
    path: str | None = None  # ... or a file to read them from
    demo: tuple[int, int] | None = None  # ... or a demo example (seed, index)


def is_caption_key(name: str) -> bool:
    """Default caption-column rule: caption*, *_caption, *_prompt, prompt, text, description."""
    name = name.lower()
    return (
        name in _CAPTION_NAMES
        or name.startswith("caption")
        or name.endswith(("_caption", "_prompt", "_captions"))
    )


def _captions(fields: dict[str, Any], caption_keys: tuple[str, ...]) -> dict[str, str] | None:
    keys = caption_keys or tuple(k for k in fields if is_caption_key(k))
    out = {k: fields[k] for k in keys if isinstance(fields.get(k), str)}
    return out or None


def iter_source(
    source: str,
    *,
    caption_keys: tuple[str, ...] = (),
    image_column: str | None = None,
    split: str = "train",
    demo_seed: int = 0,
) -> tuple[Iterator[RawItem], int | None]:
    """(items, count or None when unknown without reading everything) for a SOURCE string."""
    kw = {"caption_keys": caption_keys, "image_column": image_column}
    if source.startswith("demo:"):
        count = int(source.removeprefix("demo:"))
        items = (
            RawItem(
                f"demo/{i}", {"caption": sample_scene(demo_seed, i).caption}, demo=(demo_seed, i)
            )
            for i in range(count)
        )
        return items, count
    if source.startswith("hf:"):
        return _iter_hf(source.removeprefix("hf:"), split, **kw), None
    path = Path(source)
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            return _iter_saved_dataset(path, split, **kw)
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if images:
            return _iter_folder(path, images, caption_keys), len(images)
        tables = sorted(p for p in path.rglob("*") if p.suffix.lower() in MANIFEST_EXTENSIONS)
        if tables:
            return _iter_manifests(tables, **kw), None
        raise FileNotFoundError(f"{source}: folder holds no images, manifests or saved dataset")
    files = sorted(Path(p) for p in glob.glob(source)) if any(c in source for c in "*?[") else []
    files = files or ([path] if path.is_file() else [])
    if not files:
        raise FileNotFoundError(f"SOURCE not found: {source}")
    if all(f.suffix.lower() == ".tar" for f in files):
        return _iter_tars(files, caption_keys), None
    if all(f.suffix.lower() in MANIFEST_EXTENSIONS for f in files):
        return _iter_manifests(files, **kw), None
    raise ValueError(f"{source}: expected .tar shards or {MANIFEST_EXTENSIONS} manifests")


def _iter_folder(
    root: Path, images: list[Path], caption_keys: tuple[str, ...]
) -> Iterator[RawItem]:
    for img in images:
        fields: dict[str, Any] = {}
        txt, js = img.with_suffix(".txt"), img.with_suffix(".json")
        if js.exists():
            try:
                loaded = json.loads(js.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                loaded = {}  # an unreadable sidecar counts as a missing caption
            fields.update(loaded if isinstance(loaded, dict) else {})
        if txt.exists():
            fields["caption"] = txt.read_text(encoding="utf-8", errors="replace").strip()
        yield RawItem(str(img.relative_to(root)), _captions(fields, caption_keys), path=str(img))


def _iter_tars(tars: list[Path], caption_keys: tuple[str, ...]) -> Iterator[RawItem]:
    """WebDataset: members grouped by key (the path up to the first dot of the file name)."""
    for tar_path in tars:
        with tarfile.open(tar_path, "r|*") as tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                dirname, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{dirname}/{stem}" if dirname else stem
                if k != key and key is not None:
                    yield _tar_item(tar_path, key, group, caption_keys)
                    group = {}
                key = k
                fobj = tar.extractfile(member)
                group[ext.lower()] = fobj.read() if fobj else b""
            if key is not None:
                yield _tar_item(tar_path, key, group, caption_keys)


def _tar_item(tar: Path, key: str, group: dict[str, bytes], keys: tuple[str, ...]) -> RawItem:
    fields: dict[str, Any] = {}
    if "json" in group:
        try:
            loaded = json.loads(group["json"].decode("utf-8"))
            fields.update(loaded if isinstance(loaded, dict) else {})
        except (ValueError, UnicodeDecodeError):
            pass
    for ext in ("txt", "caption"):
        if ext in group:
            fields["caption"] = group[ext].decode("utf-8", errors="replace").strip()
    image = next((group[e] for e in ("jpg", "jpeg", "png", "webp") if e in group), b"")
    return RawItem(f"{tar.name}/{key}", _captions(fields, keys), data=image)


def _pick_image_column(columns: list[str], image_column: str | None, where: str) -> str:
    if image_column:
        if image_column not in columns:
            raise KeyError(f"{where}: no image column {image_column!r}; columns are {columns}")
        return image_column
    for name in IMAGE_COLUMNS:
        if name in columns:
            return name
    raise KeyError(f"{where}: no image column among {columns}; pass --image-column")


def _row_item(
    row: dict[str, Any], key: str, col: str, base: Path, keys: tuple[str, ...]
) -> RawItem:
    value = row.get(col)
    if isinstance(value, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    captions = _captions({k: v for k, v in row.items() if k != col}, keys)
    if isinstance(value, bytes | bytearray):
        return RawItem(key, captions, data=bytes(value))
    if isinstance(value, str) and value:
        if value.startswith(("http://", "https://")):
            raise ValueError(f"{key}: image URLs are not downloaded; fetch them first ({value})")
        p = Path(value)
        return RawItem(key, captions, path=str(p if p.is_absolute() else base / p))
    return RawItem(key, captions, data=b"")


def _iter_manifests(
    files: list[Path], caption_keys: tuple[str, ...], image_column: str | None
) -> Iterator[RawItem]:
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".jsonl":
            rows = (json.loads(line) for line in f.open(encoding="utf-8") if line.strip())
        elif suffix == ".csv":
            rows = csv.DictReader(f.open(encoding="utf-8", newline=""))
        else:
            rows = _iter_arrow_rows(f)
        col = None
        for i, row in enumerate(rows):
            col = col or _pick_image_column(list(row), image_column, str(f))
            yield _row_item(row, f"{f.name}/{i}", col, f.parent, caption_keys)


def _iter_arrow_rows(f: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if f.suffix.lower() == ".parquet":
        batches = pq.ParquetFile(f).iter_batches(batch_size=256)
    else:  # datasets writes .arrow files as IPC streams
        try:
            batches = iter(pa.ipc.open_stream(pa.memory_map(str(f))))
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_file(pa.memory_map(str(f))).to_batches())
    for batch in batches:
        yield from batch.to_pylist()


def _undecoded(ds: Any) -> Any:
    """Cast Image features to raw {"bytes", "path"} so decoding happens (and fails) in our code."""
    from datasets import Image

    for name, feature in ds.features.items():
        if isinstance(feature, Image):
            ds = ds.cast_column(name, Image(decode=False))
    return ds


def _iter_saved_dataset(
    path: Path, split: str, caption_keys: tuple[str, ...], image_column: str | None
) -> tuple[Iterator[RawItem], int]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise KeyError(f"{path}: no split {split!r}; splits are {list(ds)}")
        ds = ds[split]
    ds = _undecoded(ds)
    col = _pick_image_column(list(ds.column_names), image_column, str(path))
    items = (_row_item(r, f"{split}/{i}", col, path, caption_keys) for i, r in enumerate(ds))
    return items, len(ds)


def _iter_hf(
    name: str, split: str, caption_keys: tuple[str, ...], image_column: str | None
) -> Iterator[RawItem]:
    from datasets import load_dataset

    ds = _undecoded(load_dataset(name, split=split, streaming=True))
    col = None
    for i, row in enumerate(ds):
        col = col or _pick_image_column(list(row), image_column, f"hf:{name}")
        yield _row_item(row, f"{name}/{split}/{i}", col, Path("."), caption_keys)
