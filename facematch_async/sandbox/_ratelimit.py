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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from facematch_async._plans import PLANS, Window, parse_rate_limit

__all__ = [
    "PLANS",
    "RateDecision",
    "RateWindow",
    "SlidingWindowLimiter",
    "parse_rate_limit",
    "retry_after_header",
]


# The plans, their windows and the spec syntax are the client's own: one definition of
# Deepvue's documented limits, which the sandbox enforces and the client keeps to.
RateWindow = Window
"""At most ``limit`` requests in any ``period`` seconds (the client's :class:`Window`)."""


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
