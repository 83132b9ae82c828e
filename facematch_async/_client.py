"""FaceMatchClient: configuration, lifecycle and ``match()``."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import itertools
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from facematch_async._auth import AccessToken, StaticTokenSource, TokenManager, token_from_response
from facematch_async._call_pacing import AttemptTimes, refuse_early, wait_for_slot, wait_or_stop
from facematch_async._deadline import Deadline, validate_deadline
from facematch_async._downscale import require_pillow
from facematch_async._events import RequestEvent, RequestHook
from facematch_async._images import (
    DEFAULT_IMAGE_READ_TIMEOUT,
    DEFAULT_MAX_IMAGE_BYTES,
    ImageInput,
    PreparedMatch,
    check_pair,
    load_pair,
    start_load,
)
from facematch_async._models import FaceMatchResult
from facematch_async._pacing import redact_url
from facematch_async._ratelimit import RateLimiter, Window, parse_rate_limit
from facematch_async._responses import RawResponse, parse_authorize, parse_facematch
from facematch_async._retry import RetryPolicy, call_with_retries
from facematch_async._transport import MultipartBody, Transport
from facematch_async.errors import (
    AuthenticationError,
    CallStoppedError,
    ClientClosedError,
    FaceMatchError,
    InactiveClientError,
    PermissionDeniedError,
)

__all__ = [
    "DEFAULT_IMAGE_READ_TIMEOUT",
    "DEFAULT_MAX_IMAGE_BYTES",
    "PRODUCTION_BASE_URL",
    "FaceMatchClient",
    "ImageInput",
    "PreparedMatch",
    "RateLimiter",
    "RetryPolicy",
]

T = TypeVar("T")
logger = logging.getLogger("facematch_async")

PRODUCTION_BASE_URL = "https://production.deepvue.tech"
DEFAULT_TIMEOUT = 30.0


class FaceMatchClient:
    """An async client for the Deepvue Face Match API.

    Hold one client for the life of a service (for example in a FastAPI lifespan) and
    share it between requests: it pools connections and shares one access token, which it
    renews before expiry and once more if the API rejects it.

    ```python
    async with FaceMatchClient(client_id="...", client_secret="...") as client:
        result = await client.match("selfie.jpg", "id_card.png")
    ```

    Args:
        client_id: Deepvue client id. Default: ``$DEEPVUE_CLIENT_ID``.
        client_secret: Deepvue client secret, also sent as ``x-api-key``.
            Default: ``$DEEPVUE_CLIENT_SECRET``. Never logged or shown in a repr or error.
        base_url: Default: ``$DEEPVUE_BASE_URL``, else production (``PRODUCTION_BASE_URL``).
        access_token: A token obtained elsewhere; the client then makes no authorize call
            and cannot renew it. ``client_secret`` is still needed for ``x-api-key``.
        timeout: Seconds for one attempt (connect, send, response), or an
            ``aiohttp.ClientTimeout``.
        deadline: Seconds a whole ``match`` call may take: image reads, token fetch, every
            attempt, backoff and ``Retry-After`` wait. Each attempt is cut to what is left,
            and a wait that does not fit is not started: the call raises at once
            (``RateLimitError`` for a 429, else ``DeadlineExceededError``). ``None`` (the
            default) for no budget: then ``timeout`` and ``max_retries`` alone bound a call.
            ``match(..., deadline=...)`` overrides it per call.
        max_retries: Retries after the first attempt for transient failures (connection
            errors, timeouts, 429, 500/502/503/504). ``0`` turns retries off.
        max_connections: The most connections open at once to the API.
        api_version: ``"v1"`` or ``"v2"`` (v2 also takes PDF documents and answers an
            integer confidence).
        max_image_bytes: Images larger than this are refused locally (or, with
            ``max_image_side``, downscaled until they fit); ``None`` for no limit.
        max_image_side: Opt-in (extra ``images``): downscale JPEG/PNG images whose longer
            side exceeds this many pixels before upload, upright by their EXIF orientation
            and in their own format. Smaller images are sent untouched.
        image_read_timeout: Seconds a pair's image files may take to read (a stuck network
            mount, a pipe given as a file object) before the call raises ``ImageReadError``;
            ``None`` for no limit. Only that call waits: other calls' reads go on.
        retry_policy: Backoff and ``Retry-After`` limits (see :class:`RetryPolicy`).
        on_request_start: Called with a :class:`RequestEvent` before each HTTP attempt.
        on_request_end: Called with the completed :class:`RequestEvent` after each attempt
            (status, outcome, latency), whether it succeeded, failed or was cancelled.
        trace_configs: aiohttp ``TraceConfig`` objects, passed to the session as they are.
        ssl_context: TLS settings, e.g. to trust a private CA. By default certificates and
            host names are verified against the system's CAs; there is no switch to turn
            verification off.
        rate_limit: Pace every attempt of every call (retries included) within the key's
            plan: ``"starter"``, ``"business"``, ``"growth"``, ``"enterprise"``, a spec
            such as ``"10/s,300/min,20000/day"``, or a :class:`RateLimiter`. Default:
            ``$DEEPVUE_RATE_LIMIT``, else none. A wait for a slot draws from the call's
            deadline; a 429 the windows did not predict lowers the rate, which recovers.
            The limiter is :attr:`rate_limiter`. Over the plan, a call is refused at once
            (``RateLimitError``, ``retry_after`` when to come back, nothing sent) when its
            slot, behind the calls already waiting, leaves no time for an attempt before
            its deadline.
        rate_limit_store: ``redis://host:6379/0`` (extra ``redis``): share the windows
            with every process, on any machine, that names the same Redis and client id.
            Default: ``$DEEPVUE_RATE_LIMIT_STORE``. Unreachable at the first call: the
            call fails naming the URL; lost later: a conservative local share, loudly.

        max_slot_wait: The longest a :meth:`match` call may wait for its rate-limit slot,
            the calls already waiting included; a call whose slot is further away is
            refused at once, as above. For a web service whose customers should wait at
            most a moment (one spacing of the plan, say); :meth:`send` (and so a batch)
            is not bounded by it. Default: as long as the deadline allows.

    Raises:
        ValueError: a missing credential or an invalid option.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        base_url: str | None = None,
        access_token: str | None = None,
        timeout: float | aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_retries: int = 2,
        max_connections: int = 100,
        api_version: Literal["v1", "v2"] = "v1",
        max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
        max_image_side: int | None = None,
        image_read_timeout: float | None = DEFAULT_IMAGE_READ_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        on_request_start: RequestHook | None = None,
        on_request_end: RequestHook | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        rate_limit: str | Sequence[Window] | RateLimiter | None = None,
        rate_limit_store: str | None = None,
        max_slot_wait: float | None = None,
    ) -> None:
        client_id = client_id or os.environ.get("DEEPVUE_CLIENT_ID")
        client_secret = client_secret or os.environ.get("DEEPVUE_CLIENT_SECRET")
        base_url = base_url or os.environ.get("DEEPVUE_BASE_URL") or PRODUCTION_BASE_URL
        if not client_secret:
            raise ValueError(
                "client_secret is required (or set DEEPVUE_CLIENT_SECRET): "
                "every call sends it as x-api-key"
            )
        if not access_token and not client_id:
            raise ValueError(
                "client_id is required (or set DEEPVUE_CLIENT_ID, or pass access_token)"
            )
        if api_version not in ("v1", "v2"):
            raise ValueError(f"api_version must be 'v1' or 'v2', not {api_version!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.deadline = validate_deadline(deadline)
        self.max_slot_wait = validate_deadline(max_slot_wait, "max_slot_wait")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        if max_image_side is not None:
            if max_image_side < 64:
                raise ValueError("max_image_side must be at least 64 pixels")
            require_pillow()
        if image_read_timeout is not None and not image_read_timeout > 0:
            raise ValueError("image_read_timeout must be more than 0 seconds, or None")
        if not isinstance(timeout, aiohttp.ClientTimeout):
            timeout = aiohttp.ClientTimeout(total=timeout)

        self.client_id = client_id
        self.api_version = api_version
        self.max_retries = max_retries
        self.max_image_bytes = max_image_bytes
        self.max_image_side = max_image_side
        self.image_read_timeout = image_read_timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._client_secret = client_secret
        self._on_request_start = on_request_start
        self._on_request_end = on_request_end
        self._transport = Transport(
            base_url,
            timeout=timeout,
            max_connections=max_connections,
            trace_configs=trace_configs,
            ssl_context=ssl_context,
        )
        self._tokens: TokenManager | StaticTokenSource = (
            StaticTokenSource(access_token) if access_token else TokenManager(self._authorize)
        )
        self.rate_limiter = _make_limiter(rate_limit, rate_limit_store, client_id)
        self._attempt_times = AttemptTimes()  # how long a face-match attempt takes here
        self._sent = [0]  # face-match requests on the wire; shared with with_options() copies
        self._derived = False  # a with_options() copy: the transport is not its own
        self._owns_limiter = True

    @classmethod
    def offline(
        cls,
        *,
        api_version: Literal["v1", "v2"] = "v1",
        max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
        max_image_side: int | None = None,
        image_read_timeout: float | None = DEFAULT_IMAGE_READ_TIMEOUT,
    ) -> FaceMatchClient:
        """A client that reads and checks images (:meth:`prepare`, :meth:`prepare_soon`)
        exactly as a real one, but makes no API call and needs no credentials: for a dry run
        (:func:`check_manifest`) or a test. Every API call raises
        :class:`ClientClosedError`."""
        client = cls(
            client_id="offline",
            client_secret="offline",  # noqa: S106 (never sent: the client makes no call)
            base_url="http://offline.invalid",
            api_version=api_version,
            max_image_bytes=max_image_bytes,
            max_image_side=max_image_side,
            image_read_timeout=image_read_timeout,
            rate_limit=RateLimiter(None),  # not the environment's: it paces nothing
        )
        client.rate_limiter = None
        client._transport.closed = True
        client._transport.closed_reason = "an offline client makes no API calls"
        return client

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._transport.base_url

    @property
    def requests_sent(self) -> int:
        """Face-match requests this client (and its :meth:`with_options` copies) has sent,
        retries included: what Deepvue may bill, answered or not."""
        return self._sent[0]

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._transport.closed

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, client_id={self.client_id!r}, "
            f"api_version={self.api_version!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (and the rate-limit store's). Safe to call twice; the
        client cannot be reused. A :meth:`with_options` copy closes only its own rate
        limiter: the connection pool and the token stay with the client it came from."""
        if not self._derived:
            self._tokens.close()
            await self._transport.aclose()
        if self.rate_limiter is not None and self._owns_limiter:
            await self.rate_limiter.aclose()

    def with_options(
        self,
        *,
        rate_limit: str | Sequence[Window] | RateLimiter | None = None,
        rate_limit_store: str | None = None,
        retry_policy: RetryPolicy | None = None,
        deadline: float | None = None,
    ) -> FaceMatchClient:
        """A copy of this client with other pacing, retries or deadline, sharing its
        connection pool and its access token (as ``openai``'s ``with_options``).

        How a batch with its own plan runs on a client that has none: the copy paces every
        attempt with ``rate_limit``. Options left out are this client's.

        Raises:
            ValueError: an invalid option.
        """
        other = copy.copy(self)
        other._derived, other._owns_limiter = True, False
        if rate_limit is not None:
            other.rate_limiter = _make_limiter(rate_limit, rate_limit_store, self.client_id)
            other._owns_limiter = True
        if retry_policy is not None:
            other.retry_policy = retry_policy
        if deadline is not None:
            other.deadline = validate_deadline(deadline)
        return other

    def _secrets(self) -> tuple[str, ...]:
        token = self._tokens.cached()
        return (self._client_secret,) if token is None else (self._client_secret, token)

    def _emit(self, hook: RequestHook | None, event: RequestEvent) -> None:
        if hook is None:
            return
        try:
            hook(event)
        except Exception:
            logger.exception("a request hook raised; the call goes on")

    async def _exchange(
        self,
        path: str,
        form: aiohttp.FormData | MultipartBody,
        headers: dict[str, str],
        parse: Callable[[RawResponse, tuple[str, ...]], T],
        secrets: tuple[str, ...],
        request_id: str,
        attempt: int,
    ) -> T:
        """POST once and parse the answer (``secrets`` redacted from any text kept), telling
        the logs and hooks how it went."""
        if self._on_request_start is not None:
            self._emit(self._on_request_start, RequestEvent(request_id, path, attempt))
        started = time.perf_counter()
        status: int | None = None
        outcome, sub_code, transaction_id = "ok", None, None
        try:
            response = await self._transport.post(path, form, headers)
            status = response.status
            result = parse(response, secrets)
            sub_code = getattr(result, "sub_code", None)
            transaction_id = getattr(result, "transaction_id", None)
            return result
        except FaceMatchError as error:
            outcome, sub_code, transaction_id = (
                type(error).__name__,
                error.sub_code,
                error.transaction_id,
            )
            raise
        except BaseException as error:  # cancellation included: metrics should see it
            outcome = type(error).__name__
            raise
        finally:
            latency = time.perf_counter() - started
            logger.debug(
                "POST %s request_id=%s attempt=%d status=%s outcome=%s sub_code=%s "
                "transaction_id=%s latency_ms=%.1f",
                path,
                request_id,
                attempt,
                status,
                outcome,
                sub_code,
                transaction_id,
                latency * 1000,
            )
            if self._on_request_end is not None:
                end = RequestEvent(
                    request_id,
                    path,
                    attempt,
                    status_code=status,
                    outcome=outcome,
                    sub_code=sub_code,
                    transaction_id=transaction_id,
                    latency=latency,
                )
                self._emit(self._on_request_end, end)

    async def _authorize(self) -> AccessToken:
        """One authorize exchange (with retries for transient failures)."""
        request_id, attempts = os.urandom(8).hex(), itertools.count(1)

        async def attempt() -> AccessToken:
            requested_at = time.monotonic()
            form = aiohttp.FormData(
                {"client_id": self.client_id or "", "client_secret": self._client_secret},
                default_to_multipart=True,
            )
            headers = {"x-api-key": self._client_secret}
            token, expiry, server_now = await self._exchange(
                "/v1/authorize",
                form,
                headers,
                parse_authorize,
                self._secrets(),
                request_id,
                next(attempts),
            )
            return token_from_response(token, expiry, requested_at, server_now)

        return await call_with_retries(
            attempt, max_retries=self.max_retries, policy=self.retry_policy
        )

    def _start_deadline(self, deadline: float | None) -> Deadline | None:
        """The budget of a call starting now: ``deadline``, else the client's default."""
        if deadline == math.inf:  # the batch runner's "none": the hot path, no checks
            return None
        seconds = self.deadline if deadline is None else validate_deadline(deadline)
        return None if seconds is None else Deadline(seconds)

    async def verify_credentials(self, *, deadline: float | None = None) -> None:
        """Check now that the API is reachable and takes the credentials: fetch a token.

        Call it at start-up (e.g. in a FastAPI lifespan) so that a wrong secret, an inactive
        client id or an unreachable ``base_url`` fails the deploy instead of the first
        customer's request. It costs one authorize call (no billed match), and none at all
        while the client holds a token that is not due for renewal, so a readiness probe
        may call it too. The token it fetches serves the following calls.

        With ``access_token=``, there is nothing it can check without a billed match: it
        returns at once (unless the client is closed).

        Args:
            deadline: Seconds to wait at most; default: the client's ``deadline``, if any.

        Raises:
            AuthenticationError: the credentials were refused.
            InactiveClientError: the client id is inactive.
            APIConnectionError: the API could not be reached (after the retries);
                ``DeadlineExceededError`` when ``deadline`` ran out first.
            ClientClosedError: the client is closed.
            PacingStoreError: the client's ``rate_limit_store`` cannot be reached.
            FaceMatchError: any other failure of the authorize call.
        """
        if self.closed:
            raise ClientClosedError(self._transport.closed_reason)
        budget = self._start_deadline(deadline)
        if budget is None:
            await self._check_now()
        else:
            await budget.run(self._check_now)

    async def _check_now(self) -> None:
        if self.rate_limiter is not None:
            await self.rate_limiter.start()  # a shared store: reachable now, or say so
        await self._tokens.get()

    async def prepare(
        self, file_a: ImageInput, file_b: ImageInput, *, deadline: float | None = None
    ) -> PreparedMatch:
        """Read and check both images, as :meth:`match` does before any network call.

        What :meth:`send` takes: prepare once, send (and retry) as often as needed. Calls
        that start in the same turn of the event loop share one worker-thread hop.

        Raises:
            ImageError: an image was refused (``field`` names it).
            DeadlineExceededError: ``deadline`` ran out first.
        """
        budget = self._start_deadline(deadline)
        return await self._prepare(file_a, file_b, budget)

    def prepare_soon(self, file_a: ImageInput, file_b: ImageInput) -> asyncio.Future[PreparedMatch]:
        """Start reading and checking both images now; the future holds :meth:`prepare`'s
        result or error. Pairs started in one turn of the event loop are read in one
        worker-thread hop (how the batch runner reads ahead); cancel the future to drop it.
        """
        if self.max_image_side is None:
            return start_load(
                file_a,
                file_b,
                max_bytes=self.max_image_bytes,
                allow_pdf=self.api_version == "v2",
                read_timeout=self.image_read_timeout,
            )
        # Downscaling is CPU work: each pair in a thread of its own, in parallel.
        return asyncio.ensure_future(self._prepare(file_a, file_b, None))

    async def check(self, file_a: ImageInput, file_b: ImageInput) -> None:
        """What a dry run checks of a pair, with no network call to the API: local images
        are read and checked as :meth:`prepare` reads them; an image in a store
        (:class:`ImageLocation` with a URL) is only asked about (inside its root, exists,
        within ``max_image_bytes``), never downloaded.

        Raises:
            ImageError: what :meth:`prepare` would raise (``field`` names the image).
        """
        await check_pair(
            file_a,
            file_b,
            max_bytes=self.max_image_bytes,
            allow_pdf=self.api_version == "v2",
            read_timeout=self.image_read_timeout,
        )

    async def _prepare(
        self, file_a: ImageInput, file_b: ImageInput, budget: Deadline | None
    ) -> PreparedMatch:
        load = functools.partial(
            load_pair,
            file_a,
            file_b,
            max_bytes=self.max_image_bytes,
            allow_pdf=self.api_version == "v2",
            max_side=self.max_image_side,
            read_timeout=self.image_read_timeout,
        )
        try:
            return await (load() if budget is None else budget.run(load))
        except FaceMatchError as error:
            error.attempts = 0
            raise

    async def match(
        self, file_a: ImageInput, file_b: ImageInput, *, deadline: float | None = None
    ) -> FaceMatchResult:
        """Ask the API whether two images show the same person.

        Both images are read and checked (JPEG or PNG by magic bytes, not empty, within
        ``max_image_bytes``, a path only if it is a regular file) before any network call,
        within ``image_read_timeout``: :meth:`prepare`, then :meth:`send`, under one
        deadline.

        Args:
            file_a: A path, bytes, or a binary file object: an ID document or a selfie.
            file_b: The same, for the other image.
            deadline: Seconds this call may take in all (see the client's ``deadline``);
                default: the client's. ``float("inf")`` for no budget on this call.

        Returns:
            The decision: ``match``, ``confidence`` and the call's ``transaction_id``.

        Raises:
            ImageError: an image was refused locally or by the API (``NoFaceFoundError``,
                ``UnsupportedFileFormatError``, ...).
            AuthenticationError: the credentials or the token were refused.
            RateLimitError: still rate limited after the retries, or its ``retry_after``
                (the server's, or the client's own rate limit's next slot) is longer than
                what is left of the deadline.
            DeadlineExceededError: the deadline ran out, or cannot cover the next backoff.
            APIConnectionError: no response after the retries.
            FaceMatchError: any other failure (see ``facematch_async.errors``); its
                ``attempts`` tells how many face-match requests the call sent.
        """
        budget = self._start_deadline(deadline)
        limiter = self.rate_limiter
        if limiter is None or (budget is None and self.max_slot_wait is None):
            prepared = await self._prepare(file_a, file_b, budget)
        else:
            # Over the plan: refuse before reading the images, not after; once admitted, the
            # call counts as waiting for its slot while its images are read.
            refuse_early(limiter, budget, self._attempt_times.typical, self.max_slot_wait)
            with limiter.queued():
                prepared = await self._prepare(file_a, file_b, budget)
        call = _MatchCall(self, prepared, None, budget, None, None, self.retry_policy)
        call.max_wait = self.max_slot_wait
        return await self._send(call)

    async def send(
        self,
        prepared: PreparedMatch,
        *,
        request_id: str | None = None,
        deadline: float | None = None,
        reserve: float | None = None,
        stop: asyncio.Event | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> FaceMatchResult:
        """Send a prepared match: the API call of :meth:`match`, with every attempt it takes
        (pacing, retries, token renewal), under one deadline: one call, one answer.

        Args:
            prepared: What :meth:`prepare` (or :meth:`prepare_soon`) returned.
            request_id: The id logs and :class:`RequestEvent` hooks show for the call (the
                batch runner passes each pair's id); default: a random one.
            deadline: As for :meth:`match`.
            reserve: The share of every window of the client's rate limit this call leaves
                to the key's other callers (a bulk job's ``0.25``); default: the rate
                limiter's own (0 unless it was built with one).
            stop: When this event is set, a call that is waiting (for a rate-limit slot, or
                between attempts) sends nothing more and raises :class:`CallStoppedError`;
                a request already on the wire is answered as usual.
            retry_policy: This call's retry rules; default: the client's ``retry_policy``.

        Raises:
            As :meth:`match`, but for the local image errors; and
            :class:`CallStoppedError` (``stop`` was set while the call waited).
        """
        if reserve is not None and not 0 <= reserve < 1:
            raise ValueError(f"reserve must be a share from 0 to below 1, not {reserve!r}")
        budget = self._start_deadline(deadline)
        policy = retry_policy or self.retry_policy
        call = _MatchCall(self, prepared, request_id, budget, reserve, stop, policy)
        return await self._send(call)

    async def _send(self, call: _MatchCall) -> FaceMatchResult:
        started = time.perf_counter()
        try:
            result = await call_with_retries(
                call.attempt,
                max_retries=self.max_retries,
                policy=call.policy,
                deadline=call.deadline,
                limiter=call.limiter,
                sleep=call.sleep,
            )
        except FaceMatchError as error:
            error.attempts = call.attempts
            error.latency = time.perf_counter() - started - call.waited
            raise
        if call.limiter is not None:
            call.limiter.on_success()
        latency = time.perf_counter() - started - call.waited
        return dataclasses.replace(result, attempts=call.attempts, latency=latency)

    async def _send_once(self, call: _MatchCall, token: str) -> FaceMatchResult:
        call.attempts += 1
        self._sent[0] += 1
        headers = {"Authorization": f"Bearer {token}", "x-api-key": self._client_secret}
        secrets = (self._client_secret, token)
        path = f"/{self.api_version}/facematch"
        started = time.perf_counter()
        try:
            result = await self._exchange(
                path, call.body, headers, parse_facematch, secrets, call.request_id, call.attempts
            )
        except FaceMatchError as error:
            if error.status_code is not None:  # answered: a measure of an attempt's time
                self._attempt_times.add(time.perf_counter() - started)
            raise
        self._attempt_times.add(time.perf_counter() - started)
        return result


def _make_limiter(
    rate_limit: str | Sequence[Window] | RateLimiter | None,
    store: str | None,
    client_id: str | None,
) -> RateLimiter | None:
    """The client's own pacing from its arguments, else ``$DEEPVUE_RATE_LIMIT`` and
    ``$DEEPVUE_RATE_LIMIT_STORE``; ``None`` without a rate limit."""
    if isinstance(rate_limit, RateLimiter):
        if store is not None:
            raise ValueError("rate_limit_store goes with a plan or spec, not a RateLimiter")
        return rate_limit
    # An empty argument is an error (parse_rate_limit says so); an empty variable is unset.
    if rate_limit is None:
        rate_limit = os.environ.get("DEEPVUE_RATE_LIMIT", "").strip() or None
    windows = parse_rate_limit(rate_limit)
    store = store or os.environ.get("DEEPVUE_RATE_LIMIT_STORE", "").strip() or None
    if not windows:
        if store is not None:
            raise ValueError("rate_limit_store needs a rate_limit (a plan or a spec)")
        return None
    if store is not None and not client_id:
        raise ValueError("rate_limit_store keys the shared windows by client_id: pass it")
    if store is not None and not store.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            "rate_limit_store must be a redis://, rediss:// or unix:// URL, not "
            f"{redact_url(store)!r}"
        )
    if store is not None:
        _check_store_url(store)
    return RateLimiter(windows, store=store, client_id=client_id)


def _check_store_url(url: str) -> None:
    """A malformed Redis URL fails when the client is built, as a bad argument (the
    batch's exit 2), not later as an unreachable store: redis-py's own parser judges, when
    the ``redis`` extra is installed (else the store says what to install)."""
    try:
        from redis.asyncio import ConnectionPool
        from redis.connection import parse_url
    except ImportError:  # pragma: no cover (depends on the install)
        return
    try:
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
        # An option redis-py does not know fails only when a connection is made: make one
        # (nothing is connected).
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"rate_limit_store {redact_url(url)!r} is not a Redis URL: {exc}"
        ) from None
    path = urlsplit(url).path.strip("/")
    if url.startswith(("redis://", "rediss://")) and path and "db" not in parsed:
        raise ValueError(f"rate_limit_store {redact_url(url)!r}: the database must be a number")


class _MatchCall:
    """One call's state across its attempts: an object rather than a closure, whose cells,
    function and counter would cost the garbage collector more per call."""

    __slots__ = (
        "attempts",
        "body",
        "client",
        "deadline",
        "limiter",
        "max_wait",
        "policy",
        "refreshed",
        "request_id",
        "reserve",
        "stop",
        "waited",
    )

    def __init__(
        self,
        client: FaceMatchClient,
        prepared: PreparedMatch,
        request_id: str | None,
        deadline: Deadline | None,
        reserve: float | None,
        stop: asyncio.Event | None,
        policy: RetryPolicy,
    ) -> None:
        self.client = client
        self.policy = policy
        self.max_wait: float | None = None  # match()'s max_slot_wait; none for send()
        self.body = MultipartBody(prepared)  # immutable: every attempt sends the same body
        self.request_id = request_id or os.urandom(8).hex()
        self.deadline = deadline
        self.limiter = client.rate_limiter
        self.reserve = reserve
        self.stop = stop
        self.attempts = 0
        self.refreshed = False
        self.waited = 0.0  # seconds spent waiting for slots and between attempts
        # The limiter hears how long each attempt took from its slot to the wire.
        self.body.listener = self.limiter

    async def attempt(self) -> FaceMatchResult:
        """One attempt, plus one more with a new token if the API rejects this one."""
        client = self.client
        token = await self._token_for_attempt()
        try:
            return await client._send_once(self, token)
        except (AuthenticationError, PermissionDeniedError) as error:
            # A rejected token is renewed once per call; other refusals are final.
            if (
                self.refreshed
                or not client._tokens.can_refresh
                or isinstance(error, InactiveClientError)
            ):
                raise
            self.refreshed = True
            client._tokens.invalidate(token)
            return await client._send_once(self, await self._token_for_attempt())

    async def _token_for_attempt(self) -> str:
        """Wait for a rate-limit slot, then pick the token.

        A token first (the authorize call is not paced), so that the request goes out as
        soon as the limiter lets it: the limiter counts it from then, and an authorize in
        between would let the server count it later. And the token is picked again after
        the wait, so that a long wait cannot leave the request with one that expired.
        """
        tokens = self.client._tokens
        if self.stop is not None and self.stop.is_set():
            raise CallStoppedError("stopped before the next attempt")
        limiter = self.limiter
        # Without windows and not paused (a batch with no rate limit), nothing to wait for.
        if limiter is not None and (limiter.windows or limiter.paused_for > 0):
            await tokens.get()
            started = time.perf_counter()
            try:
                await wait_for_slot(
                    limiter,
                    deadline=self.deadline,
                    reserve=self.reserve,
                    stop=self.stop,
                    wait_for_quota=self.policy.wait_for_quota,
                    attempt=self.client._attempt_times.typical,
                    max_wait=self.max_wait,
                )
            finally:
                self.waited += time.perf_counter() - started
        self.body.ready_at = time.monotonic()
        # A token still valid when the request reaches the API, not only now.
        return await tokens.get(ahead=self.client._attempt_times.typical)

    async def sleep(self, seconds: float) -> None:
        """Wait between two attempts; ``stop`` ends the wait, and the call."""
        started = time.perf_counter()
        try:
            await wait_or_stop(seconds, self.stop, "stopped while waiting to retry")
        finally:
            self.waited += time.perf_counter() - started
