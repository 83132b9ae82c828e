"""TLS: certificates are verified by default; a private CA is trusted only when given."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from facematch_async import APIConnectionError, FaceMatchClient
from facematch_async.sandbox import make_test_image

trustme = pytest.importorskip("trustme", reason="TLS tests need trustme (test extra)")


@pytest.fixture(scope="module")
def authority() -> Any:
    return trustme.CA()


@pytest.fixture
async def tls_server(authority: Any) -> AsyncIterator[tuple[str, list[str]]]:
    """A real HTTPS server on loopback whose certificate a private CA signed."""
    seen: list[str] = []

    async def authorize(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"access_token": "t", "token_type": "bearer"})

    async def facematch(request: web.Request) -> web.Response:
        seen.append(request.path)
        body = {"sub_code": "SUCCESS", "data": {"match": True, "confidence": None}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/authorize", authorize)
    app.router.add_post("/v1/facematch", facematch)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}", seen
    await runner.cleanup()


JPEG = make_test_image("tls", "jpeg")


async def test_untrusted_certificate_is_refused(tls_server: tuple[str, list[str]]) -> None:
    """An unknown CA fails the handshake: nothing, not even the secret, is sent."""
    url, seen = tls_server
    async with FaceMatchClient(
        client_id="a", client_secret="b", base_url=url, max_retries=0
    ) as client:
        with pytest.raises(APIConnectionError, match=r"Certificate|SSL"):
            await client.match(JPEG, JPEG)
    assert seen == []


async def test_private_ca_is_trusted_when_given(
    tls_server: tuple[str, list[str]], authority: Any
) -> None:
    """With ssl_context trusting the CA, the same server is reachable."""
    url, seen = tls_server
    context = ssl.create_default_context()
    authority.configure_trust(context)
    async with FaceMatchClient(
        client_id="a", client_secret="b", base_url=url, ssl_context=context
    ) as client:
        assert (await client.match(JPEG, JPEG)).match is True
    assert seen == ["/v1/authorize", "/v1/facematch"]
