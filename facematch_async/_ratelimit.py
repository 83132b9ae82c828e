"""The rate limiter: one API key's windows, paced, shared, and learned from 429s.

Deepvue counts requests per API key in a per-second, a per-minute and a per-day window at
once; exceeding any one gives 429. :class:`RateLimiter` lets a request go only when *every*
window has room, over a strict sliding window (plus a small ``margin``, since the server
stamps a request when it arrives, a little after we let it go), with requests spaced evenly
over the shortest window of a minute or less. A client that never trips a sliding-window
server therefore never trips a fixed-window one either.

The windows live in a store (:mod:`facematch_async._pacing`): this process's memory, or a
Redis that every process of the key shares. On top of the store the limiter keeps what one
process learns: the margin (from 429s at a full window's edge and from how late requests
reach the wire), an adaptive rate (lowered by 429s nobody predicted, recovered along a
cubic), the pause a 429 imposes on every caller, and a local share of the plan when a shared
store is lost.

```python
limiter = RateLimiter("business", store="redis://redis:6379/0", client_id="acme")
await limiter.acquire()   # before every HTTP attempt, retries included
```
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio

from facematch_async._pacing import (
    EPSILON,
    MAX_PACED_PERIOD,
    MemoryStore,
    PacingStore,
    RedisStore,
    Verdict,
    effective_windows,
    redact_url,
    spacing,
)
from facematch_async._plans import PLANS, Window, parse_rate_limit
from facematch_async.errors import PacingStoreError

__all__ = [
    "PLANS",
    "AdaptiveRate",
    "PacingStatus",
    "RateLimiter",
    "SlotUnavailable",
    "Window",
    "parse_rate_limit",
]

logger = logging.getLogger("facematch_async")

# A window this long or longer is a quota (the day's), not a pace: a caller may choose to
# stop at it rather than wait; shorter windows reopen within a minute and are waited out.
QUOTA_PERIOD = 3600.0
# A learned margin starts where loopback and a steady network path need no more, doubles on
# each 429 met at a full window's edge, and never passes what a jittery path needs.
MARGIN_START = 0.005
MARGIN_MAX = 0.2
_MARGIN_COOLDOWN = 1.0  # 429s this close together answer requests sent under one margin
_AT_THE_EDGE = 5.0  # seconds: a 429 this soon after a window was full came from its edge
_MAX_SEND_DELAY = 30.0  # seconds: a send delayed longer has met its timeout, not a queue
_MAX_PAUSE = 60.0  # the longest pause a 429 without a usable Retry-After imposes
_UNCOUNTED_FALLBACK = 4  # processes assumed when the store was lost before it counted them

Fallback = int | Literal["auto", "pause"]


class SlotUnavailable(Exception):
    """No slot within what the caller may wait: raised before sleeping, so a caller with a
    deadline learns at once when to come back.

    Attributes:
        wait: Seconds until a slot may open.
        quota: The wait is a full window of an hour or more (the day's quota).
    """

    def __init__(self, wait: float, *, quota: bool = False) -> None:
        what = "the daily quota reopens" if quota else "the next slot opens"
        super().__init__(f"{what} in {wait:.2f} s")
        self.wait = wait
        self.quota = quota


@dataclass(frozen=True, slots=True)
class PacingStatus:
    """What a rate limiter is doing now, for a progress line or a readiness probe.

    Attributes:
        wait: Seconds until a request could go (0: at once).
        reason: Why requests wait, when they wait for more than the pace: a pause after a
            429 (with its reason), a full window, or a lost store's hold.
        rate: This process's adaptive cap in requests/s, when 429s lowered it.
        degraded: A shared store is unreachable: pacing on a local share of the plan.
        share: The share of the plan this process takes while degraded (``1/N``).
        processes: Processes a shared store saw on the key lately (0: not counted).
        margin: Seconds added to every window's period now.
    """

    wait: float
    reason: str | None
    rate: float | None
    degraded: bool
    share: int
    processes: int
    margin: float

    def describe(self) -> str | None:
        """One short line for a progress display, or ``None`` when nothing holds requests."""
        notes = []
        if self.reason and self.wait > 1:
            wait = _duration(self.wait)
            if self.wait >= 60:  # a long wait says until when, on the wall clock
                until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + self.wait))
                wait = f"until {until} ({wait})"
            notes.append(f"{self.reason}: waiting {wait}")
        if self.degraded:
            notes.append(f"rate-limit store lost: pacing at 1/{self.share} of the plan")
        if self.rate is not None:
            notes.append(f"pacing at {self.rate:.1f}/s (adaptive, after 429s)")
        return " | ".join(notes) or None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours:d}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{seconds} s"


class AdaptiveRate:
    """This process's send rate, lowered on throttling and recovered gradually (AIMD/CUBIC).

    Like botocore's adaptive retry mode: a 429 the windows did not predict means someone
    outside the store uses the key, so this process multiplies its measured rate by
    ``beta`` (never below ``floor`` requests/s), then recovers along a cubic curve that
    reaches the rate it had before in ``recovery`` seconds and grows past it afterwards,
    until it reaches ``ceiling`` (the plan's rate) and the cap is lifted.

    Args:
        ceiling: The rate without throttling (requests/s), e.g. the plan's.
        beta: Factor applied on throttling.
        floor: Lowest rate (requests/s).
        recovery: Seconds to climb back to the rate before the last decrease.
        cooldown: 429s closer than this to the last decrease count once (they answer
            requests sent before it).
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        ceiling: float,
        *,
        beta: float = 0.5,
        floor: float = 0.1,
        recovery: float = 20.0,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling <= 0 or not 0 < beta < 1 or floor <= 0 or recovery <= 0:
            raise ValueError(
                "AdaptiveRate needs ceiling > 0, 0 < beta < 1, floor > 0 and recovery > 0"
            )
        self.ceiling = ceiling
        self.beta = beta
        self.floor = min(floor, ceiling)
        self.recovery = recovery
        self.cooldown = cooldown
        self._clock = clock
        self._sent: deque[float] = deque()
        self._measure = 2.0  # seconds of sends the measured rate looks at
        self._last_max = ceiling  # the rate before the last decrease
        self._decreased_at: float | None = None
        self.decreases = 0

    def on_send(self) -> None:
        """Count one request sent (feeds the measured rate)."""
        now = self._clock()
        self._sent.append(now)
        while self._sent and self._sent[0] < now - self._measure:
            self._sent.popleft()

    def measured(self) -> float:
        """Requests/s sent over the last two seconds."""
        now = self._clock()
        while self._sent and self._sent[0] < now - self._measure:
            self._sent.popleft()
        return len(self._sent) / self._measure

    def rate(self) -> float | None:
        """The current cap in requests/s, or ``None`` when not throttled."""
        if self._decreased_at is None:
            return None
        elapsed = self._clock() - self._decreased_at
        # CUBIC: W(t) = C (t - K)^3 + W_max, with K the time back to W_max.
        scale = self._last_max * (1 - self.beta) / self.recovery**3
        value = scale * (elapsed - self.recovery) ** 3 + self._last_max
        if value >= self.ceiling:
            self._decreased_at = None
            logger.info("adaptive rate: back to the full %.2f requests/s", self.ceiling)
            return None
        return max(self.floor, value)

    def on_throttle(self) -> bool:
        """A 429 the windows did not predict; returns whether the rate was lowered."""
        now = self._clock()
        if self._decreased_at is not None and now - self._decreased_at < self.cooldown:
            return False
        current = self.rate()
        base = self.measured() or (current if current is not None else self.ceiling)
        if current is not None:
            base = min(base, current)
        self._last_max = max(self.floor, base)
        self._decreased_at = now
        self.decreases += 1
        new = max(self.floor, self.beta * self._last_max)
        logger.info(
            "adaptive rate: a 429 the windows did not predict; %.2f -> %.2f requests/s",
            base,
            new,
        )
        return True


class RateLimiter:
    """Lets requests go no faster than every window of the key's plan allows, shared by every
    task of the process and, through a Redis store, by every process of the key.

    ```python
    limiter = RateLimiter("business")
    await limiter.acquire()   # before every HTTP attempt, retries included
    limiter.pause(2.0)        # every caller waits
    ```

    Waiters are served one at a time in arrival order (a fair lock), and requests are spaced
    evenly over the shortest window of a minute or less (``period / limit`` apart) rather
    than let go a window's worth at once: a server stamps a burst as it parses it, tens of
    milliseconds apart, so the next burst could reach it less than a window after the
    previous one's tail and be refused. A client built with ``rate_limit=`` holds one and
    paces every attempt of every call with it.

    Args:
        windows: A plan name, a spec or windows (see :func:`parse_rate_limit`).
        store: ``None`` (this process), a ``redis://`` URL (extra ``redis``), or a store.
        client_id: The key's client id; required with a Redis URL (only its hash is used).
        reserve: Share of every window left to other callers by default (0 to below 1): a
            bulk job passes 0.25, live callers 0. ``acquire(reserve=...)`` overrides it.
        adaptive: Lower this process's rate on 429s the windows did not predict (another
            user of the key), recovering along a cubic: ``True``, ``False`` or an
            :class:`AdaptiveRate`. Default: on when a window of a minute or less gives a
            pace to lower.
        fallback: When a shared store is lost mid-run, each process waits out the windows
            of a minute or less, then paces at 1/N of the plan. ``"auto"``: N is the number
            of processes the store saw asking in the last two minutes (4 if it was lost
            before it answered once); an int fixes N; ``"pause"`` sends nothing until the
            store returns.
        retry_interval: Seconds between attempts to reach a lost store.
        store_timeout: Seconds per Redis call when ``store`` is a URL.
        margin: Seconds added to every window's period, to absorb the difference in delay
            between two requests reaching the server. ``None`` (the default) learns it: 5 ms
            at first, doubled on each 429 met while a window was full, up to 200 ms (logged
            at INFO), plus the longest delay a recent request took from its slot to the wire
            (see :attr:`margin`). A float fixes it.
        clock: Monotonic seconds; injectable for tests.
        sleep: Awaitable sleep; injectable for tests.

    Raises:
        ValueError: an invalid spec, reserve, margin or fallback.
    """

    def __init__(
        self,
        windows: str | Sequence[Window] | None,
        *,
        store: str | PacingStore | None = None,
        client_id: str | None = None,
        reserve: float = 0.0,
        adaptive: bool | AdaptiveRate | None = None,
        fallback: Fallback = "auto",
        retry_interval: float = 2.0,
        store_timeout: float = 0.5,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.windows = parse_rate_limit(windows)
        if margin is not None and not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a number of seconds >= 0: {margin!r}")
        self._learns_margin = margin is None
        self._margin = MARGIN_START if margin is None else margin
        self._clock = clock
        self._sleep = sleep
        self._lock = anyio.Lock()
        self._spacing = spacing(self.windows)
        if isinstance(store, str):
            store = RedisStore(store, client_id or "", timeout=store_timeout)
        self.store: PacingStore = store if store is not None else MemoryStore(clock)
        effective_windows(self.windows, reserve)  # validates
        self.reserve = reserve
        if fallback not in ("auto", "pause") and (
            not isinstance(fallback, int) or isinstance(fallback, bool) or fallback < 1
        ):
            raise ValueError(
                f"fallback must be 'auto', a process count >= 1 or 'pause': {fallback!r}"
            )
        self.fallback = fallback
        self.retry_interval = retry_interval
        plan_rate = 1.0 / self._spacing if self._spacing > 0 else 0.0
        if adaptive is True and plan_rate <= 0:
            raise ValueError("adaptive pacing needs a window of a minute or less")
        if adaptive is None:
            adaptive = plan_rate > 0
        self.adaptive: AdaptiveRate | None = (
            AdaptiveRate(plan_rate, clock=clock) if adaptive is True else adaptive or None
        )
        # Learning the margin: when a short window last said wait, when the margin last
        # widened, and recent requests' delays between their slot and the wire, as
        # (when, delay) with delays decreasing: the front is the longest still remembered.
        self._window_full_at = -math.inf
        self._margin_widened_at = -math.inf
        self._send_delays: deque[tuple[float, float]] = deque()
        short = [w.period for w in self.windows if w.period <= MAX_PACED_PERIOD]
        self._short_period = max(short, default=0.0)
        self._delay_memory = self._short_period + 1.0
        # Pauses: after 429s (doubling while they go on), or a hold.
        self._paused_until = -math.inf
        self._pause_reason: str | None = None
        self._quota_until = -math.inf  # the API said the day's quota is used up until then
        self._backoff = 1.0
        self.rate_limited = 0  # 429s heard from every caller
        self._adaptive_next = -math.inf
        self._wait_until = -math.inf  # when the last refused acquire() was told a slot opens
        self._wait_window: Window | None = None
        # Admission: callers queued for a slot now, and how far ahead refused callers have
        # been told to come back (each one a pace later than the one before).
        self.waiting = 0
        self._told_until = -math.inf
        # This process's own requests (member, clock time), to restore them in a store that
        # lost them and to seed the local fallback: bounded by the largest limit.
        self._keep = max((w.limit for w in self.windows), default=0)
        self._own: deque[tuple[str, float]] = deque(maxlen=self._keep or 1)
        self._token = os.urandom(6).hex()
        self._counter = itertools.count()
        self._pending_member = ""
        self._started = False
        # A lost shared store: pacing on a local share, probing for its return.
        self.processes = 0  # processes the shared store last saw on the key (0: not yet)
        self.degraded = False
        self.fallbacks = 0  # times the shared store was lost
        self._fallback_n = 1
        self._local: MemoryStore | None = None
        self._hold_until = -math.inf
        self._grace_until = -math.inf
        self._next_probe = -math.inf

    def __repr__(self) -> str:
        spec = ",".join(map(str, self.windows)) or "none"
        store = "" if isinstance(self.store, MemoryStore) else f", store={self.store!r}"
        return f"RateLimiter({spec!r}{store}, reserve={self.reserve})"

    # -- what the limiter learns -------------------------------------------------------------

    @property
    def margin(self) -> float:
        """Seconds added to every window's period now.

        A learned margin also adds the longest delay a recent request took from its slot to
        its headers on the wire (a new connection's handshake, a busy event loop): the
        server counts that request that much later than its slot, so the one that takes its
        place in a window must wait as much longer.
        """
        if not self._learns_margin:
            return self._margin
        delays, now = self._send_delays, self._clock()
        while delays and delays[0][0] < now - self._delay_memory:
            delays.popleft()
        return self._margin + (delays[0][1] if delays else 0.0)

    @margin.setter
    def margin(self, value: float) -> None:
        self._margin = value

    def on_sent(self, delay: float) -> None:
        """A request granted a slot went on the wire ``delay`` seconds later (a learned
        margin keeps it in mind: see :attr:`margin`)."""
        if not self._learns_margin or not delay > 0:
            return
        delays = self._send_delays
        while delays and delays[-1][1] <= delay:
            delays.pop()  # never the longest again while this one is remembered
        delays.append((self._clock(), min(delay, _MAX_SEND_DELAY)))

    def on_rate_limited(self, retry_after: float | None, *, cap: float = 60.0) -> bool:
        """A request met 429: learn from it and hold every caller back. The one place that
        decides what a 429 means.

        A ``Retry-After`` within ``cap`` holds every caller back that long; none at all, or
        one that means no wait (0, negative, NaN, a past date: all parse to 0), holds them
        back 1 s, doubling up to 60 s while 429s go on (the many calls in flight that meet
        the same refusal double it once). The 429 also widens a learned margin when a
        window was full (our own requests arrived closer together than they left), else
        lowers the adaptive rate (a stranger on the key).

        Returns:
            ``False`` when ``retry_after`` is past ``cap`` (``inf`` and NaN too): not a rate
            window but most likely the daily quota, which the caller decides about.
        """
        self.rate_limited += 1
        if retry_after is not None and not retry_after <= cap:
            return False
        if not self._widen_margin() and self.adaptive is not None:
            self.adaptive.on_throttle()
        if retry_after is not None and retry_after > 0:
            self.pause(retry_after, reason="a 429's Retry-After")
        elif self.paused_for <= 0:  # the first of a burst of 429s doubles the wait
            self.pause(self._backoff, reason="429s")
            self._backoff = min(_MAX_PAUSE, self._backoff * 2)
        return True

    def on_success(self) -> None:
        """A request went through: the next 429 pauses 1 s again."""
        self._backoff = 1.0

    def _widen_margin(self) -> bool:
        """Whether this 429 is put down to the margin (then it widens, at most once a second).

        A 429 on a slot the windows granted has two causes. While a window was full (this
        process sends at the plan's whole rate), the likeliest is two of our requests
        reaching the server closer together than we let them go, at the window's edge: a
        wider margin answers that, and halving the rate would cost far more. While the
        windows had room, someone outside the store uses the key: the adaptive rate answers
        that, as it does once the margin is at its widest.
        """
        now = self._clock()
        if (
            not self._learns_margin
            or self._margin >= MARGIN_MAX
            or now - self._window_full_at > _AT_THE_EDGE
        ):
            return False
        if now - self._margin_widened_at >= _MARGIN_COOLDOWN:
            self._margin_widened_at = now
            old, self._margin = self._margin, min(MARGIN_MAX, self._margin * 2)
            logger.info(
                "rate-limit margin: a 429 at a full window's edge; %.0f -> %.0f ms",
                old * 1000,
                self._margin * 1000,
            )
        return True

    @property
    def current_rate(self) -> float | None:
        """This process's adaptive cap in requests/s, or ``None`` (only the windows apply)."""
        return None if self.adaptive is None else self.adaptive.rate()

    # -- pauses ------------------------------------------------------------------------------

    def pause(self, seconds: float, *, reason: str | None = None) -> None:
        """Hold every request back for ``seconds`` from now (extends, never shortens);
        ``reason`` is what :meth:`status` says meanwhile."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_reason = reason

    def hold_for_quota(self, seconds: float) -> None:
        """The API said the day's quota is used up for ``seconds``: callers that wait for the
        quota wait that long; the others are refused at once (``acquire(wait_for_quota=False)``
        raises), instead of spending a request to hear it again."""
        self._quota_until = max(self._quota_until, self._clock() + seconds)

    @property
    def quota_for(self) -> float:
        """Seconds until the day's quota reopens, as the API said (0 when it did not)."""
        return max(0.0, self._quota_until - self._clock())

    @property
    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def wait_time(self, *, reserve: float | None = None) -> float:
        """Seconds before a request could go, as far as this process knows now: a pause,
        the adaptive pace, the windows in memory, or what a shared store told the last
        refused :meth:`acquire` (counted down since)."""
        now = self._clock()
        wait = max(self._paused_until, self._adaptive_next, self._wait_until, self._quota_until)
        wait -= now
        if self.windows and isinstance(self.store, MemoryStore):
            tier, windows, _ = self._tier(self.reserve if reserve is None else reserve)
            verdict = self.store.check(windows, tier=tier, margin=self.margin, now=now)
            wait = max(wait, verdict.wait)
        return max(wait, 0.0)

    def status(self) -> PacingStatus:
        """What the limiter is doing now (see :class:`PacingStatus`)."""
        now = self._clock()
        wait = self.wait_time()
        reason: str | None = None
        window = self._wait_window if self._wait_until > now else None
        if self._quota_until > now and self._quota_until - now >= wait - EPSILON:
            reason = "the daily quota is used up (the API said)"
        elif self._paused_until > now and self._paused_until - now >= wait - EPSILON:
            reason = self._pause_reason or "paused"
        else:
            if self.windows and isinstance(self.store, MemoryStore):
                verdict = self.store.check(self.windows, tier="all", margin=self.margin, now=now)
                window = verdict.window or window
            if window is not None:
                reason = f"the {window} window is full"
        return PacingStatus(
            wait=wait,
            reason=reason,
            rate=self.current_rate,
            degraded=self.degraded,
            share=self._fallback_n,
            processes=self.processes,
            margin=self.margin,
        )

    # -- admission ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def queued(self) -> Iterator[None]:
        """Count the caller as waiting for a slot while the block runs (what
        :meth:`projected_wait` counts)."""
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    def _pace(self, reserve: float | None) -> float:
        """Seconds between two of this process's requests at its current pace: the even
        spacing, or a window's share of its period and margin, or the adaptive rate."""
        windows = self.effective_windows(reserve=reserve)
        pace = max(
            ((w.period + self.margin) / w.limit for w in windows if w.period <= MAX_PACED_PERIOD),
            default=0.0,
        )
        rate = self.current_rate
        return max(pace, 1.0 / rate) if rate else pace

    def projected_wait(self, *, reserve: float | None = None) -> float:
        """Seconds until a caller arriving now would get its slot, behind the callers
        already waiting: the wait for the next slot, a pace for each caller ahead, and a
        full period for each window of a minute or less they would fill. An estimate, from
        what this process knows (a shared store's other processes count in the wait only)."""
        ahead = self.waiting
        wait = self.wait_time(reserve=reserve)
        # A margin of slack: a projection that lands on the deadline's edge must not admit
        # a call that is then refused after waiting.
        projected = wait + ahead * self._pace(reserve) + (self.margin if ahead else 0.0)
        for window in self.effective_windows(reserve=reserve):
            if window.period <= MAX_PACED_PERIOD and ahead >= window.limit:
                projected = max(projected, wait + (ahead // window.limit) * window.period)
        return projected

    def come_back_in(self, projected: float, *, reserve: float | None = None) -> float:
        """The ``Retry-After`` for a caller refused now whose slot was ``projected`` seconds
        away: that, or a pace after the caller refused before it, so that refused callers
        come back spread at the plan's pace rather than all in the same second."""
        now = self._clock()
        at = max(now + projected, self._told_until)
        self._told_until = at + self._pace(reserve)
        return at - now

    # -- the store ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the store (a no-op in memory).

        Raises:
            PacingStoreError: a shared store is unreachable (the message names its URL).
        """
        ping = getattr(self.store, "ping", None)  # a shared store says whether it answers
        if ping is not None:
            await ping()
        self._started = True

    async def aclose(self) -> None:
        """Release the store's connections."""
        await self.store.aclose()

    def seed(self, sent_at: Sequence[float]) -> None:
        """Count requests made before this limiter existed (``clock()`` times, oldest
        first), so that a resumed run does not spend a day's quota twice; only a local store
        needs them (a shared one remembers)."""
        if isinstance(self.store, MemoryStore):
            self.store.seed(sent_at, self._keep)

    def effective_windows(self, *, reserve: float | None = None) -> tuple[Window, ...]:
        """The windows a caller leaving ``reserve`` of each to others may use (default: the
        limiter's own reserve): ``10/s`` less 25% is ``7/s``, never below one request."""
        return self._tier(self.reserve if reserve is None else reserve)[1]

    def _tier(self, reserve: float) -> tuple[str, tuple[Window, ...], float]:
        if reserve == 0:
            return "all", self.windows, self._spacing
        windows = effective_windows(self.windows, reserve)
        return f"r{reserve:g}", windows, spacing(windows)

    async def acquire(
        self,
        *,
        reserve: float | None = None,
        within: float | None = None,
        wait_for_quota: bool = True,
    ) -> None:
        """Wait until every window (less ``reserve``) has room, then count one request.

        Args:
            reserve: Share of every window to leave to others (default: the limiter's).
            within: Seconds the caller may wait at most (a call's deadline): a slot that
                opens later raises at once instead of being waited for.
            wait_for_quota: Whether a full window of an hour or more (the day's quota) is
                waited for; ``False`` raises instead.

        Raises:
            SlotUnavailable: the slot opens after ``within`` seconds, or the day's quota is
                used up and ``wait_for_quota`` is false.
            PacingStoreError: the shared store was unreachable at the first call.
        """
        give_up = None if within is None else self._clock() + within
        async with self._lock:
            if not self._started:
                await self.start()
            if not self.windows:  # pauses only
                if self.quota_for > 0 and not wait_for_quota:
                    raise SlotUnavailable(self.quota_for, quota=True)
                while (wait := max(self._paused_until, self._quota_until) - self._clock()) > 0:
                    _check_within(give_up, self._clock(), wait)
                    await self._sleep(wait)
                return
            tier, windows, pace = self._tier(self.reserve if reserve is None else reserve)
            while True:
                now = self._clock()
                if self._quota_until > now and not wait_for_quota:
                    raise SlotUnavailable(self._quota_until - now, quota=True)
                wait = max(self._paused_until, self._adaptive_next, self._quota_until) - now
                if wait > EPSILON:
                    _check_within(give_up, now, wait)
                    await self._sleep(wait)
                    continue
                verdict = await self._ask(windows, tier, pace)
                if verdict.granted:
                    self._wait_until = -math.inf
                    self._granted()
                    return
                window = verdict.window
                now = self._clock()
                if window is not None and window.period >= QUOTA_PERIOD and not wait_for_quota:
                    raise SlotUnavailable(verdict.wait, quota=True)
                if window is not None and window.period <= MAX_PACED_PERIOD:
                    self._window_full_at = now
                self._wait_until, self._wait_window = now + verdict.wait, window
                _check_within(give_up, now, verdict.wait)
                await self._sleep(max(verdict.wait, EPSILON))

    def _granted(self) -> None:
        now = self._clock()
        self._own.append((self._pending_member, now))
        if self.adaptive is not None:
            self.adaptive.on_send()
            rate = self.adaptive.rate()
            self._adaptive_next = now + 1.0 / rate if rate else -math.inf

    async def _ask(self, windows: tuple[Window, ...], tier: str, pace: float) -> Verdict:
        self._pending_member = f"{self._token}:{next(self._counter)}"
        now = self._clock()
        if self.degraded and now >= self._next_probe:
            await self._probe(now)
        if not self.degraded:
            # Just back from a fallback: other processes may still pace locally and unseen,
            # so this one keeps to its local share too until every one has had time to return.
            local = self._local if now < self._grace_until else None
            if local is not None:
                check = local.check(self._share(windows), tier=tier, margin=self.margin)
                if not check.granted:
                    return check
            try:
                verdict = await self.store.reserve(
                    windows,
                    tier=tier,
                    spacing=pace,
                    plan_spacing=self._spacing,
                    margin=self.margin,
                    member=self._pending_member,
                    expect=self._expected(now),
                )
                if verdict.lost:
                    await self._restore_lost_windows(now)
                    return Verdict(False, EPSILON)  # ask again, over the restored windows
            except PacingStoreError as error:
                self._enter_fallback(error)
            else:
                self.processes = verdict.processes or self.processes
                if verdict.granted and local is not None:
                    local.record(
                        self._share(windows), tier=tier, spacing=pace, plan_spacing=self._spacing
                    )
                return verdict
        return self._ask_locally(windows, tier)

    # -- a lost shared store -----------------------------------------------------------------

    def _share(self, windows: Sequence[Window]) -> tuple[Window, ...]:
        """A 1/N share of ``windows`` (at least one request per N-times-longer period)."""
        n = self._fallback_n
        return tuple(
            Window(w.limit // n, w.period) if w.limit >= n else Window(1, w.period * n / w.limit)
            for w in windows
        )

    def _ask_locally(self, windows: tuple[Window, ...], tier: str) -> Verdict:
        now = self._clock()
        probe = max(self._next_probe - now, EPSILON)
        if self.fallback == "pause":
            return Verdict(False, probe)
        if now < self._hold_until:
            return Verdict(False, min(self._hold_until - now, probe))
        assert self._local is not None
        share = self._share(windows)
        verdict = self._local.check(share, tier=tier, margin=self.margin, now=now)
        if not verdict.granted:
            # Wake for the next probe too, so recovery is not delayed by a long local wait.
            return Verdict(False, min(verdict.wait, probe), verdict.window)
        pace = spacing(share)
        self._local.record(share, tier=tier, spacing=pace, plan_spacing=pace, now=now)
        return verdict

    def _short_hold(self) -> float:
        """Seconds for the windows of a minute or less to empty of requests unknown here."""
        return self._short_period + self.margin

    def _enter_fallback(self, error: PacingStoreError) -> None:
        now = self._clock()
        self.degraded = True
        self.fallbacks += 1
        self._next_probe = now + self.retry_interval
        why = self._start_local_share()
        if self.fallback == "pause":
            logger.warning(
                "%s; PAUSING every request until it returns (retrying every %g s)",
                error,
                self.retry_interval,
            )
            return
        # Other processes' requests in the windows of a minute or less are unknown now:
        # wait those windows out, then pace at 1/N of the plan.
        hold = self._short_hold()
        self._hold_until = now + hold
        share = ",".join(map(str, self._share(self.windows)))
        logger.warning(
            "%s; FALLING BACK to a local share of the plan (1/%d, %s%d: %s) after waiting "
            "%.1f s for the short windows to empty; retrying the store every %g s",
            error,
            self._fallback_n,
            why,
            self._fallback_n,
            share,
            hold,
            self.retry_interval,
        )

    def _start_local_share(self) -> str:
        """Keep this process's own requests locally, to pace at 1/N of the plan; says why N."""
        self._local = MemoryStore(self._clock)
        self._local.seed([stamp for _, stamp in self._own], self._keep)
        if isinstance(self.fallback, int):
            self._fallback_n, why = self.fallback, "fallback="
        elif self.processes:
            self._fallback_n, why = self.processes, "processes the store saw on the key: "
        else:
            self._fallback_n, why = _UNCOUNTED_FALLBACK, "the store counted none yet, assumed "
        return why

    def _retention(self) -> float:
        return max((w.period for w in self.windows), default=0.0) + self.margin

    def _expected(self, now: float) -> str:
        """This process's last request, if the store must still hold it (else "")."""
        if not self._own or not self.store.shared:
            return ""
        member, stamp = self._own[-1]
        # Slack: the store stamps and trims by its own clock, a round trip after ours.
        return member if now - stamp < self._retention() * 0.99 - 0.05 else ""

    def _own_ages(self, now: float) -> tuple[list[tuple[str, float]], float]:
        retention = self._retention()
        return [(m, now - stamp) for m, stamp in self._own if now - stamp < retention], retention

    def _store_name(self) -> str:
        store = self.store
        return redact_url(store.url) if isinstance(store, RedisStore) else repr(store)

    async def _restore_lost_windows(self, now: float) -> None:
        """The store lost the windows while it stayed up: put this process's own requests
        back. Other processes' requests are unknown until each puts its own back on its next
        request, and one asleep until a full window reopens will not ask for a while: so,
        as after an outage, send nothing until the windows of a minute or less have emptied
        (not needed when the store saw no other process on the key)."""
        ages, retention = self._own_ages(now)
        await self.store.replay(ages, retention=retention)
        what = (
            f"rate-limit store {self._store_name()} lost this key's windows while it stayed "
            "up (FLUSHDB, eviction under maxmemory, or a failover to a replica that lagged): "
            f"{len(ages)} own requests restored"
        )
        if self.processes <= 1:
            logger.warning("%s; no other process was on the key", what)
            return
        hold = self._short_hold()
        self.pause(hold, reason="the store's windows were wiped")  # nothing to learn from it
        logger.warning(
            "%s; HOLDING every request for %.1f s, until the other %d process(es)' requests "
            "in the short windows have expired",
            what,
            hold,
            self.processes - 1,
        )

    async def _probe(self, now: float) -> None:
        self._next_probe = now + self.retry_interval
        ages, retention = self._own_ages(now)
        try:
            await self.store.replay(ages, retention=retention)
        except PacingStoreError:
            return
        self.degraded = False
        self._grace_until = now + self._short_hold() + self.retry_interval
        logger.warning(
            "rate-limit store %s is back: shared pacing resumed (%d own requests restored)",
            self._store_name(),
            len(ages),
        )

    # -- planning ----------------------------------------------------------------------------

    def estimate(self, requests: int, *, reserve: float | None = None) -> float:
        """Seconds ``requests`` more requests take at full speed from an idle start, with
        ``reserve`` of every window left to others (default: the limiter's).

        Simulated over the same window algorithm the limiter paces with: with several
        windows the waits compound (a full minute window holds back a per-second pace).
        Beyond a million requests the rest is extrapolated at the simulated pace.
        """
        if requests <= 0 or not self.windows:
            return 0.0
        tier, windows, pace = self._tier(self.reserve if reserve is None else reserve)
        now = 0.0
        store = MemoryStore(lambda: now)
        simulated = min(requests, 1_000_000)
        for _ in range(simulated):
            while not (verdict := store.check(windows, tier=tier, margin=self._margin)).granted:
                now += verdict.wait
            store.record(windows, tier=tier, spacing=pace, plan_spacing=pace)
        return now if simulated == requests else now * requests / simulated


def _check_within(give_up: float | None, now: float, wait: float) -> None:
    """Raise :class:`SlotUnavailable` when a wait of ``wait`` from ``now`` ends past
    ``give_up`` (``None``: no bound)."""
    if give_up is not None and now + wait >= give_up:
        raise SlotUnavailable(wait)
