"""Per-call hooks that a caller (the batch runner) installs around ``client.match``.

They travel in a context variable, so the client needs no batch-specific arguments and
concurrent calls each see their own scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["CALL_SCOPE", "CallScope"]


@dataclass
class CallScope:
    """What one ``match`` call reports to, and waits on, for each HTTP attempt.

    Attributes:
        request_id: The id that logs and hooks show for the call (the batch runner's pair
            id); ``None`` for a random one.
        attempts: Face-match requests sent for this call so far (retries included).
        before_attempt: Awaited before each face-match request (e.g. a rate limiter), so
            retries are paced like first attempts.
        on_rate_limited: Called with the server's ``retry_after`` (or ``None``) on each 429.
        sleep: Awaited for the wait between two attempts (a backoff, a ``Retry-After``)
            instead of a plain sleep, so the caller can release a pair that only waits.
    """

    request_id: str | None = None
    attempts: int = 0
    before_attempt: Callable[[], Awaitable[None]] | None = None
    on_rate_limited: Callable[[float | None], None] | None = None
    sleep: Callable[[float], Awaitable[None]] | None = None


CALL_SCOPE: ContextVar[CallScope | None] = ContextVar("facematch_async_call_scope", default=None)
