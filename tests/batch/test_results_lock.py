"""One writer per results file: a second writer (a process, a ResultsFile, a run_to_file, a
CLI batch) is refused at once naming the holder; compaction never swaps the file under a
writer; a killed holder never blocks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facematch_async import BatchRunner
from facematch_async.batch import ResultsFile, ResultsFileLockedError
from facematch_async.sandbox import SandboxServer, ScriptedResponse, sandbox_process
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, MakeClient, records
from tests.helpers import decided_outcome as ok
from tests.helpers import failed_outcome as failed

# A process that takes a results file, says so, and holds it until killed.
HOLDER = """
import sys, time
from facematch_async.batch import ResultsFile
results = ResultsFile(sys.argv[1])
results.open(resume=True)
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[str]:
    """A sandbox in its own process that holds each answer 100 ms: a batch runs for a while."""
    with sandbox_process(
        "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, "--engine", "test",
        "--latency", "0.1",
    ) as url:  # fmt: skip
        yield url


def hold(path: Path) -> subprocess.Popen[str]:
    """Start a process that holds ``path`` (with a secret-looking argument to mask)."""
    process = subprocess.Popen(  # noqa: S603 (our interpreter, a fixed script)
        [sys.executable, "-c", HOLDER, str(path), "--client-secret", "hunter2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_results_file_in_this_process_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    """Two ResultsFile objects on one path: the second open fails at once, naming this
    process; once the first is closed (lock file removed) the path is free again."""
    path = tmp_path / "out.jsonl"
    first = ResultsFile(path)
    first.open(resume=False)
    first.write(ok("a"))
    second = ResultsFile(path)
    with pytest.raises(ResultsFileLockedError) as refused:
        second.open(resume=True)
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and "this process" in message
    assert socket.gethostname() in message
    assert refused.value.holder is not None and refused.value.holder.pid == os.getpid()
    assert "\n" not in message
    first.write(ok("b"))
    first.close()
    assert not path.with_name("out.jsonl.lock").exists()
    third = ResultsFile(path)
    third.open(resume=True)
    assert third.recorded == 2
    third.close()


def test_another_process_is_named_and_its_kill_9_leaves_nothing_that_blocks(
    tmp_path: Path,
) -> None:
    """A holder in another process is named (pid, command with its secret masked); after
    kill -9 its stale lock file is there but a resume opens at once."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"pair_id": "a", "status": "match"}\n')
    holder = hold(path)
    try:
        with pytest.raises(ResultsFileLockedError) as refused:
            ResultsFile(path).open(resume=True)
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "since" in message
        assert "--client-secret ***" in message and "hunter2" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert path.with_name("out.jsonl.lock").exists()  # stale: its owner died holding it
    results = ResultsFile(path)
    results.open(resume=True)
    assert results.status("a") == "match"
    results.close()


def test_a_compaction_never_swaps_the_file_under_a_writer(tmp_path: Path) -> None:
    """A retry-failed run while a writer goes on is refused before it reads; a reader (a dry
    run's load) closing with compact=True leaves the file alone: the writer's lines stay."""
    path = tmp_path / "out.jsonl"
    writer = ResultsFile(path)
    writer.open(resume=False)
    writer.write(failed("a"))
    writer.write(ok("b"))
    writer.write(ok("b"))  # superseded: a compaction would rewrite the file
    retry = ResultsFile(path)
    with pytest.raises(ResultsFileLockedError):
        retry.open(resume=True)
    reader = ResultsFile(path)
    reader.load()
    inode = path.stat().st_ino
    reader.close(compact=True)
    assert path.stat().st_ino == inode  # not replaced
    writer.write(ok("c"))
    writer.close()
    assert sorted(r["pair_id"] for r in records(path)) == ["a", "b", "c"]


async def test_two_run_to_file_on_one_path_in_one_process_send_each_pair_once(
    make_client: MakeClient, faces: Faces, tmp_path: Path, sandbox: SandboxServer
) -> None:
    """A second run_to_file on a path a first one writes raises at once, before sending
    anything; the first finishes with one request per pair."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", delay=0.05, times=30))
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(30)]
    out = tmp_path / "out.jsonl"
    first = BatchRunner(make_client(), concurrency=2, rate_limit=None)
    running = asyncio.create_task(first.run_to_file(pairs, out))
    while not out.exists() or not out.read_bytes():  # noqa: ASYNC110 (polling a file)
        await asyncio.sleep(0.01)
    second = BatchRunner(make_client(), concurrency=2, rate_limit=None)
    with pytest.raises(ResultsFileLockedError, match="this process"):
        await second.run_to_file(pairs, out, resume=True)
    summary = await running
    assert summary.done == 30
    assert sandbox.counters.requests[("/v1/facematch", 200)] == 30
    assert sorted(r["pair_id"] for r in records(out)) == sorted(p for p, _, _ in pairs)


def test_a_cli_resume_started_while_a_run_goes_on_exits_2_naming_the_holder(
    slow_sandbox: str, tmp_path: Path
) -> None:
    """`batch --resume` on the --out of a running batch exits 2 at once with one line
    naming the running batch; the first run sends each pair once and exits 0."""
    (tmp_path / "a.png").write_bytes(Faces(tmp_path).alice_png.read_bytes())
    (tmp_path / "b.jpg").write_bytes(Faces(tmp_path).alice_jpg.read_bytes())
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n" + "".join(f"p{i},a.png,b.jpg\n" for i in range(40))
    )
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_BASE_URL": slow_sandbox,
    }
    command = [sys.executable, "-m", "facematch_async.cli", "batch", str(manifest), "--out",
               str(out), "--rate-limit", "none", "--concurrency", "2"]  # fmt: skip
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    deadline = time.monotonic() + 30
    while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    second = subprocess.run(  # noqa: S603
        [*command, "--resume"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert line.startswith("facematch-async batch: ") and f"pid {first.pid}" in line
    assert "Traceback" not in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert sorted(r["pair_id"] for r in records(out)) == sorted(f"p{i}" for i in range(40))


def test_a_file_system_without_locks_warns_and_still_compacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where flock is not supported (some network mounts: faked here, no such mount exists
    on this machine) the run goes on with a WARNING saying what is unguarded, and its
    close still compacts."""
    import errno

    from facematch_async.batch import _lock

    def no_locks(fd: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_lock, "_try_lock", no_locks)
    path = tmp_path / "out.jsonl"
    results = ResultsFile(path)
    results.open(resume=False)
    results.write(failed("a"))
    results.write(ok("a"))
    results.close()
    assert "cannot be locked (No locks available)" in caplog.text
    assert [r["status"] for r in records(path)] == ["match"]
