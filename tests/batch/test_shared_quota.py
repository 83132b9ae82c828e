"""One key's quota shared end to end: batch CLI shards, a live caller, one real Redis, and
the sandbox enforcing the plan and counting what it saw.

Real parts only: ``facematch-async batch`` processes, a ``redis-server`` on loopback (the
``redis_server`` fixture), the sandbox on the test's loop (its counters are what the server
let through, in sliding windows). The plans are scaled down (windows of 1 s and a few
seconds instead of a minute and a day) so a run takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from facematch_async import FaceMatchClient, PacingStoreError, RateLimitError
from facematch_async.sandbox import SandboxConfig, SandboxServer, make_test_image

ID = "quota-client"
SECRET = "quota-s3cr3t-never-printed"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two tagged images of one person, and a folder for manifests and results."""
    images = tmp_path / "img"
    images.mkdir()
    a, b = images / "a.png", images / "b.jpg"
    a.write_bytes(make_test_image("asha", "png"))
    b.write_bytes(make_test_image("asha", "jpeg"))
    return a, b, tmp_path


# What the batch command itself writes on stderr: its own messages and its progress lines.
PROJECT_LINE = re.compile(r"facematch-async |\d+/\d+ \(\d+%\)|Resume with: ")


def write_manifest(folder: Path, a: Path, b: Path, count: int) -> Path:
    manifest = folder / "pairs.csv"
    rows = "".join(f"q{i:04d},{a},{b}\n" for i in range(count))
    manifest.write_text("pair_id,file_a,file_b\n" + rows)
    return manifest


def cli_env(base_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DEEPVUE_CLIENT_ID": ID,
        "DEEPVUE_CLIENT_SECRET": SECRET,
        "DEEPVUE_BASE_URL": base_url,
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("DEEPVUE_RATE_LIMIT", "DEEPVUE_RATE_LIMIT_STORE"):
        env.pop(name, None)
    return env


async def start_batch(
    manifest: Path, out: Path, env: dict[str, str], *flags: str
) -> asyncio.subprocess.Process:
    # -W error: a warning from a dependency (redis-py's, say) would be a line on every
    # shard's stderr that the project did not write; here it is a failure.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "facematch_async.cli",
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--progress-interval",
        "60",
        *flags,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def summary_of(results: list[Path], manifest: Path) -> subprocess.CompletedProcess[str]:
    """``facematch-async summary RESULTS --manifest``: exit 0 iff each pair has one line."""
    return subprocess.run(  # noqa: S603 (our interpreter, our CLI)
        [sys.executable, "-m", "facematch_async.cli", "summary", *map(str, results),
         "--manifest", str(manifest)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_windows_kept(sandbox: SandboxServer, plan: str) -> None:
    """No window was exceeded and nothing was refused, as the server counted."""
    counters = sandbox.counters
    assert not counters.rate_limited, f"429s at the server: {dict(counters.rate_limited)}"
    for window in sandbox.config.rate_windows:
        seen = counters.max_in_window.get(window.label, 0)
        assert 0 < seen <= window.limit, f"{window.label}: {seen} in one window ({plan})"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- (a) three shards and a live caller on one key ------------------------------------------

SHARED_PLAN = "10/s,80/10s"  # a scaled-down "per second, per minute": 1 s and 10 s windows


async def test_three_cli_shards_and_a_live_caller_share_one_key(redis_server, pairs) -> None:
    """Three ``batch --shard k/3 --reserve 25%`` processes and a live caller on one key, one
    Redis, against a sandbox enforcing the plan for about 15 s: no window exceeded at the
    server, no 429, every live call succeeds and waits little, each pair is in exactly one
    results file.

    The plan leaves the live caller its share: ``--reserve 25%`` keeps 2 of 10 per second
    and 20 of 80 per 10 s, about the ~2 calls/s the live caller makes.
    """
    a, b, folder = pairs
    manifest = write_manifest(folder, a, b, 90)  # ~15 s at the bulk's 60 per 10 s
    config = SandboxConfig(client_id=ID, client_secret=SECRET, rate_limit=SHARED_PLAN)
    async with SandboxServer(config) as sandbox:
        env = cli_env(sandbox.base_url)
        outs = [folder / f"results-{k}.jsonl" for k in (1, 2, 3)]
        flags = ["--rate-limit", SHARED_PLAN, "--rate-limit-store", redis_server.url]
        shards = [
            await start_batch(manifest, out, env, "--shard", f"{k}/3", *flags, "--reserve", "25%")
            for k, out in zip((1, 2, 3), outs, strict=True)
        ]
        live_latencies: list[float] = []
        live_errors: list[BaseException] = []
        async with FaceMatchClient(
            client_id=ID,
            client_secret=SECRET,
            base_url=sandbox.base_url,
            rate_limit=SHARED_PLAN,
            rate_limit_store=redis_server.url,
        ) as live:
            await live.verify_credentials()

            async def live_caller() -> None:
                while any(shard.returncode is None for shard in shards):
                    started = time.perf_counter()
                    try:
                        result = await live.match(a, b, deadline=5)
                    except Exception as error:  # collected: every live call must succeed
                        live_errors.append(error)
                    else:
                        assert result.match
                        live_latencies.append(time.perf_counter() - started)
                    await anyio.sleep(0.5)

            caller = asyncio.create_task(live_caller())
            outputs = [await shard.communicate() for shard in shards]
            await caller
        counters = sandbox.counters
        assert_windows_kept(sandbox, SHARED_PLAN)
    codes = [shard.returncode for shard in shards]
    assert codes == [0, 0, 0], [err.decode()[-2000:] for _, err in outputs]
    for _, err in outputs:
        assert b"Traceback" not in err
    assert live_errors == []
    # The live caller ran alongside the whole job, and its waits stayed short: p95 well
    # under the longer window (10 s), which a live call would wait out if bulk filled it.
    assert len(live_latencies) >= 15
    p95 = percentile(live_latencies, 0.95)
    assert p95 < 2.0, f"live p95 {p95:.2f} s (latencies {sorted(live_latencies)})"
    # Every request reached the server once: 90 bulk pairs and the live calls.
    assert counters.count("/v1/facematch", 200) == 90 + len(live_latencies)
    combined = summary_of(outs, manifest)
    assert combined.returncode == 0, combined.stdout + combined.stderr
    print(
        f"\nlive calls {len(live_latencies)}: p50 {percentile(live_latencies, 0.5):.3f} s, "
        f"p95 {p95:.3f} s; server max in window {counters.max_in_window}"
    )


# --- (b) Redis lost mid-run -------------------------------------------------------------------

LOST_PLAN = "5/s,20/4s"


async def test_redis_stopped_mid_run_during_cli_batches(redis_server, pairs) -> None:
    """Redis is stopped while two CLI shards run (then started again): no crash, no pair lost
    or repeated, no window exceeded at the server, a WARNING on each shard's stderr."""
    a, b, folder = pairs
    manifest = write_manifest(folder, a, b, 44)
    config = SandboxConfig(client_id=ID, client_secret=SECRET, rate_limit=LOST_PLAN)
    async with SandboxServer(config) as sandbox:
        env = cli_env(sandbox.base_url)
        outs = [folder / f"results-{k}.jsonl" for k in (1, 2)]
        flags = ["--rate-limit", LOST_PLAN, "--rate-limit-store", redis_server.url]
        shards = [
            await start_batch(manifest, out, env, "--shard", f"{k}/2", *flags)
            for k, out in zip((1, 2), outs, strict=True)
        ]
        readers = [asyncio.create_task(shard.communicate()) for shard in shards]

        def lines() -> int:
            return sum(out.read_bytes().count(b"\n") for out in outs if out.exists())

        while lines() < 10:  # well into the run
            assert not any(reader.done() for reader in readers), "finished before the loss"
            await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(redis_server.stop)
        lost_at = lines()
        await anyio.sleep(7)  # the shards wait out the 4 s window, then pace locally
        assert any(reader.done() is False for reader in readers)
        await anyio.to_thread.run_sync(redis_server.start)
        outputs = [await reader for reader in readers]
        assert_windows_kept(sandbox, LOST_PLAN)
    assert lost_at < 44
    for shard, (_, err) in zip(shards, outputs, strict=True):
        text = err.decode()
        assert shard.returncode == 0, text[-2000:]
        assert "Traceback" not in text
        assert "FALLING BACK" in text and f"127.0.0.1:{redis_server.port}" in text
        assert SECRET not in text
    combined = summary_of(outs, manifest)
    assert combined.returncode == 0, combined.stdout + combined.stderr
    assert "44" in combined.stdout


# --- (c) a store that cannot be reached at start --------------------------------------------


async def test_a_dead_store_fails_verify_credentials_and_the_cli_in_one_line(
    pairs, sandbox_url_plain: str
) -> None:
    """Redis on a dead port: ``verify_credentials()`` raises ``PacingStoreError`` naming the
    URL; ``batch`` exits 3 with one line on stderr, no traceback, nothing sent."""
    a, b, folder = pairs
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with FaceMatchClient(
        client_id=ID,
        client_secret=SECRET,
        base_url=sandbox_url_plain,
        rate_limit="5/s",
        rate_limit_store=url,
    ) as client:
        with pytest.raises(PacingStoreError) as caught:
            await client.verify_credentials()
        assert url in str(caught.value)
    manifest = write_manifest(folder, a, b, 5)
    out = folder / "results.jsonl"
    flags = ["--rate-limit", "5/s", "--rate-limit-store", url]
    batch = await start_batch(manifest, out, cli_env(sandbox_url_plain), *flags)
    stdout, stderr = await batch.communicate()
    err = stderr.decode()
    assert batch.returncode == 3, err
    said = [line for line in err.splitlines() if line.strip()]
    assert len(said) == 1 and url in said[0], err
    assert "Traceback" not in err and stdout == b""
    assert not out.exists() or out.read_text() == ""


async def test_a_batch_on_a_live_store_prints_only_its_own_lines(
    redis_server, pairs, sandbox_url_plain: str
) -> None:
    """Under ``python -W error``, a batch through a live Redis exits 0 and its stderr holds
    only lines the CLI writes itself (no dependency's warning): each starts with the
    command's name or is a progress line."""
    a, b, folder = pairs
    manifest = write_manifest(folder, a, b, 6)
    out = folder / "results.jsonl"
    flags = ["--rate-limit", "20/s", "--rate-limit-store", redis_server.url]
    batch = await start_batch(manifest, out, cli_env(sandbox_url_plain), *flags)
    _, stderr = await batch.communicate()
    err = stderr.decode()
    assert batch.returncode == 0, err
    assert len(out.read_text().splitlines()) == 6
    foreign = [line for line in err.splitlines() if line.strip() and not PROJECT_LINE.match(line)]
    assert foreign == [], err
    assert "Warning" not in err and "site-packages" not in err


@pytest.fixture
async def sandbox_url_plain() -> AsyncIterator[str]:
    async with SandboxServer(SandboxConfig(client_id=ID, client_secret=SECRET)) as sandbox:
        yield sandbox.base_url


# --- (d) a deadline shorter than the wait for a slot ----------------------------------------


async def test_a_deadline_shorter_than_the_shared_wait_fails_at_once(redis_server, pairs) -> None:
    """The shared windows are full (another process of the key used them): a call with
    ``deadline=1`` raises ``RateLimitError`` with ``retry_after`` at once, sending nothing;
    once the window reopens, the same client's next call goes through."""
    a, b, _ = pairs
    plan = "2/s,4/5s"
    config = SandboxConfig(client_id=ID, client_secret=SECRET, rate_limit=plan)
    async with SandboxServer(config) as sandbox:
        options = {
            "client_id": ID,
            "client_secret": SECRET,
            "base_url": sandbox.base_url,
            "rate_limit": plan,
            "rate_limit_store": redis_server.url,
        }
        async with FaceMatchClient(**options) as other, FaceMatchClient(**options) as client:
            await client.verify_credentials()  # the token, so the call below only paces
            for _ in range(4):
                await other.match(a, b)  # the 5 s window is full now
            sent = sandbox.counters.count("/v1/facematch")
            started = time.perf_counter()
            with pytest.raises(RateLimitError) as caught:
                await client.match(a, b, deadline=1)
            elapsed = time.perf_counter() - started
            # At once: not after waiting out the 1 s deadline for a slot that opens later.
            assert elapsed < 0.5, f"failed after {elapsed:.2f} s"
            retry_after = caught.value.retry_after
            assert retry_after is not None and 1 <= retry_after <= 5.5
            assert sandbox.counters.count("/v1/facematch") == sent
            await anyio.sleep(retry_after)
            # The wait it reported is over: the next call asks the windows again and goes.
            result = await client.match(a, b, deadline=1)
            assert result.match
        assert_windows_kept(sandbox, plan)
