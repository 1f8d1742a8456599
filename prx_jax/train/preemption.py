"""Preemption: SIGTERM / SIGINT ask the loop to finish its step, save, wait and exit 0.

On several processes every process must stop at the same step; JAX's preemption sync point
(``multihost_utils.reached_preemption_sync_point``, fed by the coordination service, which
catches SIGTERM itself) gives that agreement.
"""

from __future__ import annotations

import signal
import threading

import jax


class StopSignal:
    def __init__(self):
        self.requested: str | None = None
        self._previous = {}
        # Several processes: JAX's coordination service owns SIGTERM (see should_stop).
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.requested = self.requested or "preemption notice"
                    return True
            except RuntimeError:  # no preemption service in this distributed setup
                pass
            return False
        return self.requested is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
