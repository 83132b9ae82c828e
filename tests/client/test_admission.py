"""Admission, not waiting: over the plan, calls with a deadline are refused at once, and a
token is still valid when its request reaches the API."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from facematch_async import FaceMatchClient, RateLimitError
from facematch_async._auth import TokenManager, token_from_response
from facematch_async.sandbox import FaultConfig, SandboxConfig, SandboxServer
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FACEMATCH, Faces

PLAN = "2/s"


async def test_over_the_plan_refused_calls_answer_at_once_and_nothing_is_cut_on_the_wire(
    faces: Faces,
) -> None:
    """30 calls at once on a 2/s plan with a 4 s deadline and 100 ms of API latency: the
    ones whose slot leaves an attempt's time before the deadline are sent and answered; the
    others get RateLimitError at once (not after 4 s), each told a different Retry-After, at
    least when its slot would open; the server sees exactly the answered calls."""
    config = SandboxConfig(CLIENT_ID, CLIENT_SECRET, rate_limit=PLAN)
    async with SandboxServer(config) as server:
        server.set_random_faults(FaultConfig(latency=0.1))
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=server.base_url,
            rate_limit=PLAN,
            deadline=4,
        ) as client:
            await client.match(faces.alice_png, faces.alice_jpg)  # the token; a first measure
            await asyncio.sleep(1.0)  # the window empties

            async def one() -> tuple[str, float, float | None]:
                started = time.monotonic()
                try:
                    await client.match(faces.alice_png, faces.alice_jpg)
                except RateLimitError as error:
                    return "refused", time.monotonic() - started, error.retry_after
                return "ok", time.monotonic() - started, None

            sent_before = server.counters.count(FACEMATCH)
            outcomes = await asyncio.gather(*(one() for _ in range(30)))
        sent = server.counters.count(FACEMATCH) - sent_before
    ok = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert 5 <= len(ok) <= 9, outcomes  # 2/s over 4 s, less an attempt's time
    assert len(ok) + len(refused) == 30
    assert sent == len(ok)  # nothing billed without an answer, nothing sent for a refusal
    assert max(elapsed for _, elapsed, _ in refused) < 0.5  # at once, not after the deadline
    retry_afters = sorted(r for _, _, r in refused if r is not None)
    assert len(retry_afters) == len(refused)
    assert retry_afters[0] >= 4 - 1.0  # no sooner than the slots already promised
    assert len(set(retry_afters)) == len(retry_afters)  # spread, not all at the same second
    assert retry_afters[-1] - retry_afters[0] >= 0.5 * (len(refused) - 1) * 0.9


async def test_a_token_is_renewed_when_it_would_expire_on_the_way() -> None:
    """get(ahead=...) renews a token that is fresh now but would expire before the request
    arrives; a token with time to spare is reused."""
    fetched = 0

    async def fetch():
        nonlocal fetched
        fetched += 1
        return token_from_response(f"t{fetched}", None, 0.0)

    clock = [100.0]
    manager = TokenManager(fetch, clock=lambda: clock[0])
    manager._token = token_from_response("t0", None, 0.0)  # never due: renew_at is None
    assert await manager.get(ahead=5) == "t0"
    manager._token = type(manager._token)("short", 100.5)  # due in 0.5 s
    assert await manager.get() == "short"
    assert await manager.get(ahead=1.0) == "t1"  # would expire on the way: renewed
    assert fetched == 1


def fake_jwt(exp: float) -> str:
    body = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


@pytest.mark.parametrize("skew", [-20.0, 20.0])
def test_a_skewed_clock_counts_the_lifetime_on_the_apis_clock(skew: float) -> None:
    """A token the API says expires 60 s after its own Date: with this machine's clock 20 s
    behind (or ahead), it is renewed about 54 s from now (60 s less the 10% margin), not 74 s
    (or 34 s)."""
    now = time.time()
    server_now = now - skew  # skew < 0: our clock is behind the API's
    token = token_from_response(fake_jwt(server_now + 60), None, 1000.0, server_now)
    assert token.renew_at == pytest.approx(1000.0 + 54.0, abs=0.5)
    without = token_from_response(fake_jwt(server_now + 60), None, 1000.0)
    assert without.renew_at == pytest.approx(1000.0 + (60 - skew) * 0.9, abs=0.5)


async def test_a_used_up_daily_quota_refuses_the_next_calls_without_a_request(
    faces: Faces,
) -> None:
    """The API answers 429 with a day's Retry-After: QuotaExceededError, and the client's
    next call is refused at once the same way, sending nothing; status() says why."""
    from facematch_async import QuotaExceededError
    from facematch_async.sandbox import ScriptedResponse

    async with SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as server:
        server.scripted.add(
            ScriptedResponse(
                path=FACEMATCH,
                status=429,
                json={"detail": "Rate limit exceeded."},
                headers={"Retry-After": "86398"},
            )
        )
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=server.base_url,
            rate_limit="10/s",
        ) as client:
            with pytest.raises(QuotaExceededError):
                await client.match(faces.alice_png, faces.alice_jpg)
            sent = server.counters.count(FACEMATCH)
            started = time.monotonic()
            with pytest.raises(QuotaExceededError) as caught:
                await client.match(faces.alice_png, faces.alice_jpg)
            assert time.monotonic() - started < 0.5
            assert server.counters.count(FACEMATCH) == sent  # nothing spent to hear it again
            assert caught.value.retry_after is not None and caught.value.retry_after > 86000
            assert client.rate_limiter is not None
            said = client.rate_limiter.status().describe()
            assert said is not None and "daily quota" in said and "until" in said


async def test_the_clients_own_full_day_window_is_a_quota_error_with_a_deadline(
    faces: Faces,
) -> None:
    """rate_limit '10/s,2/day' after two calls: a call with a deadline is refused at once
    with QuotaExceededError (not a plain RateLimitError), and status() names the window."""
    from facematch_async import QuotaExceededError

    async with (
        SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as server,
        FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=server.base_url,
            rate_limit="10/s,2/day",
        ) as client,
    ):
        for _ in range(2):
            await client.match(faces.alice_png, faces.alice_jpg)
        with pytest.raises(QuotaExceededError):
            await client.match(faces.alice_png, faces.alice_jpg, deadline=5)
        assert client.rate_limiter is not None
        status = client.rate_limiter.status()
        assert status.reason == "the 2/day window is full" and status.wait > 80000
