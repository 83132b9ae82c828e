"""Scripted responses: faults a test queues up for the next requests to a path."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["ResponseScript", "ScriptedResponse"]


@dataclass
class ScriptedResponse:
    """One canned answer for the next request(s) to ``path``, given before any normal handling.

    Attributes:
        path: the request path it applies to, e.g. ``"/v1/facematch"``.
        status: the HTTP status to answer; ``None`` means "handle normally" (after ``delay``).
        json: a JSON body (used when ``text`` is ``None``).
        text: a raw text body, e.g. an HTML error page from a proxy.
        content_type: overrides the body's content type (defaults: ``application/json`` for
            ``json``, ``text/plain`` for ``text``).
        headers: extra response headers, e.g. ``{"Retry-After": "1"}``.
        delay: seconds to stall before answering (or dropping).
        drop: close the connection without answering.
        times: how many consecutive requests this answers.
    """

    path: str
    status: int | None = None
    json: Any = None
    text: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    times: int = 1

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError(f"times must be at least 1, got {self.times}")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative, got {self.delay}")

    def to_response(self) -> web.Response:
        """Build the HTTP response (requires ``status``)."""
        if self.status is None:
            raise ValueError("a ScriptedResponse without status has no response of its own")
        if self.text is not None:
            return web.Response(
                status=self.status,
                text=self.text,
                content_type=self.content_type or "text/plain",
                headers=self.headers,
            )
        if self.json is None:
            return web.Response(
                status=self.status, content_type=self.content_type, headers=self.headers
            )
        return web.json_response(
            self.json,
            status=self.status,
            content_type=self.content_type or "application/json",
            headers=self.headers,
        )


@dataclass
class _Queued:
    response: ScriptedResponse
    remaining: int  # counted here, so the caller's ScriptedResponse is never mutated


class ResponseScript:
    """FIFO queues of :class:`ScriptedResponse`, one queue per path."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[_Queued]] = {}

    def add(self, response: ScriptedResponse) -> None:
        """Queue ``response`` after any already queued for its path."""
        self._queues.setdefault(response.path, deque()).append(_Queued(response, response.times))

    def clear(self) -> None:
        """Forget every queued response."""
        self._queues.clear()

    def pending(self, path: str | None = None) -> int:
        """How many requests (to ``path``, or to any path) the queued responses will answer."""
        queues = self._queues.values() if path is None else [self._queues.get(path, deque())]
        return sum(entry.remaining for queue in queues for entry in queue)

    def take(self, path: str) -> ScriptedResponse | None:
        """Consume one use of the oldest response queued for ``path``, if any."""
        queue = self._queues.get(path)
        if not queue:
            return None
        entry = queue[0]
        entry.remaining -= 1
        if entry.remaining == 0:
            queue.popleft()
        return entry.response
