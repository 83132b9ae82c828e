"""Running the sandbox: :class:`SandboxServer` for tests, :func:`serve` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from types import TracebackType
from typing import Self

from aiohttp import web

from facematch_async.sandbox._app import SANDBOX_STATE, SandboxState, create_app
from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._counters import SandboxCounters
from facematch_async.sandbox._engines import FaceEngine, TestEngine
from facematch_async.sandbox._random_faults import FaultConfig, FaultInjector
from facematch_async.sandbox._scripted import ResponseScript
from facematch_async.sandbox._unknowns import unknowns_banner

__all__ = ["TEST_ENGINE_WARNING", "SandboxServer", "banner", "describe", "serve"]

_AIOHTTP_KEEPALIVE = 75.0  # aiohttp's default idle keep-alive, as nginx's

TEST_ENGINE_WARNING = """\
WARNING: this sandbox does NOT recognise faces. Its test engine compares an fm-identity
tag in each image (see make_test_image), else the images' exact bytes: two different photos
of one person answer match=false, and a photo with no face answers SUCCESS.
For real verdicts, install the face engine and restart:
    pip install "facematch-async[face]"    then    facematch-async sandbox --engine dlib"""
"""What the CLI prints first (on stderr) when it runs the test engine."""


class SandboxServer:
    """A sandbox listening on a real socket, as an async context manager.

    ``port=0`` picks a free port; :attr:`base_url` carries the one actually bound::

        async with SandboxServer(SandboxConfig("id", "secret")) as server:
            ...  # point a client at server.base_url

    Args:
        config: the sandbox's behaviour.
        host: the interface to bind.
        port: the TCP port, 0 for any free one.
        shutdown_timeout: seconds in-flight requests get to finish on exit (stalled scripted
            responses are cancelled after that).
    """

    def __init__(
        self,
        config: SandboxConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self._config = config
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._app = create_app(config)
        self._state: SandboxState = self._app[SANDBOX_STATE]
        self._listener: asyncio.Server | None = None
        self._shutdown_timeout = shutdown_timeout
        # handler_cancellation: a client that gives up also ends a stalled (delayed) handler.
        # keepalive_timeout: the read timeout, which the sandbox keeps itself (its
        # connections are wrapped: see _connections), also closes idle keep-alive
        # connections; aiohttp's own timer is left longer, so it never decides first.
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=_AIOHTTP_KEEPALIVE
            if config.read_timeout is None
            else max(_AIOHTTP_KEEPALIVE, 2 * config.read_timeout),
        )

    async def start(self) -> None:
        """Bind and start serving."""
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # set up just above
        try:
            # aiohttp's Server is the protocol factory; each connection is wrapped to keep
            # the read timeout (the listener is ours, so no aiohttp site is needed).
            self._listener = await asyncio.get_running_loop().create_server(
                self._state.read_timeouts.wrap(server), self._host, self._requested_port
            )
        except BaseException:
            await self._runner.cleanup()
            raise
        self._port = int(self._listener.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop serving and release the socket."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # no new connections; the runner ends the open ones
        await self._runner.cleanup()
        if listener is not None:
            # From Python 3.12 this waits for every connection, all closed by the runner just
            # now; bounded all the same, so a straggler never hangs a shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._shutdown_timeout + 1.0):
                    await listener.wait_closed()
        self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def config(self) -> SandboxConfig:
        """The configuration the server runs with."""
        return self._config

    @property
    def app(self) -> web.Application:
        """The underlying aiohttp application."""
        return self._app

    @property
    def port(self) -> int:
        """The bound TCP port (only while running)."""
        if self._port is None:
            raise RuntimeError("the sandbox is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self._host}]" if ":" in self._host else self._host  # IPv6 literal
        return f"http://{host}:{self.port}"

    @property
    def counters(self) -> SandboxCounters:
        """What the server has seen so far."""
        return self._state.counters

    @property
    def scripted(self) -> ResponseScript:
        """The queue of scripted responses (:class:`ScriptedResponse`): exact answers for
        the next requests to a path; ``add`` and ``clear`` it. Random faults at set rates
        are another thing: :class:`FaultConfig` and :meth:`set_random_faults`."""
        return self._state.scripted

    @property
    def faults(self) -> ResponseScript:
        """The same queue as :attr:`scripted`, by its older name."""
        return self._state.scripted

    @property
    def engine(self) -> FaceEngine:
        """The engine comparing faces (``engine.name`` says which)."""
        return self._state.engine

    @property
    def random_faults(self) -> FaultConfig | None:
        """The random faults in force (see :meth:`set_random_faults`)."""
        return self._state.random_faults.config if self._state.random_faults is not None else None

    def set_random_faults(self, faults: FaultConfig | None) -> None:
        """Inject ``faults`` from now on, replacing the configured ones; ``None`` stops them.

        A new seeded :class:`FaultConfig` starts its random sequence afresh.
        """
        self._state.random_faults = FaultInjector(faults) if faults is not None else None

    def reset_rate_limit(self) -> None:
        """Empty every rate-limit window, as if no request had been made."""
        self._state.limiter.reset()

    def revoke_token(self, token: str) -> None:
        """Reject ``token`` from now on (403 ``Not a valid token``)."""
        self._state.tokens.revoke(token)

    def revoke_all_tokens(self) -> None:
        """Reject every token issued so far; tokens issued later still work."""
        self._state.tokens.revoke_all()


async def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run a sandbox until cancelled, SIGINT or SIGTERM, then shut it down cleanly.

    Prints ``Sandbox listening on http://HOST:PORT`` (the bound port) on stdout once ready,
    always as the first line, since scripts parse it; the engine, rate limit and faults in
    force, and what the settings do about production's unknowns (:func:`banner`), go to
    stderr just before it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        async with SandboxServer(config, host, port) as server:
            warm_up = getattr(server.engine, "warm_up", None)
            if callable(warm_up):  # load models now: the first request should not wait
                await asyncio.to_thread(warm_up)
            if isinstance(server.engine, TestEngine):
                print(TEST_ENGINE_WARNING, file=sys.stderr, flush=True)
            print(banner(server), file=sys.stderr, flush=True)
            print(f"Sandbox listening on {server.base_url}", flush=True)
            await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def banner(server: SandboxServer) -> str:
    """What the sandbox prints on start: :func:`describe`'s line, then each of production's
    unknowns, met (at its least forgiving plausible value) or hidden by the settings."""
    return f"{describe(server)}\n{unknowns_banner(server.config)}"


def describe(server: SandboxServer) -> str:
    """One line on what the sandbox does: engine, rate limit, token lifetime and faults."""
    config = server.config
    limits = ",".join(window.label for window in config.rate_windows) or "none"
    engine = server.engine.name
    if config.engine == "auto":
        engine += " (auto)" if engine == "dlib" else " (auto: the face extra is not installed)"
    parts = [f"engine={engine}"]
    pdf_support = getattr(server.engine, "pdf_support", None)
    if callable(pdf_support):  # say whether v2's PDFs are judged at all
        parts.append(f"pdf={pdf_support()}")
    parts.append(f"rate-limit={limits}")
    parts.append(f"token-ttl={config.token_ttl:g}s")
    read_timeout = "none" if config.read_timeout is None else f"{config.read_timeout:g}s"
    parts.append(f"read-timeout={read_timeout}")
    modes = [
        name
        for name, on in (
            ("null-confidence", config.null_confidence),
            ("strict-uploads", config.strict_uploads),
        )
        if on
    ]
    if modes:
        parts.append(f"modes={','.join(modes)}")
    if server.random_faults is not None:
        parts.append(f"faults=[{server.random_faults.summary()}]")
    return "Sandbox " + " ".join(parts)
