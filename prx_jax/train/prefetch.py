"""Host-to-device prefetch: the next batches are put on device while the current step runs.

    it = Prefetcher(data_iter, put=run.device_batch, size=2)
    for step in ...:
        batch = next(it)          # already on device (or on its way: device_put is async)
        state, m = run.step_fn(state, batch, run.frozen)

``put`` turns one host batch into device arrays (tokenisation + ``make_array_from_process_local_
data``); JAX's transfers are asynchronous, so calling it ``size`` batches ahead overlaps the copy
with the running step. Checkpointing stays exact: ``get_state()`` is the source iterator's state
*before* the oldest batch not yet handed out, so a resume replays the prefetched-but-unused
batches; ``set_state()`` drops the buffer and restores the source. States are bytes (a Grain
dataset iterator's dict as JSON), so ``grain.checkpoint.CheckpointSave(prefetcher)`` works as is.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from typing import Any


class Prefetcher:
    def __init__(self, source: Iterator, put: Callable[[Any], Any], size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self.source, self.put, self.size = source, put, size
        self._buffer: collections.deque = collections.deque()  # (state before, device batch)
        self._exhausted = False

    def _state(self):
        get = getattr(self.source, "get_state", None)
        return None if get is None else get()

    def _fill(self) -> None:
        while not self._exhausted and len(self._buffer) < self.size:
            before = self._state()
            try:
                host = next(self.source)
            except StopIteration:
                self._exhausted = True
                return
            self._buffer.append((before, self.put(host)))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        self._fill()
        if not self._buffer:
            raise StopIteration
        _, batch = self._buffer.popleft()
        self._fill()  # start the next transfers before the caller dispatches its step
        return batch

    def get_state(self) -> bytes:
        """The source's state before the next batch this iterator will return."""
        state = self._buffer[0][0] if self._buffer else self._state()
        return state if isinstance(state, bytes) else json.dumps(state).encode()

    def set_state(self, state: bytes) -> None:
        self._buffer.clear()
        self._exhausted = False
        native = isinstance(self._state(), bytes)
        self.source.set_state(state if native else json.loads(state))
