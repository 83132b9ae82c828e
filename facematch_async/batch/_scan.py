"""Long reads of results files, off the event loop: progress while they read, and a stop.

Indexing ten million finished lines takes a minute or more. Done in the event loop it
would freeze every other task (and the signal handlers) that long; so the async entry
points (``ResultsFile.open_async``, :func:`~facematch_async.batch.job_state_async`, ...)
run the read in a worker thread. The read calls a :class:`Ticker` every thousand records
or so: it reports a :class:`ScanProgress` to the caller's callback (on the event loop, at
most twice a second) and, once the awaiting task is cancelled, ends the read with
:class:`ScanCancelled` within a few milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["ProgressCallback", "ScanCancelled", "ScanProgress", "Ticker", "in_worker"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScanProgress:
    """How far a long read has got.

    Attributes:
        path: The file being read.
        done: Bytes read so far.
        total: The file's size in bytes (0 when unknown: a folder manifest, say).
        records: Lines (records) read so far.
        elapsed: Seconds since the read began.
    """

    path: str
    done: int
    total: int
    records: int
    elapsed: float

    @property
    def fraction(self) -> float | None:
        """The share read, 0 to 1; ``None`` when the size is not known."""
        return min(1.0, self.done / self.total) if self.total else None

    def format(self) -> str:
        """``reading results.jsonl: 42% (4,200,000 lines, 31 s)``."""
        share = "" if self.fraction is None else f"{self.fraction:.0%} "
        return f"reading {self.path}: {share}({self.records:,} lines, {self.elapsed:.0f} s)"


ProgressCallback = Callable[[ScanProgress], object]


class ScanCancelled(Exception):
    """Raised inside a read whose caller was cancelled (Ctrl-C, SIGTERM, a timeout)."""


class Ticker:
    """What a long read calls as it goes: reports progress now and then, and raises
    :class:`ScanCancelled` once stopped.

    Args:
        report: Called with a :class:`ScanProgress` at most every ``interval`` seconds.
        interval: Seconds between two reports.
    """

    def __init__(self, report: ProgressCallback | None = None, interval: float = 0.5) -> None:
        self.report = report
        self.interval = interval
        self.stopped = threading.Event()
        self.started = time.monotonic()
        self._next = self.started + interval

    def __call__(self, path: object, done: int, total: int, records: int) -> None:
        """Where a read is: ``done`` of ``total`` bytes of ``path``, ``records`` read."""
        if self.stopped.is_set():
            raise ScanCancelled
        if self.report is None:
            return
        now = time.monotonic()
        if now >= self._next or 0 < total <= done:
            self._next = now + self.interval
            self.report(ScanProgress(str(path), done, total, records, now - self.started))

    def for_file(self, path: object, total: int) -> Callable[[int, int], None]:
        """A ``tick(done, records)`` for one file of ``total`` bytes."""
        return lambda done, records: self(path, done, total, records)


async def in_worker(work: Callable[[Ticker], T], on_progress: ProgressCallback | None) -> T:
    """Run ``work(ticker)`` in a worker thread; ``on_progress`` is called on the event loop.

    Cancelling the awaiting task stops the work at its next tick and waits for the thread
    to end (milliseconds), so nothing it opened outlives the call; then the cancellation
    goes on.
    """
    loop = asyncio.get_running_loop()
    report = None
    if on_progress is not None:
        callback = on_progress

        def report(progress: ScanProgress) -> None:
            loop.call_soon_threadsafe(callback, progress)

    ticker = Ticker(report)
    future = loop.run_in_executor(None, work, ticker)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        ticker.stopped.set()
        await asyncio.wait([future])
        if not future.cancelled() and not isinstance(future.exception(), ScanCancelled):
            future.exception()  # seen: a read that failed as it was being stopped
        raise
