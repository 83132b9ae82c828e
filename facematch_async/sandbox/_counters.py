"""Request counters, so tests can assert how often the client called the server."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["SandboxCounters"]


@dataclass
class SandboxCounters:
    """What a sandbox has seen since it started (or since :meth:`reset`).

    Attributes:
        authorize_calls: ``POST /v1/authorize`` requests received, scripted ones included.
        tokens_issued: access tokens handed out.
        requests: responses keyed by ``(path, status)``; a dropped connection counts as status 0.
    """

    authorize_calls: int = 0
    tokens_issued: int = 0
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)

    def record(self, path: str, status: int) -> None:
        """Count one answered (or dropped, ``status=0``) request."""
        self.requests[(path, status)] += 1

    def reset(self) -> None:
        """Zero every counter."""
        self.authorize_calls = 0
        self.tokens_issued = 0
        self.requests.clear()
