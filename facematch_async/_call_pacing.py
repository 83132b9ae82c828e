"""How one call waits for its turn: a slot of the key's windows, within the call's deadline,
given up at once when the caller's stop signal is set.

The client calls :func:`wait_for_slot` before each attempt and :func:`wait_or_stop` between
attempts; neither calls anything back.

Admission, not waiting: a call with a deadline is queued only when its slot, behind the
callers already waiting, comes early enough to leave a typical attempt's time
(:class:`AttemptTimes`) before the deadline. Otherwise it fails at once with
:class:`~facematch_async.errors.RateLimitError`, whose ``retry_after`` says when to come back
(spread, so that refused callers do not all return in the same second): over the plan, a
web service answers at once instead of after its whole deadline, and no slot goes to a call
that would be cut off on the wire (billed, unanswered).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from facematch_async._deadline import Deadline
from facematch_async._ratelimit import QUOTA_PERIOD, RateLimiter, SlotUnavailable
from facematch_async.errors import CallStoppedError, QuotaExceededError, RateLimitError

__all__ = ["AttemptTimes", "refuse_early", "wait_for_slot", "wait_or_stop"]


class AttemptTimes:
    """How long an attempt takes, estimated as TCP estimates a round trip (RFC 6298): a
    smoothed mean and a smoothed deviation of recent attempts' durations."""

    __slots__ = ("deviation", "mean")

    def __init__(self) -> None:
        self.mean: float | None = None
        self.deviation = 0.0

    def add(self, seconds: float) -> None:
        """Count one attempt that got an answer after ``seconds``."""
        if self.mean is None:
            self.mean, self.deviation = seconds, seconds / 2
            return
        self.deviation += (abs(seconds - self.mean) - self.deviation) / 4
        self.mean += (seconds - self.mean) / 8

    @property
    def typical(self) -> float:
        """Seconds an attempt most likely takes at most: the mean plus two deviations
        (0 before the first answer)."""
        return 0.0 if self.mean is None else self.mean + 2 * self.deviation


async def wait_for_slot(
    limiter: RateLimiter,
    *,
    deadline: Deadline | None,
    reserve: float | None,
    stop: asyncio.Event | None,
    wait_for_quota: bool,
    attempt: float = 0.0,
    max_wait: float | None = None,
) -> None:
    """Wait for a slot of ``limiter`` (less ``reserve``), leaving ``attempt`` seconds (a
    typical attempt's time) before the deadline, and for ``max_wait`` seconds at most.

    Raises:
        RateLimitError: the slot comes too late (``retry_after``: when to come back);
            nothing was sent.
        QuotaExceededError: the day's quota is used up and ``wait_for_quota`` is false.
        CallStoppedError: ``stop`` was set first.
    """
    if limiter.quota_for > 0 and not wait_for_quota:  # the API said: used up until then
        raise _quota(limiter.quota_for)
    if not limiter.windows:  # pauses only (after 429s): no store to ask
        while (wait := max(limiter.paused_for, limiter.quota_for)) > 0:
            if not _in_time(wait, deadline, attempt, max_wait):
                raise _refused(limiter, wait, deadline, reserve)
            await wait_or_stop(wait, stop, "stopped while the rate limit paused")
        return
    within = max_wait
    if deadline is not None or max_wait is not None:
        projected = limiter.projected_wait(reserve=reserve)
        if not _in_time(projected, deadline, attempt, max_wait):
            raise _refused(limiter, projected, deadline, reserve)
        if deadline is not None:
            left = deadline.remaining() - attempt
            within = left if max_wait is None else min(left, max_wait)
    acquire = limiter.acquire(reserve=reserve, within=within, wait_for_quota=wait_for_quota)
    try:
        with limiter.queued():
            await (acquire if stop is None else _unless_stopped(acquire, stop))
    except SlotUnavailable as late:
        if late.quota:
            raise _quota(late.wait) from None
        raise _refused(limiter, late.wait, deadline, reserve) from None
    if deadline is not None and not deadline.fits(attempt):
        # The slot came later than projected: too late to send (the slot is lost, the
        # quota is not: nothing is billed).
        raise _refused(limiter, limiter.projected_wait(reserve=reserve), deadline, reserve)


def refuse_early(
    limiter: RateLimiter, deadline: Deadline | None, attempt: float, max_wait: float | None
) -> None:
    """Raise :class:`RateLimitError` now, before any other work, when a call starting now
    would be refused a slot (see :func:`wait_for_slot`)."""
    projected = limiter.projected_wait()
    if not _in_time(projected, deadline, attempt, max_wait):
        raise _refused(limiter, projected, deadline, None)


def _in_time(
    wait: float, deadline: Deadline | None, attempt: float, max_wait: float | None
) -> bool:
    """Whether a slot ``wait`` seconds away leaves an attempt's time before the deadline and
    is within ``max_wait``."""
    if max_wait is not None and wait > max_wait:
        return False
    return deadline is None or deadline.fits(wait + attempt)


async def wait_or_stop(seconds: float, stop: asyncio.Event | None, stopped: str) -> None:
    """Sleep ``seconds``, unless ``stop`` is set first: then raise :class:`CallStoppedError`
    with the message ``stopped``."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
            raise CallStoppedError(stopped)


def _quota(wait: float) -> QuotaExceededError:
    return QuotaExceededError(
        f"the rate limit's daily quota is used up; it reopens in {wait:.0f} s",
        retry_after=wait,
    )


def _refused(
    limiter: RateLimiter, wait: float, deadline: Deadline | None, reserve: float | None
) -> RateLimitError:
    """The refusal of a call whose slot comes too late for it (the day's quota: a wait of
    an hour or more is nothing a retry soon fixes)."""
    if wait >= QUOTA_PERIOD:
        return _quota(wait)
    if deadline is None:
        why = "longer than the client's max_slot_wait"
    else:
        why = f"too late for the {deadline.budget:g} s deadline ({deadline.remaining():.2f} s left)"
    return RateLimitError(
        f"the rate limit's next free slot is {wait:.2f} s away, {why}: not sent",
        retry_after=limiter.come_back_in(wait, reserve=reserve),
    )


async def _unless_stopped(wait: Awaitable[None], stop: asyncio.Event) -> None:
    """Await ``wait`` unless ``stop`` is set first: then cancel it and raise
    :class:`CallStoppedError`."""
    waiting = asyncio.ensure_future(wait)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((waiting, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    if waiting.cancelled():
        raise CallStoppedError("stopped while waiting for a rate-limit slot")
    waiting.result()
