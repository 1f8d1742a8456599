"""The Grain pipeline: determinism, process shards, single-bucket batches, restore, bad records."""

from __future__ import annotations

import collections
import os
import threading

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prx_jax.data import DataConfig, make_pipeline, records, transforms
from prx_jax.data.pipeline import _idle_threads, _LoadBatch
from prx_jax.data.preparation import PrepareOptions, prepare

G = 4  # global batch size


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    opts = PrepareOptions(resolution=64, patch_size=16, min_side=24, near_dup_threshold=-1)
    prepare("demo:30", out, opts, progress=False)
    return out


def _cfg(source, **kw) -> DataConfig:
    return DataConfig(**{"source": str(source), "resolution": 64, "patch_size": 16,
                         "global_batch_size": G, "read_threads": 1, **kw})  # fmt: skip


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) and list(
        a["caption"]
    ) == list(b["caption"])


@pytest.mark.parametrize("source", ["demo", "prepared"])
def test_deterministic_and_single_shape(source, prepared):
    cfg = _cfg(prepared if source == "prepared" else "demo", demo_multi_aspect=True)
    a, b = _take(make_pipeline(cfg, process_index=0, process_count=1), 6), None
    b = _take(make_pipeline(cfg, process_index=0, process_count=1), 6)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    for batch in a:
        assert batch["image"].dtype == np.float32 and batch["image"].shape[:2] == (G, 3)
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["caption"].shape == (G,) and batch["original_size"].shape == (G, 2)
    other = _take(make_pipeline(_cfg(cfg.source, seed=1), process_index=0, process_count=1), 1)
    assert not _same(a[0], other[0])


def test_buckets_interleaved_in_proportion(prepared):
    cfg = _cfg(prepared, num_epochs=1)
    batches = list(make_pipeline(cfg, process_index=0, process_count=1))
    counts = collections.Counter(b["image"].shape[2:] for b in batches)
    manifest_counts = {tuple(reversed(s)): len(sum((records.read_shard(p) for p in ps), []))
                       for s, ps in records.list_shards(prepared).items()}  # fmt: skip
    assert counts == {hw: n // G for hw, n in manifest_counts.items() if n >= G}
    assert len(counts) == 3


def test_two_processes_get_disjoint_halves_of_each_global_batch(prepared):
    cfg = _cfg(prepared)
    whole = _take(make_pipeline(cfg, process_index=0, process_count=1), 5)
    p0 = _take(make_pipeline(cfg, process_index=0, process_count=2), 5)
    p1 = _take(make_pipeline(cfg, process_index=1, process_count=2), 5)
    for w, a, b in zip(whole, p0, p1, strict=True):
        assert a["image"].shape[0] == b["image"].shape[0] == G // 2
        assert np.array_equal(np.concatenate([a["image"], b["image"]]), w["image"])
        assert not set(a["caption"]) & set(b["caption"])


def test_orbax_restore_gives_identical_next_batch(prepared, tmp_path):
    cfg = _cfg(prepared)
    it = make_pipeline(cfg, process_index=0, process_count=1)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 2)
        fresh = make_pipeline(cfg, process_index=0, process_count=1)
        mngr.restore(3, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(fresh)))
    assert all(_same(x, y) for x, y in zip(expected, _take(fresh, 2), strict=True))


def test_worker_process_matches_in_process(prepared):
    cfg = _cfg(prepared)
    ref = _take(make_pipeline(cfg, process_index=0, process_count=1), 3)
    it = make_pipeline(_cfg(prepared, worker_count=1), process_index=0, process_count=1)
    got = _take(it, 2)
    state = it.get_state()
    got.append(next(it))
    assert all(_same(x, y) for x, y in zip(ref, got, strict=True))
    again = make_pipeline(_cfg(prepared, worker_count=1), process_index=0, process_count=1)
    again.set_state(state)
    assert _same(next(again), ref[2])


def test_corrupt_record_is_skipped_and_counted(prepared, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(prepared, root)
    bucket = root / "bucket_64x64"
    good = records.read_shard(next(bucket.glob("*.array_record")))[:2]
    broken_image = records.unpack(good[0]) | {"image": b"\xff\xd8 not a jpeg"}
    # Each bad record is followed by a good one (its replacement), so each is met exactly once.
    records.write_shard(bucket / "shard-99999.array_record",
                        [b"garbage", good[0], records.pack(broken_image), good[1]])  # fmt: skip
    batches = list(make_pipeline(_cfg(root, num_epochs=1), process_index=0, process_count=1))
    assert sum(int(b["num_bad_records"].sum()) for b in batches) == 2
    assert all(np.isfinite(b["image"]).all() for b in batches)


def test_global_array_with_batch_sharding():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    cfg = _cfg("demo", global_batch_size=8)
    batch = next(make_pipeline(cfg, batch_sharding=sharding))
    assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (8, 3, 64, 64)
    assert batch["image"].sharding == sharding and isinstance(batch["caption"], np.ndarray)


def test_caption_key_sampling_follows_weights():
    rng = np.random.default_rng(0)
    caps = {"a": "x", "b": "y", "c": ""}
    keys = (("a", 3.0), ("b", 1.0), ("c", 5.0), ("missing", 1.0))
    drawn = collections.Counter(transforms.choose_caption(caps, keys, rng)[0] for _ in range(2000))
    assert set(drawn) <= {"a", "b"} and 0.7 < drawn["a"] / 2000 < 0.8
    with pytest.raises(KeyError):
        transforms.choose_caption({"z": "q"}, keys, rng)


def test_config_validation():
    with pytest.raises(ValueError):
        DataConfig(resolution=60, patch_size=16)
    with pytest.raises(ValueError, match="divisible"):
        make_pipeline(_cfg("demo", global_batch_size=3), process_index=0, process_count=2)
    with pytest.raises(ValueError, match="thread_priority"):
        DataConfig(thread_priority="low")


def _policies() -> dict[int, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = os.sched_getscheduler(int(tid))
        except OSError:  # the thread ended meanwhile
            pass
    return out


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_reading_threads_run_at_idle_priority_but_the_main_thread_does_not():
    before = _policies()
    it = make_pipeline(_cfg("demo", read_threads=2), process_index=0, process_count=1)
    _take(it, 3)  # "auto" on the CPU backend: idle
    after = _policies()
    new = [tid for tid in after if tid not in before]
    assert new and any(after[t] == os.SCHED_IDLE for t in new)
    assert after[threading.get_native_id()] == os.SCHED_OTHER

    load = _LoadBatch(_cfg("demo"), None, 0, G, idle=True)
    load.map(0)  # reading in the main thread (read_threads=0): the loop's thread keeps its priority
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    seen = {}

    def read(**kw):
        _LoadBatch(_cfg("demo"), None, 0, G, **kw).map(0)
        seen[kw["idle"]] = os.sched_getscheduler(0)

    for idle in (True, False):
        t = threading.Thread(target=read, kwargs={"idle": idle})
        t.start()
        t.join()
    assert seen == {True: os.SCHED_IDLE, False: os.SCHED_OTHER}


def test_thread_priority_auto_means_idle_on_cpu_only():
    assert _idle_threads(_cfg("demo", thread_priority="auto"), None) == (
        jax.default_backend() == "cpu"
    )
    assert _idle_threads(_cfg("demo", thread_priority="normal"), None) is False
    assert _idle_threads(_cfg("demo", thread_priority="idle"), None) is True
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    assert _idle_threads(_cfg("demo"), NamedSharding(mesh, PartitionSpec("data"))) is True
