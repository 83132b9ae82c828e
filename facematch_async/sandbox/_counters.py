"""Request counters, so tests can assert how often the client called the server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["SandboxCounters"]


@dataclass
class SandboxCounters:
    """What a sandbox has seen since it started (or since :meth:`reset`).

    Attributes:
        authorize_calls: ``POST /v1/authorize`` requests received, scripted ones included.
        tokens_issued: access tokens handed out.
        requests: responses keyed by ``(path, status)``; a dropped connection counts as status 0.
        faults_injected: random faults injected, by kind (``"500"``, ``"503"``, ``"html_502"``,
            ``"429"``, ``"drop"``, ``"stall"``, ``"revoke"``, and ``"latency"`` for requests
            that were delayed).
        rate_limited: requests refused with 429 by the rate limit, by window label (``"2/s"``).
        max_in_window: by window label, the most requests one key had let through within
            any one sliding window: a test proves no window was exceeded by comparing it
            with the limit, and sees how close its client came.
        in_flight: requests being handled right now.
        max_in_flight: the most requests handled at once.
    """

    authorize_calls: int = 0
    tokens_issued: int = 0
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    max_in_window: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def record(self, path: str, status: int) -> None:
        """Count one answered (or dropped, ``status=0``) request."""
        self.requests[(path, status)] += 1

    def record_window_use(self, in_window: Iterable[tuple[str, int]]) -> None:
        """Note how full each window was when a request was let through."""
        for label, count in in_window:
            self.max_in_window[label] = max(count, self.max_in_window.get(label, 0))

    def count(self, path: str | None = None, status: int | None = None) -> int:
        """Responses to ``path`` (any if ``None``) with ``status`` (any if ``None``)."""
        # A copy: a BackgroundSandbox's loop may add a key while another thread reads.
        return sum(
            seen
            for (seen_path, seen_status), seen in list(self.requests.items())
            if path in (None, seen_path) and status in (None, seen_status)
        )

    def reset(self) -> None:
        """Zero every counter (``in_flight`` keeps counting the requests still running)."""
        self.authorize_calls = 0
        self.tokens_issued = 0
        self.requests.clear()
        self.faults_injected.clear()
        self.rate_limited.clear()
        self.max_in_window.clear()
        self.max_in_flight = self.in_flight
