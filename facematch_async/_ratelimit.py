"""A multi-window rate limiter and batch-wide pauses (the plans are in ``_plans``).

Deepvue counts requests per API key in a per-second, a per-minute and a per-day window at
once; exceeding any one gives 429. :class:`RateLimiter` keeps the start time of recent
requests for each window and lets a request go only when *every* window has room, measured
over a strict sliding window (plus a small safety ``margin``, since the server stamps a
request when it arrives, a little after we let it go). A client that never trips a
sliding-window server therefore never trips a fixed-window one either.

Memory is bounded by the largest window's limit (50,000 timestamps for Enterprise), never by
the number of requests made.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import anyio

from facematch_async._plans import PLANS, Window, parse_rate_limit

__all__ = [
    "PLANS",
    "QuotaExhaustedError",
    "RateLimiter",
    "SlotBeyondWait",
    "Window",
    "parse_rate_limit",
]


# A daily quota that is used up is worth stopping for (``stop_at_quota``); shorter windows
# reopen within a minute and are simply waited out.
QUOTA_PERIOD = 3600.0


class QuotaExhaustedError(Exception):
    """A window of an hour or more is full and the limiter was asked not to wait for it.

    Attributes:
        window: The full window.
        wait: Seconds until it has room again.
    """

    def __init__(self, window: Window, wait: float) -> None:
        super().__init__(f"the {window} quota is used up; it reopens in {wait:.0f} s")
        self.window = window
        self.wait = wait


class SlotBeyondWait(Exception):
    """The next slot opens later than the caller may wait (``acquire(within=...)``).

    Raised before sleeping, so a caller with a deadline learns at once when to come back.

    Attributes:
        wait: Seconds until the slot may open.
    """

    def __init__(self, wait: float) -> None:
        super().__init__(f"the next slot opens in {wait:.2f} s")
        self.wait = wait


_EPSILON = 1e-9  # seconds: a wait this short is no wait
_MAX_PACED_PERIOD = 60.0
_LATENESS = 0.01  # seconds: a request this late after its slot still kept the pace


class RateLimiter:
    """Lets requests go no faster than every window allows; shared by all tasks of a batch.

    ```python
    limiter = RateLimiter("business")
    await limiter.acquire()   # before every HTTP attempt, retries included
    limiter.pause(2.0)        # after a 429: every task waits
    ```

    Waiters are served one at a time in arrival order (an ``anyio.Lock`` is fair), and
    requests are spaced evenly over the shortest window of a minute or less
    (``period / limit`` apart) rather
    than let go a window's worth at once: a server stamps a burst as it parses it, tens of
    milliseconds apart, so the next burst could reach it less than a window after the
    previous one's tail and be refused (seen in the benchmarks: 4 to 47 429s in 300 pairs
    at 50/s in bursts, none when spaced).

    Args:
        windows: A plan name, a spec (see :func:`parse_rate_limit`) or windows.
        margin: Seconds added to every window's period, to absorb the delay between letting
            a request go and the server counting it.
        clock: Monotonic seconds; injectable for tests.
        sleep: Awaitable sleep; injectable for tests.
    """

    def __init__(
        self,
        windows: str | Sequence[Window] | None,
        *,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.windows = parse_rate_limit(windows)
        self.margin = margin
        self._clock = clock
        self._sleep = sleep
        self._sent: tuple[deque[float], ...] = tuple(deque() for _ in self.windows)
        # Spacing comes from the shortest window of a minute or less: spreading a daily
        # quota evenly would hold requests back for hours.
        short = [window for window in self.windows if window.period <= _MAX_PACED_PERIOD]
        shortest = min(short, key=lambda window: window.period, default=None)
        self._spacing = 0.0 if shortest is None else shortest.period / shortest.limit
        self._next_slot = -math.inf  # the earliest time the spacing lets the next one go
        self._paused_until = -math.inf
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter({','.join(map(str, self.windows)) or 'none'!r})"

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` from now (extends, never shortens)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def note_send_delay(self, seconds: float) -> None:
        """A request granted a slot went on the wire ``seconds`` later; this limiter's
        ``margin`` is fixed, so it ignores it (a :class:`~facematch_async._pacing.Pacer`
        learns from it)."""

    @property
    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def seed(self, sent_at: Sequence[float]) -> None:
        """Count requests made before this limiter existed (``clock()`` times, oldest first).

        A resumed run uses it so that a daily quota spent earlier today is not spent twice.
        """
        for stamp in sent_at:
            self._record(stamp)

    def _record(self, stamp: float) -> None:
        # A request let go just after its slot kept the pace: the next slot follows its
        # slot, not the moment it went. A sleep ends a little late (~0.5 ms on a busy
        # loop), and counting from that would slip the rate: 2,000 paced requests would
        # take a second longer. Idle, or held back by a window or a pause, the pace
        # restarts from now.
        slot = self._next_slot
        base = slot if slot <= stamp < slot + _LATENESS else stamp
        self._next_slot = max(slot, base + self._spacing)
        for window, sent in zip(self.windows, self._sent, strict=True):
            sent.append(stamp)
            if len(sent) > window.limit:
                sent.popleft()  # only the last `limit` stamps can ever decide a wait

    def _wait(self, now: float) -> tuple[float, Window | None]:
        """Seconds until a request may go, and the window that imposes the longest wait."""
        wait, longest = max(self._paused_until, self._next_slot) - now, None
        for window, sent in zip(self.windows, self._sent, strict=True):
            if len(sent) >= window.limit:
                # The oldest of the last `limit` requests must leave the window first.
                reopens = sent[0] + window.period + self.margin - now
                if reopens > wait:
                    wait, longest = reopens, window
        return wait, longest

    def wait_time(self) -> float:
        """Seconds an ``acquire()`` would wait now (0 when it could go at once)."""
        return max(0.0, self._wait(self._clock())[0])

    async def acquire(self, *, stop_at_quota: bool = False, within: float | None = None) -> None:
        """Wait until every window has room, then count one request.

        Args:
            stop_at_quota: Raise instead of waiting when a window of an hour or more is full.
            within: Seconds the caller may wait at most (a call's deadline): a slot that
                opens later raises at once instead of being waited for.

        Raises:
            QuotaExhaustedError: ``stop_at_quota`` and the daily window is used up.
            SlotBeyondWait: the slot opens after ``within`` seconds from the call.
        """
        give_up = None if within is None else self._clock() + within
        if not self.windows:
            wait = self._paused_until - self._clock()
            while wait > 0:
                _check_within(give_up, self._clock(), wait)
                await self._sleep(wait)
                wait = self._paused_until - self._clock()
            return
        async with self._lock:
            while True:
                now = self._clock()
                wait, window = self._wait(now)
                if wait <= _EPSILON:  # float rounding must not leave a wait that never ends
                    self._record(now)
                    return
                if stop_at_quota and window is not None and window.period >= QUOTA_PERIOD:
                    raise QuotaExhaustedError(window, wait)
                _check_within(give_up, now, wait)
                # Re-checked after the sleep: a pause may have started meanwhile.
                await self._sleep(wait)

    def estimate(self, requests: int) -> float:
        """Seconds ``requests`` more requests take at full speed from an idle start.

        Simulated rather than computed: with several windows the waits compound (a full
        minute window holds back a per-second pace). Beyond a million requests the rest is
        extrapolated at the simulated pace.
        """
        if requests <= 0 or not self.windows:
            return 0.0
        simulated = min(requests, 1_000_000)
        sent: tuple[deque[float], ...] = tuple(deque() for _ in self.windows)
        now, last = 0.0, -math.inf
        for _ in range(simulated):
            now = max(now, last + self._spacing)
            for window, stamps in zip(self.windows, sent, strict=True):
                if len(stamps) >= window.limit:
                    now = max(now, stamps[0] + window.period + self.margin)
            last = now
            for window, stamps in zip(self.windows, sent, strict=True):
                stamps.append(now)
                if len(stamps) > window.limit:
                    stamps.popleft()
        return now if simulated == requests else now * requests / simulated


def _check_within(give_up: float | None, now: float, wait: float) -> None:
    """Raise :class:`SlotBeyondWait` when a wait of ``wait`` from ``now`` ends past
    ``give_up`` (``None``: no bound)."""
    if give_up is not None and now + wait >= give_up:
        raise SlotBeyondWait(wait)
