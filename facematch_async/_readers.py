"""The worker threads that read images: one, and more only while reads are slow.

One thread reading from the page cache or a local disk keeps far ahead of any plan's rate
(the fastest allows 17 pairs a second; one thread reads thousands). More threads cost CPU
without reading faster: each thread allocates the images it reads from its own malloc arena,
and with several arenas taking turns their pages are trimmed and faulted back in (measured:
~46 page faults per pair with a pool of 8 threads, ~4 with one). So the pool starts one
thread and adds another only when every thread has been on its current batch for longer
than ``patience`` (a slow or stuck network filesystem), up to ``limit``; a read that hangs
for good then holds up one thread, not every read in the process.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ReaderPool", "reader_pool"]

logger = logging.getLogger("facematch_async")

_Job = tuple[Callable[..., object], tuple[Any, ...]]


class ReaderPool:
    """Daemon threads that run submitted jobs in order of submission.

    Args:
        limit: The most threads.
        patience: Seconds every thread must have been busy on one job before another starts.
    """

    def __init__(self, limit: int = 8, patience: float = 0.02) -> None:
        self.limit = limit
        self.patience = patience
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._busy_since: list[float | None] = []  # per thread: when its job began, or None
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._busy_since)

    def submit(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function(*args)`` in a reader thread; it must handle its own errors."""
        self._jobs.put((function, args))
        with self._lock:
            if len(self._busy_since) >= self.limit:
                return
            now = time.monotonic()
            if all(
                since is not None and now - since > self.patience for since in self._busy_since
            ):  # none yet, or every one stuck on a slow read
                self._busy_since.append(None)
                index = len(self._busy_since) - 1
                threading.Thread(
                    target=self._work, args=(index,), name=f"facematch-read_{index}", daemon=True
                ).start()

    def _work(self, index: int) -> None:
        while True:
            function, args = self._jobs.get()
            self._busy_since[index] = time.monotonic()
            try:
                function(*args)
            except Exception:  # a bug: say so, and keep the thread (the pool counts on it)
                logger.exception("an image-reading job failed")
            finally:
                self._busy_since[index] = None


_pool: tuple[int, ReaderPool] | None = None


def reader_pool() -> ReaderPool:
    """The process's pool, made on first use (and again in a forked child)."""
    global _pool
    pid = os.getpid()
    if _pool is None or _pool[0] != pid:  # none yet, or inherited through fork
        _pool = (pid, ReaderPool())
    return _pool[1]
