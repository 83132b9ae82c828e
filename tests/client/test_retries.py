"""Retries: which failures are retried, how long between attempts, and when to stop."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from facematch_async import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    FaceMatchError,
    RateLimiter,
    RateLimitError,
    RetryPolicy,
)
from facematch_async._responses import parse_retry_after
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import RATE_LIMITED, Faces, MakeClient

FACEMATCH = "/v1/facematch"


def facematch_requests(sandbox: SandboxServer) -> int:
    return sum(n for (path, _), n in sandbox.counters.requests.items() if path == FACEMATCH)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried_until_success(
    client, faces: Faces, sandbox: SandboxServer, status: int
) -> None:
    """429, 500, 502, 503 and 504 are retried; a fresh multipart body goes out each time."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=status, json={"detail": "x"}, times=2)
    )
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert facematch_requests(sandbox) == 3


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422, 501])
async def test_other_errors_are_not_retried(
    client, faces: Faces, sandbox: SandboxServer, status: int
) -> None:
    """Other 4xx (and 501) are final after one request."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=status, json={"detail": "no"}))
    with pytest.raises(FaceMatchError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    assert getattr(caught.value, "status_code", None) == status
    assert facematch_requests(sandbox) == 1


async def test_bad_request_is_typed(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A 400 without a known detail raises BadRequestError."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=400, json={"detail": "Bad"}))
    with pytest.raises(BadRequestError):
        await client.match(faces.alice_png, faces.alice_jpg)


async def test_max_retries_bounds_the_attempts(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """max_retries=3 makes four attempts at most, then raises the last error."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=503, json={"detail": "Source Unavailable"}, times=10
        )
    )
    client = make_client(max_retries=3)
    with pytest.raises(FaceMatchError, match="Source Unavailable"):
        await client.match(faces.alice_png, faces.alice_jpg)
    assert facematch_requests(sandbox) == 4


async def test_zero_retries_makes_one_attempt(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """max_retries=0 turns retries off."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=429, json=RATE_LIMITED))
    with pytest.raises(RateLimitError):
        await make_client(max_retries=0).match(faces.alice_png, faces.alice_jpg)
    assert facematch_requests(sandbox) == 1


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"Retry-After": "1"}, 1.0), ({"retry-after-ms": "600"}, 0.6)],
)
async def test_retry_after_is_honoured(
    client, faces: Faces, sandbox: SandboxServer, headers: dict[str, str], wait: float
) -> None:
    """The client waits at least what Retry-After / retry-after-ms asks before retrying."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=429, json=RATE_LIMITED, headers=headers)
    )
    started = time.monotonic()
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert time.monotonic() - started >= wait
    assert facematch_requests(sandbox) == 2


async def test_retry_after_past_the_cap_is_raised_with_its_value(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A Retry-After longer than max_retry_after is not waited out: it is raised at once."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=429, json=RATE_LIMITED, headers={"Retry-After": "3600"}
        )
    )
    client = make_client(retry_policy=RetryPolicy(max_retry_after=10))
    started = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    assert time.monotonic() - started < 5
    assert caught.value.retry_after == 3600
    assert facematch_requests(sandbox) == 1


async def test_dropped_connection_is_retried(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A connection closed before any response is retried and the call succeeds."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, drop=True, times=2))
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True


async def test_persistent_drops_raise_connection_error(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Drops on every attempt end in APIConnectionError."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, drop=True, times=10))
    with pytest.raises(APIConnectionError):
        await make_client(max_retries=1).match(faces.alice_png, faces.alice_jpg)


async def test_stalled_response_times_out_then_retries(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A response slower than the timeout raises APITimeoutError per attempt, then is retried."""
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=3.0))
    client = make_client(timeout=0.5)
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=3.0, times=5))
    with pytest.raises(APITimeoutError):
        await make_client(timeout=0.3, max_retries=1).match(faces.alice_png, faces.alice_jpg)


async def test_unreachable_server_is_a_connection_error(faces: Faces) -> None:
    """Nothing listening on the port: APIConnectionError after the retries."""
    from facematch_async import FaceMatchClient
    from tests.helpers import FAST_RETRIES

    async with FaceMatchClient(
        client_id="a", client_secret="b", base_url="http://127.0.0.1:9", retry_policy=FAST_RETRIES
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.match(faces.alice_png, faces.alice_jpg)


def test_retry_after_parsing() -> None:
    """Seconds, milliseconds and HTTP dates are read; garbage and naive dates are ignored."""
    now = time.time()
    http_date = format_datetime(
        datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True
    )
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after": "-3"}) == 0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": http_date}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


class RecordingLimiter(RateLimiter):
    """The real limiter, noting what each call tells it."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.slots = 0
        self.heard: list[float | None] = []
        self.delays: list[float] = []

    async def acquire(self, **options: Any) -> None:
        await super().acquire(**options)
        self.slots += 1

    def on_rate_limited(self, retry_after: float | None, *, cap: float = 60.0) -> bool:
        self.heard.append(retry_after)
        return super().on_rate_limited(retry_after, cap=cap)

    def on_sent(self, delay: float) -> None:
        self.delays.append(delay)
        super().on_sent(delay)


async def test_the_rate_limiter_paces_every_attempt_and_hears_each_429(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A client's rate limiter gives every attempt its slot (retries too), hears every 429
    (and holds every caller back its Retry-After), and hears when each attempt reached the
    wire (what a learned margin adds)."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH, status=429, json=RATE_LIMITED, headers={"retry-after-ms": "300"}
        )
    )
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "x"}))
    limiter = RecordingLimiter("50/s")
    client = make_client(rate_limit=limiter)
    prepared = await client.prepare(faces.alice_png, faces.alice_jpg)
    started = time.monotonic()
    result = await client.send(prepared)
    assert result.match is True and result.attempts == 3
    assert limiter.slots == 3
    assert limiter.heard == [0.3]
    assert time.monotonic() - started >= 0.3  # the 429's pause held the retry back
    assert len(limiter.delays) == 3 and all(0 <= delay < 5 for delay in limiter.delays)
