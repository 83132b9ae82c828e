"""The pacing store: one quota per API key, shared through a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from facematch_async import BatchRunner, FaceMatchClient, PacingStoreError, RateLimiter
from facematch_async._pacing import (
    MemoryStore,
    RedisStore,
    effective_windows,
    key_prefix,
    redact_url,
)
from facematch_async._ratelimit import (
    MARGIN_MAX,
    MARGIN_START,
    AdaptiveRate,
    SlotUnavailable,
    Window,
)
from facematch_async.sandbox import SandboxConfig, SandboxServer, make_test_image
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FAST_RETRIES, FakeClock, RedisServer


def max_in_window(stamps: list[float], period: float) -> int:
    """The most stamps within any half-open interval of ``period`` seconds."""
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= period:
            start += 1
        best = max(best, end - start + 1)
    return best


def zset_entries(server: RedisServer, key: str) -> list[tuple[str, float]]:
    """(member, score in seconds) of a small sorted set, via the inline protocol."""
    return zset_entries_between(server, key, 0, -1)


def zset_entries_between(
    server: RedisServer, key: str, first: int, last: int
) -> list[tuple[str, float]]:
    """(member, score in seconds) of a sorted set's entries ``first`` to ``last``."""
    reply = server.command("ZRANGE", key, str(first), str(last), "WITHSCORES")
    lines = reply.decode().split("\r\n")
    values = [line for line in lines if line and line[0] not in "*$"]
    return [(values[i], float(values[i + 1]) / 1e6) for i in range(0, len(values) - 1, 2)]


def zset_scores(server: RedisServer, key: str) -> list[float]:
    """Scores (seconds) of a sorted set."""
    return [score for _, score in zset_entries(server, key)]


async def until(predicate, patience: float = 30.0) -> None:
    """Poll until ``predicate()`` holds (a deadline, not a speed assertion)."""
    deadline = anyio.current_time() + patience
    while True:
        if predicate() or anyio.current_time() > deadline:
            return
        await anyio.sleep(0.2)


def write_images(folder: Path) -> tuple[Path, Path]:
    a, b = folder / "a.png", folder / "b.jpg"
    a.write_bytes(make_test_image("asha"))
    b.write_bytes(make_test_image("asha", "jpeg"))
    return a, b


async def test_the_memory_store_paces_as_the_estimate_simulates() -> None:
    """In memory, requests are spaced and windowed, and ``estimate`` (a simulation over the
    same window algorithm) predicts exactly when the last one goes."""
    fake = FakeClock()
    limiter = RateLimiter("5/s,12/5s", margin=0.05, clock=fake, sleep=fake.sleep)
    stamps = []
    for _ in range(30):
        await limiter.acquire()
        stamps.append(round(fake.now, 6))
    assert max_in_window(stamps, 1.0) <= 5 and max_in_window(stamps, 5.0) <= 12
    assert stamps[-1] - stamps[0] == pytest.approx(limiter.estimate(30))


def test_reserve_shrinks_every_window_but_never_below_one() -> None:
    """reserve=0.25 leaves a quarter of each window; a bulk caller still gets one request."""
    windows = (Window(5, 1.0), Window(60, 60.0), Window(1, 1.0))
    assert effective_windows(windows, 0.25) == (Window(3, 1.0), Window(45, 60.0), Window(1, 1.0))
    with pytest.raises(ValueError, match="reserve"):
        effective_windows(windows, 1.0)


def test_keys_hash_the_client_id_and_urls_hide_passwords() -> None:
    """Redis keys never hold the client id in clear; errors never show the password."""
    assert "acme-id" not in key_prefix("acme-id") and key_prefix("a") != key_prefix("b")
    assert redact_url("redis://user:hunter2@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


async def test_a_malformed_store_url_is_a_pacing_store_error_naming_it() -> None:
    """A port that is not a number, a bad query parameter: PacingStoreError with the URL
    (password hidden), not redis-py's bare ValueError."""
    for url in ("redis://:hunter2@h:abc/0", "redis://h:6379/0?socket_timeout=x"):
        pacer = RateLimiter("5/s", store=url, client_id=CLIENT_ID)
        with pytest.raises(PacingStoreError, match="is not a valid Redis URL") as caught:
            await pacer.start()
        assert "redis://" in str(caught.value) and "hunter2" not in str(caught.value)


async def test_an_unreachable_store_fails_at_start_naming_the_url(redis_server) -> None:
    """Down at start: a clear error with the URL, without the password."""
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    redis_server.stop()
    pacer = RateLimiter("5/s", store=url, client_id=CLIENT_ID)
    with pytest.raises(PacingStoreError) as caught:
        await pacer.acquire()
    assert f"127.0.0.1:{redis_server.port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    await pacer.aclose()


async def test_a_bulk_caller_leaves_a_quarter_of_each_window_to_live_callers(
    redis_server,
) -> None:
    """reserve=0.25 over Redis: bulk takes at most 3 of 4 per second; live callers the rest."""
    bulk = RateLimiter("4/s,100/min", store=redis_server.url, client_id=CLIENT_ID, reserve=0.25)
    live = RateLimiter("4/s,100/min", store=redis_server.url, client_id=CLIENT_ID)
    loop = asyncio.get_running_loop()
    bulk_times: list[float] = []
    live_times: list[float] = []

    async def run(pacer: RateLimiter, into: list[float], count: int) -> None:
        for _ in range(count):
            await pacer.acquire()
            into.append(loop.time())

    async with anyio.create_task_group() as group:
        group.start_soon(run, bulk, bulk_times, 12)
        group.start_soon(run, live, live_times, 4)
    entries = zset_entries(redis_server, f"{key_prefix(CLIENT_ID)}:stamps")
    assert len(entries) == 16
    bulk_stamps = [score for member, score in entries if member.startswith(bulk._token)]
    assert len(bulk_stamps) == 12
    assert max_in_window(bulk_stamps, 1.0) <= 3  # on the server's clock
    assert max_in_window([score for _, score in entries], 1.0) <= 4  # the union
    assert len(live_times) == 4 and bulk_times
    await bulk.aclose()
    await live.aclose()


async def test_keys_expire_and_stay_bounded_by_the_plan(redis_server) -> None:
    """Many requests later, Redis holds at most the longest window's limit, then nothing but
    this process's presence (one entry, gone two minutes after its last request)."""
    pacer = RateLimiter("500/s,600/2s", store=redis_server.url, client_id=CLIENT_ID)
    for _ in range(1500):
        await pacer.acquire()
    key = f"{key_prefix(CLIENT_ID)}:stamps"
    assert int(redis_server.command("ZCARD", key)[1:].split(b"\r")[0]) <= 600
    ttl = int(redis_server.command("PTTL", key)[1:].split(b"\r")[0])
    assert 0 < ttl <= 3100
    assert int(redis_server.command("DBSIZE")[1:].split(b"\r")[0]) == 3
    processes = f"{key_prefix(CLIENT_ID)}:processes"
    assert redis_server.command("ZCARD", processes).startswith(b":1\r")  # this process
    ttl = int(redis_server.command("PTTL", processes)[1:].split(b"\r")[0])
    assert 0 < ttl <= 121_000
    await until(lambda: redis_server.command("DBSIZE").startswith(b":1"))
    assert redis_server.command("DBSIZE").startswith(b":1")  # the stamps and slots expired
    await pacer.aclose()


async def test_a_slow_store_times_out_and_the_pacer_falls_back(redis_server, caplog) -> None:
    """A script call slower than the timeout is a failure: fallback, WARNING, no crash."""
    pacer = RateLimiter(
        "20/s", store=redis_server.url, client_id=CLIENT_ID, store_timeout=0.2, retry_interval=0.3
    )
    await pacer.acquire()
    caplog.set_level(logging.WARNING, "facematch_async")
    redis_server.freeze()
    try:
        await pacer.acquire()
    finally:
        redis_server.thaw()
    assert pacer.fallbacks == 1
    assert "TimeoutError" in caplog.text and "FALLING BACK" in caplog.text
    await pacer.aclose()


_WORKER = """
import asyncio, json, sys
from facematch_async import BatchRunner, FaceMatchClient, RetryPolicy
from facematch_async import RateLimiter

base_url, redis_url, client_id, secret, a, b, count, name = sys.argv[1:]

async def main():
    pacer = RateLimiter("5/s,60/min", store=redis_url, client_id=client_id)
    await pacer.start()
    async with FaceMatchClient(client_id=client_id, client_secret=secret, base_url=base_url,
                               max_retries=0) as client:
        runner = BatchRunner(client, concurrency=8, rate_limit=pacer)
        pairs = [(f"{name}-{i}", a, b) for i in range(int(count))]
        statuses = [outcome.status async for outcome in runner.run(pairs)]
    await pacer.aclose()
    print(json.dumps({"statuses": statuses, "rate_limited": runner.rate_limited}))

asyncio.run(main())
"""


async def test_three_processes_on_one_key_never_exceed_the_plan(redis_server, tmp_path) -> None:
    """Three batch processes, one key, one Redis: no window exceeded at the server, no 429."""
    a, b = write_images(tmp_path)
    config = SandboxConfig(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, rate_limit="5/s,60/min"
    )
    async with SandboxServer(config) as sandbox:
        workers = []
        for n in range(3):
            args = [sandbox.base_url, redis_server.url, CLIENT_ID, CLIENT_SECRET]
            args += [str(a), str(b), "20", f"p{n}"]
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _WORKER, *args, stdout=asyncio.subprocess.PIPE
                )
            )
        outputs = [await worker.communicate() for worker in workers]
        counters = sandbox.counters
    assert [worker.returncode for worker in workers] == [0, 0, 0]
    reports = [json.loads(out) for out, _ in outputs]
    assert all(r["statuses"] == ["match"] * 20 and r["rate_limited"] == 0 for r in reports)
    assert not counters.rate_limited
    assert counters.max_in_window["5/s"] <= 5 and counters.max_in_window["60/min"] <= 60
    stamps = zset_scores(redis_server, f"{key_prefix(CLIENT_ID)}:stamps")
    assert len(stamps) == 60
    assert max_in_window(stamps, 1.0) <= 5


async def test_losing_redis_mid_run_falls_back_and_recovers(redis_server, tmp_path, caplog) -> None:
    """Redis stopped mid-run: no crash, no window exceeded, a WARNING, shared again on restart."""
    caplog.set_level(logging.INFO, "facematch_async")
    a, b = write_images(tmp_path)
    plan = "5/s,12/3s"
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, rate_limit=plan)
    pacer = RateLimiter(
        plan, store=redis_server.url, client_id=CLIENT_ID, fallback=2, retry_interval=0.3
    )
    async with SandboxServer(config) as sandbox:
        async with FaceMatchClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            base_url=sandbox.base_url,
            retry_policy=FAST_RETRIES,
        ) as client:
            runner = BatchRunner(client, concurrency=4, rate_limit=pacer)
            pairs = [(f"p{i}", a, b) for i in range(45)]
            statuses: list[str] = []
            restarted = False
            async for outcome in runner.run(pairs):
                statuses.append(outcome.status)
                if len(statuses) == 8:
                    await anyio.to_thread.run_sync(redis_server.stop)
                if len(statuses) >= 14 and pacer.degraded and not restarted:
                    await anyio.to_thread.run_sync(redis_server.start)
                    restarted = True
        counters = sandbox.counters
    await pacer.aclose()
    assert statuses == ["match"] * 45
    assert pacer.fallbacks == 1 and not pacer.degraded
    assert not counters.rate_limited
    assert counters.max_in_window["5/s"] <= 5 and counters.max_in_window["12/3s"] <= 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FALLING BACK" in m and f"127.0.0.1:{redis_server.port}" in m for m in warnings)
    assert any("is back" in m for m in warnings)
    # Requests after the restart were shared again.
    assert zset_scores(redis_server, f"{key_prefix(CLIENT_ID)}:stamps")


async def test_a_lost_store_leaves_each_process_the_share_the_store_counted(
    redis_server, caplog
) -> None:
    """Three processes asked on the key: when Redis goes, each paces at 1/3 of the plan, as
    the store told each of them, and says so."""
    caplog.set_level(logging.WARNING, "facematch_async")
    pacers = [
        RateLimiter("9/0.5s", store=redis_server.url, client_id=CLIENT_ID, retry_interval=60)
        for _ in range(3)
    ]
    for pacer in pacers:
        await pacer.acquire()
    await pacers[0].acquire()  # the third process asked after this one's first call
    assert [pacer.processes for pacer in pacers] == [3, 2, 3]
    await anyio.to_thread.run_sync(redis_server.stop)
    stamps = []
    for _ in range(7):
        await pacers[0].acquire()
        stamps.append(anyio.current_time())
    assert pacers[0].degraded
    assert max_in_window(stamps, 0.5) <= 3  # 9 per 0.5 s, a third of it
    assert "FALLING BACK" in caplog.text
    assert "processes the store saw on the key: 3: 3/0.5s" in caplog.text
    for pacer in pacers:
        await pacer.aclose()


async def test_windows_wiped_while_redis_stays_up_are_noticed_and_restored(
    redis_server, caplog
) -> None:
    """FLUSHALL between two requests (as eviction or a failover to a lagging replica would):
    each process notices on its next request that its own last one is gone, puts its own
    requests back, and holds until the short windows have emptied (another process may be
    asleep until its window reopens, its requests unknown), so no window holds more than the
    plan (without it: 8 in 2 s against 6)."""
    caplog.set_level(logging.WARNING, "facematch_async")
    pacers = [RateLimiter("6/2s", store=redis_server.url, client_id=CLIENT_ID) for _ in range(2)]
    sent = []
    for _ in range(3):  # three each, taking turns: the 2 s window is full
        for pacer in pacers:
            await pacer.acquire()
            sent.append(anyio.current_time())
    redis_server.command("FLUSHALL")
    for pacer in pacers:  # each one's next request
        await pacer.acquire()
        sent.append(anyio.current_time())
    assert max_in_window(sent, 2.0) <= 6
    # The first to ask again notices and holds; by the time the other asks, its own
    # requests have left the windows: nothing of it is missing any more.
    assert caplog.text.count("lost this key's windows while it stayed up") == 1
    assert "3 own requests restored; HOLDING every request for 2.0 s" in caplog.text
    assert zset_scores(redis_server, f"{key_prefix(CLIENT_ID)}:stamps")  # shared again
    for pacer in pacers:
        await pacer.aclose()


async def test_a_lone_process_restores_wiped_windows_without_holding(redis_server, caplog) -> None:
    """Alone on the key, a process knows every request the wipe lost: it puts them back
    and goes on at the plan's pace, without a hold."""
    caplog.set_level(logging.WARNING, "facematch_async")
    pacer = RateLimiter("20/s", store=redis_server.url, client_id=CLIENT_ID)
    for _ in range(5):
        await pacer.acquire()
    redis_server.command("FLUSHALL")
    started = anyio.current_time()
    await pacer.acquire()
    assert anyio.current_time() - started < 0.5  # a pace of 0.05 s, not a 1 s hold
    assert "5 own requests restored; no other process was on the key" in caplog.text
    assert len(zset_scores(redis_server, f"{key_prefix(CLIENT_ID)}:stamps")) == 6
    await pacer.aclose()


async def test_a_quiet_caller_still_counts_in_the_others_share(redis_server) -> None:
    """A live caller that asked once, seconds ago, beside two busy processes on a `10/s`
    plan: when Redis goes, the busy ones still count it (presence lasts two minutes, not two
    of the plan's windows), so the three shares add up to the plan, not more."""
    busy = [RateLimiter("10/s", store=redis_server.url, client_id=CLIENT_ID) for _ in range(2)]
    quiet = RateLimiter("10/s", store=redis_server.url, client_id=CLIENT_ID)
    await quiet.acquire()
    for _ in range(20):  # two seconds of traffic: longer than two 1 s windows
        for pacer in busy:
            await pacer.acquire()
    assert [pacer.processes for pacer in busy] == [3, 3]
    for pacer in (*busy, quiet):
        await pacer.aclose()


def test_fallback_takes_auto_a_count_or_pause_only() -> None:
    """The fallback is 'auto' by default; a count must be a whole number >= 1."""
    assert RateLimiter("10/s").fallback == "auto"
    for bad in (0, -1, True, 2.5, "half"):
        with pytest.raises(ValueError, match="fallback"):
            RateLimiter("10/s", fallback=bad)  # type: ignore[arg-type]


async def test_fallback_pause_sends_nothing_until_the_store_returns(redis_server, caplog) -> None:
    """fallback='pause': while Redis is down no request is let go; it says so at WARNING."""
    fake_sleeps: list[float] = []
    pacer = RateLimiter("10/s", store=redis_server.url, client_id=CLIENT_ID, fallback="pause",
                  retry_interval=0.2)  # fmt: skip
    await pacer.acquire()
    redis_server.stop()
    caplog.set_level(logging.WARNING, "facematch_async")
    real_sleep = pacer._sleep

    async def sleep(seconds: float) -> None:
        fake_sleeps.append(seconds)
        if len(fake_sleeps) == 3:
            await anyio.to_thread.run_sync(redis_server.start)
        await real_sleep(seconds)

    pacer._sleep = sleep
    await pacer.acquire()
    assert len(fake_sleeps) >= 3 and not pacer.degraded
    assert "PAUSING" in caplog.text
    await pacer.aclose()


def test_adaptive_rate_halves_on_a_throttle_and_recovers_along_a_cubic(caplog) -> None:
    """A 429 halves the measured rate; it climbs back in `recovery` s, then the cap lifts."""
    caplog.set_level(logging.INFO, "facematch_async")
    fake = FakeClock()
    adaptive = AdaptiveRate(10.0, recovery=10.0, clock=fake)
    for _ in range(16):  # 8 requests/s measured over 2 s
        fake.now += 0.125
        adaptive.on_send()
    assert adaptive.rate() is None
    assert adaptive.on_throttle()
    assert adaptive.rate() == pytest.approx(4.0)
    assert not adaptive.on_throttle()  # the same burst of 429s counts once
    fake.now += 5
    assert 4.0 < (adaptive.rate() or 0) < 8.0
    fake.now += 5
    assert adaptive.rate() == pytest.approx(8.0)
    fake.now += 10
    assert adaptive.rate() is None  # past the plan's rate: no cap
    assert "8.00 -> 4.00 requests/s" in caplog.text


async def test_a_pacer_with_adaptive_rate_slows_itself_after_a_429() -> None:
    """A 429 while the windows had room (a stranger on the key) lowers the pacer's own rate
    (the progress line can show it) and leaves the margin alone."""
    fake = FakeClock()
    pacer = RateLimiter("10/s", adaptive=True, clock=fake, sleep=fake.sleep)
    start = fake.now
    for _ in range(8):  # spaced, never filling the 1 s window
        await pacer.acquire()
    assert pacer.current_rate is None
    pacer.on_rate_limited(0.001)
    rate = pacer.current_rate
    assert rate is not None and rate < 6
    assert pacer.margin == MARGIN_START
    before = fake.now
    for _ in range(5):
        await pacer.acquire()
    assert fake.now - before > 4 * 0.1 * 1.5  # well below the plan's 10/s
    assert start < before


async def fill_the_window(pacer: RateLimiter) -> None:
    """Send at the plan's whole rate until the 1 s window has made a request wait."""
    for _ in range(12):
        await pacer.acquire()


async def test_a_429_at_a_full_windows_edge_widens_the_margin_not_the_rate(caplog) -> None:
    """While a window is full, a 429 means two requests met the server closer than they
    were let go: the margin doubles (once per burst of 429s) up to its cap, the rate stays;
    past the cap, the adaptive rate takes over."""
    caplog.set_level(logging.INFO, "facematch_async")
    fake = FakeClock()
    pacer = RateLimiter("10/s", adaptive=True, clock=fake, sleep=fake.sleep)
    assert pacer.margin == MARGIN_START == 0.005
    await fill_the_window(pacer)
    pacer.on_rate_limited(0.001)
    pacer.on_rate_limited(0.001)  # the same burst: counted once
    assert pacer.margin == pytest.approx(0.01)
    assert pacer.current_rate is None
    assert "a 429 at a full window's edge; 5 -> 10 ms" in caplog.text
    # From now on the 11th request of a 1 s window goes 1 s + 10 ms after the 1st.
    fake.now += 2.0
    stamps = []
    for _ in range(11):
        await pacer.acquire()
        stamps.append(fake.now)
    assert stamps[10] - stamps[0] == pytest.approx(1.01)
    widths = []
    while pacer.margin < MARGIN_MAX:
        fake.now += 1.0
        await fill_the_window(pacer)
        pacer.on_rate_limited(0.001)
        widths.append(round(pacer.margin * 1000))
    assert widths == [20, 40, 80, 160, 200]
    assert pacer.current_rate is None
    fake.now += 1.0
    await fill_the_window(pacer)
    pacer.on_rate_limited(0.001)  # the margin cannot grow: this one lowers the rate
    assert pacer.margin == MARGIN_MAX
    assert pacer.current_rate is not None


def test_a_slow_send_widens_the_margin_while_its_request_counts() -> None:
    """A request that reached the wire 0.3 s after its slot (a new connection's handshake)
    counts 0.3 s late at the server: the margin carries that delay for as long as a window
    of a minute or less can hold the request, then forgets it."""
    fake = FakeClock()
    pacer = RateLimiter("10/s,100/min", clock=fake, sleep=fake.sleep)
    pacer.on_sent(0.3)
    pacer.on_sent(0.001)
    assert pacer.margin == pytest.approx(MARGIN_START + 0.3)
    fake.now += 30
    pacer.on_sent(0.002)
    assert pacer.margin == pytest.approx(MARGIN_START + 0.3)  # still in the minute window
    fake.now += 31.5
    assert pacer.margin == pytest.approx(MARGIN_START + 0.002)
    fake.now += 61
    assert pacer.margin == MARGIN_START
    fixed = RateLimiter("10/s", margin=0.05, clock=fake, sleep=fake.sleep)
    fixed.on_sent(0.3)
    assert fixed.margin == 0.05


async def test_a_fixed_margin_never_moves() -> None:
    """RateLimiter(margin=0.05) keeps 50 ms whatever comes back; its 429s lower the rate."""
    fake = FakeClock()
    pacer = RateLimiter("10/s", adaptive=True, margin=0.05, clock=fake, sleep=fake.sleep)
    await fill_the_window(pacer)
    pacer.on_rate_limited(0.001)
    assert pacer.margin == 0.05
    assert pacer.current_rate is not None
    with pytest.raises(ValueError, match="margin"):
        RateLimiter("10/s", margin=math.nan)


def test_memory_store_is_a_pacing_store() -> None:
    """Both stores satisfy the protocol the pacer uses."""
    from facematch_async._pacing import PacingStore

    assert isinstance(MemoryStore(), PacingStore)
    assert isinstance(RedisStore("redis://127.0.0.1:1/0", "id"), PacingStore)
    assert math.isfinite(RateLimiter("business").estimate(10))


@pytest.mark.slow
async def test_adaptive_rate_costs_a_few_429s_when_a_stranger_takes_half_the_key(tmp_path) -> None:
    """A stranger outside the store sends half the plan: adaptive pacing keeps 429s rare."""
    a, b = write_images(tmp_path)
    config = SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, rate_limit="10/s")
    async with SandboxServer(config) as sandbox:
        options: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "base_url": sandbox.base_url,
            "max_retries": 0,
        }
        async with FaceMatchClient(**options) as first, FaceMatchClient(**options) as second:
            stranger = BatchRunner(first, concurrency=4, rate_limit=RateLimiter("5/s"))
            ours = BatchRunner(second, concurrency=8, rate_limit=RateLimiter("10/s", adaptive=True))

            async def drive(runner: BatchRunner, count: int, name: str) -> list[str]:
                pairs = [(f"{name}{i}", a, b) for i in range(count)]
                return [outcome.status async for outcome in runner.run(pairs)]

            theirs, mine = await asyncio.gather(drive(stranger, 100, "s"), drive(ours, 150, "o"))
        counters = sandbox.counters
    assert theirs == ["match"] * 100 and mine == ["match"] * 150
    refused = sum(counters.rate_limited.values())
    # Measured: 2 of 254 requests adaptive, 44 of 296 (15%) with pause-and-resume alone.
    assert refused <= 0.05 * sum(counters.requests.values())


async def test_a_restarted_redis_gets_every_own_request_back(redis_server) -> None:
    """Replay restores requests by age, in chunks, once each, and drops those out of the window."""
    store = RedisStore(redis_server.url, CLIENT_ID)
    grants = [(f"own:{i}", i / 1000) for i in range(2500)]  # 0 to 2.5 s old
    await store.replay(grants, retention=2.0)
    await store.replay(grants[:10], retention=2.0)  # twice is still once
    # ZCARD and the two ends: a reply of 2,000 entries would not fit one socket read here.
    assert redis_server.command("ZCARD", store.stamps_key).startswith(b":2000\r")
    oldest = zset_entries_between(redis_server, store.stamps_key, 0, 0)
    newest = zset_entries_between(redis_server, store.stamps_key, -1, -1)
    # Each chunk stamps ages from its own server time, so later chunks land a little later:
    # their requests leave the windows late, never early.
    assert 1.9 < newest[0][1] - oldest[0][1] <= 2.0
    assert {oldest[0][0], newest[0][0]} == {"own:1999", "own:0"}
    await store.aclose()


async def test_a_caller_with_a_shorter_plan_never_erases_a_days_history(redis_server) -> None:
    """A live service on "50/s" beside a job on "50/s,30/day", one key: its calls neither
    trim nor shorten the expiry of the day's requests, so the day's cap still holds."""

    daily = RateLimiter("50/s,30/day", store=redis_server.url, client_id=CLIENT_ID)
    live = RateLimiter("50/s", store=redis_server.url, client_id=CLIENT_ID)
    try:
        for _ in range(30):
            await daily.acquire()
        await live.acquire()
        key = f"{key_prefix(CLIENT_ID)}:stamps"
        assert int(redis_server.command("ZCARD", key)[1:].split(b"\r")[0]) == 31
        assert int(redis_server.command("PTTL", key)[1:].split(b"\r")[0]) > 86_000_000
        with pytest.raises(SlotUnavailable) as caught:
            await daily.acquire(wait_for_quota=False)
        assert caught.value.quota
    finally:
        await daily.aclose()
        await live.aclose()


def test_a_password_without_its_colon_is_hidden_too() -> None:
    """`redis://secret@host` (a password typed without the colon) shows no secret."""
    assert redact_url("redis://hunter2@h:6379/0") == "redis://***@h:6379/0"


def test_a_password_in_the_query_string_is_hidden_too() -> None:
    """redis-py takes ?password=...: it is masked like the user-info form."""
    assert redact_url("redis://h:6395/0?password=hunter2") == "redis://h:6395/0?password=***"
    assert "hunter2" not in redact_url("unix:///tmp/r.sock?db=1&password=hunter2")
