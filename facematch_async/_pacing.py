"""Where one API key's rate windows live: this process, or a Redis every process shares.

Deepvue counts requests per API key, so every caller of one key (a web service's replicas, a
bulk job, its shards on other machines) must share one set of windows. A **store** keeps them
and answers one question atomically: may a request go now, and if not, how long until it may?

* :class:`MemoryStore`: this process only; the one in-process window algorithm.
* :class:`RedisStore`: every process that names the same Redis URL and client id, checked
  and reserved atomically in one Lua script on the Redis server's clock.

:class:`~facematch_async.RateLimiter` asks a store before every attempt.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import anyio

from facematch_async._plans import Window
from facematch_async.errors import PacingStoreError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MAX_PACED_PERIOD",
    "MemoryStore",
    "PacingStore",
    "RedisStore",
    "Verdict",
    "effective_windows",
    "key_prefix",
    "redact_url",
    "spacing",
]

logger = logging.getLogger("facematch_async")

EPSILON = 1e-9  # seconds: a wait this short is no wait (float rounding must not spin)
# Requests are spread evenly over the shortest window of a minute or less: spreading a daily
# quota evenly would hold requests back for hours.
MAX_PACED_PERIOD = 60.0
_LATENESS = 0.01  # seconds: a request this late after its slot still kept the pace
_PRESENCE = 2 * MAX_PACED_PERIOD  # seconds a process counts as sharing the key after asking


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


def spacing(windows: Sequence[Window]) -> float:
    """Seconds between two requests spread evenly over the shortest window of a minute or
    less (0 without one)."""
    short = [w for w in windows if w.period <= MAX_PACED_PERIOD]
    shortest = min(short, key=lambda w: w.period, default=None)
    return 0.0 if shortest is None else shortest.period / shortest.limit


def _next_slot(slot: float, now: float, step: float) -> float:
    # A request let go just after its slot kept the pace: the next slot follows the slot,
    # not the moment it went. A sleep ends a little late (~0.5 ms on a busy loop), and
    # counting from that would slip the rate: 2,000 paced requests would take a second
    # longer. Idle, or held back by a window or a pause, the pace restarts from now.
    base = slot if slot <= now < slot + _LATENESS else now
    return max(slot, base + step)


class MemoryStore:
    """The windows of this process, over a strict sliding window per window.

    Memory is bounded by the largest limit seen (the last ``limit`` stamps decide a wait:
    50,000 for Enterprise's day), never by the number of requests made.
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
        if wait <= EPSILON:
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
