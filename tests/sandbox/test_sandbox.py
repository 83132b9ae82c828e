"""The sandbox server, specified through real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import aiohttp
import jwt
import pytest

from facematch_async.cli import build_parser
from facematch_async.sandbox import (
    EngineVerdict,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    TestEngine,
    make_test_image,
)

CLIENT_ID = "client-1"
SECRET = "s3cret"
JWT_KEY = b"k" * 64

ALICE = make_test_image("alice")
ALICE_JPEG = make_test_image("alice", fmt="jpeg")
BOB = make_test_image("bob")
NO_FACE = make_test_image("none")
CRASH = make_test_image("crash")
GIF = b"GIF89a" + bytes(32)
PDF = b"%PDF-1.4\n" + bytes(32)


def sandbox(**overrides: Any) -> SandboxServer:
    """A server for the standard test client, with config overrides."""
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": SECRET}
    settings["jwt_secret"] = JWT_KEY
    settings.update(overrides)
    return SandboxServer(SandboxConfig(**settings))


@pytest.fixture
async def server() -> AsyncIterator[SandboxServer]:
    async with sandbox() as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def credentials(client_id: str = CLIENT_ID, secret: str = SECRET) -> aiohttp.FormData:
    """Authorize fields as multipart/form-data."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("client_id", client_id)
    form.add_field("client_secret", secret)
    return form


def images(file_a: bytes | None, file_b: bytes | None) -> aiohttp.FormData:
    """A facematch body with the given file parts (None leaves a part out)."""
    form = aiohttp.FormData(default_to_multipart=True)
    if file_a is not None:
        form.add_field("file_a", file_a, filename="a.png", content_type="image/png")
    if file_b is not None:
        form.add_field("file_b", file_b, filename="b.png", content_type="image/png")
    return form


async def authorize(session: aiohttp.ClientSession, server: SandboxServer) -> str:
    """A fresh access token."""
    async with session.post(f"{server.base_url}/v1/authorize", data=credentials()) as resp:
        assert resp.status == 200
        token: str = (await resp.json())["access_token"]
        return token


async def facematch(
    session: aiohttp.ClientSession,
    server: SandboxServer,
    file_a: bytes | None = ALICE,
    file_b: bytes | None = ALICE,
    *,
    version: int = 1,
    token: str | None = None,
    api_key: str | None = SECRET,
    body: Any = None,
) -> tuple[int, Any]:
    """POST a facematch request; returns (status, decoded JSON body)."""
    headers = {"Authorization": f"Bearer {token or await authorize(session, server)}"}
    if api_key is not None:
        headers["x-api-key"] = api_key
    data = images(file_a, file_b) if body is None else body
    url = f"{server.base_url}/v{version}/facematch"
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


def mint(claims: dict[str, Any], key: bytes = JWT_KEY, algorithm: str = "HS256") -> str:
    """A JWT signed outside the sandbox."""
    return jwt.encode(claims, key, algorithm=algorithm)


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": CLIENT_ID, "iat": now, "exp": now + 600, "jti": "x"}
    claims.update(overrides)
    return claims


def assert_verdict_body(
    body: Any, sub_code: str, message: str, detail: str, version: int = 1, status: int = 400
) -> None:
    """The shape of Deepvue's documented NO_FACE_FOUND / UNSUPPORTED_FILE_FORMAT bodies.

    v2 takes v2's envelope, as its success does: ``code`` is the status, no ``timestamp``.
    """
    if version == 1:
        assert set(body) == {"code", "timestamp", "transaction_id", "sub_code", "message", "detail"}
        assert body["code"] is None
        assert isinstance(body["timestamp"], int)
    else:
        assert set(body) == {"code", "transaction_id", "sub_code", "message", "detail"}
        assert body["code"] == status
    assert isinstance(body["transaction_id"], str)
    assert (body["sub_code"], body["message"], body["detail"]) == (sub_code, message, detail)


# --- authorize --------------------------------------------------------------------------------


async def test_authorize_accepts_multipart_form(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """POST /v1/authorize with multipart/form-data credentials returns a bearer token."""
    async with session.post(f"{server.base_url}/v1/authorize", data=credentials()) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expiry"}
    assert body["token_type"] == "bearer"


async def test_authorize_accepts_urlencoded_form(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """POST /v1/authorize also accepts application/x-www-form-urlencoded credentials."""
    fields = {"client_id": CLIENT_ID, "client_secret": SECRET}
    async with session.post(f"{server.base_url}/v1/authorize", data=fields) as resp:
        assert resp.request_info.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert resp.status == 200
        assert (await resp.json())["token_type"] == "bearer"


@pytest.mark.parametrize(("client_id", "secret"), [("other", SECRET), (CLIENT_ID, "wrong")])
async def test_authorize_rejects_wrong_credentials(
    server: SandboxServer, session: aiohttp.ClientSession, client_id: str, secret: str
) -> None:
    """A wrong client id or secret gets 401 with Deepvue's detail."""
    form = credentials(client_id, secret)
    async with session.post(f"{server.base_url}/v1/authorize", data=form) as resp:
        assert resp.status == 401
        assert await resp.json() == {"detail": "Invalid client_id or client_secret, access Denied"}
    assert server.counters.tokens_issued == 0


@pytest.mark.parametrize(
    ("fields", "missing"),
    [({}, ["client_id", "client_secret"]), ({"client_id": CLIENT_ID}, ["client_secret"])],
)
async def test_authorize_missing_fields_is_422(
    server: SandboxServer,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    missing: list[str],
) -> None:
    """Missing form fields get FastAPI's 422 list, one entry per field."""
    async with session.post(f"{server.base_url}/v1/authorize", data=fields) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body == {
        "detail": [
            {"loc": ["body", name], "msg": "field required", "type": "value_error.missing"}
            for name in missing
        ]
    }


async def test_authorize_inactive_client_is_400(session: aiohttp.ClientSession) -> None:
    """An inactive client gets 400 Inactive client_id instead of a token."""
    async with sandbox(inactive=True) as server:
        url = f"{server.base_url}/v1/authorize"
        async with session.post(url, data=credentials()) as resp:
            assert resp.status == 400
            assert await resp.json() == {"detail": "Inactive client_id"}


async def test_token_is_hs256_jwt_with_documented_claims(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """The access token is an HS256 JWT with sub, iat, exp and jti."""
    token = await authorize(session, server)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, JWT_KEY, algorithms=["HS256"])
    assert claims["sub"] == CLIENT_ID
    assert isinstance(claims["jti"], str)
    assert claims["exp"] - claims["iat"] in (86399, 86400, 86401)


async def test_expiry_string_and_exp_claim_agree(session: aiohttp.ClientSession) -> None:
    """``expiry`` is exp formatted as ISO-8601 UTC with a Z; exp is int(now + token_ttl)."""
    async with sandbox(token_ttl=2.0) as server:
        before = time.time()
        async with session.post(f"{server.base_url}/v1/authorize", data=credentials()) as resp:
            body = await resp.json()
        claims = jwt.decode(body["access_token"], JWT_KEY, algorithms=["HS256"])
    assert int(before + 2.0) <= claims["exp"] <= int(time.time() + 2.0)
    assert body["expiry"].endswith("Z")
    expiry = datetime.strptime(body["expiry"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expiry.timestamp() == claims["exp"]


async def test_each_server_signs_with_a_random_key_by_default(
    session: aiohttp.ClientSession,
) -> None:
    """Without jwt_secret, a token does not verify under another server's key."""
    async with SandboxServer(SandboxConfig(CLIENT_ID, SECRET)) as first:
        token = await authorize(session, first)
    async with SandboxServer(SandboxConfig(CLIENT_ID, SECRET)) as second:
        status, body = await facematch(session, second, token=token)
    assert (status, body) == (403, {"detail": "Not a valid token"})


# --- facematch: success -----------------------------------------------------------------------


async def test_v1_success_body_has_contract_types(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """v1 success: code null, int ms timestamp, hex transaction id, bool match, float confidence."""
    status, body = await facematch(session, server, ALICE, ALICE)
    assert status == 200
    assert set(body) == {"code", "timestamp", "transaction_id", "sub_code", "message", "data"}
    assert body["code"] is None
    assert isinstance(body["timestamp"], int)
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    assert len(body["transaction_id"]) == 32
    int(body["transaction_id"], 16)
    assert body["sub_code"] == "SUCCESS"
    assert body["message"] == "Face match successful"
    assert body["data"] == {"match": True, "confidence": 98.0}
    assert isinstance(body["data"]["confidence"], float)


async def test_v2_success_body_has_contract_types(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """v2 success: code 200, no timestamp, integer confidence."""
    status, body = await facematch(session, server, ALICE, ALICE, version=2)
    assert status == 200
    assert set(body) == {"code", "transaction_id", "sub_code", "message", "data"}
    assert body["code"] == 200
    assert body["sub_code"] == "SUCCESS"
    assert body["data"] == {"match": True, "confidence": 98}
    assert type(body["data"]["confidence"]) is int


@pytest.mark.parametrize(
    ("file_a", "file_b", "match", "confidence"),
    [
        (ALICE, ALICE_JPEG, True, 98.0),
        (ALICE, BOB, False, 12.0),
        (make_test_image(), make_test_image(), True, 98.0),
        (make_test_image(), make_test_image(pad_to=200), False, 12.0),
    ],
    ids=["same-tag", "other-tag", "same-bytes", "other-bytes"],
)
async def test_match_follows_test_engine_identity(
    server: SandboxServer,
    session: aiohttp.ClientSession,
    file_a: bytes,
    file_b: bytes,
    match: bool,
    confidence: float,
) -> None:
    """The TestEngine matches by identity tag, else by file hash."""
    status, body = await facematch(session, server, file_a, file_b)
    assert status == 200
    assert body["data"] == {"match": match, "confidence": confidence}


async def test_v2_accepts_pdf_documents(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """v2 accepts a PDF ID document; v1 refuses it."""
    status, body = await facematch(session, server, PDF, ALICE, version=2)
    assert (status, body["sub_code"]) == (200, "SUCCESS")
    status, body = await facematch(session, server, PDF, ALICE, version=1)
    assert (status, body["sub_code"]) == (400, "UNSUPPORTED_FILE_FORMAT")


# --- facematch: verdict errors ----------------------------------------------------------------


@pytest.mark.parametrize("verdict_status", [400, 200])
@pytest.mark.parametrize("version", [1, 2])
async def test_no_face_found_body(
    session: aiohttp.ClientSession, verdict_status: int, version: int
) -> None:
    """An image without a face gets the documented NO_FACE_FOUND body at verdict_status."""
    async with sandbox(verdict_status=verdict_status) as server:
        status, body = await facematch(session, server, ALICE, NO_FACE, version=version)
    assert status == verdict_status
    assert_verdict_body(
        body,
        "NO_FACE_FOUND",
        "Unable to detect face",
        "Not able to locate any faces in at least one of the images. Check the image files.",
        version,
        verdict_status,
    )


@pytest.mark.parametrize("verdict_status", [400, 200])
@pytest.mark.parametrize("version", [1, 2])
async def test_unsupported_file_format_body(
    session: aiohttp.ClientSession, verdict_status: int, version: int
) -> None:
    """A file that is not JPEG or PNG by magic bytes gets UNSUPPORTED_FILE_FORMAT."""
    async with sandbox(verdict_status=verdict_status) as server:
        status, body = await facematch(session, server, GIF, ALICE, version=version)
    assert status == verdict_status
    assert_verdict_body(
        body,
        "UNSUPPORTED_FILE_FORMAT",
        "File format not supported",
        "Unsupported file type, only .jpeg, .jpg, .png file formats are supported",
        version,
        verdict_status,
    )


# --- facematch: request errors ----------------------------------------------------------------


async def test_missing_file_b_is_422(server: SandboxServer, session: aiohttp.ClientSession) -> None:
    """A body without file_b gets FastAPI's 422 naming file_b."""
    status, body = await facematch(session, server, ALICE, None)
    assert status == 422
    assert body == {
        "detail": [
            {"loc": ["body", "file_b"], "msg": "field required", "type": "value_error.missing"}
        ]
    }


async def test_non_file_parts_and_non_multipart_bodies_are_422(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """Plain text fields are not files, and a urlencoded body has no files at all."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("file_a", "not a file")
    form.add_field("file_b", BOB, filename="b.png")
    status, body = await facematch(session, server, body=form)
    assert status == 422
    assert [error["loc"] for error in body["detail"]] == [["body", "file_a"]]
    status, body = await facematch(session, server, body={"file_a": "x", "file_b": "y"})
    assert status == 422
    assert [error["loc"] for error in body["detail"]] == [["body", "file_a"], ["body", "file_b"]]


async def test_missing_bearer_header_is_401(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """No Authorization header gets 401 Not authenticated."""
    url = f"{server.base_url}/v1/facematch"
    async with session.post(url, data=images(ALICE, ALICE), headers={"x-api-key": SECRET}) as resp:
        assert resp.status == 401
        assert await resp.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(mint(valid_claims(), key=b"another-key" * 3), id="forged-signature"),
        pytest.param(mint(valid_claims(), algorithm="HS512"), id="other-algorithm"),
        pytest.param(mint(valid_claims(sub="someone-else")), id="unknown-sub"),
        pytest.param(mint({"sub": CLIENT_ID, "exp": int(time.time()) + 600}), id="missing-jti"),
        pytest.param("not-a-jwt", id="garbage"),
    ],
)
async def test_invalid_tokens_are_403(
    server: SandboxServer, session: aiohttp.ClientSession, token: str
) -> None:
    """A token the sandbox did not sign for this client gets 403 Not a valid token."""
    status, body = await facematch(session, server, token=token)
    assert (status, body) == (403, {"detail": "Not a valid token"})


async def test_alg_none_token_is_403(server: SandboxServer, session: aiohttp.ClientSession) -> None:
    """An unsigned ``alg: none`` token is refused."""

    def b64(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(valid_claims())}."
    status, body = await facematch(session, server, token=token)
    assert (status, body) == (403, {"detail": "Not a valid token"})


async def test_token_signed_with_the_shared_key_is_accepted(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """A token minted with the configured jwt_secret is as good as an issued one."""
    status, _ = await facematch(session, server, token=mint(valid_claims()))
    assert status == 200


async def test_expired_token_is_403(session: aiohttp.ClientSession) -> None:
    """A token past its exp gets 403."""
    async with sandbox(token_ttl=1.0) as server:
        token = await authorize(session, server)
        exp = jwt.decode(token, JWT_KEY, algorithms=["HS256"])["exp"]
        if exp > time.time():  # int(now + 1) may already be in the past
            status, _ = await facematch(session, server, token=token)
            assert status == 200
        await asyncio.sleep(max(0.0, exp - time.time()) + 0.1)
        status, body = await facematch(session, server, token=token)
    assert (status, body) == (403, {"detail": "Not a valid token"})


async def test_revoked_tokens_are_403(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """revoke_token kills one token; revoke_all_tokens kills all so far, not later ones."""
    first, second, third = [await authorize(session, server) for _ in range(3)]
    server.revoke_token(first)
    assert (await facematch(session, server, token=first))[0] == 403
    assert (await facematch(session, server, token=second))[0] == 200
    server.revoke_all_tokens()
    assert (await facematch(session, server, token=second))[0] == 403
    assert (await facematch(session, server, token=third))[0] == 403
    assert (await facematch(session, server, token=await authorize(session, server)))[0] == 200


@pytest.mark.parametrize("api_key", ["wrong", None])
async def test_wrong_or_missing_api_key_is_401(
    server: SandboxServer, session: aiohttp.ClientSession, api_key: str | None
) -> None:
    """A valid token with a wrong or missing x-api-key gets 401."""
    status, body = await facematch(session, server, api_key=api_key)
    assert (status, body) == (401, {"detail": "Could not validate credentials"})


async def test_inactive_client_facematch_is_400(session: aiohttp.ClientSession) -> None:
    """An inactive client with a valid token gets 400 on facematch."""
    async with sandbox(inactive=True) as server:
        status, body = await facematch(session, server, token=mint(valid_claims()))
    assert (status, body) == (400, {"detail": "Inactive client_id"})


async def test_inactive_client_is_400_on_facematch_whatever_its_token(
    session: aiohttp.ClientSession,
) -> None:
    """--inactive is "400 to everything": authorize refuses a token, so facematch answers
    400 to a request bearing the client's key with no token, a forged one or an older one;
    a request without the key (a stranger) still gets 401."""
    async with sandbox(inactive=True) as server:
        url = f"{server.base_url}/v1/facematch"
        cases: list[tuple[dict[str, str], int]] = [
            ({"x-api-key": SECRET}, 400),
            ({"x-api-key": SECRET, "Authorization": "Bearer forged"}, 400),
            ({"Authorization": f"Bearer {mint(valid_claims())}"}, 400),  # issued before
            ({}, 401),
        ]
        for headers, status in cases:
            async with session.post(url, data=images(ALICE, ALICE), headers=headers) as resp:
                assert resp.status == status, headers
                if status == 400:
                    assert await resp.json() == {"detail": "Inactive client_id"}
        async with session.post(f"{server.base_url}/v1/authorize", data=credentials()) as resp:
            assert (resp.status, await resp.json()) == (400, {"detail": "Inactive client_id"})


async def test_engine_failure_is_500(server: SandboxServer, session: aiohttp.ClientSession) -> None:
    """When the engine raises (identity ``crash``) the answer is 500 Internal Server Error."""
    status, body = await facematch(session, server, ALICE, CRASH)
    assert (status, body) == (500, {"detail": "Internal Server Error"})


async def test_oversize_file_is_413_and_limit_is_inclusive(session: aiohttp.ClientSession) -> None:
    """A part over max_upload_bytes gets 413; a part of exactly the limit is accepted."""
    limit = 64 * 1024
    async with sandbox(max_upload_bytes=limit) as server:
        at_limit = make_test_image("alice", pad_to=limit)
        assert len(at_limit) == limit
        status, _ = await facematch(session, server, at_limit, ALICE)
        assert status == 200
        big = make_test_image("alice", fmt="jpeg", pad_to=limit * 3)
        status, body = await facematch(session, server, ALICE, big)
        assert (status, body) == (413, {"detail": "File too large"})
        # The connection stays usable afterwards.
        status, _ = await facematch(session, server)
        assert status == 200


async def test_custom_engine_runs_off_the_event_loop(session: aiohttp.ClientSession) -> None:
    """A pluggable engine is called in a worker thread, and its verdict is reported."""
    import threading

    class SlowEngine:
        name = "slow"
        threads: ClassVar[list[str]] = []

        def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
            self.threads.append(threading.current_thread().name)
            time.sleep(0.05)
            return EngineVerdict(face_found=True, match=False, confidence=41.6)

    engine = SlowEngine()
    async with sandbox(engine=engine) as server:
        _, v1 = await facematch(session, server)
        _, v2 = await facematch(session, server, version=2)
    assert v1["data"] == {"match": False, "confidence": 41.6}
    assert v2["data"] == {"match": False, "confidence": 42}
    assert threading.main_thread().name not in engine.threads


async def test_unknown_route_answers_json_404(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """Unknown paths get FastAPI's JSON 404."""
    async with session.get(f"{server.base_url}/v3/nothing") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}


# --- scripted responses -----------------------------------------------------------------------


async def test_scripted_status_and_headers_are_served_fifo(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """Scripted responses answer the next requests in order, then normal handling resumes."""
    limited = {"detail": "Rate limit exceeded. Please retry after some time."}
    server.scripted.add(
        ScriptedResponse(
            path="/v1/facematch", status=429, json=limited, headers={"Retry-After": "1"}, times=2
        )
    )
    server.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={"detail": "x"}))
    token = await authorize(session, server)
    url = f"{server.base_url}/v1/facematch"
    seen = []
    for _ in range(4):
        headers = {"Authorization": f"Bearer {token}", "x-api-key": SECRET}
        async with session.post(url, data=images(ALICE, BOB), headers=headers) as resp:
            seen.append((resp.status, resp.headers.get("Retry-After")))
            if resp.status == 429:
                assert await resp.json() == limited
    assert seen == [(429, "1"), (429, "1"), (503, None), (200, None)]


async def test_scripted_responses_come_before_auth(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """A scripted response answers even a request that would fail authentication."""
    server.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={"detail": "x"}))
    async with session.post(f"{server.base_url}/v1/facematch") as resp:
        assert resp.status == 503


async def test_scripted_html_error_page(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """A scripted text body is served with its content type, like a proxy's error page."""
    server.scripted.add(
        ScriptedResponse(
            path="/v1/facematch",
            status=502,
            text="<html>Bad Gateway</html>",
            content_type="text/html",
        )
    )
    async with session.post(f"{server.base_url}/v1/facematch", data=images(ALICE, ALICE)) as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        assert await resp.text() == "<html>Bad Gateway</html>"


async def test_scripted_authorize_failure(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """Authorize can be scripted to fail too, and still counts as an authorize call."""
    error = {"detail": "Internal Server Error"}
    server.scripted.add(ScriptedResponse(path="/v1/authorize", status=500, json=error))
    async with session.post(f"{server.base_url}/v1/authorize", data=credentials()) as resp:
        assert (resp.status, await resp.json()) == (500, error)
    await authorize(session, server)
    assert server.counters.authorize_calls == 2
    assert server.counters.tokens_issued == 1


async def test_scripted_drop_disconnects_the_client(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """``drop=True`` closes the socket without answering; it counts under status 0."""
    server.scripted.add(ScriptedResponse(path="/v1/facematch", drop=True))
    token = await authorize(session, server)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await facematch(session, server, token=token)
    assert server.counters.requests[("/v1/facematch", 0)] == 1
    status, _ = await facematch(session, server, token=token)
    assert status == 200


async def test_scripted_delay_stalls_then_handles_normally(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """A delay without a status stalls the request, then answers normally."""
    token = await authorize(session, server)
    server.scripted.add(ScriptedResponse(path="/v1/facematch", delay=0.3))
    started = time.monotonic()
    status, body = await facematch(session, server, token=token)
    assert time.monotonic() - started >= 0.3
    assert (status, body["sub_code"]) == (200, "SUCCESS")


async def test_scripted_delay_outlasts_a_client_timeout(session: aiohttp.ClientSession) -> None:
    """A long delay makes a client with a short timeout give up, and the server closes fast."""
    server = sandbox()
    async with server:
        token = await authorize(session, server)
        server.scripted.add(ScriptedResponse(path="/v1/facematch", delay=30.0))
        headers = {"Authorization": f"Bearer {token}", "x-api-key": SECRET}
        timeout = aiohttp.ClientTimeout(total=0.2)
        url = f"{server.base_url}/v1/facematch"
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(
                url, data=images(ALICE, ALICE), headers=headers, timeout=timeout
            ):
                pass
        closing = time.monotonic()
    assert time.monotonic() - closing < 2.0


async def test_faults_clear_forgets_queued_responses(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """faults.clear() drops everything queued."""
    server.scripted.add(ScriptedResponse(path="/v1/authorize", status=500, times=5))
    server.scripted.clear()
    await authorize(session, server)


def test_scripted_response_validates_times() -> None:
    """times must be at least 1."""
    with pytest.raises(ValueError, match="times"):
        ScriptedResponse(path="/v1/facematch", status=500, times=0)


# --- counters and config ----------------------------------------------------------------------


async def test_counters_track_calls_tokens_and_statuses(
    server: SandboxServer, session: aiohttp.ClientSession
) -> None:
    """Counters count authorize calls, issued tokens and (path, status) pairs, and reset."""
    token = await authorize(session, server)
    await facematch(session, server, token=token)
    await facematch(session, server, token=token, api_key="wrong")
    form = credentials(secret="wrong")
    async with session.post(f"{server.base_url}/v1/authorize", data=form):
        pass
    counters = server.counters
    assert counters.authorize_calls == 2
    assert counters.tokens_issued == 1
    assert counters.requests == {
        ("/v1/authorize", 200): 1,
        ("/v1/authorize", 401): 1,
        ("/v1/facematch", 200): 1,
        ("/v1/facematch", 401): 1,
    }
    counters.reset()
    assert (counters.authorize_calls, counters.tokens_issued, counters.requests) == (0, 0, {})


def test_config_repr_hides_secrets() -> None:
    """repr(SandboxConfig) shows neither the client secret nor the JWT key."""
    config = SandboxConfig("visible-id", "hidden-secret", jwt_secret=b"hidden-key")
    assert "visible-id" in repr(config)
    assert "hidden-secret" not in repr(config)
    assert "hidden-key" not in repr(config)


# --- the test engine and its images -----------------------------------------------------------


def test_test_engine_rules() -> None:
    """Identity tags decide the verdict; ``none`` means no face; ``crash`` raises."""
    engine = TestEngine()
    assert engine.name == "test"
    assert engine.compare(ALICE, ALICE_JPEG) == EngineVerdict(True, True, 98.0)
    assert engine.compare(ALICE, BOB) == EngineVerdict(True, False, 12.0)
    assert not engine.compare(NO_FACE, ALICE).face_found
    assert engine.compare(b"x fm-identity=a.b_c-1;", make_test_image("a.b_c-1")).match
    with pytest.raises(RuntimeError):
        engine.compare(ALICE, CRASH)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("pad_to", [0, 1000, 70_000, 200_003])
def test_make_test_image_is_valid_and_padded(fmt: Literal["png", "jpeg"], pad_to: int) -> None:
    """make_test_image builds a decodable 8x8 image of at least pad_to bytes."""
    data = make_test_image("zed", fmt=fmt, pad_to=pad_to)
    assert len(data) >= pad_to
    assert data.startswith(b"\x89PNG\r\n\x1a\n" if fmt == "png" else b"\xff\xd8\xff")
    assert TestEngine.identity(data) == "zed"
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (8, 8)


def test_make_test_image_rejects_bad_identity() -> None:
    """Identities are limited to the tag's character set."""
    with pytest.raises(ValueError, match="identity"):
        make_test_image("two words")


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_credentials_default_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--client-id/--client-secret fall back to DEEPVUE_CLIENT_ID/SECRET, then sandbox-*."""
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", "env-id")
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", "env-secret")
    args = build_parser().parse_args(["sandbox"])
    assert (args.client_id, args.client_secret) == ("env-id", "env-secret")
    monkeypatch.delenv("DEEPVUE_CLIENT_ID")
    monkeypatch.delenv("DEEPVUE_CLIENT_SECRET")
    args = build_parser().parse_args(["sandbox", "--inactive", "--verdict-status", "200"])
    assert (args.client_id, args.client_secret) == ("sandbox-client", "sandbox-secret")
    assert (args.inactive, args.verdict_status, args.port) == (True, 200, 8080)


async def test_cli_serves_and_exits_cleanly_on_sigterm(session: aiohttp.ClientSession) -> None:
    """``facematch-async sandbox --port 0`` prints its real URL, serves, and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facematch_async.cli",
        "sandbox",
        "--port",
        "0",
        "--client-id",
        "cli-id",
        "--client-secret",
        "cli-secret",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        prefix = "Sandbox listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line.removeprefix(prefix).strip())
        assert port > 0
        form = credentials("cli-id", "cli-secret")
        async with session.post(f"http://127.0.0.1:{port}/v1/authorize", data=form) as resp:
            assert resp.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
