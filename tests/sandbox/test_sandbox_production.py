"""The sandbox behaving like production: rate limits, random faults, counters, engine choice."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from facematch_async import FaceMatchClient
from facematch_async.cli import build_parser
from facematch_async.errors import InvalidTokenError
from facematch_async.sandbox import (
    FAULT_KINDS,
    PLANS,
    BackgroundSandbox,
    FaultConfig,
    RateWindow,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    TestEngine,
    _choice,
    _dlib,
    choose_engine,
    make_test_image,
    parse_rate_limit,
)
from facematch_async.sandbox._random_faults import FaultInjector
from facematch_async.sandbox._ratelimit import SlidingWindowLimiter
from tests.helpers import RATE_LIMITED, FakeClock, fetch_token

CLIENT_ID = "prod-client"
SECRET = "prod-secret"
ALICE = make_test_image("alice")


def config(**overrides: Any) -> SandboxConfig:
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": SECRET}
    settings.update(overrides)
    return SandboxConfig(**settings)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def authorize(session: aiohttp.ClientSession, server: SandboxServer) -> str:
    return await fetch_token(session, server, CLIENT_ID, SECRET)


async def post_match(
    session: aiohttp.ClientSession,
    server: SandboxServer,
    token: str,
    *,
    api_key: str = SECRET,
    patience: float = 5.0,
) -> tuple[int, str, dict[str, str]]:
    """One facematch request: (status, body text, headers)."""
    form = aiohttp.FormData()
    form.add_field("file_a", ALICE, filename="a.png", content_type="image/png")
    form.add_field("file_b", ALICE, filename="b.png", content_type="image/png")
    headers = {"Authorization": f"Bearer {token}", "x-api-key": api_key}
    async with session.post(
        f"{server.base_url}/v1/facematch",
        data=form,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=patience),
    ) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


# --- rate-limit specs and the sliding-window limiter -------------------------------------------


def test_plans_and_specs_parse_to_windows() -> None:
    """Plan names give the documented windows; custom specs and 'none' parse too."""
    assert [w.label for w in parse_rate_limit("business")] == ["2/s", "100/min", "10000/day"]
    assert parse_rate_limit("Enterprise") == PLANS["enterprise"]
    assert parse_rate_limit("10/s, 300/min") == (RateWindow(10, 1.0), RateWindow(300, 60.0))
    assert parse_rate_limit("3/0.5s")[0].label == "3/0.5s"
    assert parse_rate_limit(None) == parse_rate_limit("none") == ()
    for bad in ("platinum", "10/fortnight", "ten/s"):
        with pytest.raises(ValueError, match="rate limit"):
            parse_rate_limit(bad)
    with pytest.raises(ValueError, match="at least 1"):
        parse_rate_limit("0/s")
    with pytest.raises(ValueError, match="rate limit"):
        config(rate_limit="fast")


def test_windows_slide_rather_than_reset() -> None:
    """2/s: requests at 0.9 s and 1.05 s leave no room at 1.5 s, though a new second began."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(parse_rate_limit("2/s"), clock=clock)
    start = clock.now
    for offset, allowed in ((0.0, True), (0.9, True), (1.05, True), (1.5, False)):
        clock.now = start + offset
        assert limiter.check("key").allowed is allowed, offset
    decision = limiter.check("key")
    assert decision.window == RateWindow(2, 1.0)
    assert decision.retry_after == pytest.approx(0.4)  # when the 0.9 s request leaves
    clock.now = start + 1.9
    assert limiter.check("key").allowed


def test_every_window_is_enforced_on_its_own() -> None:
    """With 5/s and 6/min, the minute window refuses the 7th request even when spread out."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(parse_rate_limit("5/s,6/min"), clock=clock)
    for _ in range(6):
        assert limiter.check("key").allowed
        clock.now += 2.0
    refused = limiter.check("key")
    assert not refused.allowed and refused.window is not None
    assert refused.window.label == "6/min"
    assert refused.retry_after == pytest.approx(60.0 - 12.0)


def test_refusals_do_not_count_and_keys_are_separate() -> None:
    """A refused request does not push the window out; another key has its own windows."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(parse_rate_limit("1/s"), clock=clock)
    assert limiter.check("a").allowed
    for _ in range(5):
        clock.now += 0.1
        assert not limiter.check("a").allowed
    assert limiter.check("b").allowed
    clock.now += 0.55  # one second after the only accepted request
    assert limiter.check("a").allowed


def test_limiter_memory_is_bounded_by_the_limits() -> None:
    """Thousands of requests keep at most `limit` timestamps per window."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(parse_rate_limit("3/s,50/min"), clock=clock)
    for _ in range(5000):
        limiter.check("key")
        clock.now += 0.01
    sizes = [len(times) for times in limiter._seen["key"]]
    assert sizes[0] <= 3 and sizes[1] <= 50


# --- rate limits over HTTP ----------------------------------------------------------------------


async def test_rate_limit_answers_the_documented_429(session: aiohttp.ClientSession) -> None:
    """Past 2/s the third request is a 429 with Deepvue's body and no Retry-After."""
    async with SandboxServer(config(rate_limit="business")) as server:
        token = await authorize(session, server)
        statuses = []
        for _ in range(3):
            status, text, headers = await post_match(session, server, token)
            statuses.append(status)
        assert statuses == [200, 200, 429]
        assert json.loads(text) == RATE_LIMITED
        assert "Retry-After" not in headers
        assert server.counters.rate_limited == {"2/s": 1}
        assert server.counters.max_in_window == {"2/s": 2, "100/min": 2, "10000/day": 2}
        assert server.counters.count("/v1/facematch", 429) == 1


async def test_retry_after_is_optional(session: aiohttp.ClientSession) -> None:
    """retry_after=True adds a whole-second Retry-After (at least 1)."""
    async with SandboxServer(config(rate_limit="1/10s", retry_after=True)) as server:
        token = await authorize(session, server)
        assert (await post_match(session, server, token))[0] == 200
        status, _, headers = await post_match(session, server, token)
        assert status == 429 and headers["Retry-After"] in {"9", "10"}


async def test_only_facematch_with_the_known_key_is_limited(
    session: aiohttp.ClientSession,
) -> None:
    """Authorize is never limited; a wrong key is refused (401) without using the window."""
    async with SandboxServer(config(rate_limit="1/min")) as server:
        for _ in range(3):
            await authorize(session, server)
        token = await authorize(session, server)
        assert (await post_match(session, server, token, api_key="wrong"))[0] == 401
        assert (await post_match(session, server, token))[0] == 200
        assert (await post_match(session, server, token))[0] == 429
        server.reset_rate_limit()
        assert (await post_match(session, server, token))[0] == 200


async def test_a_paced_client_never_trips_and_counters_prove_it(
    session: aiohttp.ClientSession,
) -> None:
    """Requests spaced just over period/limit apart never see a 429; max_in_window <= limit."""
    async with SandboxServer(config(rate_limit="2/0.3s")) as server:
        token = await authorize(session, server)
        for _ in range(8):
            assert (await post_match(session, server, token))[0] == 200
            await asyncio.sleep(0.16)
        assert not server.counters.rate_limited
        assert server.counters.max_in_window["2/0.3s"] <= 2


async def test_a_burst_is_cut_at_the_limit(session: aiohttp.ClientSession) -> None:
    """Ten concurrent requests against 3/s: exactly three get through."""
    # The latency keeps the ten in flight together (the test engine answers at once).
    async with SandboxServer(config(rate_limit="3/s", faults=FaultConfig(latency=0.05))) as server:
        token = await authorize(session, server)
        results = await asyncio.gather(*(post_match(session, server, token) for _ in range(10)))
        assert sorted(status for status, _, _ in results) == [200] * 3 + [429] * 7
        assert server.counters.max_in_window == {"3/s": 3}
        assert server.counters.rate_limited == {"3/s": 7}
        assert server.counters.max_in_flight >= 2


# --- random faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "status", "body"),
    [
        (FaultConfig(error_rate_500=1.0), 500, '{"detail": "Internal Server Error"}'),
        (FaultConfig(error_rate_503=1.0), 503, '{"detail": "Source Unavailable"}'),
        (FaultConfig(rate_429_burst=1.0), 429, None),
        (FaultConfig(revoke_rate=1.0), 403, '{"detail": "Not a valid token"}'),
    ],
    ids=["500", "503", "429", "revoke"],
)
async def test_error_faults_answer_like_production(
    session: aiohttp.ClientSession, faults: FaultConfig, status: int, body: str | None
) -> None:
    """Each error fault gives the documented status and body, and is counted by kind."""
    async with SandboxServer(config(faults=faults)) as server:
        token = await authorize(session, server)
        seen, text, _ = await post_match(session, server, token)
        assert seen == status
        assert json.loads(text) == (json.loads(body) if body is not None else RATE_LIMITED)
        kind = {403: "revoke"}.get(status, str(status))
        assert server.counters.faults_injected == {kind: 1}


async def test_html_502_is_a_proxy_page(session: aiohttp.ClientSession) -> None:
    """The 502 is HTML, as nginx sends it, not JSON."""
    async with SandboxServer(config(faults=FaultConfig(html_502_rate=1.0))) as server:
        status, text, headers = await post_match(session, server, await authorize(session, server))
        assert status == 502 and headers["Content-Type"].startswith("text/html")
        assert "<h1>502 Bad Gateway</h1>" in text
        assert server.counters.faults_injected["html_502"] == 1


async def test_drop_closes_the_connection(session: aiohttp.ClientSession) -> None:
    """A dropped request gets no answer at all and counts under status 0."""
    async with SandboxServer(config(faults=FaultConfig(drop_rate=1.0))) as server:
        token = await authorize(session, server)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post_match(session, server, token)
        assert server.counters.requests[("/v1/facematch", 0)] == 1
        assert server.counters.faults_injected["drop"] == 1


async def test_stall_outlasts_a_client_timeout(session: aiohttp.ClientSession) -> None:
    """A stall keeps the request past a short client timeout."""
    faults = FaultConfig(stall_rate=1.0, stall_seconds=30.0)
    async with SandboxServer(config(faults=faults)) as server:
        token = await authorize(session, server)
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await post_match(session, server, token, patience=0.3)
        assert time.monotonic() - started < 2
        assert server.counters.faults_injected["stall"] == 1


async def test_short_stall_then_answers_normally(session: aiohttp.ClientSession) -> None:
    """A stall shorter than the client's patience ends in a normal answer."""
    faults = FaultConfig(stall_rate=1.0, stall_seconds=0.2)
    async with SandboxServer(config(faults=faults)) as server:
        token = await authorize(session, server)
        started = time.monotonic()
        assert (await post_match(session, server, token))[0] == 200
        assert time.monotonic() - started >= 0.2


async def test_latency_fixed_and_ranged(session: aiohttp.ClientSession) -> None:
    """Fixed latency delays every request by that much; a range stays within its bounds."""
    async with SandboxServer(config(faults=FaultConfig(latency=0.2))) as server:
        token = await authorize(session, server)
        started = time.monotonic()
        assert (await post_match(session, server, token))[0] == 200
        assert time.monotonic() - started >= 0.2
        assert server.counters.faults_injected == {"latency": 1}
    injector = FaultInjector(FaultConfig(latency=(0.1, 0.3), seed=5))
    delays = [plan.latency for plan in map(injector.plan, ["/v1/facematch"] * 200) if plan]
    assert all(0.1 <= delay <= 0.3 for delay in delays) and len(set(delays)) > 100


async def test_faults_spare_authorize_unless_asked(session: aiohttp.ClientSession) -> None:
    """By default only facematch fails; with the authorize path listed, authorize fails too."""
    async with SandboxServer(config(faults=FaultConfig(error_rate_500=1.0))) as server:
        await authorize(session, server)
        server.set_random_faults(
            FaultConfig(error_rate_503=1.0, paths=("/v1/authorize", "/v1/facematch"))
        )
        form = aiohttp.FormData({"client_id": CLIENT_ID, "client_secret": SECRET})
        async with session.post(f"{server.base_url}/v1/authorize", data=form) as resp:
            assert resp.status == 503
        server.set_random_faults(None)
        assert server.random_faults is None
        await authorize(session, server)


def test_429_bursts_last_burst_length_requests() -> None:
    """Every run of injected 429s is at least burst_length long."""
    injector = FaultInjector(FaultConfig(rate_429_burst=0.2, burst_length=4, seed=11))
    kinds = [plan.kind if plan else None for plan in map(injector.plan, ["/v1/facematch"] * 500)]
    runs = [len(list(run)) for kind, run in itertools.groupby(kinds) if kind == "429"]
    assert runs and all(length >= 4 for length in runs[:-1])


def test_a_seed_makes_faults_repeatable() -> None:
    """Same seed, same faults in the same order; another seed, another sequence."""
    faults = FaultConfig(
        error_rate_500=0.1, error_rate_503=0.1, drop_rate=0.1, rate_429_burst=0.05, seed=42
    )

    def kinds(config: FaultConfig) -> list[str | None]:
        injector = FaultInjector(config)
        return [plan.kind if plan else None for plan in map(injector.plan, ["/v2/facematch"] * 300)]

    first = kinds(faults)
    assert first == kinds(faults)
    assert first != kinds(FaultConfig(**{**faults.__dict__, "seed": 43}))
    assert {"500", "503", "drop", "429"} <= set(first)


async def test_a_seeded_run_over_http_repeats(session: aiohttp.ClientSession) -> None:
    """Two sandboxes with the same seeded faults answer the same sequence of statuses."""
    faults = FaultConfig(error_rate_500=0.3, error_rate_503=0.2, seed=7)
    sequences = []
    for _ in range(2):
        async with SandboxServer(config(faults=faults)) as server:
            token = await authorize(session, server)
            statuses = [(await post_match(session, server, token))[0] for _ in range(15)]
            sequences.append(statuses)
            assert server.counters.faults_injected["500"] == statuses.count(500)
    assert sequences[0] == sequences[1] and {200, 500, 503} <= set(sequences[0])


def test_fault_kinds_cover_every_fault() -> None:
    """FAULT_KINDS names what faults_injected counts (besides 'latency')."""
    assert set(FAULT_KINDS) == {"drop", "stall", "500", "503", "html_502", "429", "revoke"}


@pytest.mark.parametrize(
    "settings",
    [
        {"error_rate_500": 1.5},
        {"drop_rate": -0.1},
        {"error_rate_500": 0.6, "error_rate_503": 0.6},
        {"latency": -1.0},
        {"latency": (0.5, 0.1)},
        {"stall_seconds": -1.0},
        {"burst_length": 0},
        {"revoke_rate": 2.0},
    ],
)
def test_fault_config_is_validated(settings: dict[str, Any]) -> None:
    """Impossible rates and durations are refused when the config is built."""
    with pytest.raises(ValueError, match=r"must|latency"):
        FaultConfig(**settings)


async def test_scripted_responses_still_come_first(session: aiohttp.ClientSession) -> None:
    """A queued ScriptedResponse wins over random faults and the rate limit."""
    server_config = config(rate_limit="1/min", faults=FaultConfig(error_rate_500=1.0))
    async with SandboxServer(server_config) as server:
        token = await authorize(session, server)
        server.scripted.add(ScriptedResponse(path="/v1/facematch", status=418, times=2))
        assert [(await post_match(session, server, token))[0] for _ in range(3)] == [418, 418, 500]
        assert server.counters.faults_injected == {"500": 1}


# --- counters ------------------------------------------------------------------------------------


async def test_counters_reset_clears_the_new_counters(session: aiohttp.ClientSession) -> None:
    """reset() also zeroes faults, rate-limit and window counters."""
    async with SandboxServer(
        config(rate_limit="1/min", faults=FaultConfig(latency=0.01))
    ) as server:
        token = await authorize(session, server)
        await post_match(session, server, token)
        await post_match(session, server, token)
        counters = server.counters
        assert counters.count() == 3 and counters.count(status=429) == 1
        counters.reset()
        assert (counters.count(), counters.max_in_flight) == (0, 0)
        assert not (counters.faults_injected or counters.rate_limited or counters.max_in_window)


# --- engines ---------------------------------------------------------------------------------------


def test_engine_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """'test' is the TestEngine; 'auto' falls back to it without the face extra; bad names fail."""
    assert isinstance(choose_engine("test"), TestEngine)
    with pytest.raises(ValueError, match="engine"):
        choose_engine("opencv")
    with pytest.raises(ValueError, match="engine"):
        config(engine="opencv")
    monkeypatch.setattr(_choice, "dlib_available", lambda: False)
    monkeypatch.setattr(_dlib, "dlib_available", lambda: False)
    assert isinstance(choose_engine("auto"), TestEngine)
    with pytest.raises(ModuleNotFoundError, match=r"facematch-async\[face\]"):
        choose_engine("dlib")


async def test_engine_by_name_in_config() -> None:
    """SandboxConfig(engine='test') builds that engine."""
    async with SandboxServer(config(engine="test")) as server:
        assert server.engine.name == "test"


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_flags_build_the_config() -> None:
    """Engine, rate-limit and fault flags parse to what SandboxConfig and FaultConfig take."""
    from facematch_async.cli._sandbox import _faults

    args = build_parser().parse_args(
        [
            *("sandbox", "--engine", "auto", "--rate-limit", "business", "--retry-after"),
            *("--latency", "0.1-0.4", "--error-rate-500", "0.1", "--drop-rate", "0.05"),
            *("--rate-429-burst", "0.01", "--burst-length", "5", "--seed", "9"),
            "--faults-on-authorize",
        ]
    )
    assert (args.engine, args.rate_limit, args.retry_after) == ("auto", "business", True)
    faults = _faults(args)
    assert faults is not None
    assert faults.latency == (0.1, 0.4) and faults.error_rate_500 == 0.1
    assert faults.drop_rate == 0.05 and faults.burst_length == 5 and faults.seed == 9
    assert "/v1/authorize" in faults.paths
    assert _faults(build_parser().parse_args(["sandbox"])) is None
    assert build_parser().parse_args(["sandbox"]).engine == "auto"  # real faces when installed


@pytest.mark.parametrize(
    "argv", [["--drop-rate", "1.5"], ["--latency", "soon"], ["--engine", "opencv"]]
)
def test_cli_rejects_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad values are usage errors (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["sandbox", *argv])
    assert exited.value.code == 2


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad rate-limit spec or impossible fault mix exits 2 with a message."""
    for argv in (["--rate-limit", "lots"], ["--error-rate-500", "0.7", "--drop-rate", "0.7"]):
        args = build_parser().parse_args(["sandbox", *argv])
        assert args.func(args) == 2
        assert "facematch-async sandbox:" in capsys.readouterr().err


async def test_cli_prints_the_url_first_and_the_engine_on_stderr() -> None:
    """stdout's first line stays 'Sandbox listening on ...'; stderr says engine and limits."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facematch_async.cli",
        "sandbox",
        "--port",
        "0",
        "--engine",
        "test",
        "--rate-limit",
        "starter",
        "--error-rate-503",
        "0.5",
        "--seed",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        assert line.startswith("Sandbox listening on http://127.0.0.1:"), line
        # The test engine's warning comes first (sandbox/test_sandbox_fidelity.py checks it).
        lines = [(await asyncio.wait_for(process.stderr.readline(), timeout=5)).decode()]
        while not lines[-1].startswith("Sandbox engine="):
            lines.append((await asyncio.wait_for(process.stderr.readline(), timeout=5)).decode())
        described = lines[-1]
        assert "engine=test" in described and "rate-limit=1/s,30/min,1000/day" in described
        assert "error_rate_503=0.5" in described and "seed=3" in described
    finally:
        process.terminate()
        await process.wait()


# --- a sandbox in a background thread -------------------------------------------------------------


def test_background_sandbox_serves_synchronous_code() -> None:
    """BackgroundSandbox runs its own loop in a thread; plain urllib can call it."""
    with BackgroundSandbox(config()) as sandbox:
        body = urllib.parse.urlencode({"client_id": CLIENT_ID, "client_secret": SECRET})
        url = f"{sandbox.base_url}/v1/authorize"
        request = urllib.request.Request(url, data=body.encode())  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.status == 200
        assert sandbox.server.counters.tokens_issued == 1
        port = sandbox.server.port
    with socket.socket() as probe:
        probe.settimeout(1)
        with pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
    with pytest.raises(RuntimeError, match="not running"):
        _ = sandbox.base_url


def test_background_sandbox_start_failure_is_raised() -> None:
    """A port already taken fails start() in the caller's thread."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address"), BackgroundSandbox(config(), port=port):
            pass


# --- token faults, seen by the real client ----------------------------------------------------


async def test_short_token_lifetime_makes_the_client_renew() -> None:
    """With 1-second tokens, a client working for 2.5 s authorizes more than once, never failing."""
    async with SandboxServer(config(token_ttl=1.0)) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=server.base_url
        ) as client:
            for _ in range(6):
                assert (await client.match(ALICE, ALICE)).match
                await asyncio.sleep(0.5)
        assert server.counters.tokens_issued >= 2
        assert server.counters.count("/v1/facematch", 200) == 6


async def test_revoked_tokens_send_the_client_back_to_authorize() -> None:
    """Revoke faults answer 403 'Not a valid token'; the client authorizes again and goes on."""
    faults = FaultConfig(revoke_rate=0.3, seed=4)
    async with SandboxServer(config(faults=faults)) as server:
        async with FaceMatchClient(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=server.base_url
        ) as client:
            outcomes = []
            for _ in range(20):
                try:
                    outcomes.append((await client.match(ALICE, ALICE)).match)
                except InvalidTokenError:  # revoked twice in a row: the client gives up once
                    outcomes.append(False)
        revoked = server.counters.faults_injected["revoke"]
        assert revoked >= 3
        assert server.counters.count("/v1/facematch", 403) >= revoked
        assert server.counters.tokens_issued >= revoked
        assert outcomes.count(True) >= 14


def test_token_bookkeeping_forgets_expired_tokens() -> None:
    """Thousands of short-lived tokens do not pile up; live revoked tokens stay revoked."""
    from facematch_async.sandbox._tokens import TokenAuthority

    authority = TokenAuthority(CLIENT_ID, ttl=0.001)  # expired as soon as issued
    for _ in range(3000):
        authority.revoke(authority.issue().access_token)
    assert len(authority._issued) <= 1024 and len(authority._revoked) <= 1024
    lasting = TokenAuthority(CLIENT_ID, ttl=600)
    tokens = [lasting.issue().access_token for _ in range(1100)]
    lasting.revoke_all()
    assert not any(lasting.verify(token) for token in tokens)
    assert lasting.verify(lasting.issue().access_token)


async def test_description_says_when_auto_fell_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the face extra, 'auto' runs the test engine and the start-up line says why."""
    from facematch_async.sandbox._server import describe

    monkeypatch.setattr(_choice, "dlib_available", lambda: False)
    async with SandboxServer(config(engine="auto", token_ttl=2)) as server:
        line = describe(server)
    assert line.startswith("Sandbox engine=test (auto: the face extra is not installed)")
    assert "rate-limit=none" in line and "token-ttl=2s" in line
