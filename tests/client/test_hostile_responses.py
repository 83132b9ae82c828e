"""Hostile or broken server answers always end in a result or a typed error, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facematch_async import APIResponseValidationError, FaceMatchError, FaceMatchResult
from facematch_async._responses import RawResponse, parse_authorize, parse_facematch
from facematch_async._transport import MAX_RESPONSE_BYTES
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import Faces

SECRET = "the-secret-value"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
known_keys = st.fixed_dictionaries(
    {},
    optional={
        "sub_code": st.sampled_from(["SUCCESS", "NO_FACE_FOUND", "UNSUPPORTED_FILE_FORMAT", "X"])
        | st.text(max_size=5),
        "data": st.fixed_dictionaries(
            {}, optional={"match": json_values, "confidence": json_values}
        )
        | json_values,
        "detail": json_values,
        "message": json_values,
        "transaction_id": json_values,
        "timestamp": json_values,
        "access_token": json_values,
        "expiry": json_values,
    },
)
bodies = (
    known_keys.map(lambda value: json.dumps(value).encode())
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=300)
    | known_keys.map(lambda value: json.dumps(value).encode()[:-3])  # truncated JSON
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "retry-after": st.text(max_size=40),
        "retry-after-ms": st.text(max_size=10),
        "location": st.text(max_size=20),
    },
)


@settings(max_examples=400, deadline=None)
@given(status=st.integers(100, 599), body=bodies, response_headers=headers)
def test_facematch_parser_never_crashes(
    status: int, body: bytes, response_headers: dict[str, str]
) -> None:
    """Any status, body and headers give a FaceMatchResult or a FaceMatchError."""
    response = RawResponse(status, response_headers, body)
    try:
        result = parse_facematch(response, (SECRET,))
    except FaceMatchError:
        return
    assert isinstance(result, FaceMatchResult)
    assert isinstance(result.match, bool)
    assert 200 <= status < 300


@settings(max_examples=300, deadline=None)
@given(status=st.integers(100, 599), body=bodies, response_headers=headers)
def test_authorize_parser_never_crashes(
    status: int, body: bytes, response_headers: dict[str, str]
) -> None:
    """Any authorize answer gives a token string or a FaceMatchError."""
    try:
        token, expiry, _ = parse_authorize(RawResponse(status, response_headers, body), (SECRET,))
    except FaceMatchError:
        return
    assert isinstance(token, str)
    assert token
    assert expiry is None or isinstance(expiry, str)


async def test_huge_body_is_refused_without_reading_it_all(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A body over the cap ends in APIResponseValidationError, not unbounded memory."""
    sandbox.scripted.add(
        ScriptedResponse(path="/v1/facematch", status=200, text="x" * (MAX_RESPONSE_BYTES + 10))
    )
    with pytest.raises(APIResponseValidationError, match="over"):
        await client.match(faces.alice_png, faces.alice_jpg)


@pytest.mark.parametrize(
    "text",
    ['{"sub_code": "SUCCESS", "data": {"match": tr', "<html>502</html>", "", "null"],
)
async def test_broken_success_bodies_over_the_wire(
    client, faces: Faces, sandbox: SandboxServer, text: str
) -> None:
    """Truncated JSON, HTML, an empty body or null with status 200 are typed errors."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=200, text=text))
    with pytest.raises(APIResponseValidationError):
        await client.match(faces.alice_png, faces.alice_jpg)
