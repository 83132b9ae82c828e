"""Plan rate limits, enforced per API key as sliding windows.

Deepvue counts requests per API key in a per-second, a per-minute and a per-day window;
exceeding any one answers 429. The documentation does not say whether the windows are fixed
(reset on the clock) or sliding, so the sandbox takes the strictest reading: a request is
let through only if, for every window, fewer than ``limit`` requests were let through in the
``period`` seconds before it. A client that never trips this never trips a fixed-window
server either.

Only accepted requests count (a rejected one does not push the window further out). Memory
is bounded by the windows' limits per key, never by the number of requests.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "PLANS",
    "RateDecision",
    "RateWindow",
    "SlidingWindowLimiter",
    "parse_rate_limit",
    "retry_after_header",
]


@dataclass(frozen=True, slots=True)
class RateWindow:
    """At most ``limit`` requests in any ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a window's limit must be at least 1, got {self.limit}")
        if self.period <= 0:
            raise ValueError(f"a window's period must be positive, got {self.period}")

    @property
    def label(self) -> str:
        """A short name such as ``"2/s"``, ``"100/min"``, ``"10000/day"`` or ``"3/0.5s"``."""
        for unit, seconds in (("day", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{self.limit}/{unit}"
        return f"{self.limit}/{self.period:g}s"


_DAY = 86400.0
PLANS: dict[str, tuple[RateWindow, ...]] = {
    "starter": (RateWindow(1, 1.0), RateWindow(30, 60.0), RateWindow(1000, _DAY)),
    "business": (RateWindow(2, 1.0), RateWindow(100, 60.0), RateWindow(10000, _DAY)),
    "growth": (RateWindow(5, 1.0), RateWindow(500, 60.0), RateWindow(20000, _DAY)),
    "enterprise": (RateWindow(17, 1.0), RateWindow(1000, 60.0), RateWindow(50000, _DAY)),
}
"""Deepvue's documented per-key limits per plan."""

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_UNITS.update(d=_DAY, day=_DAY)
_PART = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*")


def parse_rate_limit(spec: str | Sequence[RateWindow] | None) -> tuple[RateWindow, ...]:
    """Windows from a plan name, a custom spec or windows; ``None`` or ``"none"`` is no limit.

    A custom spec is comma-separated ``LIMIT/[N]UNIT`` parts with units ``s``, ``min``,
    ``h``, ``day``: ``"10/s,300/min"``, or ``"3/0.5s"`` for fast tests.

    Raises:
        ValueError: an unknown plan or a malformed spec.
    """
    if spec is None:
        return ()
    if not isinstance(spec, str):
        return tuple(spec)
    name = spec.strip().lower()
    if name in ("", "none", "off"):
        return ()
    if name in PLANS:
        return PLANS[name]
    windows = []
    for part in name.split(","):
        found = _PART.fullmatch(part)
        if found is None or found.group(3) not in _UNITS:
            raise ValueError(
                f"rate limit {spec!r}: expected a plan ({', '.join(PLANS)}), 'none', or "
                "parts like '10/s,300/min,20000/day'"
            )
        count, multiple, unit = found.groups()
        windows.append(RateWindow(int(count), float(multiple or 1) * _UNITS[unit]))
    return tuple(windows)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The limiter's answer for one request.

    Attributes:
        allowed: the request may proceed (and has been counted).
        window: the first full window, when refused.
        retry_after: seconds until that window has room again (0 when allowed).
        in_window: per window label, the requests in the window ending now, this one
            included when allowed.
    """

    allowed: bool
    window: RateWindow | None = None
    retry_after: float = 0.0
    in_window: tuple[tuple[str, int], ...] = ()


class SlidingWindowLimiter:
    """Counts accepted requests per key in every window, refusing one that would overfill any.

    Args:
        windows: the limits (see :func:`parse_rate_limit`).
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        windows: Sequence[RateWindow],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows = tuple(windows)
        self._clock = clock
        # Per key, per window: the accepted requests' times, oldest first (at most `limit`).
        self._seen: dict[str, list[deque[float]]] = {}

    def check(self, key: str) -> RateDecision:
        """Admit and count one request for ``key``, or refuse it without counting it."""
        if not self.windows:
            return RateDecision(allowed=True)
        now = self._clock()
        seen = self._seen.setdefault(key, [deque() for _ in self.windows])
        for window, times in zip(self.windows, seen, strict=True):
            # Sliding: a request `period` or more ago no longer counts.
            while times and times[0] <= now - window.period:
                times.popleft()
        for window, times in zip(self.windows, seen, strict=True):
            if len(times) >= window.limit:
                wait = times[0] + window.period - now
                return RateDecision(allowed=False, window=window, retry_after=max(0.0, wait))
        for times in seen:
            times.append(now)
        counts = tuple(
            (window.label, len(times)) for window, times in zip(self.windows, seen, strict=True)
        )
        return RateDecision(allowed=True, in_window=counts)

    def reset(self) -> None:
        """Forget every request counted so far."""
        self._seen.clear()


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up and never 0 (a client would spin)."""
    return str(max(1, math.ceil(seconds)))
