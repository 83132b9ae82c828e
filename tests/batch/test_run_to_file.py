"""BatchRunner.run_to_file: resumable runs from Python, as `batch --out --resume` does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facematch_async import BatchRunner
from facematch_async.sandbox import (
    SandboxServer,
    ScriptedResponse,
    make_test_image,
    sandbox_process,
)
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, MakeClient, records

# A bulk job as a user writes it (an Airflow or Prefect task, say): no CLI involved.
JOB = """
import asyncio, sys
from facematch_async import BatchRunner, FaceMatchClient, read_manifest

async def main():
    async with FaceMatchClient() as client:
        runner = BatchRunner(client, concurrency=4, rate_limit=None)
        summary = await runner.run_to_file(
            read_manifest(sys.argv[1]), sys.argv[2], resume=sys.argv[3] == "resume"
        )
    print(summary.done, summary.skipped)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[str]:
    """A sandbox in its own process that holds each answer 50 ms, so a job can be killed."""
    with sandbox_process(
        "--client-id",
        CLIENT_ID,
        "--client-secret",
        CLIENT_SECRET,
        "--engine",
        "test",
        "--latency",
        "0.05",
    ) as url:
        yield url


def test_a_killed_python_job_resumes_with_each_pair_exactly_once(
    slow_sandbox: str, tmp_path: Path
) -> None:
    """kill -9 mid-run, a torn last line, then run_to_file(resume=True): one line per pair,
    and no pair that had a line is sent again."""
    (tmp_path / "a.png").write_bytes(make_test_image("asha", "png"))
    (tmp_path / "b.jpg").write_bytes(make_test_image("asha", "jpeg"))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n" + "".join(f"p{i:03d},a.png,b.jpg\n" for i in range(80))
    )
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_BASE_URL": slow_sandbox,
    }
    command = [sys.executable, "-c", JOB, str(manifest), str(out)]
    job = subprocess.Popen([*command, "new"], env=env, stdout=subprocess.DEVNULL, text=True)  # noqa: S603
    deadline = time.monotonic() + 30
    while not (out.exists() and out.read_bytes().count(b"\n") >= 10):
        assert job.poll() is None, "the job finished before it could be killed"
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.01)
    job.kill()
    job.wait(timeout=10)
    complete = out.read_bytes()
    complete = complete[: complete.rfind(b"\n") + 1]  # the kill may have torn a line itself
    out.write_bytes(complete + b'{"pair_id": "p079", "sta')  # as if the kill tore a line
    before = {
        record["pair_id"]: record["finished_at"]
        for record in map(json.loads, complete.decode().splitlines())
    }
    resumed = subprocess.run(  # noqa: S603
        [*command, "resume"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "torn last line" in resumed.stderr
    done, skipped = map(int, resumed.stdout.split())
    assert done + skipped == 80
    assert skipped == len(before)
    after = records(out)
    assert sorted(record["pair_id"] for record in after) == [f"p{i:03d}" for i in range(80)]
    by_id = {record["pair_id"]: record["finished_at"] for record in after}
    assert all(by_id[pair] == finished for pair, finished in before.items())  # not sent again


async def test_an_existing_file_needs_resume_and_retry_failed_reruns_only_errors(
    make_client: MakeClient, faces: Faces, tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A file with results is never overwritten; retry_failed reruns the errors alone and the
    file ends with one line per pair."""
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(6)]
    out = tmp_path / "out.jsonl"
    sandbox.scripted.add(
        ScriptedResponse(path="/v1/facematch", status=400, json={"detail": "bad"}, times=2)
    )
    runner = BatchRunner(make_client(), concurrency=1, rate_limit=None)
    first = await runner.run_to_file(pairs, out)
    assert (first.statuses["match"], first.statuses["error"]) == (4, 2)
    with pytest.raises(FileExistsError):
        await runner.run_to_file(pairs, out)
    sent = sum(sandbox.counters.requests.values())
    again = await runner.run_to_file(pairs, out, retry_failed=True)
    assert (again.statuses["match"], again.skipped) == (2, 4)
    assert sum(sandbox.counters.requests.values()) - sent == 2
    assert sorted((r["pair_id"], r["status"]) for r in records(out)) == [
        (f"p{i}", "match") for i in range(6)
    ]


async def test_stop_with_grace_abandons_pairs_still_sending(
    make_client: MakeClient, faces: Faces, tmp_path: Path, sandbox: SandboxServer
) -> None:
    """stop(grace=...) lets pairs in flight finish for that long, then abandons them."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", delay=30, times=2))
    runner = BatchRunner(make_client(timeout=60), concurrency=2, rate_limit=None)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(10)]
    started = time.monotonic()

    async def stop_soon() -> None:
        while runner.in_flight < 2:  # noqa: ASYNC110 (the runner offers no event for it)
            await asyncio.sleep(0.01)
        runner.stop(grace=0.5)

    stopper = asyncio.create_task(stop_soon())
    summary = await runner.run_to_file(pairs, tmp_path / "out.jsonl")
    await stopper
    assert time.monotonic() - started < 10
    assert summary.done == 0
    assert runner.unrecorded == 2
