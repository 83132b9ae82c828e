"""What the client tells hooks about each HTTP attempt, for metrics and tracing.

The SDK depends on no metrics library: wire these hooks to Prometheus, OpenTelemetry or
StatsD yourself. Hooks run inline on the event loop, so keep them quick; an exception in a
hook is logged and never fails the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RequestEvent", "RequestHook"]


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One HTTP attempt (retries and token refreshes are attempts of their own).

    Attributes:
        request_id: The call's id, shared by all its attempts: the batch runner's pair id,
            else a random hex string.
        path: ``"/v1/authorize"``, ``"/v1/facematch"`` or ``"/v2/facematch"``.
        attempt: 1 for the first attempt of the call, then 2, 3, ...
        status_code: The HTTP status (end events with a response only).
        outcome: ``"ok"``, or the name of the error class (``"RateLimitError"``,
            ``"CancelledError"``, ...); ``None`` on start events.
        sub_code: The response's ``sub_code``, if any.
        transaction_id: Deepvue's ``transaction_id``, if any.
        latency: Seconds from sending to the parsed response (end events only).
    """

    request_id: str
    path: str
    attempt: int
    status_code: int | None = None
    outcome: str | None = None
    sub_code: str | None = None
    transaction_id: str | None = None
    latency: float | None = None


RequestHook = Callable[[RequestEvent], None]
"""A callable the client calls with a :class:`RequestEvent`."""
