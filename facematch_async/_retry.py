"""Which failures are retried, and how long to wait between attempts: the one retry loop.

Connection errors, timeouts, 429 and 500/502/503/504 are retried with exponential
backoff and jitter; each scheduled retry is one INFO line on the ``facematch_async``
logger. A server's ``Retry-After`` or ``retry-after-ms`` replaces the backoff when it is
within ``max_retry_after``; a longer one (a used-up daily window) is not waited out here:
the call raises :class:`~facematch_async.errors.QuotaExceededError` with its
``retry_after``, unless the policy says ``wait_for_quota``.

With a rate limiter, a 429 is the limiter's to answer (it pauses every caller of the key
and learns from it, :meth:`~facematch_async.RateLimiter.on_rate_limited`): the next
attempt's wait for a slot is the wait. Without one, the loop sleeps.

With a :class:`~facematch_async._deadline.Deadline`, every attempt runs for at most what
is left of it, and a wait that what is left cannot cover is not started: a 429 is raised
as it is (its ``retry_after`` says when to come back), any other failure as
:class:`~facematch_async.errors.DeadlineExceededError`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from facematch_async._deadline import Deadline
from facematch_async.errors import (
    APIConnectionError,
    APIStatusError,
    DeadlineExceededError,
    FaceMatchError,
    ImageUnavailableError,
    InvalidTokenError,
    QuotaExceededError,
    RateLimitError,
)

if TYPE_CHECKING:
    from facematch_async._ratelimit import RateLimiter

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "call_with_retries",
    "is_retryable",
]

T = TypeVar("T")
logger = logging.getLogger("facematch_async")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Every rule about retrying a call (the number of ordinary retries is the client's
    ``max_retries``).

    Attributes:
        backoff_initial: Seconds before the first retry; each later wait doubles.
            Deepvue advises starting at 1 s.
        backoff_max: The longest wait between two attempts.
        backoff_jitter: Up to this many random seconds are added to each wait, so that
            many clients that failed together do not retry together.
        max_retry_after: The longest ``Retry-After`` honoured (and the longest pause a 429
            imposes on a rate limiter's callers); a longer one is the daily quota.
        rate_limit_rounds: After ``max_retries``, more attempts for a call that keeps
            meeting 429 (each after the key's pause), or whose token the API refuses again
            right after its renewal. A batch gives its pairs 5; a live call 0.
        wait_for_quota: Wait for a used-up daily quota to reopen (at most the longest
            window of the rate limit, else a day) instead of raising
            :class:`~facematch_async.errors.QuotaExceededError`. A batch that should run
            until done, rather than stop for tomorrow, sets it.
    """

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    backoff_jitter: float = 1.0
    max_retry_after: float = 60.0
    rate_limit_rounds: int = 0
    wait_for_quota: bool = False


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


def _quota(error: RateLimitError) -> QuotaExceededError:
    """The server's 429 with a Retry-After too long for a rate window: the daily quota."""
    quota = QuotaExceededError(
        f"the API asked to wait {error.retry_after} s: taken as the daily quota ({error.message})",
        status_code=error.status_code,
        sub_code=error.sub_code,
        detail=error.detail,
        transaction_id=error.transaction_id,
        retry_after=error.retry_after,
    )
    quota.__cause__ = error
    return quota


def _wait_for_quota(limiter: RateLimiter, retry_after: float | None, cap: float) -> None:
    """Hold ``limiter``'s callers until the quota reopens (those that wait for it wait; the
    others are refused at once): the server's wait, but at most the limiter's longest
    window, or a day (a nonsense ``Retry-After`` must not stop it for good)."""
    longest = max([_DAY, *(w.period for w in limiter.windows)]) + limiter.margin
    wait = longest if retry_after is None or not math.isfinite(retry_after) else retry_after
    wait = min(wait, longest)
    if limiter.quota_for < wait - 1:  # the first call to meet it says so
        logger.warning(
            "the API asked to wait %s s (Retry-After), longer than %g s: taken as the daily "
            "quota, used up for %.0f s",
            retry_after,
            cap,
            wait,
        )
    limiter.hold_for_quota(wait)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    policy: RetryPolicy,
    deadline: Deadline | None = None,
    limiter: RateLimiter | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds, fails for good, or the retries are spent.

    With a ``deadline``, each attempt is cut off (cancelled) when the deadline passes, and
    a wait that does not fit in what is left is not started (see the module's docstring).
    With a ``limiter``, each 429 goes to it, and ``attempt`` is expected to wait for its
    slot. ``sleep`` (default ``anyio.sleep``) waits between attempts.

    A plain loop rather than a retry library: the first attempt, which almost always
    succeeds, then costs nothing beyond the call itself.
    """
    retries = rounds = 0
    while True:
        try:
            if deadline is None:
                return await attempt()
            return await deadline.run(attempt)
        except Exception as error:  # cancellation and other BaseExceptions pass through
            rate_limited = isinstance(error, RateLimitError) and error.status_code == 429
            if isinstance(error, RateLimitError) and rate_limited:
                retry_after = error.retry_after
                if limiter is not None:
                    if not limiter.on_rate_limited(retry_after, cap=policy.max_retry_after):
                        _wait_for_quota(limiter, retry_after, policy.max_retry_after)
                        if not policy.wait_for_quota:
                            raise _quota(error) from None
                elif not _should_retry(error, policy):
                    raise _quota(error) from None
            elif not (_should_retry(error, policy) or isinstance(error, InvalidTokenError)):
                raise
            if retries < max_retries and not isinstance(error, InvalidTokenError):
                retries += 1
            elif (rate_limited or isinstance(error, InvalidTokenError)) and (
                rounds < policy.rate_limit_rounds
            ):
                rounds += 1
            else:
                raise
            # With a limiter, a 429's wait is the limiter's pause: the next slot waits it.
            wait_for = (
                0.0
                if rate_limited and limiter is not None
                else _wait_before(retries + rounds, error, policy)
            )
            if deadline is not None:
                _check_wait(deadline, wait_for, error)
            logger.info(
                "retrying in %.2f s (attempt %d of %d failed): %r",
                wait_for if limiter is None else max(wait_for, limiter.wait_time()),
                retries + rounds,
                max_retries + policy.rate_limit_rounds + 1,
                error,
            )
        if wait_for > 0:
            await (sleep or anyio.sleep)(wait_for)
