"""The token manager: single-flight authorize, renewal before expiry, one refresh on rejection."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import anyio
import pytest

from facematch_async import AuthenticationError, FaceMatchClient, InvalidTokenError
from facematch_async._auth import (
    MAX_REFRESH_MARGIN,
    AccessToken,
    TokenManager,
    token_from_response,
    token_lifetime,
)
from facematch_async.sandbox import SandboxConfig, SandboxServer, ScriptedResponse
from tests.helpers import AUTHORIZE, CLIENT_ID, CLIENT_SECRET, FACEMATCH, Faces, MakeClient


def fake_jwt(**claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


async def test_concurrent_matches_share_one_authorize_call(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """200 concurrent matches on a client with no token cause exactly one authorize call."""
    results = []

    async def one() -> None:
        results.append(await client.match(faces.alice_png, faces.alice_jpg))

    async with anyio.create_task_group() as group:
        for _ in range(200):
            group.start_soon(one)
    assert len(results) == 200 and all(result.match for result in results)
    assert sandbox.counters.authorize_calls == 1
    assert sandbox.counters.requests[(FACEMATCH, 200)] == 200


async def test_token_is_reused_across_calls(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A long-lived token serves many sequential calls."""
    for _ in range(5):
        await client.match(faces.alice_png, faces.bob_jpg)
    assert sandbox.counters.authorize_calls == 1


async def test_short_lived_token_is_renewed_before_it_expires(faces: Faces) -> None:
    """With 2 s tokens, calls over 5 s renew ahead of expiry and never send an expired one."""
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, token_ttl=2.0)
    async with SandboxServer(config) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.base_url
        ) as client:
            calls = 0
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                await client.match(faces.alice_png, faces.alice_jpg)
                calls += 1
                await asyncio.sleep(0.05)
        assert server.counters.requests[(FACEMATCH, 403)] == 0
        assert server.counters.requests[(FACEMATCH, 200)] == calls
        # Renewed several times, but far less often than once per call.
        assert 3 <= server.counters.authorize_calls <= 12 < calls


async def test_revoked_token_is_refreshed_once_and_the_call_succeeds(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A token the API rejects as not valid is replaced once and the call succeeds."""
    await client.match(faces.alice_png, faces.bob_jpg)
    sandbox.revoke_all_tokens()
    result = await client.match(faces.alice_png, faces.alice_jpg)
    assert result.match is True
    assert sandbox.counters.authorize_calls == 2
    assert sandbox.counters.requests[(FACEMATCH, 403)] == 1


async def test_expired_token_rejected_by_the_api_is_refreshed(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 401 'Not authenticated' (as for an expired token) leads to one refresh and success."""
    await client.match(faces.alice_png, faces.bob_jpg)
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=401, json={"detail": "Not authenticated"})
    )
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert sandbox.counters.authorize_calls == 2


async def test_rejection_after_refresh_is_raised_not_looped(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """If the fresh token is rejected too, the error is raised: one refresh per call, no loop."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=403, json={"detail": "Not a valid token"}, times=10)
    )
    with pytest.raises(InvalidTokenError):
        await client.match(faces.alice_png, faces.bob_jpg)
    assert sandbox.counters.requests[(FACEMATCH, 403)] == 2
    assert sandbox.counters.authorize_calls == 2


async def test_concurrent_rejections_refresh_once(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """Fifty calls rejected together with the same token trigger a single new authorize."""
    await client.match(faces.alice_png, faces.bob_jpg)
    sandbox.revoke_all_tokens()
    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(client.match, faces.alice_png, faces.alice_jpg)
    assert sandbox.counters.authorize_calls == 2


async def test_fixed_access_token_makes_no_authorize_call(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """access_token= is sent as given; the client never calls authorize."""
    token = await _authorize(sandbox)
    client = make_client(client_id=None, access_token=token)
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    sandbox.revoke_all_tokens()
    with pytest.raises(InvalidTokenError):
        await client.match(faces.alice_png, faces.alice_jpg)
    assert sandbox.counters.authorize_calls == 1  # only the test's own call


async def _authorize(sandbox: SandboxServer) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        async with session.post(sandbox.base_url + AUTHORIZE, data=form) as response:
            token: str = (await response.json())["access_token"]
            return token


async def test_failed_authorize_is_shared_by_concurrent_callers(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Wrong credentials: twenty concurrent callers all fail from one authorize call."""
    client = make_client(client_secret="wrong")
    errors = []
    image_a, image_b = faces.alice_png.read_bytes(), faces.bob_jpg.read_bytes()

    async def one() -> None:
        try:
            # Bytes, not paths: no thread hop, so all twenty reach the token at once.
            await client.match(image_a, image_b)
        except AuthenticationError as error:
            errors.append(error)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(one)
    assert len(errors) == 20
    assert sandbox.counters.authorize_calls == 1


async def test_transient_authorize_failure_is_retried(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 503 from authorize is retried like any transient failure."""
    sandbox.scripted.add(
        ScriptedResponse(path=AUTHORIZE, status=503, json={"detail": "Source Unavailable"})
    )
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert sandbox.counters.authorize_calls == 2


async def test_cancelled_caller_does_not_cancel_the_shared_authorize(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """The first caller's cancellation leaves the authorize call running for the others."""
    sandbox.scripted.add(ScriptedResponse(path=AUTHORIZE, delay=0.3))
    first = asyncio.ensure_future(client.match(faces.alice_png, faces.alice_jpg))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(client.match(faces.alice_png, faces.alice_jpg))
    await asyncio.sleep(0.05)
    first.cancel()
    assert (await second).match is True
    assert first.cancelled()
    assert sandbox.counters.authorize_calls == 1


def test_margin_scales_with_lifetime() -> None:
    """A 24 h token is renewed minutes early; a 2 s token 0.2 s early."""
    now = time.time()
    day = token_from_response(fake_jwt(iat=int(now), exp=int(now) + 86400), None, 1000.0)
    assert day.renew_at is not None
    early = 1000.0 + 86400 - day.renew_at
    assert MAX_REFRESH_MARGIN - 2 <= early <= MAX_REFRESH_MARGIN + 2
    short = token_from_response(fake_jwt(), _iso(now + 2.0), 1000.0)
    assert short.renew_at is not None
    assert 1000.0 + 1.7 <= short.renew_at <= 1000.0 + 1.85


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def test_expiry_field_is_preferred_and_exp_claim_is_the_fallback() -> None:
    """The ISO expiry is read first; without it the JWT's exp claim is used."""
    now = 1_000_000.0
    assert token_lifetime(fake_jwt(exp=now + 50), _iso(now + 100), now) == pytest.approx(100)
    assert token_lifetime(fake_jwt(exp=now + 50), None, now) == pytest.approx(50)
    assert token_lifetime("opaque-token", None, now) is None


def test_server_lifetime_bounds_a_skewed_local_clock() -> None:
    """exp - iat caps the lifetime when the local clock runs behind or ahead."""
    server_now = 1_000_000
    token = fake_jwt(iat=server_now, exp=server_now + 60)
    assert token_lifetime(token, None, server_now - 3600) == 60  # local clock behind
    assert token_lifetime(token, None, server_now + 3600) == 59  # ahead: token looks expired


async def test_unknown_expiry_is_used_until_rejected() -> None:
    """An opaque token with no expiry is kept until the API rejects it."""
    fetches = 0

    async def fetch() -> AccessToken:
        nonlocal fetches
        fetches += 1
        return token_from_response(f"opaque-{fetches}", None, time.monotonic())

    manager = TokenManager(fetch)
    assert await manager.get() == "opaque-1"
    assert await manager.get() == "opaque-1"
    manager.invalidate("opaque-0")  # a token that is no longer cached changes nothing
    assert await manager.get() == "opaque-1"
    manager.invalidate("opaque-1")
    assert await manager.get() == "opaque-2"


async def test_token_is_picked_after_waiting_for_the_rate_limiter(faces: Faces) -> None:
    """A long wait for a slot (a paused limiter) never sends the token it outlived."""
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, token_ttl=2.0)
    async with SandboxServer(config) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=server.base_url,
            rate_limit="10/s",
        ) as client:
            await client.match(faces.alice_png, faces.alice_jpg)

            prepared = await client.prepare(faces.alice_png, faces.alice_jpg)
            assert client.rate_limiter is not None
            client.rate_limiter.pause(2.1)  # the token's 2 s run out meanwhile
            assert (await client.send(prepared)).match is True
        assert server.counters.requests[(FACEMATCH, 403)] == 0
        assert server.counters.authorize_calls == 2
