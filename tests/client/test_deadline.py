"""A call's total deadline, and checking the credentials at start-up, against the sandbox."""

from __future__ import annotations

import math
import socket
import time

import pytest

from facematch_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    DeadlineExceededError,
    FaceMatchClient,
    InactiveClientError,
    InternalServerError,
    RateLimitError,
    RetryPolicy,
    UnsupportedFileFormatError,
)
from facematch_async._deadline import Deadline, validate_deadline
from facematch_async.sandbox import FaultConfig, SandboxConfig, SandboxServer, ScriptedResponse
from tests.helpers import AUTHORIZE, CLIENT_ID, CLIENT_SECRET, FACEMATCH, Faces, MakeClient

MARGIN = 1.5  # seconds a call may end after its deadline on a busy CI machine


def unavailable() -> ScriptedResponse:
    return ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "Source Unavailable"})


async def test_a_stalled_api_ends_within_the_deadline(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Every request stalls 30 s; timeout=20 and 2 retries would hold the call a minute.
    With deadline=3 it ends with DeadlineExceededError after about 3 s."""
    sandbox.set_random_faults(FaultConfig(stall_rate=1.0, stall_seconds=30.0))
    client = make_client(timeout=20.0, max_retries=2, deadline=3)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    elapsed = time.monotonic() - started
    assert 2.9 <= elapsed <= 3 + MARGIN
    assert caught.value.deadline == 3.0
    assert caught.value.attempts == 1
    assert isinstance(caught.value, APITimeoutError)  # callers that catch timeouts see it


async def test_each_attempt_is_cut_to_what_is_left(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """timeout=1 per attempt, deadline=2.5: attempts time out and are retried, and the
    last one is cut off when the deadline passes, not a whole timeout later."""
    sandbox.set_random_faults(FaultConfig(stall_rate=1.0, stall_seconds=30.0))
    fast = RetryPolicy(backoff_initial=0.05, backoff_max=0.05, backoff_jitter=0.0)
    client = make_client(timeout=1.0, max_retries=10, retry_policy=fast, deadline=2.5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    elapsed = time.monotonic() - started
    assert 2.4 <= elapsed <= 2.5 + MARGIN
    assert caught.value.attempts == 3  # 1 s, 1 s, then the last 0.4 s


async def test_a_retry_after_longer_than_what_is_left_raises_at_once(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 429 asking for 10 s with 3 s left: RateLimitError with retry_after 10, now,
    instead of waiting out 10 s (within max_retry_after) to answer after the deadline."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=429,
            json={"detail": "Rate limited"},
            headers={"Retry-After": "10"},
        )
    )
    client = make_client(deadline=3)
    started = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after == 10.0
    assert caught.value.attempts == 1
    assert sandbox.counters.count(FACEMATCH) == 1


async def test_a_retry_after_that_fits_is_waited_out(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 429 asking for 1 s with 5 s left is waited out, and the retry answers."""
    sandbox.scripted.add(
        ScriptedResponse(
            path=FACEMATCH,
            status=429,
            json={"detail": "Rate limited"},
            headers={"Retry-After": "1"},
        )
    )
    client = make_client(deadline=5)
    started = time.monotonic()
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert time.monotonic() - started >= 1.0
    assert sandbox.counters.count(FACEMATCH, 429) == 1
    assert sandbox.counters.count(FACEMATCH, 200) == 1


async def test_a_backoff_that_does_not_fit_raises_deadline_exceeded_at_once(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 503 whose backoff (5 s) is longer than what is left (2 s): DeadlineExceededError
    now, carrying the 503 as its last_error and cause."""
    sandbox.scripted.add(unavailable())
    slow = RetryPolicy(backoff_initial=5.0, backoff_jitter=0.0)
    client = make_client(retry_policy=slow, deadline=2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    assert time.monotonic() - started < 1.0
    assert isinstance(caught.value.last_error, InternalServerError)
    assert caught.value.__cause__ is caught.value.last_error
    assert "5.00 s" in caught.value.message
    assert sandbox.counters.count(FACEMATCH) == 1


async def test_without_a_deadline_the_same_backoff_is_waited_out(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """The control for the test above: no deadline, the 0.5 s backoff is waited and the
    retry succeeds (the default stays as it was)."""
    sandbox.scripted.add(unavailable())
    client = make_client(retry_policy=RetryPolicy(backoff_initial=0.5, backoff_jitter=0.0))
    assert client.deadline is None
    started = time.monotonic()
    assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
    assert time.monotonic() - started >= 0.5


async def test_the_per_call_deadline_overrides_the_clients(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A client default of 0.5 s fails a 1 s answer; the call's own deadline (5 s, or
    infinity for none) lets it through."""
    client = make_client(deadline=0.5)
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, delay=1.0, times=3))
    with pytest.raises(DeadlineExceededError):
        await client.match(faces.alice_png, faces.alice_jpg)
    assert (await client.match(faces.alice_png, faces.alice_jpg, deadline=5)).match is True
    result = await client.match(faces.alice_png, faces.alice_jpg, deadline=math.inf)
    assert result.match is True


async def test_the_token_fetch_draws_from_the_deadline(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Authorize stalls 5 s: a match with deadline=1 gives up after about 1 s, sending no
    face-match request."""
    sandbox.scripted.add(ScriptedResponse(path=AUTHORIZE, delay=5.0))
    client = make_client()
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg, deadline=1)
    assert time.monotonic() - started <= 1 + MARGIN
    assert caught.value.attempts == 0
    assert sandbox.counters.count(FACEMATCH) == 0


async def test_errors_tell_how_many_requests_the_call_sent(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Three 503s with max_retries=2: the error says 3 attempts; a local refusal says 0."""
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "down"}, times=3)
    )
    client = make_client(max_retries=2)
    with pytest.raises(InternalServerError) as caught:
        await client.match(faces.alice_png, faces.alice_jpg)
    assert caught.value.attempts == 3
    with pytest.raises(UnsupportedFileFormatError) as refused:
        await client.match(b"GIF89a....", faces.alice_jpg)
    assert refused.value.attempts == 0


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "3", True])
def test_a_deadline_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="deadline"):
        FaceMatchClient(client_id="id", client_secret="secret", deadline=bad)  # type: ignore[arg-type]


def test_deadline_arithmetic_on_a_fake_clock() -> None:
    """remaining() and fits() are what a pacing wait asks before sleeping."""
    now = [100.0]
    deadline = Deadline(3.0, clock=lambda: now[0])
    assert deadline.remaining() == 3.0
    now[0] = 102.0
    assert deadline.remaining() == 1.0
    assert deadline.fits(0.5)
    assert not deadline.fits(1.0)
    with pytest.raises(DeadlineExceededError, match=r"1\.00 s left"):
        deadline.check(2.0)
    now[0] = 104.0
    assert deadline.remaining() == 0.0
    assert deadline.elapsed() == 4.0
    assert validate_deadline(math.inf) is None
    assert validate_deadline(2) == 2.0


# verify_credentials(): the start-up check


async def test_verify_credentials_fetches_the_token_the_next_call_uses(
    client: FaceMatchClient, faces: Faces, sandbox: SandboxServer
) -> None:
    await client.verify_credentials()
    assert sandbox.counters.authorize_calls == 1
    assert sandbox.counters.count(FACEMATCH) == 0  # no billed call
    await client.verify_credentials()  # the token is fresh: no second authorize
    await client.match(faces.alice_png, faces.alice_jpg)
    assert sandbox.counters.authorize_calls == 1


async def test_verify_credentials_refuses_a_wrong_secret(make_client: MakeClient) -> None:
    client = make_client(client_secret="wrong-secret")
    with pytest.raises(AuthenticationError) as caught:
        await client.verify_credentials()
    assert "wrong-secret" not in repr(caught.value)


async def test_verify_credentials_refuses_an_inactive_client(faces: Faces) -> None:
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, inactive=True)
    async with (
        SandboxServer(config) as sandbox,
        FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=sandbox.base_url
        ) as client,
    ):
        with pytest.raises(InactiveClientError):
            await client.verify_credentials()


async def test_verify_credentials_reports_an_unreachable_api() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fast = RetryPolicy(backoff_initial=0.01, backoff_max=0.01, backoff_jitter=0.0)
    async with FaceMatchClient(
        client_id="id",
        client_secret="secret",
        base_url=f"http://127.0.0.1:{port}",
        retry_policy=fast,
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.verify_credentials()


async def test_verify_credentials_gives_up_at_its_deadline(
    client: FaceMatchClient, sandbox: SandboxServer
) -> None:
    sandbox.scripted.add(ScriptedResponse(path=AUTHORIZE, delay=5.0))
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await client.verify_credentials(deadline=0.5)
    assert time.monotonic() - started <= 0.5 + MARGIN


async def test_verify_credentials_on_a_closed_client(client: FaceMatchClient) -> None:
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.verify_credentials()
