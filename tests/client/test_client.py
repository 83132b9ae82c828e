"""Client configuration and lifecycle: environment, validation, one session, close, cancel."""

from __future__ import annotations

import asyncio
import threading

import pytest

from facematch_async import (
    PRODUCTION_BASE_URL,
    ClientClosedError,
    FaceMatchClient,
)
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, MakeClient


def test_missing_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """client_id, client_secret and base_url default to the DEEPVUE_* variables."""
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", "env-id")
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", "env-secret")
    monkeypatch.setenv("DEEPVUE_BASE_URL", "http://127.0.0.1:1234/")
    client = FaceMatchClient()
    assert client.client_id == "env-id"
    assert client.base_url == "http://127.0.0.1:1234"


def test_production_is_the_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without base_url or DEEPVUE_BASE_URL the client aims at production."""
    monkeypatch.delenv("DEEPVUE_BASE_URL", raising=False)
    assert FaceMatchClient(client_id="a", client_secret="b").base_url == PRODUCTION_BASE_URL


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_id": "a"}, "client_secret is required"),
        ({"client_secret": "b"}, "client_id is required"),
        ({"client_id": "a", "client_secret": "b", "api_version": "v3"}, "api_version"),
        ({"client_id": "a", "client_secret": "b", "max_retries": -1}, "max_retries"),
        ({"client_id": "a", "client_secret": "b", "base_url": "ftp://x"}, "base_url"),
    ],
)
def test_invalid_configuration_is_a_value_error(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, object], message: str
) -> None:
    """Missing credentials and bad options fail at construction, not at the first call."""
    monkeypatch.delenv("DEEPVUE_CLIENT_ID", raising=False)
    monkeypatch.delenv("DEEPVUE_CLIENT_SECRET", raising=False)
    with pytest.raises(ValueError, match=message):
        FaceMatchClient(**options)  # type: ignore[arg-type]


async def test_one_session_is_created_lazily_and_reused(client, faces: Faces) -> None:
    """No session exists before the first call; every call then shares the same one."""
    assert client._transport._session is None
    await client.match(faces.alice_png, faces.alice_jpg)
    session = client._transport._session
    await client.match(faces.alice_png, faces.bob_jpg)
    assert client._transport._session is session


async def test_closed_client_refuses_calls(make_client: MakeClient, faces: Faces) -> None:
    """After aclose() a call raises ClientClosedError; closing twice is harmless."""
    client = make_client()
    await client.match(faces.alice_png, faces.alice_jpg)
    await client.aclose()
    await client.aclose()
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.match(faces.alice_png, faces.alice_jpg)


async def test_close_during_a_call_ends_it_with_client_closed(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A call in flight when the client closes ends with ClientClosedError, not a hang."""
    client = make_client()
    await client.match(faces.alice_png, faces.alice_jpg)
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", delay=5.0))
    call = asyncio.ensure_future(client.match(faces.alice_png, faces.alice_jpg))
    await asyncio.sleep(0.2)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(call, 3)


async def test_cancelled_call_leaves_the_client_usable(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A match cancelled mid-flight frees its connection; the next match works."""
    await client.match(faces.alice_png, faces.alice_jpg)
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", delay=5.0))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.match(faces.alice_png, faces.alice_jpg), 0.3)
    assert (await client.match(faces.alice_png, faces.bob_jpg)).match is False
    connector = client._transport._session.connector
    assert connector is not None
    assert len(connector._acquired) == 0


async def test_use_from_another_event_loop_is_a_clear_error(client, faces: Faces) -> None:
    """A client opened in one loop raises RuntimeError in another instead of hanging."""
    await client.match(faces.alice_png, faces.alice_jpg)
    caught: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(client.match(faces.alice_png, faces.alice_jpg))
        except BaseException as error:
            caught.append(error)

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join(10)
    assert len(caught) == 1 and isinstance(caught[0], RuntimeError)
    assert "another event loop" in str(caught[0])


async def test_async_with_closes_the_client(sandbox: SandboxServer, faces: Faces) -> None:
    """Leaving `async with` closes the connection pool."""
    async with FaceMatchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=sandbox.base_url
    ) as client:
        await client.match(faces.alice_png, faces.alice_jpg)
        session = client._transport._session
    assert client.closed
    assert session is not None and session.closed
