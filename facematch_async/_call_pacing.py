"""What one call waits on and reports to around each HTTP attempt: :class:`CallPacing`.

The client calls it; it is a first-class part of a call (``send(..., pacing=...)``), not an
ambient variable. :class:`LimiterPacing` is the client's own, for a client built with a
``rate_limit``: every attempt waits for a slot within the call's deadline, and a 429 holds
back every caller of the client. The batch runner passes its own, which adds what a batch
needs (a stop releases a pair that only waits, the daily quota's stop, a reserve).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import anyio

from facematch_async._deadline import Deadline
from facematch_async._ratelimit import RateLimiter, SlotBeyondWait
from facematch_async._retry import RateLimitPauses
from facematch_async.errors import RateLimitError

__all__ = ["CallPacing", "LimiterPacing"]


class CallPacing(Protocol):
    """Awaited and told about each HTTP attempt of one face-match call."""

    async def before_attempt(self) -> None:
        """Wait until the attempt may go (a rate limiter's slot); raise to send nothing."""

    def on_rate_limited(self, retry_after: float | None) -> None:
        """The attempt met a 429 (with the server's ``Retry-After``, if any)."""

    async def sleep(self, seconds: float) -> None:
        """Wait between two attempts (a backoff, a ``Retry-After``)."""

    # Optional, looked up by name (so older implementations stay valid):
    # ``def on_sent(self, delay: float) -> None`` hears, for each attempt, the seconds from
    # ``before_attempt`` returning to the request's headers being on the wire.


class LimiterPacing:
    """The client's pacing for one call: a slot of ``limiter`` before every attempt.

    A wait for a slot draws from the call's ``deadline``: when the next slot opens after
    what is left, the call fails at once with :class:`RateLimitError` whose ``retry_after``
    says when it opens (a web service can answer 503 with that ``Retry-After``).
    """

    __slots__ = ("deadline", "limiter", "pauses")

    def __init__(
        self, limiter: RateLimiter, pauses: RateLimitPauses, deadline: Deadline | None
    ) -> None:
        self.limiter = limiter
        self.pauses = pauses
        self.deadline = deadline

    async def before_attempt(self) -> None:
        deadline = self.deadline
        if deadline is None:
            await self.limiter.acquire()
            return
        wait = self.limiter.wait_time()
        if not deadline.fits(wait):
            raise _slot_too_late(wait, deadline)
        remaining = deadline.remaining()
        try:
            # The limiter says at once when the slot opens too late (`within`); the timeout
            # bounds the rest (other callers ahead of this one for the limiter's lock).
            async with asyncio.timeout(remaining):
                await self.limiter.acquire(within=remaining)
        except SlotBeyondWait as late:
            raise _slot_too_late(late.wait, deadline) from None
        except TimeoutError:
            raise _slot_too_late(self.limiter.wait_time(), deadline) from None

    def on_rate_limited(self, retry_after: float | None) -> None:
        self.pauses.pause(self.limiter, retry_after)

    def on_sent(self, delay: float) -> None:
        self.limiter.note_send_delay(delay)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def _slot_too_late(wait: float, deadline: Deadline) -> RateLimitError:
    return RateLimitError(
        f"the rate limit's next slot opens in {wait:.2f} s, after the {deadline.budget:g} s "
        f"deadline ({deadline.remaining():.2f} s left)",
        retry_after=wait,
    )
