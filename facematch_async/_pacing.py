"""Pacing one API key's quota across tasks, processes and machines.

Deepvue counts requests per API key, so every caller of one key (a web service's replicas, a
bulk job, its shards on other machines) must share one set of windows. This module keeps the
spaced, multi-window sliding-window behaviour of :class:`~facematch_async.RateLimiter` and
moves the windows into a **store**:

* :class:`MemoryStore`: this process only (today's behaviour);
* :class:`RedisStore`: every process that names the same Redis URL and client id, checked
  and reserved atomically in one Lua script on the Redis server's clock.

:class:`Pacer` is the limiter on top: a :class:`RateLimiter` (so ``BatchRunner`` takes it
as ``rate_limit=``) that asks a store, keeps a ``reserve`` of every window for live callers,
falls back to a local share of the plan when Redis goes away, and can lower its own rate
after 429s nobody predicted (:class:`AdaptiveRate`, botocore's adaptive mode).

```python
pacer = Pacer("business", store="redis://redis:6379/0", client_id="acme", reserve=0.25)
await pacer.start()        # fails at once, naming the URL, if Redis is unreachable
await pacer.acquire()      # before every HTTP attempt
```
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import anyio

from facematch_async._ratelimit import (
    QUOTA_PERIOD,
    QuotaExhaustedError,
    RateLimiter,
    Window,
    _check_within,
)
from facematch_async.errors import PacingStoreError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "AdaptiveRate",
    "MemoryStore",
    "Pacer",
    "PacingStore",
    "PacingStoreError",
    "RedisStore",
    "Verdict",
    "effective_windows",
    "key_prefix",
    "plan_pacer",
    "redact_url",
]

logger = logging.getLogger("facematch_async")

_EPSILON = 1e-9
_MAX_PACED_PERIOD = 60.0  # as in _ratelimit: daily quotas are never spread evenly
_LATENESS = 0.01  # seconds: a request this late after its slot still kept the pace
# A learned margin (see Pacer): start where loopback and a steady network path need no more,
# double on each 429 met at a full window's edge, never past what a jittery path needs.
MARGIN_START = 0.005
MARGIN_MAX = 0.2
_MARGIN_COOLDOWN = 1.0  # 429s this close together answer requests sent under one margin
_AT_THE_EDGE = 5.0  # seconds: a 429 this soon after a window was full came from its edge
_MAX_SEND_DELAY = 30.0  # seconds: a send delayed longer has met its timeout, not a queue
_PRESENCE = 2 * _MAX_PACED_PERIOD  # seconds a process counts as sharing the key after asking


@dataclass(frozen=True, slots=True)
class Verdict:
    """A store's answer to one reservation.

    Attributes:
        granted: A slot was reserved (the request may go now).
        wait: Otherwise, seconds until one may open.
        window: The window imposing that wait (``None``: the even spacing).
        processes: A shared store's count of the processes that asked it lately (0: not
            counted), the share each would take if the store went away.
        lost: The request ``expect`` named is gone: the store lost the windows while it
            stayed up (nothing was reserved).
    """

    granted: bool
    wait: float = 0.0
    window: Window | None = None
    processes: int = 0
    lost: bool = False


@runtime_checkable
class PacingStore(Protocol):
    """Where the windows live. One call checks every window and reserves a slot, atomically.

    ``windows`` are the caller's *effective* windows (see :func:`effective_windows`): a bulk
    caller passes smaller limits than a live one, over the same recorded requests.
    ``spacing`` holds consecutive requests of the tier ``tier`` that far apart, and
    ``plan_spacing`` holds any two requests of the key that far apart.
    """

    shared: bool
    """Whether other processes see the same windows (so a local fallback makes sense)."""

    async def reserve(
        self,
        windows: Sequence[Window],
        *,
        tier: str,
        spacing: float,
        plan_spacing: float,
        margin: float,
        member: str,
        expect: str = "",
    ) -> Verdict:
        """Reserve a slot under ``member`` if every window has room, else say how long to wait;
        first, unless empty, check that the request ``expect`` (a member reserved earlier,
        still within the windows) is still there, else answer ``lost``.

        Raises:
            PacingStoreError: the store is unreachable or slow (shared stores only).
        """
        ...

    async def replay(self, grants: Sequence[tuple[str, float]], *, retention: float) -> None:
        """Record requests made while the store was unreachable: ``(member, age in s)``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def effective_windows(windows: Sequence[Window], reserve: float) -> tuple[Window, ...]:
    """The windows a caller may use when ``reserve`` of each is kept for others.

    ``Window(5, 1)`` with ``reserve=0.25`` becomes ``Window(3, 1)``: floor, never below one
    request, so a bulk caller can always make progress.
    """
    if not 0.0 <= reserve < 1.0:
        raise ValueError(f"reserve must be in [0, 1), not {reserve}")
    return tuple(
        Window(max(1, math.floor(w.limit * (1.0 - reserve) + 1e-9)), w.period) for w in windows
    )


def _spacing(windows: Sequence[Window]) -> float:
    short = [w for w in windows if w.period <= _MAX_PACED_PERIOD]
    shortest = min(short, key=lambda w: w.period, default=None)
    return 0.0 if shortest is None else shortest.period / shortest.limit


def _next_slot(slot: float, now: float, spacing: float) -> float:
    # A request let go just after its slot kept the pace: the next slot follows the slot,
    # not the moment it went, so late sleeps do not slip the rate (as in RateLimiter).
    base = slot if slot <= now < slot + _LATENESS else now
    return max(slot, base + spacing)


class MemoryStore:
    """The windows of this process: the in-process behaviour of :class:`RateLimiter`.

    Memory is bounded by the largest limit seen (the last ``limit`` stamps decide a wait).
    """

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stamps: deque[float] = deque()
        self._keep = 0
        self._slots: dict[str, float] = {}

    def seed(self, stamps: Sequence[float], keep: int) -> None:
        """Count requests made earlier (``clock()`` times, oldest first)."""
        self._keep = max(self._keep, keep)
        for stamp in stamps:
            self._append(stamp)

    def _append(self, stamp: float) -> None:
        self._stamps.append(stamp)
        while len(self._stamps) > self._keep:
            self._stamps.popleft()

    def check(
        self, windows: Sequence[Window], *, tier: str, margin: float, now: float | None = None
    ) -> Verdict:
        """What :meth:`reserve` would answer, without reserving."""
        now = self._clock() if now is None else now
        wait = max(self._slots.get("all", -math.inf), self._slots.get(tier, -math.inf)) - now
        longest: Window | None = None
        stamps = self._stamps
        for window in windows:
            if len(stamps) < window.limit:
                continue
            # The limit-th newest request must leave the window before another may go.
            reopens = stamps[-window.limit] + window.period + margin - now
            if reopens > wait:
                wait, longest = reopens, window
        if wait <= _EPSILON:
            return Verdict(True)
        return Verdict(False, wait, longest)

    def record(
        self,
        windows: Sequence[Window],
        *,
        tier: str,
        spacing: float,
        plan_spacing: float,
        now: float | None = None,
    ) -> None:
        """Count one request now (after a granted :meth:`check`)."""
        now = self._clock() if now is None else now
        self._keep = max(self._keep, max((w.limit for w in windows), default=0))
        self._append(now)
        self._slots["all"] = _next_slot(self._slots.get("all", -math.inf), now, plan_spacing)
        if tier != "all":
            self._slots[tier] = _next_slot(self._slots.get(tier, -math.inf), now, spacing)

    async def reserve(
        self,
        windows: Sequence[Window],
        *,
        tier: str,
        spacing: float,
        plan_spacing: float,
        margin: float,
        member: str = "",
        expect: str = "",
    ) -> Verdict:
        """See :class:`PacingStore`; never raises (and never loses a request)."""
        now = self._clock()
        verdict = self.check(windows, tier=tier, margin=margin, now=now)
        if verdict.granted:
            self.record(windows, tier=tier, spacing=spacing, plan_spacing=plan_spacing, now=now)
        return verdict

    async def replay(self, grants: Sequence[tuple[str, float]], *, retention: float) -> None:
        """Nothing to do: this store is never unreachable."""

    async def aclose(self) -> None:
        """Nothing to release."""


# One script call checks every window and reserves, atomically, on the server's clock, so
# processes on machines with skewed clocks agree. Times are integer microseconds; numbers
# that go into commands are formatted with %.0f (Lua's tostring keeps only 14 digits).
# One sorted set holds the requests of the longest window; each window is a ZCOUNT.
_RESERVE_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
local margin = tonumber(ARGV[2])
local lateness = tonumber(ARGV[3])
local plan_spacing = tonumber(ARGV[4])
local tier = ARGV[5]
local spacing = tonumber(ARGV[6])
local retention = tonumber(ARGV[7])
local n = tonumber(ARGV[8])
local process = ARGV[9 + 2 * n]
local presence = tonumber(ARGV[10 + 2 * n])
local expect = ARGV[11 + 2 * n]
local function f(x) return string.format('%.0f', x) end
-- Who shares the key: each process that asked lately, so that all of them know how small
-- a share of the plan to take if this store goes away.
redis.call('ZADD', KEYS[3], f(now), process)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. f(now - presence))
redis.call('PEXPIRE', KEYS[3], math.ceil(presence / 1000) + 1000)
local processes = redis.call('ZCARD', KEYS[3])
-- Callers on one key may name different plans: keep the longest retention any of them
-- needs, so that a caller without a day window never trims or expires a day's history.
local kept = tonumber(redis.call('HGET', KEYS[2], 'retention') or '0')
if retention > kept then redis.call('HSET', KEYS[2], 'retention', f(retention)) end
if kept > retention then retention = kept end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. f(now - retention))
-- A request the caller made within the retention is gone: the keys were wiped while Redis
-- stayed up (FLUSHDB, eviction, a failover to a replica that lagged). Say so; reserve nothing.
if expect ~= '' and not redis.call('ZSCORE', KEYS[1], expect) then
  return {2, 0, -1, processes}
end
local function slot_of(field)
  local v = redis.call('HGET', KEYS[2], field)
  if v then return tonumber(v) end
  return nil
end
local all_slot = slot_of('all')
local tier_slot = slot_of(tier)
local wait, blocking = 0, -1
if all_slot and all_slot - now > wait then wait = all_slot - now end
if tier_slot and tier_slot - now > wait then wait = tier_slot - now end
for i = 1, n do
  local period = tonumber(ARGV[7 + 2 * i])
  local limit = tonumber(ARGV[8 + 2 * i])
  local since = '(' .. f(now - period - margin)
  if redis.call('ZCOUNT', KEYS[1], since, '+inf') >= limit then
    local e = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'WITHSCORES', 'LIMIT',
      limit - 1, 1)
    local reopens = tonumber(e[2]) + period + margin - now
    if reopens > wait then wait = reopens; blocking = i - 1 end
  end
end
if wait > 0 then return {0, math.ceil(wait), blocking, processes} end
redis.call('ZADD', KEYS[1], f(now), member)
local function advance(field, slot, step)
  local base = now
  if slot and slot <= now and now < slot + lateness then base = slot end
  local nxt = base + step
  if slot and slot > nxt then nxt = slot end
  redis.call('HSET', KEYS[2], field, f(nxt))
end
advance('all', all_slot, plan_spacing)
if tier ~= 'all' then advance(tier, tier_slot, spacing) end
local ttl = math.ceil(retention / 1000) + 1000
for _, key in ipairs({KEYS[1], KEYS[2]}) do  -- extend, never shorten
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return {1, 0, -1, processes}
"""

# Requests made while Redis was unreachable (or before it restarted empty), by age: added
# unless already there, so every surviving process can restore what it sent.
_REPLAY_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local retention = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local score = now - tonumber(ARGV[i + 1])
  if score > now - retention then
    redis.call('ZADD', KEYS[1], 'NX', string.format('%.0f', score), ARGV[i])
  end
end
if #ARGV > 1 and redis.call('PTTL', KEYS[1]) < math.ceil(retention / 1000) + 1000 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(retention / 1000) + 1000)
end
return 1
"""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and errors): in the
    user info, or as a ``password=`` query parameter (redis-py takes both)."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    netloc = urlsplit(url).netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{hostport}", 1)
    elif at:  # `redis://secret@host`: a password written without its colon, likely
        url = url.replace(netloc, f"***@{hostport}", 1)
    return url


def key_prefix(client_id: str, namespace: str = "facematch:pacing") -> str:
    """Redis key prefix for ``client_id``: a hash of the id (never the secret).

    The braces are a Redis Cluster hash tag: both keys of a client land in one slot.
    """
    digest = hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:24]
    return f"{namespace}:{{{digest}}}"


class RedisStore:
    """Windows in Redis, shared by every process naming the same URL and client id.

    Keys: ``<prefix>:stamps`` (a sorted set of the longest window's requests, at most its
    limit) and ``<prefix>:slots`` (the next pacing slot per tier), both with a TTL of the
    longest window, so Redis memory is bounded by the plan, not by the requests sent; and
    ``<prefix>:processes`` (each process that asked in the last two minutes).

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``).
        client_id: The API key's client id; only its hash reaches Redis.
        timeout: Seconds for connecting and for each script call; slower is a failure.
        namespace: Key prefix, for sharing one Redis among deployments.
    """

    shared = True

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        timeout: float = 0.5,
        namespace: str = "facematch:pacing",
    ) -> None:
        if not client_id:
            raise ValueError("a shared pacing store needs the client id")
        self.url = url
        self.timeout = timeout
        self.prefix = key_prefix(client_id, namespace)
        self.stamps_key = f"{self.prefix}:stamps"
        self.slots_key = f"{self.prefix}:slots"
        self.processes_key = f"{self.prefix}:processes"
        self._redis: Redis | None = None
        self._reserve: Any = None
        self._replay: Any = None

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r})"

    def _client(self) -> Redis:
        if self._redis is None:
            try:
                from redis.asyncio import Redis
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff
            except ImportError:  # pragma: no cover (depends on the install)
                raise PacingStoreError(
                    'a Redis pacing store needs redis-py: pip install "facematch-async[redis]"'
                ) from None
            # No retries inside redis-py: the pacer decides (fallback, periodic probe).
            try:
                self._redis = Redis.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            except ValueError as exc:  # a port that is not a number, a bad query parameter
                raise PacingStoreError(
                    f"rate-limit store {redact_url(self.url)} is not a valid Redis URL: {exc}"
                ) from None
            self._reserve = self._redis.register_script(_RESERVE_LUA)
            self._replay = self._redis.register_script(_REPLAY_LUA)
        return self._redis

    def _error(self, exc: BaseException) -> PacingStoreError:
        detail = f": {exc}" if str(exc) else ""
        return PacingStoreError(
            f"rate-limit store {redact_url(self.url)} unreachable: {type(exc).__name__}{detail}"
        )

    async def _call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        from redis.exceptions import RedisError

        try:
            with anyio.fail_after(self.timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._error(exc) from exc

    async def ping(self) -> None:
        """Check the store answers.

        Raises:
            PacingStoreError: it does not (the message names the URL, without password).
        """
        client = self._client()
        await self._call(client.ping)

    async def reserve(
        self,
        windows: Sequence[Window],
        *,
        tier: str,
        spacing: float,
        plan_spacing: float,
        margin: float,
        member: str,
        expect: str = "",
    ) -> Verdict:
        """See :class:`PacingStore`."""
        self._client()
        retention = max((w.period for w in windows), default=0.0) + margin
        args: list[Any] = [
            member,
            round(margin * 1e6),
            round(_LATENESS * 1e6),
            round(plan_spacing * 1e6),
            tier,
            round(spacing * 1e6),
            round(retention * 1e6),
            len(windows),
        ]
        for window in windows:
            args += [round(window.period * 1e6), window.limit]
        # A process counts as present for two minutes after it last asked: one that waits
        # on a full minute window still asks at least once a minute. (The same for every
        # caller, whatever its plan, so none trims another's presence short.)
        args += [member.split(":", 1)[0], round(_PRESENCE * 1e6), expect]
        keys = [self.stamps_key, self.slots_key, self.processes_key]
        reply = await self._call(lambda: self._reserve(keys=keys, args=args))
        granted, wait_us, blocking, processes = (int(x) for x in reply)
        if granted == 2:
            return Verdict(False, processes=processes, lost=True)
        if granted:
            return Verdict(True, processes=processes)
        blocked = windows[blocking] if 0 <= blocking < len(windows) else None
        return Verdict(False, wait_us / 1e6, blocked, processes)

    async def replay(self, grants: Sequence[tuple[str, float]], *, retention: float) -> None:
        """See :class:`PacingStore`."""
        client = self._client()
        if not grants:
            await self._call(client.ping)  # a probe must reach the server, even with nothing
            return
        # In chunks: a day's Enterprise quota is 50,000 requests, too many for one call.
        for start in range(0, len(grants), 1000):
            args: list[Any] = [round(retention * 1e6)]
            for member, age in grants[start : start + 1000]:
                args += [member, max(0, round(age * 1e6))]
            await self._call(functools.partial(self._replay, keys=[self.stamps_key], args=args))

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._redis is not None:
            redis, self._redis = self._redis, None
            try:
                await redis.aclose()
            except Exception:  # closing a pool to a dead server must not raise
                logger.debug("closing the Redis pool failed", exc_info=True)


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
        # Start the curve at the lowered rate: rate() at elapsed 0 is beta * last_max.
        return True


_Fallback = int | Literal["auto", "pause"]
_UNCOUNTED_FALLBACK = 4  # processes assumed when the store was lost before it counted them


class Pacer(RateLimiter):
    """A :class:`RateLimiter` whose windows live in a store, optionally shared through Redis.

    Every ``acquire()`` reserves a slot in the store when every window (less ``reserve``)
    has room and the pace allows, else sleeps for the wait the store reports and asks
    again. One task per process asks at a time (a fair lock), so a waiting process costs
    Redis about one script call per slot.

    Args:
        windows: A plan name, a spec or windows (see :func:`parse_rate_limit`).
        store: ``None`` (this process), a ``redis://`` URL, or a :class:`PacingStore`.
        client_id: The key's client id; required with a Redis URL (only its hash is used).
        reserve: Share of every window left to other callers by default (0 to <1): a bulk
            job passes 0.25, live callers 0. ``acquire(reserve=...)`` overrides it.
        adaptive: Lower this process's rate on 429s (``True`` or an :class:`AdaptiveRate`);
            the runner's ``pause()`` after a 429 is the signal.
        fallback: When a shared store is lost mid-run, each process waits out the windows
            of a minute or less, then paces at 1/N of the plan. ``"auto"`` (the default):
            N is the number of processes the store saw asking in the last two minutes (4 if
            it was lost before it answered once); an int fixes N; ``"pause"`` sends nothing
            until the store returns.
        retry_interval: Seconds between attempts to reach a lost store.
        store_timeout: Seconds per Redis call when ``store`` is a URL.
        margin: Seconds added to every window's period, to absorb the difference in delay
            between two requests reaching the server. ``None`` (the default) learns it:
            5 ms at first (a window of a second then costs 0.5% of the plan, not the 4.8% of
            a fixed 50 ms), doubled on each 429 met while a window was full, up to 200 ms
            (logged at INFO), plus the longest delay a recent request took from its slot to
            the wire (see :attr:`margin`). A float fixes it.
        clock, sleep: As for :class:`RateLimiter`.
    """

    def __init__(
        self,
        windows: str | Sequence[Window] | None,
        *,
        store: str | PacingStore | None = None,
        client_id: str | None = None,
        reserve: float = 0.0,
        adaptive: bool | AdaptiveRate = False,
        fallback: _Fallback = "auto",
        retry_interval: float = 2.0,
        store_timeout: float = 0.5,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        learns = margin is None
        margin = MARGIN_START if margin is None else margin
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a number of seconds >= 0: {margin!r}")
        self._learns_margin = learns
        super().__init__(windows, margin=margin, clock=clock, sleep=sleep)
        self._margin_widened_at = -math.inf
        self._window_full_at = -math.inf  # when a window of a minute or less last said wait
        # Recent requests' delays between their slot and their headers on the wire, as
        # (when, delay) with delays decreasing: the front is the longest still remembered.
        self._send_delays: deque[tuple[float, float]] = deque()
        short = [w.period for w in self.windows if w.period <= _MAX_PACED_PERIOD]
        self._delay_memory = max(short, default=0.0) + 1.0
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
        self.processes = 0  # processes the shared store last saw on the key (0: not yet)
        self._fallback_n = 1  # the share's N, fixed when the store was lost
        self.retry_interval = retry_interval
        plan_rate = 1.0 / self._spacing if self._spacing > 0 else 0.0
        if adaptive is True and plan_rate <= 0:
            raise ValueError("adaptive pacing needs a window of a minute or less")
        self.adaptive: AdaptiveRate | None = (
            AdaptiveRate(plan_rate, clock=clock) if adaptive is True else adaptive or None
        )
        self._keep = max((w.limit for w in self.windows), default=0)
        # This process's own requests (member, clock time), to restore them in a store that
        # lost them and to seed the local fallback: bounded by the largest limit.
        self._own: deque[tuple[str, float]] = deque(maxlen=self._keep or 1)
        self._token = os.urandom(6).hex()
        self._counter = itertools.count()
        self._started = False
        self.degraded = False  # the shared store is unreachable: pacing locally
        self._local: MemoryStore | None = None
        self._hold_until = -math.inf
        self._grace_until = -math.inf
        self._next_probe = -math.inf
        self._adaptive_next = -math.inf
        self._wait_until = -math.inf  # when the last refused acquire() was told a slot opens
        self._pending_member = ""
        self.fallbacks = 0  # times the shared store was lost

    def __repr__(self) -> str:
        spec = ",".join(map(str, self.windows)) or "none"
        return f"Pacer({spec!r}, store={self.store!r}, reserve={self.reserve})"

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

    def note_send_delay(self, seconds: float) -> None:
        """A request granted a slot went on the wire ``seconds`` later (see :attr:`margin`)."""
        if not self._learns_margin or not seconds > 0:
            return
        delays = self._send_delays
        while delays and delays[-1][1] <= seconds:
            delays.pop()  # never the longest again while this one is remembered
        delays.append((self._clock(), min(seconds, _MAX_SEND_DELAY)))

    @property
    def current_rate(self) -> float | None:
        """This process's adaptive cap in requests/s, or ``None`` (only the windows apply)."""
        return None if self.adaptive is None else self.adaptive.rate()

    async def start(self) -> None:
        """Connect to the store (a no-op in memory).

        Raises:
            PacingStoreError: a shared store is unreachable (the message names its URL).
        """
        ping = getattr(self.store, "ping", None)
        if ping is not None:
            await ping()
        self._started = True

    async def aclose(self) -> None:
        """Release the store's connections."""
        await self.store.aclose()

    def seed(self, sent_at: Sequence[float]) -> None:
        """Count earlier requests (``clock()`` times); only a local store needs them."""
        if isinstance(self.store, MemoryStore):
            self.store.seed(sent_at, self._keep)

    def pause(self, seconds: float) -> None:
        """Hold every request back after a 429, and learn from it: a wider margin when the
        windows were full, else (with ``adaptive``) a lower rate for this process."""
        if not self._widen_margin() and self.adaptive is not None:
            self.adaptive.on_throttle()
        super().pause(seconds)

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

    def wait_time(self) -> float:
        """Seconds left of the wait the last ``acquire()`` was told, or of the local pause.

        The wait counts down from when it was told: an old answer must not keep refusing
        callers with a deadline after the slot it named has opened.
        """
        return max(self.paused_for, self._wait_until - self._clock(), 0.0)

    def _tier(self, reserve: float) -> tuple[str, tuple[Window, ...], float]:
        if reserve == 0:
            return "all", self.windows, self._spacing
        windows = effective_windows(self.windows, reserve)
        return f"r{reserve:g}", windows, _spacing(windows)

    async def acquire(
        self,
        *,
        stop_at_quota: bool = False,
        reserve: float | None = None,
        within: float | None = None,
    ) -> None:
        """Wait until every window (less ``reserve``) has room, then count one request.

        Args:
            stop_at_quota: Raise instead of waiting when a window of an hour or more is full.
            reserve: Share of every window to leave to others (default: the pacer's).
            within: Seconds the caller may wait at most (a call's deadline): when the store
                says the slot opens later, raise at once instead of sleeping.

        Raises:
            QuotaExhaustedError: ``stop_at_quota`` and a window of an hour or more is full.
            SlotBeyondWait: the slot opens after ``within`` seconds from the call.
            PacingStoreError: the shared store was unreachable at the first call.
        """
        if not self.windows:
            await super().acquire(stop_at_quota=stop_at_quota, within=within)
            return
        give_up = None if within is None else self._clock() + within
        tier, windows, spacing = self._tier(self.reserve if reserve is None else reserve)
        async with self._lock:
            if not self._started:
                await self.start()
            while True:
                now = self._clock()
                wait = max(self._paused_until, self._adaptive_next) - now
                if wait > _EPSILON:
                    _check_within(give_up, now, wait)
                    await self._sleep(wait)
                    continue
                verdict = await self._ask(windows, tier, spacing)
                if verdict.granted:
                    self._wait_until = -math.inf
                    self._granted()
                    return
                window = verdict.window
                if stop_at_quota and window is not None and window.period >= QUOTA_PERIOD:
                    raise QuotaExhaustedError(window, verdict.wait)
                now = self._clock()
                if window is not None and window.period <= _MAX_PACED_PERIOD:
                    self._window_full_at = now
                self._wait_until = now + verdict.wait
                _check_within(give_up, now, verdict.wait)
                await self._sleep(max(verdict.wait, _EPSILON))

    def _granted(self) -> None:
        now = self._clock()
        self._own.append((self._pending_member, now))
        if self.adaptive is not None:
            self.adaptive.on_send()
            rate = self.adaptive.rate()
            self._adaptive_next = now + 1.0 / rate if rate else -math.inf

    async def _ask(self, windows: tuple[Window, ...], tier: str, spacing: float) -> Verdict:
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
                    spacing=spacing,
                    plan_spacing=self._spacing,
                    margin=self.margin,
                    member=self._pending_member,
                    expect=self._expected(now),
                )
                if verdict.lost:
                    await self._restore_lost_windows(now)
                    return Verdict(False, _EPSILON)  # ask again, over the restored windows
            except PacingStoreError as error:
                self._enter_fallback(error)
            else:
                self.processes = verdict.processes or self.processes
                if verdict.granted and local is not None:
                    local.record(
                        self._share(windows), tier=tier, spacing=spacing, plan_spacing=self._spacing
                    )
                return verdict
        return self._ask_locally(windows, tier, spacing)

    def _share(self, windows: Sequence[Window]) -> tuple[Window, ...]:
        """A 1/N share of ``windows`` (at least one request per N-times-longer period)."""
        n = self._fallback_n
        return tuple(
            Window(w.limit // n, w.period) if w.limit >= n else Window(1, w.period * n / w.limit)
            for w in windows
        )

    def _ask_locally(self, windows: tuple[Window, ...], tier: str, spacing: float) -> Verdict:
        now = self._clock()
        probe = max(self._next_probe - now, _EPSILON)
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
        pace = _spacing(share)
        self._local.record(share, tier=tier, spacing=pace, plan_spacing=pace, now=now)
        return verdict

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
        short = [w.period for w in self.windows if w.period <= _MAX_PACED_PERIOD]
        hold = max(short, default=0.0) + self.margin
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
        retention = self._retention()
        return member if now - stamp < retention * 0.99 - 0.05 else ""

    def _own_ages(self, now: float) -> tuple[list[tuple[str, float]], float]:
        retention = self._retention()
        return [(m, now - stamp) for m, stamp in self._own if now - stamp < retention], retention

    async def _restore_lost_windows(self, now: float) -> None:
        """The store lost the windows while it stayed up: put this process's own requests
        back. Other processes' requests are unknown until each puts its own back on its next
        request, and one asleep until a full window reopens will not ask for a while: so,
        as after an outage, send nothing until the windows of a minute or less have emptied
        (not needed when the store saw no other process on the key)."""
        ages, retention = self._own_ages(now)
        await self.store.replay(ages, retention=retention)
        store = redact_url(self.store.url) if isinstance(self.store, RedisStore) else self.store
        what = (
            f"rate-limit store {store} lost this key's windows while it stayed up (FLUSHDB, "
            "eviction under maxmemory, or a failover to a replica that lagged): "
            f"{len(ages)} own requests restored"
        )
        if self.processes <= 1:
            logger.warning("%s; no other process was on the key", what)
            return
        short = [w.period for w in self.windows if w.period <= _MAX_PACED_PERIOD]
        hold = max(short, default=0.0) + self.margin
        RateLimiter.pause(self, hold)  # a hold, not a 429: nothing to learn from it
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
        short = [w.period for w in self.windows if w.period <= _MAX_PACED_PERIOD]
        self._grace_until = now + max(short, default=0.0) + self.margin + self.retry_interval
        logger.warning(
            "rate-limit store %s is back: shared pacing resumed (%d own requests restored)",
            redact_url(self.store.url) if isinstance(self.store, RedisStore) else self.store,
            len(ages),
        )


def plan_pacer(
    windows: Sequence[Window], *, store: str | None = None, client_id: str | None = None
) -> Pacer:
    """The pacer the client (or a runner without one) uses for a plan: adaptive, so that a
    429 the windows did not predict (another user of the key) lowers this process's rate
    until it recovers, whenever a window of a minute or less gives it a pace to lower."""
    adaptive = any(window.period <= _MAX_PACED_PERIOD for window in windows)
    return Pacer(windows, store=store, client_id=client_id, adaptive=adaptive)
