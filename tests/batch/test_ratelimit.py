"""The multi-window rate limiter: presets, specs, strict sliding windows, pauses, quotas."""

from __future__ import annotations

import itertools
import logging
import time

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facematch_async import (
    PLANS,
    BatchRunner,
    FaceMatchClient,
    RateLimiter,
    Window,
    parse_rate_limit,
)
from facematch_async._ratelimit import SlotUnavailable
from facematch_async.sandbox import SandboxConfig, SandboxServer, ScriptedResponse
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, FakeClock, MakeClient, RecordingEngine


def limiter(spec: str, clock: FakeClock, margin: float = 0.0) -> RateLimiter:
    return RateLimiter(spec, margin=margin, clock=clock, sleep=clock.sleep)


def max_in_any_window(stamps: list[float], period: float) -> int:
    """The most stamps found in any half-open interval [t, t + period)."""
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= period - 1e-9:  # float sums, e.g. 1010.1 - 1000.1
            start += 1
        best = max(best, end - start + 1)
    return best


def test_presets_are_the_documented_plans() -> None:
    """The four plans carry Deepvue's per-second, per-minute and per-day numbers."""
    assert {name: [str(w) for w in windows] for name, windows in PLANS.items()} == {
        "starter": ["1/s", "30/min", "1000/day"],
        "business": ["2/s", "100/min", "10000/day"],
        "growth": ["5/s", "500/min", "20000/day"],
        "enterprise": ["17/s", "1000/min", "50000/day"],
    }


def test_custom_specs_parse_with_units_and_multiples() -> None:
    """'10/s,300/min,20000/day' and scaled windows like '5/0.5s' parse; 'none' is no limit."""
    assert parse_rate_limit("10/s,300/min,20000/day") == (
        Window(10, 1.0),
        Window(300, 60.0),
        Window(20000, 86400.0),
    )
    assert parse_rate_limit("5/0.5s, 7/2h") == (Window(5, 0.5), Window(7, 7200.0))
    assert parse_rate_limit("Business") == PLANS["business"]
    assert parse_rate_limit("none") == () == parse_rate_limit(None)


@pytest.mark.parametrize("spec", ["fast", "10/fortnight", "10", "/s", "0/s", "10/0s"])
def test_malformed_specs_are_refused(spec: str) -> None:
    """An unknown plan or a malformed part raises ValueError."""
    with pytest.raises(ValueError, match=r"limit|period|rate limit"):
        parse_rate_limit(spec)


async def test_every_window_holds_at_once() -> None:
    """No 1 s window ever sees more than 3 requests and no 10 s window more than 10."""
    clock = FakeClock()
    rl = limiter("3/s,10/10s", clock)
    stamps = []
    for _ in range(35):
        await rl.acquire()
        stamps.append(clock.now)
    assert max_in_any_window(stamps, 1.0) == 3
    assert max_in_any_window(stamps, 10.0) == 10
    # ...and no slower than it must be: the 31st request opens the fourth 10 s window at
    # 30 s, and the last four follow a third of a second apart (the 3/s window's spacing).
    assert stamps[-1] - stamps[0] == pytest.approx(30.0 + 4 / 3)


async def test_concurrent_waiters_share_the_windows() -> None:
    """Twenty tasks acquiring at once are spread out to 2 per second in total."""
    clock = FakeClock()
    rl = limiter("2/s", clock)
    stamps: list[float] = []

    async def worker() -> None:
        await rl.acquire()
        stamps.append(clock.now)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(worker)
    assert max_in_any_window(sorted(stamps), 1.0) == 2
    assert max(stamps) - min(stamps) == pytest.approx(9.5)  # half a second apart


async def test_margin_widens_each_window() -> None:
    """With a margin, a request waits period + margin after the one it replaces."""
    clock = FakeClock()
    rl = limiter("1/s", clock, margin=0.25)
    await rl.acquire()
    start = clock.now
    await rl.acquire()
    assert clock.now - start == pytest.approx(1.25)


async def test_pause_holds_everybody_back() -> None:
    """pause() delays the next request of every task, and only extends, never shortens."""
    clock = FakeClock()
    rl = limiter("100/s", clock)
    await rl.acquire()
    rl.pause(5.0)
    rl.pause(1.0)
    assert rl.paused_for == pytest.approx(5.0)
    start = clock.now
    await rl.acquire()
    assert clock.now - start == pytest.approx(5.0)
    unlimited = limiter("none", clock)
    unlimited.pause(2.0)
    start = clock.now
    await unlimited.acquire()
    assert clock.now - start == pytest.approx(2.0)


async def test_a_full_daily_window_raises_when_not_waited_for() -> None:
    """With wait_for_quota=False a full daily window raises at once; per-second waits are
    still waited out."""
    clock = FakeClock()
    rl = limiter("2/s,3/day", clock)
    for _ in range(3):
        await rl.acquire(wait_for_quota=False)
    with pytest.raises(SlotUnavailable) as caught:
        await rl.acquire(wait_for_quota=False)
    assert caught.value.quota
    assert caught.value.wait == pytest.approx(86400.0 - 1.0, abs=0.01)


async def test_without_stop_the_daily_window_is_waited_for() -> None:
    """By default the limiter sleeps until the daily window reopens."""
    clock = FakeClock()
    rl = limiter("2/day", clock)
    await rl.acquire()
    await rl.acquire()
    start = clock.now
    await rl.acquire()
    assert clock.now - start == pytest.approx(86400.0)


async def test_seeded_requests_count_against_the_windows() -> None:
    """Requests recorded by seed() (an earlier run today) use up the daily quota."""
    clock = FakeClock()
    rl = limiter("5/day", clock)
    rl.seed([clock.now - 3600.0] * 5)
    assert rl.wait_time() == pytest.approx(86400.0 - 3600.0)


def test_estimate_is_the_slowest_window() -> None:
    """estimate() gives the run time of N requests: the binding window decides."""
    rl = RateLimiter("2/s,100/min", margin=0.0)
    assert rl.estimate(1) == 0.0
    assert rl.estimate(100) == pytest.approx(49.5)  # one every half second from t=0
    # The minute window binds: 100 by t=49.5, the next 100 from t=60, the last 50 from 120.
    assert rl.estimate(250) == pytest.approx(144.5)
    assert RateLimiter(None).estimate(10**6) == 0.0


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def sandbox_config(engine: RecordingEngine) -> SandboxConfig:
    return SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, engine=engine)


async def test_no_window_is_exceeded_as_seen_by_the_server(faces: Faces) -> None:
    """A concurrent batch under '3/0.5s,8/2s' against a server enforcing the same windows,
    counted as requests arrive (a request over a limit would be refused): none refused."""
    engine = RecordingEngine()
    spec = "3/0.5s,8/2s"
    config = SandboxConfig(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, engine=engine, rate_limit=spec
    )
    async with (
        SandboxServer(config) as sandbox,
        FaceMatchClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=sandbox.base_url
        ) as client,
    ):
        runner = BatchRunner(client, concurrency=8, rate_limit=spec)
        pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(20)]
        statuses = [outcome.status async for outcome in runner.run(pairs)]
    assert statuses == ["match"] * 20
    assert sum(sandbox.counters.rate_limited.values()) == 0
    assert sandbox.counters.max_in_window == {"3/0.5s": 3, "8/2s": 8}  # full, never over
    # Not needlessly slow either: 20 requests at 8 per 2 s need a little over four seconds.
    stamps = sorted(engine.stamps)
    assert stamps[-1] - stamps[0] < 6.0


async def test_retries_are_paced_by_the_limiter_too(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """Retried attempts acquire the limiter: 503s plus successes stay within 4 per second."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={}, times=4))
    runner = BatchRunner(make_client(), concurrency=8, rate_limit="4/0.5s")
    started = time.monotonic()
    async for outcome in runner.run(
        [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(4)]
    ):
        assert outcome.status == "match"
    # 8 attempts at 4 per 0.5 s: the second four wait for the window to roll over.
    assert time.monotonic() - started >= 0.5
    assert (
        sum(n for (path, _), n in sandbox.counters.requests.items() if path == "/v1/facematch") == 8
    )


async def test_a_429_at_a_full_windows_edge_widens_the_margin_and_keeps_the_rate(
    make_client: MakeClient,
    faces: Faces,
    engine: RecordingEngine,
    sandbox: SandboxServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch at a `10/s` plan's whole rate meets one 429 (two requests reached the server
    closer than they were let go): its client's pacer learns a wider margin, keeps its rate,
    and every pair still ends matched."""
    caplog.set_level(logging.INFO, "facematch_async")
    client = make_client(rate_limit="10/s")
    pacer = client.rate_limiter
    assert pacer is not None and pacer.margin == 0.005

    async def refuse_one_once_the_window_is_full() -> None:
        while len(engine.stamps) < 12:  # noqa: ASYNC110 (the engine has no event)
            await anyio.sleep(0.01)
        sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=429, json={}))

    runner = BatchRunner(client, concurrency=8)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(30)]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(refuse_one_once_the_window_is_full)
        statuses = [outcome.status async for outcome in runner.run(pairs)]
    assert statuses == ["match"] * 30
    assert runner.rate_limited == 1
    # 10 ms learned, plus the longest recent delay from a slot to the wire (on loopback,
    # a millisecond or so)
    assert 0.01 <= pacer.margin < 0.05
    assert "a 429 at a full window's edge; 5 -> 10 ms" in caplog.text
    assert pacer.current_rate is None  # the rate was not cut


@settings(max_examples=60, deadline=None)
@given(
    limits=st.lists(
        st.tuples(st.integers(1, 5), st.sampled_from([0.5, 1.0, 3.0, 10.0])),
        min_size=1,
        max_size=3,
    ),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=40),
)
def test_no_arrival_pattern_can_overfill_a_window(
    limits: list[tuple[int, float]], gaps: list[float]
) -> None:
    """Whatever the arrival times, no window ever holds more than its limit."""
    windows = tuple(Window(limit, period) for limit, period in limits)

    async def scenario() -> list[float]:
        clock = FakeClock()
        rl = RateLimiter(windows, margin=0.0, clock=clock, sleep=clock.sleep)
        stamps = []
        for gap in gaps:
            clock.now += gap
            await rl.acquire()
            stamps.append(clock.now)
        return stamps

    stamps = anyio.run(scenario)
    for window in windows:
        assert max_in_any_window(stamps, window.period) <= window.limit


class LateClock(FakeClock):
    """Its sleeps end ``late`` seconds after they were due, as a busy event loop's do."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late)


async def test_late_wakeups_do_not_slow_the_pace() -> None:
    """Sleeps that end 2 ms late keep 10/s on schedule: 100 requests in 9.9 s and at most
    one lateness per window cycle (the window counts from when requests really went), not
    10.1 s (one lateness per request). An idle spell restarts the pace."""
    clock = LateClock(late=0.002)
    rl = RateLimiter("10/s", margin=0, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(100):
        await rl.acquire()
        stamps.append(clock.now)
    assert 9.9 < stamps[-1] - stamps[0] < 9.9 + 0.03  # drifting: 9.9 + 100 * 0.002
    assert max_in_any_window(stamps, 1.0) == 10
    clock.now += 5  # idle
    await rl.acquire()
    idle_end = clock.now
    await rl.acquire()
    assert clock.now - idle_end == pytest.approx(0.1 + 0.002)


async def test_requests_are_spaced_over_the_shortest_window() -> None:
    """'5/s' lets requests go 0.2 s apart, not five at once; a daily window adds no spacing."""
    clock = FakeClock()
    rl = limiter("5/s,3/day", clock)
    stamps = []
    for _ in range(3):
        await rl.acquire()
        stamps.append(clock.now)
    assert [round(b - a, 6) for a, b in itertools.pairwise(stamps)] == [0.2, 0.2]
    daily = limiter("3/day", FakeClock())
    await daily.acquire()
    assert daily.wait_time() == 0.0


def test_an_empty_or_impossible_spec_is_refused() -> None:
    """An empty spec is not "no limit" ('none' is), and a limit past any plan (which would
    overflow the window's memory) is a ValueError, not an OverflowError."""
    for spec in ("", "  "):
        with pytest.raises(ValueError, match="empty"):
            parse_rate_limit(spec)
    with pytest.raises(ValueError, match="more than any plan"):
        parse_rate_limit("99999999999999999999/s")
    with pytest.raises(ValueError, match="longer than a year"):
        parse_rate_limit("10/99999999999999999999s")
    assert parse_rate_limit("none") == ()
