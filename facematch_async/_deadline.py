"""A total time budget for one call, which every wait and attempt draws from.

Modelled on stamina's total ``timeout`` for retries: the budget starts when the call
starts; each HTTP attempt (and the token fetch, the image read, and any pacing wait in
front of it) runs for at most what is left of it; a backoff or ``Retry-After`` wait that
what is left cannot cover is not started: the call fails at once instead.

The questions a waiter asks are :meth:`Deadline.remaining` ("how long may I wait?") and
:meth:`Deadline.check` ("fail now if a wait this long does not fit"). The retry loop asks
them before each backoff; client-side rate-limit pacing, when it waits for a slot, is
meant to ask them too, so that its waits draw from the same budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from facematch_async.errors import DeadlineExceededError, FaceMatchError

__all__ = ["Deadline", "validate_deadline"]

T = TypeVar("T")


def validate_deadline(seconds: float | None, name: str = "deadline") -> float | None:
    """``seconds`` as a budget, or ``None`` for none (``None`` or infinity).

    Raises:
        ValueError: zero, negative or not a number.
    """
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        raise ValueError(f"{name} must be a number of seconds or None, not {seconds!r}")
    if seconds <= 0:
        raise ValueError(f"{name} must be more than 0 seconds, not {seconds!r}")
    return None if math.isinf(seconds) else float(seconds)


class Deadline:
    """``budget`` seconds from now, on a monotonic clock.

    Args:
        budget: Seconds the call may take in all.
        clock: Monotonic clock (seconds), replaceable in tests.
    """

    __slots__ = ("_clock", "_expires_at", "_started", "budget")

    def __init__(self, budget: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not budget > 0:
            raise ValueError(f"a deadline's budget must be more than 0 seconds, not {budget!r}")
        self.budget = budget
        self._clock = clock
        self._started = clock()
        self._expires_at = self._started + budget

    def __repr__(self) -> str:
        return f"Deadline(budget={self.budget}, remaining={self.remaining():.3f})"

    def remaining(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self._expires_at - self._clock())

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return self._clock() - self._started

    def fits(self, wait: float) -> bool:
        """Whether a wait of ``wait`` seconds would still leave time for something after it."""
        return wait < self.remaining()

    def check(self, wait: float, last_error: FaceMatchError | None = None) -> None:
        """Raise :class:`DeadlineExceededError` now if a wait of ``wait`` seconds does not fit.

        Args:
            wait: The wait about to start (a backoff, a rate limiter's slot).
            last_error: The failure that led to the wait, kept as the error's ``last_error``.
        """
        if not self.fits(wait):
            raise self.exceeded(last_error, next_wait=wait)

    def exceeded(
        self, last_error: FaceMatchError | None = None, *, next_wait: float | None = None
    ) -> DeadlineExceededError:
        """The error that tells the caller the budget is spent (or the next wait overruns it)."""
        elapsed = self.elapsed()
        if next_wait is None:
            message = f"no answer within the {self.budget:g} s deadline"
        else:
            message = (
                f"the {self.budget:g} s deadline has {self.remaining():.2f} s left, "
                f"too little for the next wait of {next_wait:.2f} s"
            )
        if last_error is not None:
            message += f" (last failure: {type(last_error).__name__})"
        error = DeadlineExceededError(
            message,
            deadline=self.budget,
            elapsed=elapsed,
            last_error=last_error,
            transaction_id=None if last_error is None else last_error.transaction_id,
        )
        error.__cause__ = last_error
        return error

    async def run(self, step: Callable[[], Awaitable[T]]) -> T:
        """Await ``step()`` for at most what is left; raise :class:`DeadlineExceededError`
        (cancelling it) when the budget runs out first, or at once when it already has."""
        remaining = self.remaining()
        if remaining <= 0:
            raise self.exceeded()
        scope = asyncio.timeout(remaining)
        try:
            async with scope:
                return await step()
        except TimeoutError:
            if scope.expired():
                raise self.exceeded() from None
            raise
