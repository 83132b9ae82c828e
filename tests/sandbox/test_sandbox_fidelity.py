"""The sandbox a user tests against before production (issue 14).

Real verdicts by default from the CLI, production's unknowns on demand (null confidence,
strict uploads, other status codes), FastAPI's answers to string fields and broken bodies,
read timeouts, v2's error envelope and PDFs. Requests are real: raw sockets carrying the
bytes Node's, Go's and Ruby's multipart writers send, ``requests``, curl and the client.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from facematch_async import (
    AuthenticationError,
    FaceMatchClient,
    InvalidTokenError,
    NoFaceFoundError,
    UnsupportedFileFormatError,
)
from facematch_async.cli import build_parser
from facematch_async.cli._sandbox import run_sandbox
from facematch_async.sandbox import (
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    dlib_available,
    make_test_image,
    sandbox_process,
)
from facematch_async.sandbox._server import TEST_ENGINE_WARNING, describe
from tests.helpers import (
    EXAMPLES,
    FACES,
    FAST_RETRIES,
    RUBY_BOUNDARY,
    RecordingEngine,
    fetch_token,
    multipart,
    vendor_form,
)

ID = "fidelity-client"
SECRET = "fidelity-secret"
REAL_FACES = dlib_available() and (FACES / "obama.jpg").is_file()
needs_faces = pytest.mark.skipif(
    not REAL_FACES,
    reason=f"needs the 'face' extra and the sample photos in {FACES}",
)

JPEG = make_test_image("asha", "jpeg")
PNG = make_test_image("asha", "png")


def config(**overrides: Any) -> SandboxConfig:
    return SandboxConfig(client_id=ID, client_secret=SECRET, **overrides)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def client_for(server: SandboxServer | str, **options: Any) -> FaceMatchClient:
    base_url = server if isinstance(server, str) else server.base_url
    settings: dict[str, Any] = {"retry_policy": FAST_RETRIES, "timeout": 10.0}
    settings.update(options)
    return FaceMatchClient(client_id=ID, client_secret=SECRET, base_url=base_url, **settings)


# Node's fetch + FormData (undici): a Blob appended without a name is "blob", its empty
# type becomes application/octet-stream. Go's CreateFormFile and Ruby's Net::HTTP set_form
# send the file's base name with application/octet-stream.
def node_blob(a: bytes, b: bytes) -> tuple[bytes, str]:
    return vendor_form("node", a, b, careful=False)


def go_octet_stream(a: bytes, b: bytes) -> tuple[bytes, str]:
    return vendor_form("go", a, b, careful=False)


async def post_raw(
    session: aiohttp.ClientSession,
    base_url: str,
    body: bytes,
    boundary: str | None,
    path: str = "/v1/facematch",
    content_type: str | None = None,
) -> tuple[int, Any]:
    """POST ``body`` as given (aiohttp does not touch a bytes body) with a fresh token."""
    form = aiohttp.FormData({"client_id": ID, "client_secret": SECRET})
    async with session.post(f"{base_url}/v1/authorize", data=form) as resp:
        token = (await resp.json())["access_token"]
    headers = {
        "Authorization": f"Bearer {token}",
        "x-api-key": SECRET,
        "Content-Type": content_type or f"multipart/form-data; boundary={boundary}",
    }
    async with session.post(f"{base_url}{path}", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


# --- 1. the CLI's default engine ---------------------------------------------------------------


async def read_start(*argv: str, script: str | None = None) -> tuple[str, list[str]]:
    """Start the sandbox CLI (or ``script``); its first stdout line and the stderr before it."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m"]
    if not script:
        command += ["facematch_async.cli", "sandbox", "--port", "0", *argv]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    finally:
        process.terminate()
        _, err = await process.communicate()
    return first, err.decode().splitlines()


def test_cli_defaults_to_auto_but_python_keeps_the_test_engine() -> None:
    """The CLI's --engine defaults to auto; SandboxServer and the fixture keep 'test'."""
    assert build_parser().parse_args(["sandbox"]).engine == "auto"
    assert SandboxServer(config()).engine.name == "test"


@pytest.mark.skipif(not dlib_available(), reason="the 'face' extra is not installed")
async def test_cli_default_engine_is_dlib_with_the_face_extra() -> None:
    """With the face extra, a bare `facematch-async sandbox` recognises faces; no warning."""
    first, err = await read_start()
    assert first.startswith("Sandbox listening on http://127.0.0.1:")
    assert err[0].startswith("Sandbox engine=dlib (auto)"), err
    assert not any("does NOT recognise faces" in line for line in err)


async def test_cli_says_first_when_verdicts_are_not_face_recognition() -> None:
    """auto without the face extra (and --engine test) warns before anything else."""
    script = (
        "import sys\n"
        "from facematch_async.sandbox import _choice\n"
        "_choice.dlib_available = lambda: False  # as if the face extra were missing\n"
        "from facematch_async.cli import main\n"
        "sys.exit(main(['sandbox', '--port', '0']))\n"
    )
    for first, err in (await read_start(script=script), await read_start("--engine", "test")):
        assert first.startswith("Sandbox listening on ")
        assert err[: len(TEST_ENGINE_WARNING.splitlines())] == TEST_ENGINE_WARNING.splitlines()
        assert err[0].startswith("WARNING: this sandbox does NOT recognise faces")
        assert any('pip install "facematch-async[face]"' in line for line in err)
        assert any(line.startswith("Sandbox engine=test") for line in err)


# --- 2. confidence: null -----------------------------------------------------------------------


async def test_null_confidence_answers_v1_with_null(session: aiohttp.ClientSession) -> None:
    """--null-confidence: v1 says "confidence": null as the vendor's example; v2 an integer."""
    async with SandboxServer(config(null_confidence=True)) as server:
        body, boundary = node_blob(JPEG, PNG)
        status, answer = await post_raw(session, server.base_url, body, boundary)
        assert status == 200 and answer["data"] == {"match": True, "confidence": None}
        status, answer = await post_raw(session, server.base_url, body, boundary, "/v2/facematch")
        assert status == 200 and answer["data"] == {"match": True, "confidence": 98}
        async with client_for(server) as client:
            result = await client.match(JPEG, PNG)
        assert result.match and result.confidence is None
        assert "modes=null-confidence" in describe(server)
    async with SandboxServer(config()) as server:  # the default: a number
        status, answer = await post_raw(session, server.base_url, body, boundary)
        assert answer["data"]["confidence"] == 98.0
    args = build_parser().parse_args(["sandbox", "--null-confidence"])
    assert args.null_confidence and not build_parser().parse_args(["sandbox"]).null_confidence


# --- 3. strict uploads -------------------------------------------------------------------------


STRICT_CASES = [
    # (filename, content type, bytes, refused under --strict-uploads)
    pytest.param("blob", "application/octet-stream", JPEG, True, id="node-blob"),
    pytest.param("selfie.jpg", "application/octet-stream", JPEG, True, id="go-ruby-octet"),
    pytest.param("selfie.gif", "image/gif", JPEG, True, id="jpeg-named-gif"),
    pytest.param("selfie.gif", None, JPEG, True, id="jpeg-named-gif-no-type"),
    pytest.param("selfie", "image/jpeg", JPEG, True, id="no-extension"),
    pytest.param("selfie.jpg", None, JPEG, False, id="requests-no-type"),
    pytest.param("Selfie.JPEG", "image/jpeg", JPEG, False, id="curl-upper-case"),
    pytest.param("id.png", "image/png; charset=binary", PNG, False, id="png-with-params"),
]


@pytest.mark.parametrize(("filename", "content_type", "data", "refused"), STRICT_CASES)
async def test_strict_uploads_judge_names_and_types(
    session: aiohttp.ClientSession,
    filename: str,
    content_type: str | None,
    data: bytes,
    refused: bool,
) -> None:
    """Strict mode refuses a part by its name or type; the default judges bytes only."""
    body = multipart(
        [("file_a", filename, content_type, data), ("file_b", "id.png", "image/png", PNG)], "b0"
    )
    async with SandboxServer(config(strict_uploads=True)) as server:
        status, answer = await post_raw(session, server.base_url, body, "b0")
    if refused:
        assert (status, answer["sub_code"]) == (400, "UNSUPPORTED_FILE_FORMAT")
    else:
        assert (status, answer["sub_code"]) == (200, "SUCCESS")
    async with SandboxServer(config()) as server:
        status, answer = await post_raw(session, server.base_url, body, "b0")
    assert (status, answer["sub_code"]) == (200, "SUCCESS")


async def test_the_clients_own_uploads_pass_strict_mode(tmp_path: Path) -> None:
    """The client names its parts file_a.jpg / file_b.png with image types: never refused."""
    pdf = tmp_path / "id.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%fm-identity=asha\n%%EOF\n")
    async with SandboxServer(config(strict_uploads=True)) as server:
        async with client_for(server) as client:
            assert (await client.match(JPEG, PNG)).match
            assert (await client.match(PNG, PNG)).match
        async with client_for(server, api_version="v2") as client:
            assert (await client.match(JPEG, pdf)).match
        assert server.counters.requests[("/v1/facematch", 200)] == 2
        assert server.counters.requests[("/v2/facematch", 200)] == 1
    args = build_parser().parse_args(["sandbox", "--strict-uploads"])
    assert args.strict_uploads


# --- 4. status codes the vendor never states ---------------------------------------------------


@pytest.mark.parametrize("status", [200, 400, 403, 404, 422, 500])
async def test_verdict_errors_are_typed_by_sub_code_whatever_the_status(status: int) -> None:
    """NO_FACE_FOUND / UNSUPPORTED_FILE_FORMAT raise the same errors at any status, once."""
    async with SandboxServer(config(verdict_status=status)) as server:
        async with client_for(server) as client:
            with pytest.raises(NoFaceFoundError) as no_face:
                await client.match(make_test_image("none"), PNG)
            server.scripted.add(
                ScriptedResponse(
                    path="/v1/facematch",
                    status=status,
                    json={
                        "code": None,
                        "sub_code": "UNSUPPORTED_FILE_FORMAT",
                        "message": "File format not supported",
                        "detail": "Unsupported file type, only .jpeg, .jpg, .png file "
                        "formats are supported",
                    },
                )
            )
            with pytest.raises(UnsupportedFileFormatError):
                await client.match(JPEG, PNG)
        assert no_face.value.status_code == status
        # Never retried, even at 500: the sub_code decides.
        assert sum(n for (path, _), n in server.counters.requests.items() if "face" in path) == 2


@pytest.mark.parametrize("status", [400, 401, 403])
@pytest.mark.parametrize("detail", ["Not authenticated", "Not a valid token"])
async def test_token_refusals_are_typed_by_detail_whatever_the_status(
    status: int, detail: str
) -> None:
    """401/403 are assumptions: the detail alone makes an InvalidTokenError after one renewal."""
    async with SandboxServer(config()) as server:
        refusal = ScriptedResponse(
            path="/v1/facematch", status=status, json={"detail": detail}, times=2
        )
        server.scripted.add(refusal)
        async with client_for(server) as client:
            with pytest.raises(InvalidTokenError) as refused:
                await client.match(JPEG, PNG)
            assert refused.value.status_code == status
            assert server.counters.authorize_calls == 2  # renewed once, never looped
            assert (await client.match(JPEG, PNG)).match  # and the client still works


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_wrong_api_key_is_an_authentication_error_whatever_the_status(
    status: int,
) -> None:
    """A wrong x-api-key: 401 here (assumed); production's status should not matter."""
    async with SandboxServer(config()) as server:
        server.scripted.add(
            ScriptedResponse(
                path="/v1/facematch",
                status=status,
                json={"detail": "Could not validate credentials"},
                times=3,
            )
        )
        async with client_for(server) as client:
            with pytest.raises(AuthenticationError) as refused:
                await client.match(JPEG, PNG)
        assert refused.value.status_code == status


async def test_the_sandboxs_own_refusals_have_the_assumed_statuses(
    session: aiohttp.ClientSession,
) -> None:
    """What the README's table lists as assumed is what the sandbox answers."""
    body, boundary = node_blob(JPEG, PNG)
    async with SandboxServer(config()) as server:
        url = f"{server.base_url}/v1/facematch"
        token = await fetch_token(session, server, ID, SECRET)
        cases = [
            ({"x-api-key": SECRET}, 401, "Not authenticated"),
            ({"Authorization": "Bearer forged", "x-api-key": SECRET}, 403, "Not a valid token"),
            ({"Authorization": f"Bearer {token}", "x-api-key": "wrong"}, 401, None),
        ]
        for headers, status, detail in cases:
            headers = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
            async with session.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
            assert resp.status == status
            assert detail is None or answer == {"detail": detail}
        headers = {"Authorization": f"Bearer {token}", "x-api-key": SECRET}
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        no_face = multipart(
            [("file_a", "a.png", None, make_test_image("none")), ("file_b", "b.png", None, PNG)],
            "n",
        )
        async with session.post(
            url,
            data=no_face,
            headers={**headers, "Content-Type": "multipart/form-data; boundary=n"},
        ) as resp:
            assert resp.status == 400 and (await resp.json())["sub_code"] == "NO_FACE_FOUND"


# --- 5. string fields instead of files ---------------------------------------------------------


async def test_string_fields_get_a_422_that_says_file_upload(
    session: aiohttp.ClientSession,
) -> None:
    """The seed's `file_a=example_string` (multipart and url-encoded): 422, not 'field required'."""
    as_text = multipart(
        [("file_a", None, None, b"example_string"), ("file_b", "id.png", "image/png", PNG)], "s"
    )
    async with SandboxServer(config()) as server:
        status, answer = await post_raw(session, server.base_url, as_text, "s")
        assert status == 422
        [error] = answer["detail"]
        assert error["loc"] == ["body", "file_a"] and error["type"] == "value_error"
        assert "must be a file upload" in error["msg"]
        both = "file_a=example_string&file_b=example_string"  # requests' data= without files=
        status, answer = await post_raw(
            session,
            server.base_url,
            both.encode(),
            None,
            content_type="application/x-www-form-urlencoded",
        )
        assert status == 422
        assert [error["loc"] for error in answer["detail"]] == [
            ["body", "file_a"],
            ["body", "file_b"],
        ]
        assert all("must be a file upload" in error["msg"] for error in answer["detail"])
        # A field that is really missing still says so.
        only_b = multipart([("file_b", "id.png", "image/png", PNG)], "m")
        status, answer = await post_raw(session, server.base_url, only_b, "m")
        assert status == 422 and answer["detail"][0]["msg"] == "field required"


# --- 6. malformed bodies -----------------------------------------------------------------------


def raw_request(token: str, body: bytes, content_type: str, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    head = (
        "POST /v1/facematch HTTP/1.1\r\nHost: sandbox\r\n"
        f"Authorization: Bearer {token}\r\nx-api-key: {SECRET}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send ``data`` on a raw socket; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


GOOD_PARTS = [("file_a", "a.jpg", "image/jpeg", JPEG), ("file_b", "b.png", "image/png", PNG)]
GOOD = multipart(GOOD_PARTS, "XX")
BIG_A = make_test_image("asha", "jpeg", pad_to=200_000)
BIG = multipart([("file_a", "a.jpg", "image/jpeg", JPEG), ("file_b", "b.jpg", None, BIG_A)], "XX")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        pytest.param(b"A" * (600 * 1024) + b"\r\n" + GOOD, None, 400, id="line-over-512KiB"),
        # Cut short with the length as announced: FastAPI loses the cut part (422 for it).
        pytest.param(GOOD[: -len(b"--XX--\r\n")], None, 422, id="no-closing-boundary"),
        pytest.param(BIG[: len(BIG) // 2], None, 422, id="cut-inside-a-part"),
        pytest.param(GOOD.replace(b"\r\n\r\n", b"\r\n", 1), None, 400, id="broken-part-headers"),
        pytest.param(GOOD, "multipart/form-data", 400, id="no-boundary-parameter"),
        pytest.param(GOOD, "multipart/form-data; boundary=YY", 400, id="wrong-boundary"),
        pytest.param(b"\x00\x01garbage" * 10, None, 400, id="garbage"),
        pytest.param(b"", None, 422, id="empty"),
    ],
)
async def test_malformed_bodies_get_a_json_4xx_and_are_never_judged(
    body: bytes, content_type: str | None, status: int
) -> None:
    """No plain-text 500: every broken body is FastAPI's JSON 4xx (400 unparseable, 422 a
    field missing from what arrived), and the engine never sees it."""
    engine = RecordingEngine()
    async with (
        SandboxServer(config(engine=engine)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        answer = await exchange(
            server.port,
            raw_request(token, body, content_type or "multipart/form-data; boundary=XX"),
        )
        good = await exchange(
            server.port, raw_request(token, GOOD, "multipart/form-data; boundary=XX")
        )
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"application/json" in head
    detail = json.loads(payload)["detail"]
    if status == 422:
        assert ["body", "file_b"] in [error["loc"] for error in detail]
    else:
        assert isinstance(detail, str)
    assert engine.calls == [(JPEG, PNG)]  # only the well-formed request was judged
    assert good.startswith(b"HTTP/1.1 200 ")


async def test_a_body_cut_short_by_the_connection_is_never_judged() -> None:
    """Content-Length promises more than arrives, then the client half-closes: not judged."""
    engine = RecordingEngine()
    async with (
        SandboxServer(config(engine=engine)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        request = raw_request(token, BIG, "multipart/form-data; boundary=XX")
        for cut in (len(request) - len(BIG) // 2, len(request) - 10):
            answer = await exchange(server.port, request[:cut], half_close=True)
            assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert engine.calls == []
        assert server.counters.requests[("/v1/facematch", 200)] == 0


# --- 7. read timeouts --------------------------------------------------------------------------


async def test_half_sent_requests_are_closed_after_the_read_timeout() -> None:
    """Connections that never finish headers or body are closed; the server keeps serving."""
    async with (
        SandboxServer(config(read_timeout=0.5)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        full = raw_request(token, GOOD, "multipart/form-data; boundary=XX")
        head_end = full.index(b"\r\n\r\n") + 4
        halves = [b"", full[: head_end // 2], full[: head_end + len(GOOD) // 2]]
        opened = []
        for index in range(300):  # 100 each: nothing sent, half the headers, half the body
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(halves[index % 3])
            opened.append((reader, writer))
        started = time.monotonic()
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), timeout=10) for reader, _ in opened)
        )
        elapsed = time.monotonic() - started
        for _, writer in opened:
            writer.close()
        assert elapsed < 5
        assert all(answer == b"" for answer in answers[0::3] + answers[1::3])
        body_answers = answers[2::3]
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in body_answers)
        assert b'"detail": "Request timeout' in body_answers[0]
        async with client_for(server) as client:  # still serving
            assert (await client.match(JPEG, PNG)).match


async def test_a_steady_slow_upload_is_never_cut() -> None:
    """Idle time, not total time: a body trickling in for 5x the bound is judged (200)."""
    async with (
        SandboxServer(config(read_timeout=0.5)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        request = raw_request(token, BIG, "multipart/form-data; boundary=XX")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        step = len(request) // 12 + 1
        for offset in range(0, len(request), step):
            writer.write(request[offset : offset + step])
            await writer.drain()
            await asyncio.sleep(0.2)  # each gap well under the bound; 2.4 s in all
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    assert time.monotonic() - started > 2 * 0.5 * 2
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_a_body_that_goes_quiet_gets_a_408_one_bound_after_its_last_byte() -> None:
    """Gaps under the bound are waited out; a gap past it ends the request with a 408."""
    async with (
        SandboxServer(config(read_timeout=0.5)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        request = raw_request(token, BIG, "multipart/form-data; boundary=XX")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for part in range(3):  # three thirds of half the body, 0.3 s apart
            writer.write(request[part * len(request) // 6 : (part + 1) * len(request) // 6])
            await writer.drain()
            await asyncio.sleep(0.3)
        last_byte = time.monotonic() - 0.3
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        quiet = time.monotonic() - last_byte
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.45 < quiet < 3.0  # the bound, counted from the last byte (3.0: a loaded machine)


async def test_headers_and_idle_keep_alive_connections_are_bounded_from_the_last_answer() -> None:
    """After an answer, the next request's headers must be in within the bound, however
    they trickle (nginx's header timeout); an idle keep-alive connection is closed too."""
    async with (
        SandboxServer(config(read_timeout=0.5)) as server,
        aiohttp.ClientSession() as session,
    ):
        token = await fetch_token(session, server, ID, SECRET)
        keep_alive = raw_request(token, GOOD, "multipart/form-data; boundary=XX").replace(
            b"Connection: close\r\n", b""
        )
        for trickle in (False, True):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(keep_alive)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            assert head.startswith(b"HTTP/1.1 200 ")
            answered = time.monotonic()
            if trickle:  # a byte of the next request's headers every 0.1 s
                for byte in keep_alive[:40]:
                    try:
                        writer.write(bytes([byte]))
                        await writer.drain()
                    except ConnectionError:  # closed under the trickle
                        break
                    await asyncio.sleep(0.1)
            try:
                rest = await asyncio.wait_for(reader.read(), timeout=10)  # the body, then EOF
            except ConnectionError:  # a byte written after the close: closed all the same
                rest = b""
            closed = time.monotonic() - answered
            writer.close()
            assert b"HTTP/1.1" not in rest  # closed without a word
            assert 0.45 < closed < 3.0


async def test_without_a_read_timeout_half_sent_requests_wait() -> None:
    """read_timeout=None: what closed the connections above is the bound, nothing else."""
    async with SandboxServer(config(read_timeout=None)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /v1/facematch HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(), timeout=1.5)
        writer.close()
        assert "read-timeout=none" in describe(server)


def test_read_timeout_settings() -> None:
    assert build_parser().parse_args(["sandbox", "--read-timeout", "5"]).read_timeout == 5
    assert build_parser().parse_args(["sandbox", "--read-timeout", "0"]).read_timeout is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sandbox", "--read-timeout", "-1"])
    with pytest.raises(ValueError, match="read_timeout"):
        config(read_timeout=0)


# --- 8. v2's errors and PDFs -------------------------------------------------------------------


async def test_v2_errors_take_v2s_envelope(session: aiohttp.ClientSession) -> None:
    """v2 answers code=<status> and no timestamp, errors as successes; the client copes."""
    async with SandboxServer(config()) as server:
        body, boundary = node_blob(make_test_image("none"), PNG)
        status, answer = await post_raw(session, server.base_url, body, boundary, "/v2/facematch")
        assert status == 400 and answer["code"] == 400 and "timestamp" not in answer
        assert answer["sub_code"] == "NO_FACE_FOUND" and answer["transaction_id"]
        status, answer = await post_raw(session, server.base_url, body, boundary)
        assert answer["code"] is None and isinstance(answer["timestamp"], int)
        async with client_for(server, api_version="v2") as client:
            with pytest.raises(NoFaceFoundError) as raised:
                await client.match(make_test_image("none"), PNG)
        assert raised.value.transaction_id


def pdf_of(photo: bytes) -> bytes:
    """A one-page PDF holding ``photo``, as a scanner or a phone's 'save as PDF' makes."""
    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(photo)) as image:
        image.convert("RGB").save(out, "PDF", resolution=100.0)
    return out.getvalue()


@needs_faces
async def test_v2_judges_the_first_page_of_a_pdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """With pypdfium2 a PDF ID is judged; without, the start-up line says PDFs are not."""
    pytest.importorskip("pypdfium2", reason="pypdfium2 (in the face extra) renders PDFs")
    from facematch_async.sandbox import _dlib

    obama_pdf = pdf_of((FACES / "obama.jpg").read_bytes())
    assert obama_pdf.startswith(b"%PDF-")
    async with SandboxServer(config(engine="dlib")) as server:
        assert "pdf=first-page-rendered" in describe(server)
        async with client_for(server, api_version="v2", timeout=60.0) as client:
            same = await client.match(FACES / "obama2.jpg", obama_pdf)
            other = await client.match(FACES / "biden.jpg", obama_pdf)
        assert same.match and same.confidence is not None and same.confidence > 50
        assert not other.match
        monkeypatch.setattr(_dlib, "pdf_renderer_available", lambda: False)
        assert "pdf=not-judged" in describe(server)
        async with client_for(server, api_version="v2", timeout=60.0) as client:
            with pytest.raises(NoFaceFoundError):
                await client.match(FACES / "obama2.jpg", obama_pdf)


# --- 9. the demo's second person ---------------------------------------------------------------


@pytest.mark.skipif(not dlib_available(), reason="the 'face' extra is not installed")
def test_demo_shows_two_different_people(tmp_path: Path) -> None:
    """Grace Hopper (matplotlib) against Eileen Collins (scikit-image): no match, by dlib."""
    pytest.importorskip("skimage", reason="the demo extra")
    pytest.importorskip("matplotlib", reason="the demo extra")
    import importlib.util

    from facematch_async.sandbox import DlibEngine

    path = EXAMPLES / "demo.py"
    spec = importlib.util.spec_from_file_location("facematch_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    manifest = demo.write_photo_inputs(tmp_path)
    assert manifest is not None
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    hopper_rows = [row for row in rows if "hopper" in row[1]]
    assert len(hopper_rows) == 2
    engine = DlibEngine()
    for _, file_a, file_b, _ in hopper_rows:
        verdict = engine.compare((tmp_path / file_a).read_bytes(), (tmp_path / file_b).read_bytes())
        assert verdict.face_found and not verdict.match
        assert verdict.distance is not None and verdict.distance > 0.65  # measured 0.70, 0.71
    selfie = engine.compare(
        (tmp_path / "images/collins_selfie.jpg").read_bytes(),
        (tmp_path / "images/collins_id.png").read_bytes(),
    )
    assert selfie.match and selfie.distance is not None and selfie.distance < 0.3


# --- the vendor's snippets against the CLI sandbox ---------------------------------------------


def snippet_pair() -> tuple[bytes, bytes, bytes, str]:
    """Two photos of one person, a photo of another, and the engine that judges them."""
    if REAL_FACES:
        photos = (FACES / "obama.jpg", FACES / "obama2.jpg", FACES / "biden.jpg")
        a, b, other = (path.read_bytes() for path in photos)
        return a, b, other, "auto"  # the CLI's default: dlib with the face extra
    a, b = make_test_image("asha", "jpeg"), make_test_image("asha", "jpeg", pad_to=4000)
    return a, b, make_test_image("ravi", "jpeg"), "test"


def curl_match(base_url: str, token: str, a: Path, b: Path) -> dict[str, Any]:
    """The vendor's curl snippet: `--form file_a=@...` (curl sets image/jpeg from .jpg)."""
    curl = shutil.which("curl")
    assert curl is not None
    completed = subprocess.run(  # noqa: S603
        [
            curl,
            "--silent",
            "--show-error",
            "--request",
            "POST",
            f"{base_url}/v1/facematch",
            "--header",
            f"Authorization: Bearer {token}",
            "--header",
            f"x-api-key: {SECRET}",
            "--form",
            f"file_a=@{a}",
            "--form",
            f"file_b=@{b}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    answer: dict[str, Any] = json.loads(completed.stdout)
    return answer


def requests_match(base_url: str, token: str, **form: Any) -> tuple[int, dict[str, Any]]:
    """The vendor's Python snippet: requests with files= (or data=, as the seed wrote it)."""
    import requests

    response = requests.post(
        f"{base_url}/v1/facematch",
        headers={"Authorization": f"Bearer {token}", "x-api-key": SECRET},
        timeout=60,
        **form,
    )
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


def requests_token(base_url: str) -> str:
    import requests

    response = requests.post(
        f"{base_url}/v1/authorize",
        data={"client_id": ID, "client_secret": SECRET},
        headers={"x-api-key": SECRET},
        timeout=30,
    )
    token: str = response.json()["access_token"]
    return token


def raw_match(base_url: str, token: str, body: bytes, boundary: str) -> dict[str, Any]:
    """Node's / Go's / Ruby's bytes, sent as they are."""
    import requests

    response = requests.post(
        f"{base_url}/v1/facematch",
        headers={
            "Authorization": f"Bearer {token}",
            "x-api-key": SECRET,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        data=body,
        timeout=60,
    )
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict-uploads"])
def test_vendor_snippets_against_the_cli_sandbox(tmp_path: Path, strict: bool) -> None:
    """curl, requests (files= and data=), Node's blob, Go's and Ruby's octet-stream parts."""
    pytest.importorskip("requests")
    a, b, other, engine = snippet_pair()
    (tmp_path / "selfie.jpg").write_bytes(a)
    (tmp_path / "id.jpg").write_bytes(b)
    (tmp_path / "someone.jpg").write_bytes(other)
    flags = ["--engine", engine, "--client-id", ID, "--client-secret", SECRET]
    if strict:
        flags.append("--strict-uploads")
    with sandbox_process(*flags) as base_url:
        token = requests_token(base_url)
        answers: dict[str, dict[str, Any]] = {}
        if shutil.which("curl"):
            answers["curl"] = curl_match(
                base_url, token, tmp_path / "selfie.jpg", tmp_path / "id.jpg"
            )
            other_answer = curl_match(
                base_url, token, tmp_path / "someone.jpg", tmp_path / "id.jpg"
            )
            assert other_answer["sub_code"] == "SUCCESS" and not other_answer["data"]["match"]
        with (
            open(tmp_path / "selfie.jpg", "rb") as file_a,
            open(tmp_path / "id.jpg", "rb") as file_b,
        ):
            status, answers["requests"] = requests_match(
                base_url, token, files={"file_a": file_a, "file_b": file_b}
            )
        assert status == 200
        answers["node-blob"] = raw_match(base_url, token, *node_blob(a, b))
        answers["go"] = raw_match(base_url, token, *go_octet_stream(a, b))
        ruby = [("file_a", "selfie.jpg", "application/octet-stream", a)]
        ruby.append(("file_b", "id.jpg", "application/octet-stream", b))
        answers["ruby"] = raw_match(base_url, token, multipart(ruby, RUBY_BOUNDARY), RUBY_BOUNDARY)
        status, as_text = requests_match(
            base_url, token, data={"file_a": "example_string", "file_b": "example_string"}
        )
        assert status == 422 and "must be a file upload" in as_text["detail"][0]["msg"]
    for name in ("curl", "requests"):
        if name in answers:
            assert answers[name]["sub_code"] == "SUCCESS", (name, answers[name])
            assert answers[name]["data"]["match"] is True
    for name in ("node-blob", "go", "ruby"):
        expected = "UNSUPPORTED_FILE_FORMAT" if strict else "SUCCESS"
        assert answers[name]["sub_code"] == expected, (name, answers[name])


# --- the CLI's flags ---------------------------------------------------------------------------


def test_cli_turns_every_mode_into_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_sandbox hands --null-confidence, --strict-uploads and --read-timeout to the config."""
    seen: list[SandboxConfig] = []

    async def fake_serve(config: SandboxConfig, host: str, port: int) -> None:
        seen.append(config)

    monkeypatch.setattr("facematch_async.cli._sandbox.serve", fake_serve)
    argv = ["sandbox", "--null-confidence", "--strict-uploads", "--read-timeout", "7"]
    args = build_parser().parse_args(argv)
    assert run_sandbox(args) == 0
    [built] = seen
    assert (built.null_confidence, built.strict_uploads, built.read_timeout) == (True, True, 7)
    assert built.engine == "auto"
