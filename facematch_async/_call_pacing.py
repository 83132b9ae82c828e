"""How one call waits for its turn: a slot of the key's windows, within the call's deadline,
given up at once when the caller's stop signal is set.

The client calls :func:`wait_for_slot` before each attempt and :func:`wait_or_stop` between
attempts; neither calls anything back. A wait that cannot end within the deadline is not
started: the call fails at once with :class:`~facematch_async.errors.RateLimitError`, whose
``retry_after`` says when the slot opens (a web service can answer 503 with it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from facematch_async._deadline import Deadline
from facematch_async._ratelimit import RateLimiter, SlotUnavailable
from facematch_async.errors import CallStoppedError, QuotaExceededError, RateLimitError

__all__ = ["wait_for_slot", "wait_or_stop"]


async def wait_for_slot(
    limiter: RateLimiter,
    *,
    deadline: Deadline | None,
    reserve: float | None,
    stop: asyncio.Event | None,
    wait_for_quota: bool,
) -> None:
    """Wait for a slot of ``limiter`` (less ``reserve``).

    Raises:
        RateLimitError: the slot opens after the deadline (``retry_after``: when it opens).
        QuotaExceededError: the day's quota is used up and ``wait_for_quota`` is false.
        CallStoppedError: ``stop`` was set first.
    """
    if not limiter.windows:  # pauses only (after 429s): no store to ask
        while (wait := limiter.paused_for) > 0:
            if deadline is not None and not deadline.fits(wait):
                raise _too_late(wait, deadline)
            await wait_or_stop(wait, stop, "stopped while the rate limit paused")
        return
    within = None
    if deadline is not None:
        wait = limiter.wait_time(reserve=reserve)
        if not deadline.fits(wait):
            raise _too_late(wait, deadline)
        within = deadline.remaining()
    acquire = limiter.acquire(reserve=reserve, within=within, wait_for_quota=wait_for_quota)
    try:
        await (acquire if stop is None else _unless_stopped(acquire, stop))
    except SlotUnavailable as late:
        if late.quota:
            raise QuotaExceededError(
                f"the rate limit's daily quota is used up; it reopens in {late.wait:.0f} s",
                retry_after=late.wait,
            ) from None
        assert deadline is not None  # only a deadline bounds the wait
        raise _too_late(late.wait, deadline) from None


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


def _too_late(wait: float, deadline: Deadline) -> RateLimitError:
    return RateLimitError(
        f"the rate limit's next slot opens in {wait:.2f} s, after the {deadline.budget:g} s "
        f"deadline ({deadline.remaining():.2f} s left)",
        retry_after=wait,
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
