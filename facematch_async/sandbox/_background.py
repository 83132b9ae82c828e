"""``BackgroundSandbox``: a sandbox in its own thread, for synchronous code and tests."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Self

from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._server import SandboxServer

__all__ = ["BackgroundSandbox"]


class BackgroundSandbox:
    """A :class:`SandboxServer` running on its own event loop in a daemon thread.

    Synchronous code (and async code on any loop) talks to it over loopback like to any
    server, so it suits sync tests and session-wide fixtures alike::

        with BackgroundSandbox(SandboxConfig("id", "secret")) as sandbox:
            requests.post(f"{sandbox.base_url}/v1/authorize", ...)

    Its :attr:`server`'s counters can be read and its faults set from the calling thread:
    both are plain attribute updates, which the server's loop picks up on its next request.

    Args:
        config: the sandbox's behaviour.
        host: the interface to bind.
        port: the TCP port, 0 for any free one.
        start_timeout: seconds to wait for the server to listen.
    """

    def __init__(
        self,
        config: SandboxConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout: float = 10.0,
    ) -> None:
        self._config = config
        self._host = host
        self._port = port
        self._start_timeout = start_timeout
        self._server: SandboxServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread and wait until the server listens (re-raising its failure)."""
        if self._thread is not None:
            raise RuntimeError("the background sandbox is already running")
        loop = asyncio.new_event_loop()
        server = SandboxServer(self._config, self._host, self._port)
        started: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._run, args=(loop, server, started), name="facematch-sandbox", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(_wait(started), loop).result(self._start_timeout)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._server, self._thread = loop, server, thread

    @staticmethod
    def _run(
        loop: asyncio.AbstractEventLoop, server: SandboxServer, started: asyncio.Future[None]
    ) -> None:
        asyncio.set_event_loop(loop)

        async def begin() -> None:
            try:
                await server.start()
            except BaseException as exc:  # handed to the starting thread, which re-raises
                started.set_exception(exc)
            else:
                started.set_result(None)

        loop.create_task(begin())
        loop.run_forever()

    def close(self) -> None:
        """Stop the server and its thread; a no-op when not running."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def server(self) -> SandboxServer:
        """The running server: counters, scripted and random faults, token revocation."""
        if self._server is None:
            raise RuntimeError("the background sandbox is not running")
        return self._server

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        return self.server.base_url


async def _wait(started: asyncio.Future[None]) -> None:
    await started
