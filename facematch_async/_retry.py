"""Which failures are retried, and how long to wait between attempts.

Connection errors, timeouts, 429 and 500/502/503/504 are retried with exponential
backoff and jitter; each scheduled retry is one INFO line on the ``facematch_async``
logger. A server's ``Retry-After`` or ``retry-after-ms`` replaces the backoff when it is
within ``max_retry_after``; a longer one (a used-up daily window) is not waited out here:
the error is raised with its ``retry_after`` for the caller.

With a :class:`~facematch_async._deadline.Deadline`, every attempt runs for at most what
is left of it, and a wait that what is left cannot cover is not started: a 429 is raised
as it is (its ``retry_after`` says when to come back), any other failure as
:class:`~facematch_async.errors.DeadlineExceededError`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from facematch_async._deadline import Deadline
from facematch_async._ratelimit import RateLimiter
from facematch_async.errors import (
    APIConnectionError,
    APIStatusError,
    DeadlineExceededError,
    FaceMatchError,
    ImageUnavailableError,
    RateLimitError,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "RateLimitPauses",
    "RetryPolicy",
    "call_with_retries",
    "is_retryable",
]

T = TypeVar("T")
logger = logging.getLogger("facematch_async")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_PAUSE = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client waits between attempts (the number of retries is ``max_retries``).

    Attributes:
        backoff_initial: Seconds before the first retry; each later wait doubles.
            Deepvue advises starting at 1 s.
        backoff_max: The longest wait between two attempts.
        backoff_jitter: Up to this many random seconds are added to each wait, so that
            many clients that failed together do not retry together.
        max_retry_after: The longest ``Retry-After`` honoured; a longer one is raised.
    """

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    backoff_jitter: float = 1.0
    max_retry_after: float = 60.0


class RateLimitPauses:
    """What a 429 means for every caller sharing a rate limiter: the one place that decides.

    A ``Retry-After`` within ``cap`` holds every caller back that long. None at all, or one
    that means no wait (0, negative, NaN, a past date: all parse to 0), holds them back 1 s,
    doubling up to 60 s while 429s go on; the many calls in flight that meet the same
    refusal double it once. A ``Retry-After`` past ``cap`` is not a rate window: most likely
    the daily quota, which the caller decides about (:meth:`pause` returns ``False``).

    Args:
        cap: The longest ``Retry-After`` taken as a pause (the policy's ``max_retry_after``).
    """

    __slots__ = ("_backoff", "cap")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self._backoff = 1.0

    def beyond_cap(self, retry_after: float | None) -> bool:
        """Whether ``retry_after`` is too long to be a rate window (``inf`` and NaN too)."""
        return retry_after is not None and not retry_after <= self.cap

    def pause(self, limiter: RateLimiter, retry_after: float | None) -> bool:
        """Hold ``limiter``'s callers back after a 429; ``False`` when it is beyond the cap
        (nothing paused: the caller decides)."""
        if self.beyond_cap(retry_after):
            return False
        if retry_after is not None and retry_after > 0:
            limiter.pause(retry_after)
        elif limiter.paused_for <= 0:  # the first of a burst of 429s doubles the wait
            limiter.pause(self._backoff)
            self._backoff = min(_MAX_PAUSE, self._backoff * 2)
        return True

    def reset(self) -> None:
        """A request went through: the next 429 starts again from 1 s."""
        self._backoff = 1.0


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is a transient failure that another attempt may not meet."""
    if isinstance(error, DeadlineExceededError):
        return False  # the call's whole budget is spent
    if isinstance(error, APIConnectionError | ImageUnavailableError):
        return True  # (an image store's failure: the pair may be read later)
    return isinstance(error, APIStatusError) and error.status_code in RETRYABLE_STATUSES


def _server_wait(error: BaseException | None) -> float | None:
    """The wait the server asked for, if it asked."""
    retry_after = getattr(error, "retry_after", None)
    return retry_after if isinstance(retry_after, float | int) else None


def _should_retry(error: BaseException, policy: RetryPolicy) -> bool:
    retry_after = _server_wait(error)
    return is_retryable(error) and (retry_after is None or retry_after <= policy.max_retry_after)


def _wait_before(attempt_number: int, error: BaseException, policy: RetryPolicy) -> float:
    """Seconds to wait after failed attempt ``attempt_number`` (1-based)."""
    retry_after = _server_wait(error)
    if retry_after is not None and retry_after > 0:
        return float(retry_after)
    # None, or 0 (what a negative, NaN or past-date Retry-After parses to): back off anyway,
    # as retrying at once would only meet the same refusal.
    exponential = policy.backoff_initial * 2.0 ** (attempt_number - 1)
    jitter = random.uniform(0, policy.backoff_jitter)  # noqa: S311 (not for security)
    return min(policy.backoff_max, exponential + jitter)


def _check_wait(deadline: Deadline, wait_for: float, error: Exception) -> None:
    """Raise now, instead of waiting, when the deadline cannot cover ``wait_for``."""
    if deadline.fits(wait_for):
        return
    if isinstance(error, RateLimitError):
        raise error  # as it is: its retry_after tells the caller when to come back
    raise deadline.exceeded(
        error if isinstance(error, FaceMatchError) else None, next_wait=wait_for
    ) from error


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    policy: RetryPolicy,
    deadline: Deadline | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds, fails for good, or ``max_retries`` are spent.

    With a ``deadline``, each attempt is cut off (cancelled) when the deadline passes, and
    a wait that does not fit in what is left is not started (see the module's docstring).
    ``sleep`` (default ``anyio.sleep``) waits between attempts.

    A plain loop rather than a retry library: the first attempt, which almost always
    succeeds, then costs nothing beyond the call itself.
    """
    attempt_number = 1
    while True:
        try:
            if deadline is None:
                return await attempt()
            return await deadline.run(attempt)
        except Exception as error:  # cancellation and other BaseExceptions pass through
            if attempt_number > max_retries or not _should_retry(error, policy):
                raise
            wait_for = _wait_before(attempt_number, error, policy)
            if deadline is not None:
                _check_wait(deadline, wait_for, error)
            logger.info(
                "retrying in %.2f s (attempt %d of %d failed): %r",
                wait_for,
                attempt_number,
                max_retries + 1,
                error,
            )
        await (sleep or anyio.sleep)(wait_for)
        attempt_number += 1
