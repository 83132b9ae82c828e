"""Read timeouts the sandbox keeps itself, per connection, as a reverse proxy counts them.

A proxy such as nginx bounds a request in two ways: its headers must all arrive within a
time (``client_header_timeout``), and its body may not go quiet for longer than a time
between two successive reads (``client_body_timeout``): a steady slow upload is never cut, a
stalled one is. The sandbox does the same with its one ``read_timeout``:

* a connection's next request headers must be complete within it, counted from the moment
  the connection opened or its last answer was sent; else the connection is closed without
  a word (an idle keep-alive connection too);
* while a handler reads a body, a gap that long between two reads from the socket ends the
  read with :class:`TimeoutError` (the handler answers 408 and closes).

Each connection's protocol is wrapped to see every read as it happens: the server's own
keep-alive timer covers a connection that has sent nothing only from aiohttp 3.14.4 on, and
nothing in aiohttp bounds the time between two reads of a body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web

__all__ = ["ReadTimeouts"]


class ReadTimeouts:
    """The read bounds of one server's connections.

    Args:
        timeout: seconds (see the module docstring); ``None`` sets no bound.
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._watched: dict[asyncio.BaseTransport, _WatchedConnection] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` whose connections are bounded."""
        timeout = self.timeout
        if timeout is None:
            return factory
        return lambda: _WatchedConnection(factory(), self._watched, timeout)

    @contextlib.contextmanager
    def handling(self, request: web.BaseRequest) -> Iterator[None]:
        """Mark ``request`` as being handled: no header bound runs on its connection."""
        watched = self._connection(request)
        if watched is None:
            yield
            return
        watched.request_started()
        try:
            yield
        finally:
            watched.request_finished()

    @contextlib.asynccontextmanager
    async def reading_body(self, request: web.BaseRequest) -> AsyncIterator[None]:
        """Bound the body reads made inside the block.

        Raises:
            TimeoutError: the socket went quiet for ``timeout`` seconds (from the block's
                start or the last read) while the block waited. An application served
                without :meth:`wrap` gets a bound on the whole block instead.
        """
        if self.timeout is None:
            yield
            return
        watched = self._connection(request)
        if watched is None:
            async with asyncio.timeout(self.timeout):
                yield
            return
        async with watched.reading_body():
            yield

    def _connection(self, request: web.BaseRequest) -> _WatchedConnection | None:
        transport = request.transport
        return self._watched.get(transport) if transport is not None else None


class _WatchedConnection(asyncio.Protocol):
    """Forwards everything to the server's own protocol, keeping the bounds on the way."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        registry: dict[asyncio.BaseTransport, _WatchedConnection],
        timeout: float,
    ) -> None:
        self._inner = inner
        self._registry = registry
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.BaseTransport | None = None
        self._handling = 0  # requests being handled (their headers are in)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.Timeout | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._registry[transport] = self
        self._arm_header_timer()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._body_deadline is not None:  # a read: the body is not quiet
            self._body_deadline.reschedule(self._loop.time() + self._timeout)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._transport is not None:
            self._registry.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the bounds ---------------------------------------------------------------------------

    def request_started(self) -> None:
        self._handling += 1
        self._cancel_header_timer()

    def request_finished(self) -> None:
        self._handling -= 1
        if self._handling == 0:
            self._arm_header_timer()  # the next request's headers, or idle keep-alive

    @contextlib.asynccontextmanager
    async def reading_body(self) -> AsyncIterator[None]:
        async with asyncio.timeout(self._timeout) as deadline:
            self._body_deadline = deadline
            try:
                yield
            finally:
                self._body_deadline = None

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self._loop.call_later(self._timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._handling == 0 and self._transport is not None:
            self._transport.close()
