"""Which failures are retried, and how long to wait between attempts.

Connection errors, timeouts, 429 and 500/502/503/504 are retried with exponential
backoff and jitter (via stamina). A server's ``Retry-After``/``retry-after-ms`` replaces
the backoff when it is within ``max_retry_after``; a longer one (a used-up daily window)
is not waited out here: the error is raised with its ``retry_after`` for the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina

from facematch_async.errors import APIConnectionError, APIStatusError

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "call_with_retries", "is_retryable"]

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


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


def is_retryable(error: BaseException) -> bool:
    """Whether ``error`` is a transient failure that another attempt may not meet."""
    if isinstance(error, APIConnectionError):
        return True
    return isinstance(error, APIStatusError) and error.status_code in RETRYABLE_STATUSES


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]], *, max_retries: int, policy: RetryPolicy
) -> T:
    """Await ``attempt()`` until it succeeds, fails for good, or ``max_retries`` are spent."""

    def backoff(error: Exception) -> bool | float:
        if not is_retryable(error):
            return False
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return True
        return retry_after if retry_after <= policy.max_retry_after else False

    async for trial in stamina.retry_context(
        on=backoff,
        attempts=max_retries + 1,
        timeout=None,
        wait_initial=policy.backoff_initial,
        wait_max=policy.backoff_max,
        wait_jitter=policy.backoff_jitter,
    ):
        with trial:
            return await attempt()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
