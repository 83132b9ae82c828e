"""A server that echoes what it is sent, escapes the echo, nests JSON 100,000 deep or hands
out a token that expires in 10**400 seconds: every call still ends in a typed error, and no
error, log record, results line or CLI output holds the secret or the token, in any form.

The server is a real HTTP server on loopback, written on raw asyncio streams so that it can
also answer bytes no HTTP library would produce (aiohttp's parser quotes those in its error
text, which is how an echo used to get past redaction).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from facematch_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    BatchRunner,
    FaceMatchClient,
    FaceMatchError,
    RetryPolicy,
    read_manifest,
)
from facematch_async.sandbox import make_test_image

CLIENT_ID = "hostile-answers-client"
SECRET = "sk-live-7Hq2-ECHO-me-9xZ4-v2"  # '-' so that JSON's \u002d escaping matters
FAST = RetryPolicy(backoff_initial=0.01, backoff_max=0.02, backoff_jitter=0.01)
DEEP = 100_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict[str, Any] | str) -> str:
    """A JWT-shaped token (unsigned: only the server can verify one) with these claims."""
    payload = claims if isinstance(claims, str) else json.dumps(claims)
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    return f"{header}.{_b64(payload.encode())}.sig-Echo-4f2a-{os.urandom(4).hex()}"


NOW = int(time.time())
TOKEN = make_jwt({"sub": CLIENT_ID, "iat": NOW, "exp": NOW + 3600})


def leak_forms(secret: str) -> set[str]:
    """The secret as a server may echo it: raw, JSON-escaped, every character \\u-escaped,
    URL-encoded, and the prefix a cut-off excerpt would show."""
    return {
        secret,
        secret.replace("-", "\\u002d"),
        secret.replace("-", "\\u002D"),
        "".join(f"\\u{ord(char):04x}" for char in secret),
        "".join(f"%{byte:02X}" for byte in secret.encode()),
        secret[:10],
    }


def assert_clean(texts: Iterable[str], secrets: Iterable[str] = (SECRET, TOKEN)) -> None:
    """No text holds a secret in any of its forms."""
    for text in texts:
        for secret in secrets:
            for form in leak_forms(secret):
                assert form not in text, f"{form[:6]}... leaked in {text[:300]!r}"


def error_texts(error: BaseException) -> list[str]:
    """Every way an error's text gets out: str, repr, its fields, a logged traceback."""
    return [
        str(error),
        repr(error),
        repr(error.__dict__),
        "".join(traceback.format_exception(error)),  # chained causes included
    ]


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.__dict__)]
        if record.exc_info and record.exc_info[1] is not None:
            texts += error_texts(record.exc_info[1])
    return texts


# --- the server --------------------------------------------------------------------------

Request = dict[str, str]  # lower-cased headers, plus ":path"
Answer = Callable[[Request], bytes]


def respond(status: int, body: bytes | str, headers: dict[str, str] | None = None) -> bytes:
    """A well-formed HTTP/1.1 answer that closes the connection."""
    data = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += ["Content-Type: application/json"] if data[:1] in (b"{", b"[") else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def good_authorize(request: Request) -> bytes:
    expiry = datetime.fromtimestamp(NOW + 3600, UTC).isoformat()
    return respond(200, json.dumps({"access_token": TOKEN, "expiry": expiry}))


def echo(request: Request) -> str:
    """What an echoing server hands back: the credentials we sent."""
    return f"x-api-key: {request['x-api-key']}; authorization: {request.get('authorization')}"


class HostileServer:
    """An HTTP server on loopback: ``authorize`` and ``facematch`` turn a request into the
    raw bytes of the answer, well-formed or not."""

    def __init__(self, facematch: Answer, authorize: Answer = good_authorize) -> None:
        self.answers = {"/v1/authorize": authorize, "/v1/facematch": facematch}
        self.requests = 0
        self.base_url = ""

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            request: Request = {":path": request_line.split(" ")[1]}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                request[name.strip().lower()] = value.strip()
            await _read_body(reader, request)  # all of it: else the client sees a reset
            self.requests += 1
            writer.write(self.answers[request[":path"]](request))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _read_body(reader: asyncio.StreamReader, request: Request) -> None:
    if "content-length" in request:
        await reader.readexactly(int(request["content-length"]))
        return
    if request.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readline()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., HostileServer]]:
    """Start hostile servers for the test; stopped after it."""
    started: list[HostileServer] = []

    def make(facematch: Answer, authorize: Answer = good_authorize) -> HostileServer:
        server = HostileServer(facematch, authorize)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.__aexit__()


async def match_error(
    server: HostileServer, images: tuple[Path, Path], max_retries: int = 1
) -> FaceMatchError:
    """The error ``match`` raises against ``server``."""
    async with FaceMatchClient(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        base_url=server.base_url,
        max_retries=max_retries,
        retry_policy=FAST,
        timeout=10,
    ) as client:
        with pytest.raises(FaceMatchError) as caught:
            await client.match(*images)
    return caught.value


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    a.write_bytes(make_test_image("alice", "jpeg"))
    b.write_bytes(make_test_image("alice", "png"))
    return a, b


# --- echoes through aiohttp's parse errors ------------------------------------------------

MALFORMED: dict[str, Answer] = {
    # aiohttp quotes the raw line it could not parse in its error text.
    "status line": lambda r: f"HTTP/1.1 2{echo(r)}\r\n\r\n".encode(),
    "content-length": lambda r: f"HTTP/1.1 200 OK\r\nContent-Length: {echo(r)}\r\n\r\n".encode(),
    "chunk size": lambda r: (
        f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{echo(r)}\r\n".encode()
    ),
    # Over 8 KiB: aiohttp quotes the first 100 bytes, cutting the secret after 10 characters.
    "cut-off excerpt": lambda r: (
        f"HTTP/1.1 200 OK\r\nX-Echo: {'a' * 90}{r['x-api-key']}{'a' * 9000}\r\n\r\n".encode()
    ),
}


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_parse_error_echoes_are_redacted(
    serve: Callable[..., HostileServer],
    images: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    answer: Answer,
) -> None:
    """aiohttp's parse-error text quotes the raw bytes; neither the APIConnectionError, its
    chained causes, the INFO retry line nor any DEBUG record carries the echo."""
    caplog.set_level(logging.DEBUG)
    async with serve(answer) as server:
        error = await match_error(server, images)
    assert isinstance(error, APIConnectionError)
    assert "POST /v1/facematch failed: ClientResponseError" in str(error)
    assert any("retrying in" in record.getMessage() for record in caplog.records)
    assert error.__cause__ is None and error.__context__ is None  # aiohttp's holds our headers
    assert_clean(error_texts(error) + log_texts(caplog))


# --- echoes the JSON decoder would unescape -----------------------------------------------


def to_json(value: Any, escape: Callable[[str], str]) -> str:
    """JSON text whose strings are written by ``escape`` (a server's own JSON encoder)."""
    if isinstance(value, str):
        return '"' + escape(value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(to_json(item, escape) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{to_json(key, escape)}: {to_json(item, escape)}" for key, item in value.items())
        return "{" + ", ".join(pairs) + "}"
    return json.dumps(value)


def dash_escaped(text: str) -> str:
    return json.dumps(text)[1:-1].replace("-", "\\u002d")


def all_escaped(text: str) -> str:
    return "".join(f"\\u{ord(char):04X}" for char in text)


ESCAPED: dict[str, Answer] = {
    "400 detail, dashes escaped": lambda r: respond(
        400, to_json({"detail": f"bad credentials: {echo(r)}"}, dash_escaped)
    ),
    "422 detail list, every char escaped": lambda r: respond(
        422,
        to_json(
            {"detail": [{"loc": ["body", echo(r)], "msg": echo(r), echo(r): r["x-api-key"]}]},
            all_escaped,
        ),
    ),
    "400 message, dashes escaped": lambda r: respond(
        400, to_json({"message": echo(r), "transaction_id": r["x-api-key"]}, dash_escaped)
    ),
    "NO_FACE_FOUND message, every char escaped": lambda r: respond(
        200, to_json({"sub_code": "NO_FACE_FOUND", "message": echo(r)}, all_escaped)
    ),
    "500 page, URL-encoded and HTML references": lambda r: respond(
        500,
        "<p>"
        + "".join(f"%{byte:02x}" for byte in echo(r).encode())
        + "</p><p>"
        + "".join(f"&#{ord(char)};" for char in echo(r))
        + "</p>",
    ),
}


@pytest.mark.parametrize("answer", ESCAPED.values(), ids=ESCAPED.keys())
async def test_escaped_echoes_are_redacted_after_decoding(
    serve: Callable[..., HostileServer],
    images: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    answer: Answer,
) -> None:
    """An echo escaped in the JSON (\\u002d) or encoded in a page is redacted after
    decoding: message, detail, transaction id and logs hold no secret."""
    caplog.set_level(logging.DEBUG)
    async with serve(answer) as server:
        error = await match_error(server, images)
    assert "[REDACTED]" in str(error) + repr(error.detail) + repr(error.transaction_id)
    assert_clean([*error_texts(error), repr(error.detail), *log_texts(caplog)])


async def test_echo_in_a_successful_answer_is_redacted(
    serve: Callable[..., HostileServer], images: tuple[Path, Path]
) -> None:
    """A decision whose message and raw body escape an echo keeps neither secret."""
    body = {"sub_code": "SUCCESS", "data": {"match": True, "confidence": 97.5}}

    def answer(request: Request) -> bytes:
        return respond(200, to_json({**body, "message": echo(request)}, dash_escaped))

    async with (
        serve(answer) as server,
        FaceMatchClient(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=server.base_url
        ) as client,
    ):
        result = await client.match(*images)
    assert result.match is True
    assert result.message is not None and "[REDACTED]" in result.message
    assert_clean([repr(result), repr(result.raw), str(result.message)])


# --- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "https://collector.example/cb?key={key}&token={token}",
        "https://{key}@collector.example:8443/{token}",
        "https://{key}.collector.example/",  # a host name is case-insensitive
        "/relative/{key}",
    ],
)
async def test_redirect_location_is_not_copied(
    serve: Callable[..., HostileServer], images: tuple[Path, Path], location: str
) -> None:
    """A redirect names at most the scheme and host it pointed to, never the rest of its
    ``Location``, where an echo would sit."""

    def answer(request: Request) -> bytes:
        token = request["authorization"].removeprefix("Bearer ")
        return respond(302, "", {"Location": location.format(key=SECRET, token=token)})

    async with serve(answer) as server:
        error = await match_error(server, images, max_retries=0)
    assert isinstance(error, APIStatusError)
    assert error.status_code == 302
    assert "not followed" in error.message
    if "collector" in location:
        assert "collector.example" in error.message
    assert_clean(error_texts(error))
    assert_clean([text.lower() for text in error_texts(error)], [SECRET.lower(), TOKEN.lower()])


# --- JSON nested 100,000 deep, and token expiries out of range ----------------------------


def nested(request: Request) -> bytes:
    return respond(200, '{"data": ' + "[" * DEEP + "]" * DEEP + "}")


def nested_error(request: Request) -> bytes:
    return respond(400, '{"detail": ' + "[" * DEEP + "]" * DEEP + "}")


def success(request: Request) -> bytes:
    """A decision: a call that gets this far raises nothing."""
    return respond(200, '{"sub_code": "SUCCESS", "data": {"match": true, "confidence": 99.0}}')


def token_answer(claims: dict[str, Any] | str) -> Answer:
    def answer(request: Request) -> bytes:
        return respond(200, json.dumps({"access_token": make_jwt(claims), "expiry": None}))

    return answer


HOSTILE_STRUCTURE: dict[str, tuple[Answer, Answer]] = {
    # (facematch, authorize)
    "facematch nested": (nested, good_authorize),
    "facematch 400 nested": (nested_error, good_authorize),
    "authorize nested": (nested, nested),
    "exp 10**400": (success, token_answer({"exp": 10**400})),
    "iat -10**400": (success, token_answer({"exp": NOW + 60, "iat": -(10**400)})),
    "exp Infinity": (success, token_answer('{"exp": Infinity}')),
    "lifetime overflows": (success, token_answer({"exp": 1e308, "iat": -1e308})),
}


@pytest.mark.parametrize("answers", HOSTILE_STRUCTURE.values(), ids=HOSTILE_STRUCTURE.keys())
async def test_deep_json_and_huge_expiry_are_validation_errors(
    serve: Callable[..., HostileServer],
    images: tuple[Path, Path],
    answers: tuple[Answer, Answer],
) -> None:
    """RecursionError and OverflowError never escape: both are APIResponseValidationError."""
    async with serve(*answers) as server:
        error = await match_error(server, images)
    assert type(error) is APIResponseValidationError, repr(error)
    assert_clean(error_texts(error))


# --- the command line and the batch -------------------------------------------------------


async def run_cli(*args: str, base_url: str) -> tuple[int, str, str]:
    """Run ``facematch-async`` in a subprocess (the server keeps serving in this loop)."""
    env = dict(
        os.environ,
        DEEPVUE_CLIENT_ID=CLIENT_ID,
        DEEPVUE_CLIENT_SECRET=SECRET,
        DEEPVUE_BASE_URL=base_url,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facematch_async.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


CLI_CASES: dict[str, tuple[Answer, Answer, str]] = {
    "facematch nested": (nested, good_authorize, "APIResponseValidationError"),
    "authorize nested": (nested, nested, "APIResponseValidationError"),
    "exp 10**400": (success, token_answer({"exp": 10**400}), "APIResponseValidationError"),
    "echo in a status line": (MALFORMED["status line"], good_authorize, "APIConnectionError"),
    "escaped echo": (ESCAPED["400 detail, dashes escaped"], good_authorize, "BadRequestError"),
}


@pytest.mark.parametrize("case", CLI_CASES.values(), ids=CLI_CASES.keys())
async def test_cli_match_prints_json_and_one_line_never_a_traceback(
    serve: Callable[..., HostileServer],
    images: tuple[Path, Path],
    case: tuple[Answer, Answer, str],
) -> None:
    """``facematch-async match`` against each hostile answer: exit 1, the typed error as
    JSON on stdout, one line on stderr, no traceback and no secret."""
    facematch, authorize, error_type = case
    async with serve(facematch, authorize) as server:
        code, stdout, stderr = await run_cli(
            "match", str(images[0]), str(images[1]), "--max-retries", "0", base_url=server.base_url
        )
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout)["error"]["type"] == error_type
    assert stderr.count("\n") == 1 and stderr.startswith("facematch-async match: "), stderr
    assert_clean([stdout, stderr])


@pytest.mark.parametrize(
    ("facematch", "exit_code"),
    [
        (nested, 69),  # garbled JSON: may not happen again, still to run
        (MALFORMED["content-length"], 69),  # a dropped answer: likewise
        (ESCAPED["422 detail list, every char escaped"], 1),  # the API's refusal: final
    ],
    ids=["nested", "parse-error echo", "escaped echo"],
)
async def test_cli_batch_records_per_pair_errors_without_traceback_or_secret(
    serve: Callable[..., HostileServer], tmp_path: Path, facematch: Answer, exit_code: int
) -> None:
    """A batch against a hostile facematch answer: one error line per pair in the results
    file (transient or final, and the exit code says which), no traceback per pair, and no
    secret in the results, stdout or stderr."""
    (tmp_path / "a.jpg").write_bytes(make_test_image("a", "jpeg"))
    (tmp_path / "b.png").write_bytes(make_test_image("b", "png"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("pair_id,file_a,file_b\n" + "".join(f"p{i},a.jpg,b.png\n" for i in range(4)))
    results = tmp_path / "results.jsonl"
    async with serve(facematch) as server:
        code, stdout, stderr = await run_cli(
            "batch",
            str(pairs),
            "--out",
            str(results),
            "--rate-limit",
            "none",
            "--max-retries",
            "1",
            base_url=server.base_url,
        )
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert code == exit_code, stderr
    assert "Traceback" not in stderr
    assert sorted(record["pair_id"] for record in records) == [f"p{i}" for i in range(4)]
    assert all(record["status"] == "error" for record in records)
    assert_clean([stdout, stderr, results.read_text()])


async def test_python_batch_outcomes_and_logs_hold_no_echo(
    serve: Callable[..., HostileServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """BatchRunner at DEBUG against a parse-error echo: typed per-pair errors, and neither
    the outcomes nor the retry lines hold the secret or the token."""
    caplog.set_level(logging.DEBUG)
    (tmp_path / "a.jpg").write_bytes(make_test_image("a", "jpeg"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("pair_id,file_a,file_b\n" + "".join(f"p{i},a.jpg,a.jpg\n" for i in range(3)))
    async with (
        serve(MALFORMED["chunk size"]) as server,
        FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=SECRET,
            base_url=server.base_url,
            max_retries=1,
            retry_policy=FAST,
        ) as client,
    ):
        runner = BatchRunner(client, concurrency=3, rate_limit=None)
        outcomes = [outcome async for outcome in runner.run(read_manifest(pairs))]
    assert len(outcomes) == 3
    assert all(o.error is not None and o.error.type == "APIConnectionError" for o in outcomes)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback per pair
    assert_clean([repr(outcome) for outcome in outcomes] + log_texts(caplog))


# --- the redactor itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: s,
        lambda s: json.dumps(s)[1:-1].replace("-", "\\u002d"),
        lambda s: "".join(f"\\u{ord(c):04X}" for c in s),
        lambda s: "".join(f"\\\\u{ord(c):04x}" for c in s),  # a JSON escape quoted by a repr
        lambda s: "".join(f"%{b:02x}" for b in s.encode()),
        lambda s: "".join(f"&#x{ord(c):x};" for c in s),
        lambda s: "".join(f"\\x{ord(c):02x}" for c in s),  # repr of bytes
        lambda s: s[:12] + "\r\n\t" + s[12:],  # a folded header line
        lambda s: s[:7] + "\\u002d" + s[8:],  # one character escaped
    ],
    ids=["raw", "dashes", "all-u", "double-u", "url", "html", "bytes-repr", "fold", "one-char"],
)
def test_redact_catches_every_encoding(encode: Callable[[str], str]) -> None:
    """The secret in each form is replaced; the text around it survives."""
    from facematch_async._responses import redact

    text = f"before {encode(SECRET)} after"
    assert redact(text, (SECRET, "short")) == "before [REDACTED] after"


def test_redact_leaves_short_values_and_other_text_alone() -> None:
    """Values under eight characters are not secrets; text without a secret is unchanged."""
    from facematch_async._responses import redact

    text = 'a %41 &#65; \\u0041 "t" line\n  fold'
    assert redact(text, ("t", "A")) == text
    assert redact(text, (SECRET,)) == text


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda: f"https://{SECRET.lower()}.example/", id="lower-cased host"),
        pytest.param(lambda: SECRET.upper(), id="upper-cased"),
        pytest.param(lambda: base64.b64encode(SECRET.encode()).decode(), id="base64"),
        pytest.param(lambda: base64.urlsafe_b64encode(SECRET.encode()).decode(), id="base64url"),
        pytest.param(lambda: TOKEN.split(".")[2], id="jwt signature alone"),
        pytest.param(lambda: TOKEN.split(".")[1], id="jwt payload alone"),
    ],
)
def test_redact_catches_derived_forms(echo: Callable[[], str]) -> None:
    """Another case (a URL's host comes back lower-cased), base64, a token's parts alone."""
    from facematch_async._responses import redact

    text = redact(f"before {echo()} after", (SECRET, TOKEN))
    assert "[REDACTED]" in text
    assert echo() not in text
