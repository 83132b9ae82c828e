"""The client secret and tokens never appear in reprs, errors or logs."""

from __future__ import annotations

import logging

import pytest

from facematch_async import FaceMatchClient, FaceMatchError
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import CLIENT_SECRET, Faces, MakeClient

FACEMATCH = "/v1/facematch"


async def test_secret_and_token_never_leak(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A run with failures at DEBUG: no log record, repr or error text holds a secret."""
    caplog.set_level(logging.DEBUG)
    client = make_client(max_retries=1)
    await client.match(faces.alice_png, faces.alice_jpg)
    token = client._tokens.cached()
    assert token
    # A hostile server echoing our credentials back in its error body.
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=400, json={"detail": f"bad key {CLIENT_SECRET} for {token}"}
        )
    )
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=500, text=f"<p>{CLIENT_SECRET}</p>", times=2)
    )
    errors: list[FaceMatchError] = []
    for _ in range(2):
        try:
            await client.match(faces.alice_png, faces.alice_jpg)
        except FaceMatchError as error:
            errors.append(error)
    sandbox.revoke_all_tokens()
    await client.match(faces.alice_png, faces.alice_jpg)
    assert len(errors) == 2
    texts = [repr(client), repr(client._tokens), caplog.text]
    texts += [m for r in caplog.records for m in (r.getMessage(), repr(r.__dict__))]
    for caught in errors:
        texts += [str(caught), repr(caught), repr(caught.detail), repr(caught.__dict__)]
    for text in texts:
        assert CLIENT_SECRET not in text
        assert token not in text
    assert "[REDACTED]" in str(errors[0])


def test_repr_shows_no_secret() -> None:
    """repr(client) names the endpoint and client id only."""
    client = FaceMatchClient(client_id="cid", client_secret=CLIENT_SECRET, base_url="http://h")
    assert repr(client) == "FaceMatchClient(base_url='http://h', client_id='cid', api_version='v1')"


def test_short_values_are_not_redacted_inside_words() -> None:
    """Redaction skips values too short to be secrets, so bodies stay parseable."""
    from facematch_async._responses import RawResponse, parse_facematch

    body = b'{"sub_code": "SUCCESS", "data": {"match": true, "confidence": null}}'
    result = parse_facematch(RawResponse(200, {}, body), ("t", "a"))
    assert result.match is True
