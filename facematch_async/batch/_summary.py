"""Streaming batch statistics: counts per status and sub_code, latency quantiles, throughput.

Latencies go into a fixed log-scale histogram (about 330 buckets, 5% wide, 0.1 ms to
10 min), so quantiles cost the same memory for ten pairs or ten million, within ~2.5%.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from facematch_async.batch._outcome import STATUSES, PairOutcome

__all__ = ["BatchSummary", "ConfidenceHistogram", "LatencyHistogram", "format_counts"]


class LatencyHistogram:
    """Quantiles of durations from fixed-width log buckets."""

    def __init__(self, low: float = 1e-4, high: float = 600.0, ratio: float = 1.05) -> None:
        self._low = low
        self._log_ratio = math.log(ratio)
        self._buckets = [0] * (math.ceil(math.log(high / low) / self._log_ratio) + 1)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Count one duration (values outside the range land in the end buckets)."""
        self._buckets[self._index(seconds)] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def _index(self, seconds: float) -> int:
        index = 0 if seconds <= self._low else int(math.log(seconds / self._low) / self._log_ratio)
        return min(index, len(self._buckets) - 1)

    def remove(self, seconds: float) -> None:
        """Uncount a duration counted before (a superseded line); ``max`` stays."""
        index = self._index(seconds)
        if self._buckets[index]:
            self._buckets[index] -= 1
            self.count -= 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0-1), or ``None`` when empty; the bucket's geometric middle."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, count in enumerate(self._buckets):
            seen += count
            if seen >= rank:
                middle = self._low * math.exp((index + 0.5) * self._log_ratio)
                return min(middle, self.max)
        return self.max  # pragma: no cover (rank <= count)


class ConfidenceHistogram:
    """Decided pairs' confidences (0-100) in fixed bins, counted per status.

    Args:
        bins: Bins over 0-100 (20: five points each). A value outside lands in an end bin.

    Attributes:
        counts: Per status (``match``, ``no_match``), pairs per bin.
        unknown: Decided pairs that came without a confidence.
    """

    def __init__(self, bins: int = 20) -> None:
        self.bins = bins
        self.counts: dict[str, list[int]] = {}
        self.unknown = 0

    @property
    def count(self) -> int:
        """Pairs with a confidence."""
        return sum(sum(per_bin) for per_bin in self.counts.values())

    def _bin(self, confidence: float) -> int:
        return min(self.bins - 1, max(0, int(confidence * self.bins / 100)))

    def add(self, confidence: float | None, status: str, count: int = 1) -> None:
        """Count one decided pair (``count=-1`` uncounts it)."""
        if confidence is None or math.isnan(confidence):
            self.unknown += count
            return
        per_bin = self.counts.setdefault(status, [0] * self.bins)
        per_bin[self._bin(confidence)] += count

    def edges(self) -> list[float]:
        """The bins' lower edges."""
        return [100 * i / self.bins for i in range(self.bins)]


class BatchSummary:
    """Running totals over a batch's outcomes, in constant memory."""

    def __init__(self, clock: float | None = None) -> None:
        self.started = time.monotonic() if clock is None else clock
        self.statuses: Counter[str] = Counter()
        self.codes: Counter[tuple[str, str]] = Counter()
        self.latency = LatencyHistogram()
        self.attempts = 0
        self.skipped = 0
        # Face-match requests sent in all, when the runner counted them: also those of pairs
        # left without a line (a stop, a grace run out), billed all the same.
        self.sent: int | None = None

    @property
    def done(self) -> int:
        """Outcomes counted so far."""
        return sum(self.statuses.values())

    def add(self, outcome: PairOutcome) -> None:
        """Count one outcome."""
        self.statuses[outcome.status] += 1
        if outcome.error is not None:
            self.codes[(outcome.status, outcome.error.sub_code or outcome.error.type)] += 1
        if outcome.latency is not None and outcome.attempts:
            self.latency.add(outcome.latency)
        self.attempts += outcome.attempts

    def elapsed(self) -> float:
        """Seconds since the summary started."""
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Outcomes per second so far."""
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 else 0.0

    def errors_by_kind(self) -> str:
        """``NO_FACE_FOUND=3 ImageReadError=1`` for the progress line."""
        return " ".join(f"{code}={n}" for (_, code), n in self.codes.most_common(4))

    def format(self) -> str:
        """A multi-line, human-readable report."""
        requests = f"{self.attempts} face-match requests"
        unrecorded = (self.sent or 0) - self.attempts
        if unrecorded > 0:
            requests += f" (and {unrecorded} for pairs left without a line: billed, sent again"
            requests += " on resume)"
        lines = [
            f"{self.done} pairs in {self.elapsed():.1f} s ({self.rate():.1f} pairs/s), "
            f"{requests}, {self.skipped} skipped"
        ]
        lines += format_counts(self.statuses, self.codes, self.latency)
        return "\n".join(lines)


def format_counts(
    statuses: Counter[str], codes: Counter[tuple[str, str]], latency: LatencyHistogram
) -> list[str]:
    """The lines of a report: each status with its codes, then latency p50/p95/p99."""
    lines = []
    for status in STATUSES:
        lines.append(f"  {status:<9}{statuses.get(status, 0):>9}")
        for (code_status, code), count in sorted(codes.items()):
            if code_status == status:
                lines.append(f"    {code:<28}{count:>7}")
    quantiles = [latency.quantile(q) for q in (0.5, 0.95, 0.99)]
    if quantiles[0] is not None:
        p50, p95, p99 = (1000 * (q or 0.0) for q in quantiles)
        lines.append(f"  latency  p50 {p50:.0f} ms  p95 {p95:.0f} ms  p99 {p99:.0f} ms")
    return lines
