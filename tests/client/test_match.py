"""FaceMatchClient.match against the sandbox: every documented response maps to its result or error."""

from __future__ import annotations

import io

import pytest

from facematch_async import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    FaceMatchClient,
    FaceMatchResult,
    ImageError,
    InactiveClientError,
    InternalServerError,
    NoFaceFoundError,
    RequestValidationError,
    UnsupportedFileFormatError,
)
from facematch_async.sandbox import SandboxConfig, SandboxServer, ScriptedResponse, make_test_image
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FACEMATCH, Faces, MakeClient


async def test_same_person_matches(client, faces: Faces) -> None:
    """Two images of one person give match=True with the v1 body's fields typed."""
    result = await client.match(faces.alice_png, faces.alice_jpg)
    assert isinstance(result, FaceMatchResult)
    assert result.match is True
    assert result.confidence == 98.0
    assert result.sub_code == "SUCCESS"
    assert isinstance(result.transaction_id, str) and result.transaction_id
    assert isinstance(result.timestamp, int)
    assert isinstance(result.message, str)
    assert result.raw["data"] == {"match": True, "confidence": 98.0}


async def test_different_people_do_not_match(client, faces: Faces) -> None:
    """Images of two people give match=False and a low confidence."""
    result = await client.match(faces.alice_png, faces.bob_jpg)
    assert result.match is False
    assert result.confidence == 12.0


async def test_v2_returns_integer_confidence_as_float_and_no_timestamp(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """api_version='v2' calls /v2/facematch; its integer confidence arrives as a float."""
    client = make_client(api_version="v2")
    result = await client.match(faces.alice_png, faces.alice_jpg)
    assert result.match is True
    assert result.confidence == 98.0
    assert result.timestamp is None
    assert result.raw["code"] == 200
    assert sandbox.counters.requests[("/v2/facematch", 200)] == 1


async def test_v2_accepts_pdf_documents(make_client: MakeClient, faces: Faces) -> None:
    """v2 takes a PDF document (the sandbox decides by its bytes)."""
    client = make_client(api_version="v2")
    result = await client.match(b"%PDF-1.7 fm-identity=alice", faces.alice_png)
    assert result.match is True


@pytest.mark.parametrize("kind", ["str", "pathlike", "bytes", "bytearray", "memoryview", "file"])
async def test_every_input_kind_is_accepted(client, faces: Faces, kind: str) -> None:
    """Paths (str or PathLike), bytes-like objects and binary files are all accepted."""
    data = faces.alice_jpg.read_bytes()
    source = {
        "str": str(faces.alice_jpg),
        "pathlike": faces.alice_jpg,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "file": io.BytesIO(data),
    }[kind]
    result = await client.match(source, faces.alice_png)
    assert result.match is True


async def test_open_binary_file_is_accepted(client, faces: Faces) -> None:
    """A file opened with open(path, 'rb') works as an input."""
    with open(faces.alice_jpg, "rb") as file_a, open(faces.bob_jpg, "rb") as file_b:
        result = await client.match(file_a, file_b)
    assert result.match is False


@pytest.mark.parametrize("verdict_status", [400, 200])
async def test_no_face_found_is_classified_by_sub_code(verdict_status: int, faces: Faces) -> None:
    """NO_FACE_FOUND raises NoFaceFoundError whatever the status, 200 included."""
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, verdict_status=verdict_status)
    async with SandboxServer(config) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.base_url
        ) as client:
            with pytest.raises(NoFaceFoundError) as caught:
                await client.match(faces.no_face, faces.alice_png)
        assert server.counters.requests[(FACEMATCH, verdict_status)] == 1
    error = caught.value
    assert error.sub_code == "NO_FACE_FOUND"
    assert error.status_code == verdict_status
    assert error.message == "Unable to detect face"
    assert "faces" in str(error.detail)
    assert error.transaction_id
    assert isinstance(error, ImageError)


async def test_unsupported_format_from_the_api_is_typed(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """An UNSUPPORTED_FILE_FORMAT answer (here scripted) raises UnsupportedFileFormatError."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=200,
            json={
                "code": None,
                "timestamp": 1710965161862,
                "transaction_id": "tx-1",
                "sub_code": "UNSUPPORTED_FILE_FORMAT",
                "message": "File format not supported",
                "detail": "Unsupported file type, only .jpeg, .jpg, .png file formats are supported",
            },
        )
    )
    with pytest.raises(UnsupportedFileFormatError) as caught:
        await client.match(faces.alice_png, faces.bob_jpg)
    assert caught.value.status_code == 200
    assert caught.value.transaction_id == "tx-1"


async def test_validation_error_422_is_not_retried(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 422 raises RequestValidationError naming the field, after exactly one request."""
    detail = [{"loc": ["body", "file_a"], "msg": "field required", "type": "value_error.missing"}]
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=422, json={"detail": detail}))
    with pytest.raises(RequestValidationError) as caught:
        await client.match(faces.alice_png, faces.bob_jpg)
    assert caught.value.detail == detail
    assert "body.file_a: field required" in caught.value.message
    assert sum(n for (path, _), n in sandbox.counters.requests.items() if path == FACEMATCH) == 1


async def test_engine_failure_500_is_retried_then_raised(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A persistent 500 is retried max_retries times, then raises InternalServerError."""
    crash = faces.write("crash.png", make_test_image("crash"))
    client = make_client(max_retries=2)
    with pytest.raises(InternalServerError) as caught:
        await client.match(crash, faces.alice_png)
    assert caught.value.status_code == 500
    assert caught.value.message == "Internal Server Error"
    assert sandbox.counters.requests[(FACEMATCH, 500)] == 3


async def test_html_502_from_a_proxy_is_an_internal_server_error(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """An HTML 502 page is classified by status, with a snippet of the page in the message."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=502,
            text="<html><h1>502 Bad Gateway</h1></html>",
            content_type="text/html",
            times=5,
        )
    )
    client = make_client(max_retries=1)
    with pytest.raises(InternalServerError) as caught:
        await client.match(faces.alice_png, faces.bob_jpg)
    assert caught.value.status_code == 502
    assert "502 Bad Gateway" in caught.value.message
    assert sandbox.counters.requests[(FACEMATCH, 502)] == 2


async def test_non_json_success_body_is_a_response_validation_error(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 200 whose body is not the documented JSON raises APIResponseValidationError."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=200, text="OK"))
    with pytest.raises(APIResponseValidationError):
        await client.match(faces.alice_png, faces.bob_jpg)


@pytest.mark.parametrize(
    "body",
    [
        {"sub_code": "SUCCESS", "data": {"match": "yes", "confidence": 1}},
        {"sub_code": "SUCCESS", "data": {"match": True, "confidence": "high"}},
        {"sub_code": "SUCCESS"},
        {"sub_code": "SOMETHING_NEW", "message": "?"},
        ["not", "an", "object"],
    ],
)
async def test_malformed_success_bodies_are_rejected(
    client, faces: Faces, sandbox: SandboxServer, body: object
) -> None:
    """Wrongly typed or missing fields in a 200 raise APIResponseValidationError."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=200, json=body))
    with pytest.raises(APIResponseValidationError):
        await client.match(faces.alice_png, faces.bob_jpg)


async def test_wrong_credentials_raise_authentication_error(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A refused authorize raises AuthenticationError once, with no face-match request."""
    client = make_client(client_secret="wrong-secret")
    with pytest.raises(AuthenticationError) as caught:
        await client.match(faces.alice_png, faces.bob_jpg)
    assert caught.value.status_code == 401
    assert "Invalid client_id or client_secret" in caught.value.message
    assert sandbox.counters.authorize_calls == 1
    assert not any(path == FACEMATCH for path, _ in sandbox.counters.requests)


async def test_inactive_client_is_never_retried(faces: Faces) -> None:
    """'Inactive client_id' raises InactiveClientError after a single authorize call."""
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, inactive=True)
    async with SandboxServer(config) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=server.base_url
        ) as client:
            with pytest.raises(InactiveClientError) as caught:
                await client.match(faces.alice_png, faces.bob_jpg)
        assert server.counters.authorize_calls == 1
    assert caught.value.status_code == 400
    assert isinstance(caught.value, AuthenticationError)


async def test_inactive_client_on_face_match_is_not_refreshed(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """An 'Inactive client_id' face-match answer is final: no token refresh, no retry."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=400, json={"detail": "Inactive client_id"})
    )
    client = make_client()
    with pytest.raises(InactiveClientError):
        await client.match(faces.alice_png, faces.bob_jpg)
    assert sandbox.counters.authorize_calls == 1
    assert sandbox.counters.requests[(FACEMATCH, 400)] == 1


async def test_redirects_are_not_followed(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A redirect raises APIStatusError; the key is never sent to the redirect's target."""
    async with SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as elsewhere:
        sandbox.scripted.add(
            ScriptedResponse(
                path=FACEMATCH, status=307, headers={"Location": elsewhere.base_url + FACEMATCH}
            )
        )
        client = make_client()
        with pytest.raises(APIStatusError) as caught:
            await client.match(faces.alice_png, faces.bob_jpg)
        assert caught.value.status_code == 307
        assert "not followed" in caught.value.message
        assert sum(elsewhere.counters.requests.values()) == 0
