"""The results file is the job's truth: transient errors are not decisions (a plain resume
sends them again), and job_state / `summary` say what the file holds against the manifest
(this shard's part of it), with the exit code the batch contract gives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from facematch_async import BatchRunner, job_state, read_manifest
from facematch_async.batch import ResultsFile, job_state_async
from facematch_async.batch._shard import shard_filter
from facematch_async.cli import main
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import Faces, MakeClient


def manifest_of(faces: Faces, ids: list[str], *, gif: str | None = None) -> Path:
    """A CSV manifest of alice/alice pairs; ``gif`` names one whose image is a GIF."""
    faces.write("animated.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    rows = [f"{pid},{'animated.jpg' if pid == gif else 'alice.png'},alice.jpg" for pid in ids]
    manifest = faces.root / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + "\n".join(rows) + "\n")
    return manifest


def facematch_requests(sandbox: SandboxServer) -> int:
    return sum(n for (path, _), n in sandbox.counters.requests.items() if path == "/v1/facematch")


async def test_a_transient_error_is_not_a_decision_a_plain_resume_sends_it_again(
    make_client: MakeClient, faces: Faces, tmp_path: Path, sandbox: SandboxServer
) -> None:
    """503s after the retries are recorded retryable: the state says 69 (still to run) and
    a plain resume sends exactly those pairs; a final error (a GIF) stays, exit 1, until
    retry_failed (which cannot fix it: the input must change)."""
    ids = [f"p{i}" for i in range(10)]
    manifest = manifest_of(faces, ids, gif="p9")
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={}, times=3))
    out = tmp_path / "out.jsonl"
    runner = BatchRunner(make_client(max_retries=0), concurrency=1, rate_limit=None)
    await runner.run_to_file(read_manifest(manifest), out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["pair_id"] for r in lines if r["retryable"]) == ["p0", "p1", "p2"]
    state = job_state(out, manifest)
    assert (state.decided, state.retryable, state.final_errors, state.missing) == (6, 3, 1, 0)
    assert state.exit_code == 69
    assert (state.retryable_ids, state.final_error_ids) == (["p0", "p1", "p2"], ["p9"])
    assert any("--resume" in line for line in state.advice())
    held = ResultsFile(out)  # a writer's own index gives the same truth, without a re-read
    held.open(resume=True)
    for mine in (held.job_state(manifest), await held.job_state_async(manifest, shard="1/1")):
        assert (mine.decided, mine.retryable, mine.final_errors, mine.missing) == (6, 3, 1, 0)
        assert (mine.exit_code, mine.retryable_ids, mine.not_in_manifest) == (
            69,
            ["p0", "p1", "p2"],
            0,
        )
    held.close()

    sent = facematch_requests(sandbox)
    again = await BatchRunner(make_client(), rate_limit=None).run_to_file(
        read_manifest(manifest), out, resume=True
    )
    assert (again.statuses["match"], again.skipped) == (3, 7)
    assert facematch_requests(sandbox) - sent == 3
    state = job_state(out, manifest)
    assert (state.decided, state.retryable, state.final_errors, state.exit_code) == (9, 0, 1, 1)
    assert any("--retry-failed" in line for line in state.advice())

    retried = await BatchRunner(make_client(), rate_limit=None).run_to_file(
        read_manifest(manifest), out, retry_failed=True
    )
    assert (retried.statuses["error"], retried.skipped) == (1, 9)
    assert job_state(out, manifest).exit_code == 1


async def test_the_state_of_a_shard_against_its_part_of_the_manifest(
    make_client: MakeClient, faces: Faces, tmp_path: Path
) -> None:
    """Shard 2/3's file against the manifest: complete for its part; a pair whose line is
    lost is missing (69); a line of another shard is counted as not in the manifest; a
    duplicate row is found under its @line key."""
    ids = [f"p{i:02d}" for i in range(30)]
    repeated = next(iter(shard_filter(read_manifest(manifest_of(faces, ids)), (2, 3))))
    manifest = manifest_of(faces, [*ids, repeated.pair_id])  # line 32 repeats a pair of ours
    mine = list(shard_filter(read_manifest(manifest), (2, 3)))
    out = tmp_path / "part2.jsonl"
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None)
    await runner.run_to_file(mine, out)
    state = job_state(out, manifest, shard="2/3")
    assert (state.manifest_pairs, state.missing, state.not_in_manifest) == (len(mine), 0, 0)
    assert state.final_error_ids == ["@line:32"]  # the repeat: a final error, found by line
    assert state.exit_code == 1 and state.shard == (2, 3)
    whole = job_state(out, manifest)  # against the whole manifest, the others are missing
    assert whole.missing == len(ids) + 1 - len(mine) and whole.exit_code == 69

    lines = out.read_text().splitlines()
    lost = json.loads(lines[0])["pair_id"]
    foreign = next(spec.pair_id for spec in read_manifest(manifest) if spec not in mine)
    assert lost != "@line:32"
    stray = json.loads(lines[1]) | {"pair_id": foreign}
    out.write_text("\n".join([*lines[1:], json.dumps(stray)]) + "\n")
    state = job_state(out, manifest, shard=(2, 3))
    assert (state.missing, state.missing_ids, state.not_in_manifest) == (1, [lost], 1)
    assert state.exit_code == 69
    assert "not in the manifest (shard 2/3): 1" in state.format()


async def test_job_state_async_gives_the_same_state(tmp_path: Path) -> None:
    """The async twin reads off the loop and returns what job_state returns."""
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"pair_id": "a", "status": "match", "confidence": 90.0, "attempts": 1, "latency_ms": 10}\n'
        '{"pair_id": "b", "status": "error", "error_type": "APITimeoutError", "attempts": 3}\n'
    )
    sync, done = job_state(path), await job_state_async(path)
    assert (done.decided, done.retryable, done.exit_code) == (sync.decided, sync.retryable, 69)
    assert done.confidence.counts == {"match": [0] * 18 + [1, 0]}


def line(pair_id: str, status: str = "match", **fields: object) -> str:
    record = {"pair_id": pair_id, "status": status, "attempts": 1, "latency_ms": 100.0}
    return json.dumps(record | fields) + "\n"


@pytest.mark.parametrize(
    ("last", "code", "says"),
    [
        (line("b"), 0, None),
        (line("b", "error", error_type="APIConnectionError"), 1, "--resume"),
        (line("b", "error", error_type="ImageReadError"), 1, "--retry-failed"),
        ("", 1, "--resume"),  # b has no line
    ],
)
def test_summary_exits_1_until_every_manifest_pair_has_a_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], last: str, code: int, says: str | None
) -> None:
    """`summary --manifest` exits 0 only when every pair is decided; otherwise 1, with one
    line saying what to do (--resume for pairs still to run, --retry-failed for final
    errors)."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\na,x,y\nb,x,y\n")
    results = tmp_path / "r.jsonl"
    results.write_text(line("a") + last)
    assert main(["summary", str(results), "--manifest", str(manifest)]) == code
    err = capsys.readouterr().err
    if says is None:
        assert err == ""
    else:
        assert says in err and "Traceback" not in err


def test_summary_refuses_a_shard_without_a_manifest_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--shard needs --manifest; a malformed shard is a usage error too (exit 2)."""
    results = tmp_path / "r.jsonl"
    results.write_text(line("a"))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\na,x,y\n")
    assert main(["summary", str(results), "--shard", "1/2"]) == 2
    assert main(["summary", str(results), "--manifest", str(manifest), "--shard", "3/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("facematch-async summary: ") for e in err)


def test_a_long_summary_shows_progress_and_ctrl_c_is_one_line_and_130(tmp_path: Path) -> None:
    """Reading a million lines prints progress lines on stderr; SIGINT then ends it with
    one line and exit 130, no traceback."""
    path = tmp_path / "big.jsonl"
    template = '{"pair_id": "p%07d", "status": "match", "attempts": 1, "latency_ms": 5.0}\n'
    with open(path, "w") as file:
        file.writelines(template % i for i in range(1_500_000))
    summary = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "facematch_async.cli", "summary", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert summary.stderr is not None
    progress = summary.stderr.readline()
    assert progress.startswith(f"reading {path}: ") and "lines" in progress
    summary.send_signal(signal.SIGINT)
    out, err = summary.communicate(timeout=60)
    assert summary.returncode == 130, err
    assert err.strip().splitlines()[-1] == "facematch-async summary: interrupted"
    assert "Traceback" not in err and out == ""
