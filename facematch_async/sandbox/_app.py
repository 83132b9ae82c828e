"""The aiohttp application: Deepvue's routes, checks and bodies, as the contract describes them.

Every request first passes :func:`_observe`, which counts it and plays any scripted response
queued for its path, then meets what production would put in its way, in the order a real
deployment would: the per-key rate limit (a gateway counts a request before the service
fails it), then any random fault. Only then does the route's handler run its checks. Added
latency holds the answer back once it is ready, as a slow service would: the request is
read and counted on arrival, so requests that arrive apart stay apart (a wait *before*
the work would wake many at once and make them queue for the one event loop).

The documented error bodies (``"Not authenticated"``, 422 ``loc``/``msg``/``type`` lists)
are FastAPI's own, so where the contract is silent the sandbox answers as a FastAPI
endpoint taking ``file_a: UploadFile, file_b: UploadFile`` does: a repeated field keeps its
last part, a part without a ``Content-Disposition`` name is a 400, a body that ends before
its closing boundary (its length as announced) loses the part it cut, and a path with a
trailing slash is redirected (307) to the route without it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from facematch_async.sandbox._choice import choose_engine
from facematch_async.sandbox._config import SandboxConfig
from facematch_async.sandbox._connections import ReadTimeouts
from facematch_async.sandbox._counters import SandboxCounters
from facematch_async.sandbox._engines import FaceEngine, TestEngine
from facematch_async.sandbox._random_faults import FaultInjector, FaultKind, FaultPlan
from facematch_async.sandbox._ratelimit import SlidingWindowLimiter, retry_after_header
from facematch_async.sandbox._scripted import ResponseScript
from facematch_async.sandbox._tokens import TokenAuthority
from facematch_async.sandbox._unknowns import UnknownAnswers

__all__ = ["SANDBOX_STATE", "SandboxState", "create_app"]

_log = logging.getLogger(__name__)

_AUTHORIZE_PATH = "/v1/authorize"
_FACEMATCH_PATHS = frozenset({"/v1/facematch", "/v2/facematch"})
_ROUTES = _FACEMATCH_PATHS | {_AUTHORIZE_PATH}
_RATE_LIMITED = "Rate limit exceeded. Please retry after some time."
# What nginx sends when the service behind it fails: HTML, not JSON.
_HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_FILE_FIELDS = ("file_a", "file_b")
_CHUNK = 64 * 1024
_MULTIPART_MARGIN = 1024 * 1024  # room for headers and boundaries around two full-size files

# What Starlette (under FastAPI) answers to a body it cannot parse as multipart.
_PARSE_ERROR = "There was an error parsing the body"
_NO_PART_NAME = 'The Content-Disposition header field "name" must be provided.'
_NOT_A_FILE = (
    "Expected UploadFile, received: <class 'str'>: the field must be a file upload "
    "(a multipart/form-data part with a filename), not a text value"
)
_READ_TIMEOUT = "Request timeout: the body was not received in time"
# File name extensions and part content types that --strict-uploads accepts, per version.
_STRICT_EXTENSIONS = {1: (".jpg", ".jpeg", ".png"), 2: (".jpg", ".jpeg", ".png", ".pdf")}
_STRICT_TYPES = {
    1: frozenset({"image/jpeg", "image/jpg", "image/png"}),
    2: frozenset({"image/jpeg", "image/jpg", "image/png", "application/pdf"}),
}

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PDF_MAGIC = b"%PDF-"


@dataclass
class SandboxState:
    """Everything the handlers share; one per application."""

    config: SandboxConfig
    engine: FaceEngine
    tokens: TokenAuthority
    scripted: ResponseScript
    counters: SandboxCounters
    limiter: SlidingWindowLimiter
    read_timeouts: ReadTimeouts
    answers: UnknownAnswers
    random_faults: FaultInjector | None = None


SANDBOX_STATE = web.AppKey("sandbox_state", SandboxState)

_DROPPED = 499  # the status of the placeholder response to a dropped connection
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: SandboxConfig) -> web.Application:
    """Build the sandbox application; its state is at ``app[SANDBOX_STATE]``."""
    app = web.Application(
        middlewares=[_observe],
        # Large enough that an oversize upload reaches the handler, which answers 413 itself.
        client_max_size=config.max_upload_bytes * 2 + _MULTIPART_MARGIN,
    )
    app[SANDBOX_STATE] = SandboxState(
        config=config,
        engine=_engine(config.engine),
        tokens=TokenAuthority(config.client_id, config.token_ttl, config.jwt_secret),
        scripted=ResponseScript(),
        counters=SandboxCounters(),
        limiter=SlidingWindowLimiter(config.rate_windows),
        read_timeouts=ReadTimeouts(config.read_timeout),
        answers=UnknownAnswers(config),
        random_faults=FaultInjector(config.faults) if config.faults is not None else None,
    )
    app.router.add_post(_AUTHORIZE_PATH, _authorize)
    app.router.add_post("/v1/facematch", _facematch_v1)
    app.router.add_post("/v2/facematch", _facematch_v2)
    return app


def _engine(engine: FaceEngine | str | None) -> FaceEngine:
    """The configured engine: as given, chosen by name, or the default test engine."""
    if engine is None:
        return TestEngine()
    if isinstance(engine, str):
        return choose_engine(engine)
    return engine


@web.middleware
async def _observe(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Count the request; answer it from the script, production's conditions or the handler."""
    state = request.app[SANDBOX_STATE]
    with state.read_timeouts.handling(request):  # its headers are in: no header bound now
        return await _answer(request, handler, state)


async def _answer(
    request: web.Request, handler: _Handler, state: SandboxState
) -> web.StreamResponse:
    """What :func:`_observe` answers."""
    counters = state.counters
    if request.path == _AUTHORIZE_PATH and request.method == "POST":
        counters.authorize_calls += 1
    counters.in_flight += 1
    counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
    status = 0  # stays 0 when the connection is dropped or the client goes away
    response: web.StreamResponse | None
    try:
        scripted = state.scripted.take(request.path)
        if scripted is not None:
            if scripted.delay:
                await asyncio.sleep(scripted.delay)
            if scripted.drop:
                return _drop(request)
            if scripted.status is not None:
                response = scripted.to_response()
                status = response.status
                return response
        plan = state.random_faults.plan(request.path) if state.random_faults is not None else None
        response = await _production_conditions(request, state, plan)
        if response is None:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _framework_error(request, exc)
        if plan is not None and plan.latency > 0:
            state.counters.faults_injected["latency"] += 1
            await asyncio.sleep(plan.latency)
        if response.status == _DROPPED:
            return _drop(request)
        status = response.status
        return response
    finally:
        counters.in_flight -= 1
        counters.record(request.path, status)


async def _production_conditions(
    request: web.Request, state: SandboxState, plan: FaultPlan | None
) -> web.StreamResponse | None:
    """The rate limit and random faults; ``None`` lets the handler answer."""
    limited = _rate_limit(request, state)
    if limited is not None:
        return limited
    if plan is None or plan.kind is None:
        return None
    state.counters.faults_injected[plan.kind] += 1
    if plan.kind == "drop":
        return web.Response(status=_DROPPED)  # dropped after the latency, as others answer
    if plan.kind == "stall":
        # Then handled normally, if the client is still there (handler_cancellation ends
        # the handler when it is not).
        await asyncio.sleep(plan.stall_seconds)
        return None
    if plan.kind == "revoke":
        _revoke_bearer(request, state)
        return None
    return _fault_response(plan.kind, state.config)


def _rate_limit(request: web.Request, state: SandboxState) -> web.Response | None:
    """Count a facematch request against its key's windows; a 429 when one is full."""
    api_key = request.headers.get("x-api-key", "")
    # Only the known key is counted: others are refused anyway, and counting any key a
    # caller invents would let memory grow without bound.
    if request.path not in _FACEMATCH_PATHS or not _same(api_key, state.config.client_secret):
        return None
    decision = state.limiter.check(api_key)
    if decision.allowed:
        state.counters.record_window_use(decision.in_window)
        return None
    assert decision.window is not None  # a refusal names its window
    state.counters.rate_limited[decision.window.label] += 1
    headers = {}
    if state.config.retry_after:
        headers["Retry-After"] = retry_after_header(decision.retry_after)
    return _json_error(429, _RATE_LIMITED, headers=headers)


def _framework_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """A router or framework error (404, 405, 413) in FastAPI's JSON shape, or Starlette's
    redirect of a path that differs from a route by a trailing slash."""
    redirect = _without_trailing_slash(request) if exc.status == 404 else None
    if redirect is not None:  # not `redirect or ...`: an aiohttp 3.11 response is falsy
        return redirect
    return _json_error(exc.status, exc.reason, headers=exc.headers)


def _without_trailing_slash(request: web.Request) -> web.Response | None:
    """Starlette's 307 from ``/v1/facematch/`` to ``/v1/facematch`` (any method, query kept);
    ``None`` when the path without its trailing slashes is no route either."""
    raw_path, mark, query = request.raw_path.partition("?")
    target = raw_path.rstrip("/")
    if target == raw_path or target not in _ROUTES:
        return None
    location = f"{request.url.origin()}{target}{mark}{query}"
    return web.Response(status=307, headers={hdrs.LOCATION: location})


def _revoke_bearer(request: web.Request, state: SandboxState) -> None:
    """Revoke the request's bearer token, as if the provider had just invalidated it."""
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    if token.strip():
        state.tokens.revoke(token.strip())


def _fault_response(kind: FaultKind, config: SandboxConfig) -> web.Response:
    """The answer of an injected error fault."""
    if kind == "500":
        return _json_error(500, "Internal Server Error")
    if kind == "503":
        return _json_error(503, "Source Unavailable")
    if kind == "html_502":
        return web.Response(status=502, text=_HTML_502, content_type="text/html")
    if kind == "429":
        headers = {"Retry-After": "1"} if config.retry_after else {}
        return _json_error(429, _RATE_LIMITED, headers=headers)
    raise ValueError(f"fault {kind!r} has no response of its own")


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the socket without a byte of answer."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp's attempt to write this to the closed socket fails quietly.
    return web.Response(status=_DROPPED)


async def _authorize(request: web.Request) -> web.StreamResponse:
    """``POST /v1/authorize``: form credentials in, a bearer token out."""
    state = request.app[SANDBOX_STATE]
    config = state.config
    try:
        async with state.read_timeouts.reading_body(request):
            form = await request.post()  # both multipart/form-data and x-www-form-urlencoded
    except TimeoutError:
        return await _read_timed_out(request)
    except _MALFORMED_ERRORS:
        _log.debug("unparseable authorize body", exc_info=True)
        return _json_error(400, _PARSE_ERROR)
    client_id = form.get("client_id")
    client_secret = form.get("client_secret")
    if not isinstance(client_id, str) or not isinstance(client_secret, str):
        missing = [
            name for name in ("client_id", "client_secret") if not isinstance(form.get(name), str)
        ]
        return _missing_fields(missing)
    # Both comparisons always run, so timing does not tell which one failed.
    id_ok = _same(client_id, config.client_id)
    secret_ok = _same(client_secret, config.client_secret)
    if not (id_ok and secret_ok):
        return _json_error(401, "Invalid client_id or client_secret, access Denied")
    if config.inactive:
        return _json_error(400, "Inactive client_id")
    issued = state.tokens.issue()
    state.counters.tokens_issued += 1
    return web.json_response(
        {"access_token": issued.access_token, "token_type": "bearer", "expiry": issued.expiry}
    )


async def _facematch_v1(request: web.Request) -> web.StreamResponse:
    """``POST /v1/facematch``: JPEG/PNG only; float confidence and a timestamp."""
    return await _facematch(request, version=1)


async def _facematch_v2(request: web.Request) -> web.StreamResponse:
    """``POST /v2/facematch``: also PDF; ``code: 200``, integer confidence, no timestamp."""
    return await _facematch(request, version=2)


async def _facematch(request: web.Request, version: Literal[1, 2]) -> web.StreamResponse:
    """Run the checks in Deepvue's order, then the engine."""
    state = request.app[SANDBOX_STATE]
    config = state.config

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    key_ok = _same(request.headers.get("x-api-key", ""), config.client_secret)
    # An inactive client cannot get a token, so it is known by its key (or an older token).
    if config.inactive and (key_ok or (bearer and state.tokens.verify(bearer))):
        return _json_error(400, "Inactive client_id")
    if not bearer:
        return _json_error(401, "Not authenticated")
    if not state.tokens.verify(bearer):
        return _json_error(state.answers.token_refusal_status(), "Not a valid token")
    if not key_ok:
        return _json_error(401, "Could not validate credentials")

    try:
        async with state.read_timeouts.reading_body(request):
            form = await _read_form(request, config.max_upload_bytes)
    except TimeoutError:
        return await _read_timed_out(request)
    except _TooLarge:
        return _json_error(413, "File too large")
    except _Malformed as exc:
        return _json_error(400, str(exc))
    if form.text_fields:  # the fields are there, as text: say so, not "field required"
        return _validation_errors(
            (name, _NOT_A_FILE, "value_error") for name in sorted(form.text_fields)
        )
    missing = [name for name in _FILE_FIELDS if name not in form.files]
    if missing:
        return _missing_fields(missing)
    part_a, part_b = form.files["file_a"], form.files["file_b"]

    accepted = (_JPEG_MAGIC, _PNG_MAGIC, _PDF_MAGIC) if version == 2 else (_JPEG_MAGIC, _PNG_MAGIC)
    formats_ok = part_a.data.startswith(accepted) and part_b.data.startswith(accepted)
    if config.strict_uploads:
        formats_ok = formats_ok and _strictly_ok(part_a, version) and _strictly_ok(part_b, version)
    if not formats_ok:
        return _verdict_error(
            version,
            state.answers.verdict_status(),
            "UNSUPPORTED_FILE_FORMAT",
            "File format not supported",
            "Unsupported file type, only .jpeg, .jpg, .png file formats are supported",
        )

    image_a, image_b = part_a.data, part_b.data
    try:
        if type(state.engine) is TestEngine:  # a regex search: cheaper than a thread hop
            verdict = state.engine.compare(image_a, image_b)
        else:  # a real engine may take seconds; keep the event loop free
            verdict = await asyncio.to_thread(state.engine.compare, image_a, image_b)
    except Exception:
        _log.exception("face engine %r failed", state.engine.name)
        return _json_error(500, "Internal Server Error")
    if not verdict.face_found:
        return _verdict_error(
            version,
            state.answers.verdict_status(),
            "NO_FACE_FOUND",
            "Unable to detect face",
            "Not able to locate any faces in at least one of the images. Check the image files.",
        )

    body: dict[str, Any] = {"code": None, "timestamp": _now_ms()} if version == 1 else {"code": 200}
    # v1's null (the vendor's own example) and the scale are production's unknowns.
    confidence = state.answers.confidence(verdict.confidence, version)
    body.update(
        transaction_id=_transaction_id(),
        sub_code="SUCCESS",
        message="Face match successful",
        data={"match": verdict.match, "confidence": confidence},
    )
    return web.json_response(body)


@dataclass(frozen=True)
class _FilePart:
    """A file part as received: its bytes, file name and ``Content-Type`` (if it had one)."""

    data: bytes
    filename: str
    content_type: str | None


@dataclass
class _Form:
    """The facematch fields a body carried."""

    files: dict[str, _FilePart] = field(default_factory=dict)
    text_fields: set[str] = field(default_factory=set)  # file fields sent as plain values


class _Malformed(Exception):
    """The body cannot be parsed as the multipart it claims to be (the message says how)."""


# What a malformed or cut-short body raises while aiohttp parses it: ValueError (bad or
# missing boundaries, a body that ends before the closing boundary), LineTooLong and the
# payload errors of a connection that closes mid-body (HttpProcessingError), the
# AssertionError some of aiohttp's multipart checks use, and the IndexError aiohttp 3.11
# raises on a parameter with an empty value (`name=`, as a cut header ends).
_MALFORMED_ERRORS = (ValueError, AssertionError, IndexError, HttpProcessingError)


def _strictly_ok(part: _FilePart, version: Literal[1, 2]) -> bool:
    """Whether ``part``'s file name and content type name a format the route accepts.

    A part with no ``Content-Type`` (``requests``' ``files=`` sends none) is judged by its
    file name alone; ``application/octet-stream`` (Go, Ruby, Node's ``Blob``) fails.
    """
    if not part.filename.lower().endswith(_STRICT_EXTENSIONS[version]):
        return False
    if part.content_type is None:
        return True
    media_type = part.content_type.partition(";")[0].strip().lower()
    return media_type in _STRICT_TYPES[version]


class _TooLarge(Exception):
    """A multipart part exceeded the upload limit."""


async def _read_form(request: web.Request, limit: int) -> _Form:
    """The ``file_a``/``file_b`` fields as a FastAPI endpoint sees them, files read whole.

    As Starlette reads a form: a field sent twice keeps its last part (a file, or a plain
    value noted as such), and a body that ends before its closing boundary, its length as
    announced, keeps the parts it completed and loses the one it cut (the caller answers
    422 for what is missing). An empty body, or one neither multipart nor a url-encoded
    form, yields nothing.

    Raises:
        _TooLarge: a part exceeded ``limit``.
        _Malformed: the multipart body is broken (no or a wrong boundary, bad part headers,
            a part without a name, the connection lost mid-body).
    """
    # Not request.content_type: it parses the header with the email package, which costs
    # more than the rest of the request (aiohttp's reader below checks it anyway).
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
    media_type = content_type.partition(";")[0].strip().lower()
    form = _Form()
    if media_type == "application/x-www-form-urlencoded":  # requests' data= without files=
        try:
            fields = await request.post()
        except _MALFORMED_ERRORS as exc:
            raise _Malformed(_PARSE_ERROR) from exc
        form.text_fields.update(name for name in _FILE_FIELDS if name in fields)
        return form
    if media_type != "multipart/form-data":
        return form
    if "boundary=" not in content_type.lower():
        raise _Malformed("Missing boundary in multipart.")  # Starlette's words
    if not request.body_exists:
        return form
    started = False  # the first boundary was found
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            started = True
            if request.content.at_eof():
                return form  # the body ended within this part's headers: the part is lost
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: next() drains it
            if part.name is None:
                raise _Malformed(_NO_PART_NAME)
            if part.name not in _FILE_FIELDS:
                continue  # an unknown field: next() drains it without keeping its bytes
            # Read whole before it counts: a part the body's end cuts is never kept.
            data = await _read_bounded(part, limit)
            if part.filename is None:
                form.files.pop(part.name, None)
                form.text_fields.add(part.name)
            else:
                content = part.headers.get(hdrs.CONTENT_TYPE)
                form.files[part.name] = _FilePart(data, part.filename, content)
                form.text_fields.discard(part.name)
    except _MALFORMED_ERRORS as exc:
        if started and not isinstance(exc, HttpProcessingError) and request.content.at_eof():
            return form  # all the body announced arrived, but it ended before its closing
        _log.debug("unparseable multipart body", exc_info=True)
        raise _Malformed(_PARSE_ERROR) from exc
    return form


async def _read_bounded(part: BodyPartReader, limit: int) -> bytes:
    """Read ``part`` whole, refusing more than ``limit`` bytes.

    Raises:
        _TooLarge: the part is larger than ``limit``.
        ValueError: the body ended before the part's closing boundary.
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    if not part.at_eof():  # aiohttp's reader stops at the body's end without a word
        raise ValueError("the body ended inside a part")
    return b"".join(chunks)


def _same(given: str, expected: str) -> bool:
    """Constant-time string equality."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _json_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A FastAPI-style ``{"detail": ...}`` error; keeps ``headers`` such as ``Allow``."""
    kept = {
        name: value
        for name, value in (headers or {}).items()
        if name.lower() not in {"content-type", "content-length"}
    }
    return web.json_response({"detail": detail}, status=status, headers=kept)


def _missing_fields(names: Iterable[str]) -> web.Response:
    """FastAPI's 422 for missing form fields."""
    return _validation_errors((name, "field required", "value_error.missing") for name in names)


def _validation_errors(errors: Iterable[tuple[str, str, str]]) -> web.Response:
    """FastAPI's 422: one ``{loc, msg, type}`` per ``(field, msg, type)``."""
    detail = [{"loc": ["body", name], "msg": msg, "type": kind} for name, msg, kind in errors]
    return web.json_response({"detail": detail}, status=422)


async def _read_timed_out(request: web.Request) -> web.StreamResponse:
    """408 for a body not received within ``read_timeout``, then the connection is closed.

    Sent and closed here: left to aiohttp, the connection would linger (up to 10 s) to
    drain the rest of a body that may never come.
    """
    response = _json_error(408, _READ_TIMEOUT)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after the answer: close() flushes what is buffered
    return response


def _verdict_error(
    version: Literal[1, 2], status: int, sub_code: str, message: str, detail: str
) -> web.Response:
    """An answer with a ``sub_code``, shaped like Deepvue's NO_FACE_FOUND example.

    On v2 it takes v2's envelope, as its success does: ``code`` carries the HTTP status and
    there is no ``timestamp`` (the contract shows no v2 error: an assumption).
    """
    head: dict[str, Any] = (
        {"code": None, "timestamp": _now_ms()} if version == 1 else {"code": status}
    )
    body = {
        **head,
        "transaction_id": _transaction_id(),
        "sub_code": sub_code,
        "message": message,
        "detail": detail,
    }
    return web.json_response(body, status=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _transaction_id() -> str:
    return uuid.uuid4().hex
