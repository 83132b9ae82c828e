"""The job's truth is the results file: exit codes and counts after an outage, a resume, a
shard; progress that never looks hung; the library's log lines on demand; the report."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facematch_async import BatchRunner, FaceMatchClient, read_manifest
from facematch_async.batch import ExitCode, JobProgress, run_job, shard_filter
from facematch_async.sandbox import (
    FaultConfig,
    SandboxConfig,
    SandboxServer,
    ScriptedResponse,
    make_test_image,
)
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FACEMATCH, records


def pairs_manifest(folder: Path, count: int) -> Path:
    (folder / "a.png").write_bytes(make_test_image("alice", "png"))
    (folder / "b.jpg").write_bytes(make_test_image("alice", "jpeg"))
    manifest = folder / "pairs.csv"
    rows = "".join(f"p{i:03d},a.png,b.jpg\n" for i in range(count))
    manifest.write_text("pair_id,file_a,file_b\n" + rows)
    return manifest


def cli(base_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_BASE_URL": base_url,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(  # noqa: S603 (our interpreter, our CLI)
        [sys.executable, "-W", "error", "-m", "facematch_async.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET)) as server:
        yield server


async def test_after_an_outage_a_plain_resume_sends_the_transient_errors_again(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """503s through every retry: those pairs are written retryable, the run exits 69 saying
    how many are still to run; a plain --resume sends exactly them and exits 0, and summary
    agrees (0)."""
    manifest = pairs_manifest(tmp_path, 12)
    out = tmp_path / "out.jsonl"
    sandbox.scripted.add(
        ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "down"}, times=9)
    )
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    first = await asyncio.to_thread(
        cli, sandbox.base_url, *args, "--max-retries", "0", "--concurrency", "1"
    )
    assert first.returncode == ExitCode.UNAVAILABLE, first.stderr
    retryable = [r for r in records(out) if r.get("retryable")]
    assert len(retryable) == 9
    assert re.search(r"\b9 pair\(s\) still to run", first.stderr), first.stderr
    sent_before = sandbox.counters.count(FACEMATCH)
    resumed = await asyncio.to_thread(cli, sandbox.base_url, *args, "--resume")
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert sandbox.counters.count(FACEMATCH) - sent_before == 9  # exactly those, no more
    assert "12 decided, 0 final errors, 0 still to run" in resumed.stdout
    summary = await asyncio.to_thread(
        cli, sandbox.base_url, "summary", str(out), "--manifest", str(manifest)
    )
    assert summary.returncode == 0, summary.stdout + summary.stderr


async def test_a_shards_totals_and_counts_are_its_own(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """--shard 1/3: the progress total and the closing counts are the shard's pairs, never
    more done than the total."""
    manifest = pairs_manifest(tmp_path, 60)
    mine = sum(1 for _ in shard_filter(read_manifest(manifest), (1, 3)))
    out = tmp_path / "part1.jsonl"
    done = await asyncio.to_thread(
        cli,
        sandbox.base_url,
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--rate-limit",
        "none",
        "--shard",
        "1/3",
        "--progress-interval",
        "0.2",
    )
    assert done.returncode == 0, done.stderr
    totals = re.findall(r"(\d+)/(\d+) \(\d+%\)", done.stderr)
    assert totals, done.stderr
    assert {int(total) for _, total in totals} == {mine}
    assert all(int(count) <= mine for count, _ in totals)
    assert f"(shard 1/3): {mine} decided, 0 final errors, 0 still to run" in done.stdout


async def test_progress_says_at_once_what_the_batch_waits_for(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Without a terminal and a 30 s interval, a batch held by its rate limit prints a line
    within seconds saying what it waits for (not 30 s of silence)."""
    manifest = pairs_manifest(tmp_path, 4)
    out = tmp_path / "out.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facematch_async.cli",
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--rate-limit",
        "1/20s",
        env={
            "DEEPVUE_CLIENT_ID": CLIENT_ID,
            "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
            "DEEPVUE_BASE_URL": sandbox.base_url,
        },
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(8):
            while not any("window is full" in line for line in said):
                said.append((await process.stderr.readline()).decode())
        assert any(re.match(r"\d+/4 ", line) for line in said), said  # a progress line
    except TimeoutError:
        raise AssertionError(f"8 s without a word on what it waits for: {said}") from None
    finally:
        process.terminate()
        await process.communicate()


async def test_log_level_info_shows_each_retry_as_the_projects_own_line(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """--log-level INFO prints each scheduled retry, prefixed with the command's name."""
    manifest = pairs_manifest(tmp_path, 1)
    sandbox.scripted.add(ScriptedResponse(path=FACEMATCH, status=503, json={"detail": "x"}))
    out = tmp_path / "out.jsonl"
    done = await asyncio.to_thread(
        cli,
        sandbox.base_url,
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--rate-limit",
        "none",
        "--log-level",
        "INFO",
    )
    assert done.returncode == 0, done.stderr
    retries = [line for line in done.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 1 and retries[0].startswith("facematch-async batch: ")


async def test_batch_writes_its_report(sandbox: SandboxServer, tmp_path: Path) -> None:
    """--report writes one self-contained HTML file with the file's counts and the run's
    settings, never the secret."""
    manifest = pairs_manifest(tmp_path, 5)
    out, report = tmp_path / "out.jsonl", tmp_path / "report.html"
    done = await asyncio.to_thread(
        cli,
        sandbox.base_url,
        "batch",
        str(manifest),
        "--out",
        str(out),
        "--rate-limit",
        "10/s",
        "--report",
        str(report),
    )
    assert done.returncode == 0, done.stderr
    html = report.read_text()
    assert "<html" in html.lower() and "10/s" in html
    assert CLIENT_SECRET not in html
    assert "<script" not in html.lower()


async def test_a_python_job_hears_its_progress_and_gets_the_files_truth(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """run_job(on_progress=...) reports while it runs; its result's state counts the
    manifest's pairs, the exit code is the file's."""
    manifest = pairs_manifest(tmp_path, 6)
    sandbox.set_random_faults(FaultConfig(latency=0.3))
    heard: list[JobProgress] = []
    async with FaceMatchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=sandbox.base_url
    ) as client:
        runner = BatchRunner(client, concurrency=2, rate_limit=None)
        result = await run_job(
            runner,
            read_manifest(manifest),
            tmp_path / "out.jsonl",
            manifest=manifest,
            on_progress=heard.append,
            progress_interval=0.2,
            handle_signals=False,
        )
    assert result.exit_code == ExitCode.OK
    assert result.state is not None and result.state.decided == 6 and result.left == 0
    assert heard and heard[-1].summary is result.summary
