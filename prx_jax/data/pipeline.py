"""The Grain input pipeline: prepared shards or the demo source -> single-bucket global batches.

Every step's global batch is planned from `(seed, step)` alone: for each epoch, each training
bucket's records are permuted, cut into global batches of `global_batch_size`, and all buckets'
batches are shuffled together, so buckets are interleaved in proportion to their sizes and each
step has one image shape (SPMD). Process `p` of `P` decodes rows `[p*B/P, (p+1)*B/P)` of each
global batch, so shards are disjoint. Element `i` of a Grain `MapDataset.range` is step `i`'s
local batch; workers (`mp_prefetch`) or reading threads decode whole batches. A record that
cannot be read, decoded or captioned is replaced by the next record of its bucket and counted in
`batch["num_bad_records"]`.

Batch (local rows, B = global_batch_size / process_count):
  image            float32 [B, 3, H, W] in [-1, 1]; a global jax.Array [G, 3, H, W] when a
                   `batch_sharding` is given (built with jax.make_array_from_process_local_data)
  caption          str [B]     caption_key  str [B]
  original_size    int32 [B, 2] (height, width) before bucketing
  step             int64 [B]   num_bad_records  int32 [B] (the count sits in row 0)
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import grain
import numpy as np
from PIL import Image

from prx_jax.data import demo, records, transforms
from prx_jax.data.buckets import Size, bucket_sizes, closest_bucket
from prx_jax.data.config import DataConfig

_INFINITE_STEPS = 2**40
log = logging.getLogger(__name__)


class _Plan:
    """Global batch plan over prepared shards: step -> (train bucket, record ids [G])."""

    def __init__(self, root: Path, cfg: DataConfig):
        self.cfg = cfg
        grid = bucket_sizes(cfg.resolution, cfg.patch_size)
        shards = records.list_shards(root)
        self.paths = [[str(p) for p in shards[b]] for b in shards]
        counts = [self._count(paths) for paths in self.paths]
        # Prepared buckets that map to the same training bucket form one group.
        groups: dict[Size, list[int]] = {}
        for k, size in enumerate(shards):
            groups.setdefault(closest_bucket(size[0], size[1], grid), []).append(k)
        self.sizes = sorted(groups, key=lambda s: s[0] / s[1])
        self.members = [groups[s] for s in self.sizes]  # group -> prepared bucket ids
        self.offsets = [np.cumsum([0] + [counts[k] for k in m]) for m in self.members]
        self.group_counts = [int(o[-1]) for o in self.offsets]
        g = cfg.global_batch_size
        self.batches_per_epoch = sum(n // g for n in self.group_counts)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{root}: no training bucket holds a full global batch of {g} "
                f"(records per bucket {dict(zip(self.sizes, self.group_counts, strict=True))})"
            )
        self._epoch_cache: tuple[int, list[tuple[int, np.ndarray]]] | None = None

    @staticmethod
    def _count(paths: list[str]) -> int:
        return len(grain.sources.ArrayRecordDataSource(paths))

    def epoch(self, e: int) -> list[tuple[int, np.ndarray]]:
        if self._epoch_cache is None or self._epoch_cache[0] != e:
            g = self.cfg.global_batch_size
            batches = []
            for gid, n in enumerate(self.group_counts):
                perm = np.random.default_rng([self.cfg.seed, e, gid]).permutation(n)
                batches += [(gid, row) for row in perm[: n // g * g].reshape(-1, g)]
            order = np.random.default_rng([self.cfg.seed, e]).permutation(len(batches))
            self._epoch_cache = (e, [batches[i] for i in order])
        return self._epoch_cache[1]

    def locate(self, gid: int, rid: int) -> tuple[int, int]:
        """Record id within a group -> (prepared bucket id, index in its data source)."""
        j = int(np.searchsorted(self.offsets[gid], rid, side="right")) - 1
        return self.members[gid][j], int(rid - self.offsets[gid][j])


_THREAD = threading.local()


def _idle_priority_for_this_thread() -> None:
    """Once per thread: Linux SCHED_IDLE for a reading thread or worker process, which then runs
    only when a core has nothing else to run. The training process's main thread (reading itself
    when `read_threads=0`) dispatches the steps and keeps its priority."""
    if getattr(_THREAD, "checked", False):
        return
    _THREAD.checked = True
    if threading.current_thread() is threading.main_thread():
        if multiprocessing.parent_process() is None:
            return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
    except (AttributeError, OSError) as e:  # not Linux, or refused: keep the normal priority
        log.info("data threads keep their priority: %s", e)


def _idle_threads(cfg: DataConfig, batch_sharding: Any) -> bool:
    if cfg.thread_priority != "auto":
        return cfg.thread_priority == "idle"
    if batch_sharding is not None:
        return next(iter(batch_sharding.device_set)).platform == "cpu"
    import jax

    return jax.default_backend() == "cpu"


class _LoadBatch(grain.transforms.Map):
    """Step index -> this process's rows of that step's global batch, as numpy."""

    def __init__(
        self,
        cfg: DataConfig,
        plan: _Plan | None,
        process_index: int,
        local_rows: int,
        idle: bool = False,
    ):
        self.cfg, self.plan, self.idle = cfg, plan, idle
        self.lo, self.rows = process_index * local_rows, local_rows
        self.grid = bucket_sizes(cfg.resolution, cfg.patch_size)
        self._sources: list[Any] | None = None

    def __getstate__(self):  # open readers never travel to worker processes
        return {**self.__dict__, "_sources": None}

    def map(self, step: int) -> dict[str, np.ndarray]:
        if self.idle:
            _idle_priority_for_this_thread()
        return self._demo(step) if self.plan is None else self._prepared(step)

    def _demo(self, step: int) -> dict[str, np.ndarray]:
        cfg = self.cfg
        r = cfg.resolution
        w, h = (r, r)
        if cfg.demo_multi_aspect:
            w, h = self.grid[np.random.default_rng([cfg.seed, step]).integers(len(self.grid))]
        ids = step * cfg.global_batch_size + self.lo + np.arange(self.rows)
        pairs = [demo.demo_example(cfg.seed, int(i), w, h) for i in ids]
        return self._batch(step, [p[0] for p in pairs], [("caption", p[1]) for p in pairs],
                           [(h, w)] * self.rows, 0)  # fmt: skip

    def _prepared(self, step: int) -> dict[str, np.ndarray]:
        plan = self.plan
        if self._sources is None:
            self._sources = [grain.sources.ArrayRecordDataSource(p) for p in plan.paths]
        epoch, j = divmod(step, plan.batches_per_epoch)
        gid, rids = plan.epoch(epoch)[j]
        size, n = plan.sizes[gid], plan.group_counts[gid]
        images, captions, originals, bad = [], [], [], 0
        for rid in rids[self.lo : self.lo + self.rows]:
            for attempt in range(self.cfg.max_bad_record_retries + 1):
                try:
                    image, caption, original = self._read(gid, (int(rid) + attempt) % n, epoch)
                    break
                except Exception as e:  # any failure of one record is that record's fault
                    bad += 1
                    log.warning("skipping bad record %d of bucket %s: %s", rid, size, e)
            else:
                raise RuntimeError(
                    f"{self.cfg.max_bad_record_retries + 1} consecutive bad records in bucket "
                    f"{size}; the prepared dataset at {self.cfg.source} looks damaged"
                )
            images.append(image)
            captions.append(caption)
            originals.append(original)
        return self._batch(step, images, captions, originals, bad)

    def _read(self, gid: int, rid: int, epoch: int) -> tuple[np.ndarray, tuple[str, str], Any]:
        k, idx = self.plan.locate(gid, rid)
        rec = records.unpack(self._sources[k][idx])
        img = transforms.ar_aware_resize(transforms.decode_image(rec["image"]), self.grid)
        if img.size != self.plan.sizes[gid]:
            raise ValueError(f"record decodes to {img.size}, expected {self.plan.sizes[gid]}")
        rng = np.random.default_rng([self.cfg.seed, epoch, gid, rid])
        caption = transforms.choose_caption(rec["captions"], self.cfg.caption_keys, rng)
        original = (rec.get("original_height", img.size[1]), rec.get("original_width", img.size[0]))
        return np.asarray(img, np.uint8), caption, original

    def _batch(self, step, images, captions, originals, bad) -> dict[str, np.ndarray]:
        bad_B = np.zeros(self.rows, np.int32)
        bad_B[0] = bad
        return {
            # uint8 until the main process: 4x less to copy out of worker processes.
            "image": np.stack(images),
            "caption": np.array([c for _, c in captions], dtype=np.str_),
            "caption_key": np.array([k for k, _ in captions], dtype=np.str_),
            "original_size": np.array(originals, np.int32).reshape(self.rows, 2),
            "step": np.full(self.rows, step, np.int64),
            "num_bad_records": bad_B,
        }


class DataIterator:
    """Iterator of batch dicts; `get_state()` / `set_state()` (JSON bytes) and Orbax checkpointing
    through `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`."""

    def __init__(self, dataset: grain.IterDataset, sharding: Any, global_batch_size: int):
        self._dataset, self._sharding, self._global = dataset, sharding, global_batch_size
        self._it = iter(dataset)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._it)
        batch["image"] = transforms.to_model_range(batch["image"])
        if self._sharding is not None:
            import jax

            shape = (self._global, *batch["image"].shape[1:])
            batch["image"] = jax.make_array_from_process_local_data(
                self._sharding, batch["image"], shape
            )
        return batch

    def get_state(self) -> bytes:
        return json.dumps(self._it.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self._it.set_state(json.loads(state))

    def start_prefetch(self) -> None:  # called by grain's Orbax handler after a restore
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()


def _parse_absl_flags() -> None:
    """Grain's worker processes read absl flags (`--grain_enable_multiprocess_worker_profiling`)
    and raise UnparsedFlagAccessError when no `absl.app` parsed them, as in `python -m
    prx_jax.train`. Nothing here takes absl flags, so every one keeps its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_pipeline(
    cfg: DataConfig,
    *,
    batch_sharding: Any = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> DataIterator:
    """The training iterator for `cfg`; process index / count default to jax's."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if cfg.global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} not divisible by {process_count} processes"
        )
    plan = None if cfg.source == "demo" else _Plan(Path(cfg.source), cfg)
    steps = _INFINITE_STEPS
    if cfg.num_epochs is not None:
        steps = cfg.num_epochs * (plan.batches_per_epoch if plan else _INFINITE_STEPS)
    local_rows = cfg.global_batch_size // process_count
    load = _LoadBatch(cfg, plan, process_index, local_rows, _idle_threads(cfg, batch_sharding))
    ds = grain.MapDataset.range(steps).map(load)
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch)
    ids = ds.to_iter_dataset(read)
    if cfg.worker_count > 0:
        _parse_absl_flags()
        opts = grain.MultiprocessingOptions(
            num_workers=cfg.worker_count, per_worker_buffer_size=cfg.prefetch
        )
        ids = ids.mp_prefetch(opts)
    return DataIterator(ids, batch_sharding, cfg.global_batch_size)


def open_image_for_inspection(batch: dict[str, Any], row: int) -> Image.Image:
    """Row `row` of a batch's image as a PIL image (debugging helper)."""
    x_CxHxW = np.asarray(batch["image"][row])
    return Image.fromarray(np.round((x_CxHxW.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8))
