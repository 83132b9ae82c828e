"""The sandbox answers edge-case requests as a FastAPI endpoint does (issue 26, item 8).

The documented error bodies (422 ``loc``/``msg``/``type`` lists, ``"Not authenticated"``)
are FastAPI's own, so production most likely is a FastAPI endpoint taking two ``UploadFile``
fields. Each request below goes byte for byte over a raw socket to the sandbox and to such
an endpoint served by uvicorn; both must give the same answer (status, the fields a 422
names, a redirect's ``Location``, which part of a repeated field is kept).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, File, UploadFile

from facematch_async.sandbox import BackgroundSandbox, SandboxConfig, make_test_image
from tests.helpers import Part, multipart

# Starlette leaves the temporary file of a part a body's end cuts open (its bug, not ours):
# the reference endpoint's warning is no failure of the sandbox.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Unclosed file <tempfile.SpooledTemporaryFile:ResourceWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function SpooledTemporaryFile.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]

ID = "parity-client"
SECRET = "parity-secret"
ASHA = make_test_image("asha", "jpeg")
ASHA_PNG = make_test_image("asha", "png")
RAVI = make_test_image("ravi", "jpeg")
HOST = "api.example.test:8000"  # both build a redirect's Location from the Host header


def reference_app() -> FastAPI:
    """What the contract's bodies suggest production is: two required UploadFile fields."""
    app = FastAPI()

    @app.post("/v1/facematch")
    async def facematch(
        file_a: UploadFile = File(...),  # noqa: B008 - FastAPI's own idiom
        file_b: UploadFile = File(...),  # noqa: B008
    ) -> dict[str, Any]:
        return {"kept": [file_a.filename, file_b.filename]}

    return app


@pytest.fixture(scope="module")
def reference_port() -> Iterator[int]:
    """The reference endpoint on a free loopback port, in a thread of its own."""
    server = uvicorn.Server(
        uvicorn.Config(reference_app(), host="127.0.0.1", port=0, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[int, str]]:
    """The sandbox's port and a token it issued."""
    with BackgroundSandbox(SandboxConfig(ID, SECRET)) as running:
        credentials = urllib.parse.urlencode({"client_id": ID, "client_secret": SECRET})
        authorize = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{running.base_url}/v1/authorize", data=credentials.encode()
        )
        with urllib.request.urlopen(authorize, timeout=10) as answer:  # noqa: S310
            token = json.load(answer)["access_token"]
        yield running.server.port, token


def request(
    body: bytes, content_type: str | None, token: str, path: str = "/v1/facematch?q=1"
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    head += f"Authorization: Bearer {token}\r\nx-api-key: {SECRET}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``data``; the answer's status, headers (lower-cased) and JSON body, if any."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload) if payload else None


def form(*parts: Part) -> bytes:
    return multipart(parts, "XX")


FILE_A: Part = ("file_a", "a.jpg", "image/jpeg", ASHA)
FILE_B: Part = ("file_b", "b.png", "image/png", ASHA_PNG)
GOOD = form(FILE_A, FILE_B)
CLOSING = b"--XX--\r\n"
MULTIPART = "multipart/form-data; boundary=XX"

CASES = [
    pytest.param(GOOD, MULTIPART, id="well-formed"),
    pytest.param(
        form(FILE_A, ("file_a", None, None, b"text"), FILE_B), MULTIPART, id="file-then-text"
    ),
    pytest.param(
        form(("file_a", None, None, b"text"), FILE_A, FILE_B), MULTIPART, id="text-then-file"
    ),
    pytest.param(
        GOOD.replace(b'Content-Disposition: form-data; name="file_a"; filename="a.jpg"\r\n', b""),
        MULTIPART,
        id="part-without-content-disposition",
    ),
    pytest.param(
        GOOD.replace(b'form-data; name="file_a"; filename', b"form-data; filename"),
        MULTIPART,
        id="content-disposition-without-name",
    ),
    pytest.param(GOOD[: -len(CLOSING)], MULTIPART, id="cut-before-the-closing-boundary"),
    pytest.param(GOOD[: -len(CLOSING) - 20], MULTIPART, id="cut-inside-file_b"),
    pytest.param(
        GOOD[: GOOD.index(b'name="file_b"') + 5],
        MULTIPART,
        id="cut-in-file_b-headers",
        # aiohttp warns of the half header it reads (the suite makes warnings errors).
        marks=pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader"),
    ),
    pytest.param(
        GOOD[: GOOD.index(b'--XX\r\nContent-Disposition: form-data; name="file_b"') + 6],
        MULTIPART,
        id="cut-after-file_a",
    ),
    pytest.param(
        form(FILE_A, FILE_B, ("extra", "c.jpg", "image/jpeg", RAVI))[: -len(CLOSING) - 30],
        MULTIPART,
        id="cut-inside-an-extra-part",
    ),
    pytest.param(b"", MULTIPART, id="empty"),
    pytest.param(b"\x00\x01garbage" * 10, MULTIPART, id="garbage"),
    pytest.param(GOOD, "multipart/form-data; boundary=YY", id="wrong-boundary"),
    pytest.param(GOOD, "multipart/form-data", id="no-boundary-parameter"),
    pytest.param(GOOD.replace(b"\r\n\r\n", b"\r\n", 1), MULTIPART, id="broken-part-headers"),
    pytest.param(b"file_a=x&file_b=y", "application/x-www-form-urlencoded", id="urlencoded-text"),
    pytest.param(b"{}", "application/json", id="json"),
    pytest.param(b"", None, id="no-content-type"),
    pytest.param(
        b"a preamble line\r\n" + GOOD,
        MULTIPART,
        id="preamble",
        marks=pytest.mark.xfail(
            strict=True,
            reason="aiohttp's reader skips a preamble (200); Starlette refuses it (400)",
        ),
    ),
]


@pytest.mark.parametrize(("body", "content_type"), CASES)
async def test_the_sandbox_answers_as_a_fastapi_endpoint(
    reference_port: int, sandbox: tuple[int, str], body: bytes, content_type: str | None
) -> None:
    """Same status; a 422 names the same fields, a 400 says why in a string."""
    port, token = sandbox
    status, _, answer = await exchange(port, request(body, content_type, token))
    expected, _, reference = await exchange(reference_port, request(body, content_type, token))
    assert status == expected, (answer, reference)
    if status == 422:
        assert [error["loc"] for error in answer["detail"]] == [
            error["loc"] for error in reference["detail"]
        ]
    elif status == 400:
        assert isinstance(answer["detail"], str)
    else:
        assert status == 200 and answer["sub_code"] == "SUCCESS"


async def test_a_repeated_field_keeps_its_last_part(
    reference_port: int, sandbox: tuple[int, str]
) -> None:
    """file_a sent twice: FastAPI keeps the second, and so does the sandbox's verdict."""
    port, token = sandbox
    body = form(("file_a", "ravi.jpg", "image/jpeg", RAVI), FILE_A, FILE_B)
    _, _, reference = await exchange(reference_port, request(body, MULTIPART, token))
    assert reference["kept"] == ["a.jpg", "b.png"]
    _, _, answer = await exchange(port, request(body, MULTIPART, token))
    assert answer["data"]["match"] is True  # asha against asha: the last file_a was judged
    flipped = form(FILE_A, ("file_a", "ravi.jpg", "image/jpeg", RAVI), FILE_B)
    _, _, answer = await exchange(port, request(flipped, MULTIPART, token))
    assert answer["data"]["match"] is False


@pytest.mark.parametrize("path", ["/v1/facematch/?q=1", "/v1/facematch//"])
async def test_a_trailing_slash_is_redirected_307(
    reference_port: int, sandbox: tuple[int, str], path: str
) -> None:
    """Starlette redirects to the route without the slash, query kept, body unread."""
    port, token = sandbox
    status, headers, _ = await exchange(port, request(GOOD, MULTIPART, token, path))
    expected, reference, _ = await exchange(reference_port, request(GOOD, MULTIPART, token, path))
    assert (status, expected) == (307, 307)
    assert headers["location"] == reference["location"]
    assert headers["location"].startswith(f"http://{HOST}/v1/facematch")
    assert headers["content-length"] == "0"
    status, _, _ = await exchange(port, request(GOOD, MULTIPART, token, "/v1/nothing/"))
    assert status == 404
