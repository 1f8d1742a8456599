"""`DataConfig`: the options of the training input pipeline (`prx_jax.data.make_pipeline`)."""

from __future__ import annotations

import dataclasses
import typing

from prx_jax.data.buckets import bucket_sizes


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "demo"  # "demo" (built-in, no preparation) or a `python -m prx_jax.prepare` OUT
    resolution: int = 64  # training resolution: the bucket grid is built at this size
    patch_size: int = 32  # pixels per patch side (PRX pixel model 32; latent models 8 * 2 = 16)
    global_batch_size: int = 8  # images per step over all processes; divisible by process count
    seed: int = 0  # shuffling, caption-key choice and demo content derive from it
    caption_keys: tuple[tuple[str, float], ...] = (("caption", 1.0),)  # (key, weight) sampled
    worker_count: int = 0  # Grain worker processes (0: decode in threads of this process)
    prefetch: int = 2  # batches buffered per worker (or by the reading threads when 0 workers)
    read_threads: int = 2  # threads decoding batches when worker_count == 0
    # Scheduling of the reading threads and worker processes: "idle" (Linux SCHED_IDLE: they run
    # only on cores nothing else wants), "normal", or "auto": idle when training on the CPU
    # backend, where they share the cores with the XLA devices (demo: ~4% faster). Several CPU
    # trainings on the same cores: use "normal", or each one's readers wait for the others' steps.
    thread_priority: typing.Literal["auto", "idle", "normal"] = "auto"
    num_epochs: int | None = None  # None: repeat forever (each epoch reshuffled)
    demo_multi_aspect: bool = False  # demo: draw each batch's bucket from the grid, else square
    max_bad_record_retries: int = 16  # replacements tried for an unreadable record before failing

    def __post_init__(self):
        bucket_sizes(self.resolution, self.patch_size)  # validates resolution / patch_size
        if self.global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
        if not self.caption_keys or any(w < 0 for _, w in self.caption_keys):
            raise ValueError(f"caption_keys needs >= 1 (key, weight >= 0): {self.caption_keys}")
        if sum(w for _, w in self.caption_keys) <= 0:
            raise ValueError(f"caption_keys weights sum to 0: {self.caption_keys}")
        if self.worker_count < 0 or self.prefetch < 1 or self.read_threads < 0:
            raise ValueError("worker_count, read_threads must be >= 0 and prefetch >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}")
        if self.thread_priority not in ("auto", "idle", "normal"):
            raise ValueError(
                f"thread_priority must be 'auto', 'idle' or 'normal', got {self.thread_priority!r}"
            )
