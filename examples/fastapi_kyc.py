"""A FastAPI onboarding service that owns one FaceMatchClient for its whole life.

    pip install "facematch-async[examples]"
    facematch-async sandbox --port 8080 &          # or point DEEPVUE_* at Deepvue
    DEEPVUE_BASE_URL=http://127.0.0.1:8080 DEEPVUE_CLIENT_ID=sandbox-client \\
        DEEPVUE_CLIENT_SECRET=sandbox-secret uvicorn examples.fastapi_kyc:app

    curl -F selfie=@selfie.jpg -F id_document=@id.png http://127.0.0.1:8000/kyc/face-match

What it shows:

- **One client, checked at start-up.** The lifespan builds the client (credentials from the
  ``DEEPVUE_*`` variables) and calls ``verify_credentials()``: a wrong secret, an inactive
  client id or an unreachable API fails the deploy, not the first customer. ``GET /readyz``
  answers 200 while the credentials hold (no network call while the token is fresh);
  ``GET /healthz`` answers 200 while the process does (for a liveness probe).
- **A deadline per request.** Every match may take ``KYC_DEADLINE`` seconds in all (10 by
  default): retries, backoff and ``Retry-After`` waits included. When the rest cannot cover
  the next wait, the client fails at once and the app is told to come back later.
- **Over the plan, an answer at once.** With ``DEEPVUE_RATE_LIMIT`` set (a plan, e.g.
  ``business``), a match whose slot is more than ``KYC_MAX_WAIT`` seconds away (0.5), or too
  late to be answered within its deadline, is refused before it is sent: 503
  ``rate_limited`` at once, with a ``Retry-After`` spread so that refused customers do not
  all come back in the same second.
- **Bounded uploads and memory.** A request body over two photos' limit is refused with 413
  while it is read (``KYC_MAX_BODY``), and at most ``KYC_MAX_IN_FLIGHT`` matches (16) hold
  their photos in memory at once; more are told to come back (503 ``busy``).
- **Cancel on disconnect.** When the HTTP client goes away (the app was closed, a load
  balancer gave up), the match is cancelled and one INFO line says so. That saves what was
  still ahead (the wait for a slot, retries, backoff); a request already on the wire to
  Deepvue cannot be unsent: it is answered, and billed, all the same.
  FastAPI does not do this by itself; see ``unless_disconnected``.
- **Answers a frontend can act on.** Every answer, errors included (FastAPI's own
  validation errors too), is one JSON shape with a stable ``code``::

      {"code": "no_face", "action": "retake", "message": "...", "field": null,
       "transaction_id": "2f6c...", "retry_after": null}

  Success adds ``match`` and ``confidence``. ``field`` names the service's own form field
  (``selfie`` or ``id_document``) when the answer is about one; ``transaction_id`` is
  Deepvue's id of the call whenever it gave one; ``retry_after`` (and the ``Retry-After``
  header) is set only when it is known, never invented.

  ============================  ======  ===========  ==========================================
  code                          status  action       meaning
  ============================  ======  ===========  ==========================================
  ``match``                     200     none         the same person
  ``no_match``                  200     none         not the same person
  ``no_face``                   422     retake       no face found in one of the two photos
  ``unsupported_format``        422     retake       ``field`` is not a JPEG or PNG photo
  ``image_too_large``           422     retake       ``field`` is over the size limit
  ``image_empty``               422     retake       ``field`` is an empty file
  ``image_corrupt``             422     retake       ``field`` is truncated or not decodable
  ``image_invalid``             422     retake       ``field`` cannot be used for another reason
  ``invalid_request``           422     fix_request  a form field is missing or not a file
  ``request_too_large``         413     retake       the upload is over two photos' limit
  ``rate_limited``              503     retry_later  Deepvue's rate limit; ``Retry-After`` if known
  ``busy``                      503     retry_later  too many matches in flight here
  ``upstream_unavailable``      503     retry_later  Deepvue is failing or unreachable, or refused
                                                     a fresh token again
  ``upstream_timeout``          503     retry_later  no answer within the deadline
  ``shutting_down``             503     retry_later  the service is stopping
  ``misconfigured``             500     none         the service's credentials or requests are
                                                     refused (logged at ERROR)
  ``not_found`` and others      4xx     fix_request  FastAPI's routing errors, same shape
  ============================  ======  ===========  ==========================================

- **A trace of every failure.** Each failed onboarding call is logged once at WARNING on the
  ``kyc`` logger (ERROR for ``misconfigured``): code, error type, ``sub_code``, HTTP status,
  ``transaction_id``, attempts and elapsed time; never a secret or a photo.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError as InvalidRequest
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facematch_async import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ClientClosedError,
    CorruptImageError,
    DeadlineExceededError,
    EmptyImageError,
    FaceMatchClient,
    FaceMatchError,
    ImageError,
    ImageTooLargeError,
    InternalServerError,
    InvalidTokenError,
    NoFaceFoundError,
    RateLimitError,
    UnsupportedFileFormatError,
)

T = TypeVar("T")
logger = logging.getLogger("kyc")

DEADLINE = float(os.environ.get("KYC_DEADLINE", "10"))  # seconds for a whole match
FIELDS = {"file_a": "selfie", "file_b": "id_document"}  # the client's names -> the form's
MB = 1024 * 1024
# Two photos at the client's limit (10 MB each), and room for the form around them.
MAX_BODY = int(os.environ.get("KYC_MAX_BODY", str(20 * MB + 64 * 1024)))
MAX_IN_FLIGHT = int(os.environ.get("KYC_MAX_IN_FLIGHT", "16"))  # matches holding photos
# Over the plan, a customer waits this long at most for a slot, else is answered at once
# (one spacing of the business plan, 2/s): the queue stays short, answers stay fast.
MAX_WAIT = float(os.environ.get("KYC_MAX_WAIT", "0.5"))
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away; nobody reads it


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if not (logger.handlers or logging.getLogger().handlers):  # plain uvicorn: say it
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    app.state.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with FaceMatchClient(
        max_retries=2, timeout=5, deadline=DEADLINE, max_slot_wait=MAX_WAIT
    ) as client:
        try:
            # Fails the start-up on wrong credentials or an unreachable API.
            await client.verify_credentials()
        except FaceMatchError as error:
            logger.error("start-up check of the Deepvue credentials failed: %r", error)
            raise
        app.state.facematch = client
        yield


class BodyLimit:
    """ASGI middleware: a request body over ``MAX_BODY`` bytes is refused with 413 as soon as
    it shows (its Content-Length, else the bytes read so far), before the rest is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY:
            await too_large(send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY and not refused:
                refused = True
                await too_large(send)
                return {"type": "http.disconnect"}  # the app stops reading: the client is gone
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:  # the 413 is the answer; the app's own is dropped
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise


async def too_large(send: Send) -> None:
    message = f"The upload is over {MAX_BODY / MB:.0f} MB: send two photos of 10 MB at most."
    response = Answer(413, "request_too_large", "retake", message)
    await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


app = FastAPI(title="KYC face match", lifespan=lifespan)
app.add_middleware(BodyLimit)


class Answer(JSONResponse):
    """The one shape every answer of this service has; ``code`` is kept for the log."""

    def __init__(
        self,
        status: int,
        code: str,
        action: str,
        message: str,
        *,
        field: str | None = None,
        transaction_id: str | None = None,
        retry_after: float | None = None,
        **extra: Any,
    ) -> None:
        seconds = None if retry_after is None else max(1, math.ceil(retry_after))
        body = {
            "code": code,
            "action": action,
            "message": message,
            "field": field,
            "transaction_id": transaction_id,
            "retry_after": seconds,
            **extra,
        }
        headers = {} if seconds is None else {"Retry-After": str(seconds)}
        super().__init__(body, status_code=status, headers=headers)
        self.code = code


def human_size(size: int) -> str:
    """``15.0 MB``, ``850 KB``: rounded up, so a file one byte over a 10 MB limit reads
    10.1 MB, never "10.0 MB, over the 10 MB limit"."""
    if size >= MB:
        return f"{math.ceil(size * 10 / MB) / 10:.1f} MB"
    return f"{math.ceil(size / 1024)} KB"


def upload_size(upload: UploadFile) -> int:
    if upload.size is not None:
        return upload.size
    upload.file.seek(0, os.SEEK_END)
    return upload.file.tell()


def image_answer(error: ImageError, uploads: dict[str, UploadFile], limit: int | None) -> Answer:
    """A retake answer naming the form field, in words a customer can act on."""
    field = FIELDS.get(error.field or "")
    name = (field or "photo").replace("_", " ")
    transaction_id = error.transaction_id
    if isinstance(error, NoFaceFoundError):
        # The API does not say which of the two photos it was.
        message = "No face was found in the selfie or the ID document: retake both photos."
        return Answer(422, "no_face", "retake", message, transaction_id=transaction_id)
    if isinstance(error, ImageTooLargeError) and field is not None and limit is not None:
        size = human_size(upload_size(uploads[field]))
        message = f"The {name} is {size}, over the {limit / MB:g} MB limit."
        return Answer(422, "image_too_large", "retake", message, field=field)
    if isinstance(error, UnsupportedFileFormatError):
        code, message = "unsupported_format", f"The {name} must be a JPEG or PNG photo."
    elif isinstance(error, EmptyImageError):
        code, message = "image_empty", f"The {name} is an empty file."
    elif isinstance(error, CorruptImageError):
        code, message = "image_corrupt", f"The {name} is damaged or cut short."
    else:
        code, message = "image_invalid", f"The {name} cannot be used: {error.message}"
    return Answer(422, code, "retake", message, field=field, transaction_id=transaction_id)


def failure_answer(error: FaceMatchError) -> Answer:
    """Outage (503, with a true ``Retry-After`` when known) or misconfiguration (500)."""
    transaction_id = error.transaction_id
    if isinstance(error, RateLimitError):
        # Deepvue's 429, or refused before it was sent: no slot early enough for the deadline.
        message = "Face matching is busy: try again shortly."
        return Answer(
            503,
            "rate_limited",
            "retry_later",
            message,
            transaction_id=transaction_id,
            retry_after=error.retry_after,
        )
    if isinstance(error, DeadlineExceededError | APITimeoutError):
        last = error.last_error if isinstance(error, DeadlineExceededError) else None
        message = (
            "Face matching did not answer in time: try again shortly."
            if error.attempts
            else "Face matching could not start in time: try again shortly."  # nothing sent
        )
        return Answer(
            503,
            "upstream_timeout",
            "retry_later",
            message,
            transaction_id=transaction_id,
            retry_after=getattr(last, "retry_after", None),
        )
    if isinstance(error, InternalServerError | APIConnectionError | APIResponseValidationError):
        message = "Face matching is unavailable: try again later."
        return Answer(
            503,
            "upstream_unavailable",
            "retry_later",
            message,
            transaction_id=transaction_id,
            retry_after=getattr(error, "retry_after", None),
        )
    if isinstance(error, InvalidTokenError):
        # A fresh token refused again (revoked under load, a clock edge): not the service's
        # configuration, which authorize just accepted.
        message = "Face matching refused its access token: try again shortly."
        return Answer(503, "upstream_unavailable", "retry_later", message)
    if isinstance(error, ClientClosedError):
        return Answer(503, "shutting_down", "retry_later", "The service is restarting.")
    # Refused credentials, an inactive client, an IP allow-list, a request the API calls
    # malformed: nothing the customer can change, and retrying will not help.
    message = "Face matching is not available: the service is misconfigured."
    return Answer(500, "misconfigured", "none", message, transaction_id=transaction_id)


def log_failure(code: str, error: BaseException, elapsed: float, what: str = "face match") -> None:
    """One line per failed call: what an on-call engineer needs, never a secret."""
    level = logging.ERROR if code == "misconfigured" else logging.WARNING
    logger.log(
        level,
        "%s failed: code=%s error=%s sub_code=%s status=%s transaction_id=%s "
        "attempts=%s elapsed_ms=%.0f",
        what,
        code,
        type(error).__name__,
        getattr(error, "sub_code", None),
        getattr(error, "status_code", None),
        getattr(error, "transaction_id", None),
        getattr(error, "attempts", None),
        elapsed * 1000,
    )


async def until_disconnected(request: Request) -> None:
    """Return when the HTTP client has gone away.

    Once the endpoint runs, the body has been read, so the next ASGI message is
    ``http.disconnect``: it arrives when the connection closes (or after the response).
    Waiting for it costs nothing, unlike polling ``request.is_disconnected()``.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``, cancelling it if the HTTP client goes away first (then ``None``).

    One watcher task: on disconnect it cancels this task (the handler, awaiting ``work``),
    and that cancellation, and only that one, is turned into ``None`` here.
    """
    handler = asyncio.current_task()
    assert handler is not None
    waiting, gone = True, False

    async def watch() -> None:
        nonlocal gone
        await until_disconnected(request)
        if waiting:
            gone = True
            handler.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and handler.uncancel() == 0:
            return None
        raise  # the server is cancelling the handler itself
    finally:
        waiting = False
        watcher.cancel()


@app.post("/kyc/face-match")
async def face_match(request: Request, selfie: UploadFile, id_document: UploadFile) -> Response:
    """Compare a selfie with an ID document and return the decision."""
    client: FaceMatchClient = request.app.state.facematch
    in_flight: asyncio.Semaphore = request.app.state.in_flight
    started = time.monotonic()
    if in_flight.locked():  # as many photos in memory as the service allows
        logger.warning("face match refused: code=busy in_flight=%d", MAX_IN_FLIGHT)
        message = "Face matching is busy: try again shortly."
        return Answer(503, "busy", "retry_later", message, retry_after=1)
    try:
        async with in_flight:
            # UploadFile.file is a binary file object: the client reads it off the loop.
            match = client.match(selfie.file, id_document.file)
            result = await unless_disconnected(request, match)
    except FaceMatchError as error:
        if isinstance(error, ImageError):
            uploads = {"selfie": selfie, "id_document": id_document}
            response = image_answer(error, uploads, client.max_image_bytes)
        else:
            response = failure_answer(error)
        log_failure(response.code, error, time.monotonic() - started)
        return response
    if result is None:
        elapsed_ms = (time.monotonic() - started) * 1000
        # What was still ahead is saved; a request already sent to Deepvue is not unsent.
        logger.info("the client went away after %.0f ms: match cancelled", elapsed_ms)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return Answer(
        200,
        "match" if result.match else "no_match",
        "none",
        "Same person." if result.match else "Not the same person.",
        transaction_id=result.transaction_id,
        match=result.match,
        confidence=result.confidence,
    )


@app.get("/healthz")
async def healthz() -> Response:
    """200 while the process answers: liveness, with no call to Deepvue (an outage there
    must not restart the service; ``/readyz`` takes it out of rotation instead)."""
    return Answer(200, "alive", "none", "Alive.")


@app.get("/readyz")
async def readyz(request: Request) -> Response:
    """200 while the credentials hold: no network call while the token is fresh."""
    client: FaceMatchClient = request.app.state.facematch
    started = time.monotonic()
    try:
        await client.verify_credentials(deadline=2)
    except FaceMatchError as error:
        response = failure_answer(error)
        log_failure(response.code, error, time.monotonic() - started, "readiness check")
        return response
    return Answer(200, "ready", "none", "Ready.")


@app.exception_handler(InvalidRequest)
async def invalid_request(request: Request, exc: InvalidRequest) -> Answer:
    """FastAPI's own validation errors, in the service's one shape."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = first.get("loc", ())
    field = str(location[-1]) if len(location) > 1 else None
    name = (field or "form field").replace("_", " ")
    if first.get("type") == "missing" and field is not None:
        message = f"The {name} is missing."
    elif "UploadFile" in str(first.get("msg", "")):  # text where a file belongs
        message = f"The {name} must be a file (a photo sent as a file part)."
    else:
        message = str(first.get("msg", "The request is not valid."))
    logger.warning("face match failed: code=invalid_request field=%s", field)
    return Answer(422, "invalid_request", "fix_request", message, field=field)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> Answer:
    """Routing errors (404, 405, ...) in the same shape."""
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    response = Answer(exc.status_code, code, "fix_request", str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response
