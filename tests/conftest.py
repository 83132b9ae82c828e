"""Shared fixtures: a sandbox on loopback, clients pointed at it, tagged test images on disk.

The constants and classes they use live in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from facematch_async import FaceMatchClient
from facematch_async.sandbox import SandboxConfig, SandboxServer, sandbox_process
from tests.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST_RETRIES,
    Faces,
    MakeClient,
    RedisServer,
    invalid_results_lines,
)


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


@pytest.fixture
def faces(tmp_path: Path) -> Faces:
    """Alice (PNG and JPEG), Bob, and an image with no face, as files in a temp folder."""
    return Faces(tmp_path)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on loopback for one test; ``stop()``/``start()`` to lose it."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _results_lines_match_the_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, every results line the library wrote under its tmp_path validates
    against the results schema shipped in the package."""
    yield
    root = request.node.funcargs.get("tmp_path")
    if isinstance(root, Path):
        problems = invalid_results_lines(root)
        assert not problems, "results lines outside the schema:\n" + "\n".join(problems[:10])


# --- Object stores: a real S3-protocol server (moto) and a GCS emulator, on loopback --------
from tests.helpers import STORE_SAFETY_ENV, GCSServer, S3Bucket, S3Server  # noqa: E402

for _name, _value in STORE_SAFETY_ENV.items():  # no metadata-service lookups, ever
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for the whole run (buckets are per test)."""
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh bucket, and the standard AWS variables pointing at the test server."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.new_bucket()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """The GCS emulator for the whole run."""
    server = GCSServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gcs(gcs_server: GCSServer, monkeypatch: pytest.MonkeyPatch) -> GCSServer:
    """The GCS emulator, with STORAGE_EMULATOR_HOST pointing gcsfs at it."""
    for name, value in gcs_server.env.items():
        monkeypatch.setenv(name, value)
    return gcs_server
