"""Progress reports: a redrawn bar on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import time
from collections import deque
from typing import TextIO

from facematch_async.batch._summary import BatchSummary

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``02:03:04``."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


class Progress:
    """Reports a batch's progress to ``stream`` (rate, ETA, errors by kind).

    Args:
        summary: The running totals to report.
        total: The pairs expected (``None`` when unknown: no bar, no ETA).
        stream: Where to write (stderr: stdout is for the summary).
        interactive: Redraw one line in place (a terminal) instead of printing lines.
        interval: Seconds between plain lines (a bar is redrawn at most 5 times a second).
    """

    def __init__(
        self,
        summary: BatchSummary,
        total: int | None,
        stream: TextIO,
        *,
        interactive: bool,
        interval: float = 30.0,
    ) -> None:
        self.summary = summary
        self.total = total
        self.stream = stream
        self.interactive = interactive
        self.interval = 0.2 if interactive else interval
        self._last = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=60)
        self.note = ""

    def recent_rate(self) -> float:
        """Pairs per second over the last minute or so (the whole run until then).

        An ETA from the whole run's average would stay wrong for hours after a pause for
        the daily quota; a recent window follows the current pace.
        """
        now, done = time.monotonic(), self.summary.done
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, done))
        then, done_then = self._samples[0]
        if now - then >= 10.0:
            return (done - done_then) / (now - then)
        return self.summary.rate()

    def line(self) -> str:
        """The current progress, as one line."""
        # Pairs a resume skips count as done: the total is the manifest's rows.
        done, rate = self.summary.done + self.summary.skipped, self.recent_rate()
        parts = [f"{done}"]
        if self.total:
            share = min(1.0, done / self.total)
            if self.interactive:
                filled = int(share * 20)
                parts.insert(0, "[" + "#" * filled + "." * (20 - filled) + "]")
            parts[-1] += f"/{self.total} ({share:.0%})"
        parts.append(f"{rate:.1f} pairs/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - done) / rate)}")
        errors = self.summary.errors_by_kind()
        if errors:
            parts.append(f"| {errors}")
        if self.note:
            parts.append(f"| {self.note}")
        return " ".join(parts)

    def tick(self, *, force: bool = False) -> None:
        """Report if the interval has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.interactive:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def say(self, text: str, *, every: float) -> None:
        """Write ``text`` as a line of its own, at most once per ``every`` seconds."""
        now = time.monotonic()
        if now - self._last < every:
            return
        self._last = now
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Write the final state and end the bar's line."""
        if not self.summary.done and not self.interactive:
            return  # nothing ran (e.g. a resume with everything done): the summary says so
        self.tick(force=True)
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
