"""Streaming statistics and progress lines: constant memory, honest quantiles, readable output."""

from __future__ import annotations

import io
import random
import sys

import pytest

from facematch_async import BatchSummary, PairError, PairOutcome
from facematch_async.batch._progress import Progress, format_duration
from facematch_async.batch._summary import LatencyHistogram


def test_histogram_quantiles_are_within_a_few_percent() -> None:
    """p50/p95/p99 from the fixed histogram are within 3% of the exact values."""
    rng = random.Random(7)
    values = [rng.lognormvariate(-3.0, 0.8) for _ in range(20000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        assert histogram.quantile(q) == pytest.approx(exact, rel=0.03)
    assert LatencyHistogram().quantile(0.5) is None


def test_histogram_memory_does_not_grow_with_samples() -> None:
    """A million samples take the same buckets as ten."""
    histogram = LatencyHistogram()
    size = sys.getsizeof(histogram._buckets)
    for i in range(100_000):
        histogram.add((i % 1000) / 1000)
    assert sys.getsizeof(histogram._buckets) == size


def outcome(status: str, code: str | None = None, latency: float = 0.02) -> PairOutcome:
    error = PairError("X", "m", code) if code else None
    return PairOutcome("p", status, error=error, attempts=1, latency=latency)  # type: ignore[arg-type]


def test_summary_counts_statuses_and_sub_codes() -> None:
    """The report lists each status with its sub_codes and the latency quantiles."""
    summary = BatchSummary()
    for item in [outcome("match"), outcome("no_face", "NO_FACE_FOUND"), outcome("error", "E1")]:
        summary.add(item)
    text = summary.format()
    assert "3 pairs" in text
    assert "NO_FACE_FOUND" in text
    assert "E1" in text
    assert "p50 20 ms" in text


def test_plain_progress_lines_carry_rate_eta_and_errors() -> None:
    """Off a terminal, progress is a plain line with the count, rate, ETA and error kinds."""
    summary = BatchSummary()
    summary.add(outcome("error", "IMAGE_BAD"))
    stream = io.StringIO()
    progress = Progress(summary, 10, stream, interactive=False, interval=3600)
    progress.tick()
    assert stream.getvalue() == ""  # not yet: the interval has not passed
    progress.tick(force=True)
    line = stream.getvalue()
    assert line.startswith("1/10 (10%)")
    assert "pairs/s" in line
    assert "ETA" in line
    assert "IMAGE_BAD=1" in line
    assert "\r" not in line


def test_durations_read_as_clock_times() -> None:
    """Durations print as HH:MM:SS, with days when they run that long."""
    assert format_duration(3723) == "01:02:03"
    assert format_duration(2 * 86400 + 5) == "2d 00:00:05"
