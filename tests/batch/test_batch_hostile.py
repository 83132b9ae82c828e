"""A batch under hostile manifests, answers and disks: one bad row, answer or disk never
stops or hangs the batch, never escapes as a traceback, and never loses a recorded pair."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from facematch_async import BatchRunner, read_manifest
from facematch_async.batch import PairOutcome, ResultsFile, ResultsFileError
from facematch_async.sandbox import SandboxServer, ScriptedResponse, make_test_image
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, MakeClient, records


async def collect(runner: BatchRunner, pairs: Any) -> dict[str, PairOutcome]:
    return {outcome.key: outcome async for outcome in runner.run(pairs)}


def last_line_per_pair(path: Path) -> dict[str, str]:
    """What a reader who takes each pair_id's last line sees."""
    return {record["pair_id"]: record["status"] for record in records(path)}


@pytest.fixture
def img(tmp_path: Path) -> Path:
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "alice.png").write_bytes(make_test_image("alice", "png"))
    (folder / "alice.jpg").write_bytes(make_test_image("alice", "jpeg"))
    return folder


@pytest.fixture
def cli_env(cli_sandbox_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_BASE_URL": cli_sandbox_url,
    }
    env.pop("DEEPVUE_RATE_LIMIT", None)
    return env


def run_cli(
    args: list[str], env: dict[str, str], *, file_size_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    """The batch CLI in its own process; ``file_size_limit`` (bytes) makes every write past
    it fail with EFBIG, as a full disk would (Python ignores SIGXFSZ)."""

    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(  # noqa: S603 (our interpreter, our CLI)
        [sys.executable, "-m", "facematch_async.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )


def good_rows(n: int, start: int = 0) -> str:
    return "".join(f"p{i:04d},img/alice.png,img/alice.jpg\n" for i in range(start, start + n))


# -- 1. rows no reader would take ------------------------------------------------------------


def test_undecodable_bytes_and_oversized_fields_are_their_rows_errors(tmp_path: Path) -> None:
    """A Windows-1252 byte and a field over the csv limit fail their own rows; the rest read."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_bytes(
        b"pair_id,file_a,file_b\n"
        + good_rows(2).encode()
        + b"caf\xe9,img/alice.png,img/alice.jpg\n"  # line 4
        + b"big,"
        + b"x" * 200_000
        + b",img/alice.jpg\n"  # line 5
        + good_rows(2, start=2).encode()
    )
    specs = list(read_manifest(manifest))
    problems = {spec.line or 0: spec.problem for spec in specs if spec.problem is not None}
    assert sorted(problems) == [4, 5]
    assert problems[4] is not None and "not UTF-8" in problems[4].message
    assert "0xe9" in problems[4].message
    assert problems[5] is not None and "field limit" in problems[5].message
    assert [spec.pair_id for spec in specs if spec.problem is None] == [
        "p0000",
        "p0001",
        "p0002",
        "p0003",
    ]


def test_deeply_nested_and_undecodable_json_lines_are_their_rows_errors(tmp_path: Path) -> None:
    """A JSONL line nested 100,000 deep or holding a non-UTF-8 byte fails its row alone."""
    good = json.dumps({"pair_id": "ok", "file_a": "a.jpg", "file_b": "b.jpg"})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_bytes(
        b"[" * 100_000
        + b"]" * 100_000
        + b"\n"
        + b'{"pair_id": "caf\xe9", "file_a": "a.jpg", "file_b": "b.jpg"}\n'
        + good.encode()
        + b"\n"
    )
    specs = list(read_manifest(manifest))
    assert [(spec.line, spec.problem is None) for spec in specs] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert specs[0].problem is not None and "nested too deeply" in specs[0].problem.message
    assert specs[1].problem is not None and "not UTF-8" in specs[1].problem.message


def test_a_bad_row_does_not_stop_the_cli_batch_or_its_resume(
    cli_env: dict[str, str], img: Path, tmp_path: Path
) -> None:
    """Every good row is decided, each bad row is one error line naming its line; a resume
    has nothing left to do."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_bytes(
        b"pair_id,file_a,file_b\n"
        + good_rows(20).encode()
        + b"caf\xe9,img/alice.png,img/alice.jpg\n"  # line 22
        + b"big,"
        + b"x" * 200_000
        + b",img/alice.jpg\n"  # line 23
        + good_rows(20, start=20).encode()
    )
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    done = run_cli(args, cli_env)
    assert done.returncode == 1, done.stderr  # some pairs errored
    assert "Traceback" not in done.stderr
    statuses = last_line_per_pair(out)
    assert sum(status == "match" for status in statuses.values()) == 40
    bad = {r["line"]: r for r in records(out) if r["status"] == "error"}
    assert sorted(bad) == [22, 23]
    assert all(r["sub_code"] == "MALFORMED_ROW" for r in bad.values())
    resumed = run_cli([*args, "--resume"], cli_env)
    # Nothing left to run, but the file holds two final errors: 1, and what to do about them.
    assert resumed.returncode == 1, resumed.stderr
    assert "--retry-failed" in resumed.stderr
    assert len(records(out)) == 42


# -- 2. NUL bytes in paths -------------------------------------------------------------------


async def test_a_path_with_a_nul_byte_is_that_pairs_image_error(
    make_client: MakeClient, faces: Faces, tmp_path: Path
) -> None:
    """A NUL byte in a path (even under --root) is a typed per-pair image error."""
    manifest = tmp_path / "pairs.jsonl"
    rows = [
        {"pair_id": "nul", "file_a": "alice\u0000.png", "file_b": "alice.jpg"},
        {"pair_id": "ok", "file_a": "alice.png", "file_b": "alice.jpg"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for root in (None, tmp_path):
        runner = BatchRunner(make_client(), rate_limit=None)
        out = await collect(runner, read_manifest(manifest, root=root))
        assert out["ok"].status == "match"
        error = out["nul"].error
        assert error is not None
        assert error.type == "ImageReadError", error


# -- 3. a repeated pair_id never supersedes its original -------------------------------------


async def test_a_duplicate_never_overwrites_the_outcome_of_the_pair_it_repeats(
    make_client: MakeClient, faces: Faces, tmp_path: Path
) -> None:
    """Duplicates' error lines come after their originals' decisions (one pair at a time);
    readers of the last line per pair_id still see the decisions, and so does a resume."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n"
        "slow,alice.png,alice.jpg\n"
        "fast,alice.png,alice.jpg\n"
        "slow,alice.png,bob.jpg\n"
        "fast,alice.png,bob.jpg\n"
    )
    path = tmp_path / "out.jsonl"
    results = ResultsFile(path)
    results.open(resume=False)
    runner = BatchRunner(make_client(), concurrency=1, rate_limit=None)
    async for outcome in runner.run(read_manifest(manifest)):
        results.write(outcome)
    results.close()
    seen = last_line_per_pair(path)
    assert (seen["slow"], seen["fast"]) == ("match", "match")
    duplicates = [r for r in records(path) if r["sub_code"] == "DUPLICATE_PAIR_ID"]
    assert sorted(r["pair_id"] for r in duplicates) == ["@line:4", "@line:5"]
    assert all("seen before" in r["message"] for r in duplicates)
    again = ResultsFile(path)
    again.open(resume=True)
    assert (again.status("slow"), again.status("fast")) == ("match", "match")
    again.close()


# -- 7 and 8. long Retry-After, and a stop during a pause ------------------------------------


@pytest.mark.parametrize("retry_after", ["999999", "inf"])
async def test_a_huge_retry_after_stops_at_quota_at_once(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, retry_after: str
) -> None:
    """With stop_at_quota, a Retry-After past the cap stops the batch as the daily quota."""
    sandbox.scripted.add(
        ScriptedResponse(
            path="/v1/facematch",
            status=429,
            json={"detail": "quota"},
            headers={"Retry-After": retry_after},
            times=50,
        )
    )
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None, stop_at_quota=True)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(10)]
    started = time.monotonic()
    out = await asyncio.wait_for(collect(runner, pairs), 20)
    assert time.monotonic() - started < 10
    assert runner.stop_reason == "quota"
    assert not out  # nothing recorded: every pair is left for the resume
    assert runner.unrecorded >= 1


@pytest.mark.parametrize("retry_after", ["999999", "inf"])
async def test_a_huge_retry_after_is_a_bounded_visible_wait_that_a_stop_releases(
    make_client: MakeClient,
    faces: Faces,
    sandbox: SandboxServer,
    retry_after: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without stop_at_quota the batch waits at most the plan's day window, says why and until
    when; a stop then releases every waiting pair at once."""
    sandbox.scripted.add(
        ScriptedResponse(
            path="/v1/facematch",
            status=429,
            json={"detail": "quota"},
            headers={"Retry-After": retry_after},
            times=50,
        )
    )
    runner = BatchRunner(make_client(), concurrency=4, rate_limit="business")
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(10)]
    caplog.set_level(logging.WARNING, logger="facematch_async")
    task = asyncio.create_task(collect(runner, pairs))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if runner.rate_limited:
            break
    await asyncio.sleep(0.2)
    limiter = runner.client.rate_limiter
    assert limiter is not None
    assert 86000 < limiter.quota_for <= 86400.1  # the day window, not 11 days or forever
    reason = runner.waiting_reason()
    assert reason is not None and "waiting until" in reason
    assert any("taken as the daily quota" in r.getMessage() for r in caplog.records)
    started = time.monotonic()
    runner.stop()
    out = await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 2  # no --grace spent on pairs that only wait
    assert not out
    assert runner.unrecorded >= 1
    assert runner.in_flight == 0


async def test_a_stop_releases_pairs_waiting_out_a_retry_after_backoff(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """A 429 with Retry-After 30 (within the cap): pairs sleep in the client's backoff or wait
    for the limiter; a stop ends the run at once, leaving them for the resume."""
    sandbox.scripted.add(
        ScriptedResponse(
            path="/v1/facematch",
            status=429,
            json={"detail": "slow down"},
            headers={"Retry-After": "30"},
            times=4,
        )
    )
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None)
    pairs = [(f"p{i}", faces.alice_png, faces.alice_jpg) for i in range(8)]
    task = asyncio.create_task(collect(runner, pairs))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if runner.rate_limited >= 4:
            break
    await asyncio.sleep(0.1)
    started = time.monotonic()
    runner.stop()
    out = await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 2
    assert len(out) + runner.unrecorded == 4  # the four that met 429, none sent again
    assert runner.unrecorded >= 1


# -- 9. a full disk --------------------------------------------------------------------------


def test_a_full_disk_stops_cleanly_with_the_resume_command_and_loses_nothing(
    cli_env: dict[str, str], img: Path, tmp_path: Path
) -> None:
    """Writes past a file-size limit fail as a full disk would: exit 74, one clear line, the
    resume command, no traceback; the resume then completes every pair exactly once."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + good_rows(200))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    # About 40 result lines fit; the index and the manifest are not written past the limit.
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    limited = run_cli([*args, "--index-dir", str(index_dir)], cli_env, file_size_limit=12_000)
    assert limited.returncode == 74, limited.stderr
    assert "Traceback" not in limited.stderr
    assert "ClientClosedError" not in limited.stderr
    assert f"cannot write to {out}" in limited.stderr
    assert "--resume" in limited.stderr
    written = out.read_bytes()
    kept = written.count(b"\n")
    assert 0 < kept < 200
    resumed = run_cli([*args, "--resume"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["pair_id"] for r in records(out)]
    assert sorted(ids) == [f"p{i:04d}" for i in range(200)]


# -- 10. an --out that cannot take results ---------------------------------------------------


def read_only_file(tmp_path: Path) -> Path:
    """A file this process cannot open for writing (root ignores mode bits: use /proc)."""
    if os.geteuid() == 0:
        return Path("/proc/version")
    path = tmp_path / "readonly.jsonl"
    path.write_text('{"pair_id": "a", "status": "match"}\n')
    path.chmod(0o444)
    return path


@pytest.mark.parametrize("kind", ["directory", "missing folder", "read-only file"])
def test_an_out_that_cannot_take_results_is_a_usage_error_before_any_call(
    cli_env: dict[str, str], img: Path, tmp_path: Path, kind: str
) -> None:
    """--out at a directory, in a missing folder or at a read-only file: exit 2, one line
    naming the path and the reason, no traceback, no pair sent."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + good_rows(3))
    target = {
        "directory": tmp_path,
        "missing folder": tmp_path / "no" / "such" / "out.jsonl",
        "read-only file": read_only_file(tmp_path),
    }[kind]
    env = {**cli_env, "DEEPVUE_BASE_URL": "http://127.0.0.1:9"}  # nothing answers there
    for extra in ([], ["--resume"]):
        done = run_cli(["batch", str(manifest), "--out", str(target), *extra], env)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert str(target) in lines[0] or str(target.parent) in lines[0]


def test_a_results_file_error_names_the_path_and_reason(tmp_path: Path) -> None:
    """From Python: a typed ResultsFileError (an OSError), not a bare traceback."""
    results = ResultsFile(tmp_path / "missing" / "out.jsonl")
    with pytest.raises(ResultsFileError, match=r"missing/out\.jsonl"):
        results.open(resume=False)


# -- 11. lines that are not results ----------------------------------------------------------


def test_garbage_lines_rerun_their_pairs_and_are_set_aside_by_compaction(
    cli_env: dict[str, str], img: Path, tmp_path: Path
) -> None:
    """A garbage line mid-file and junk appended: the resume reruns what it must, removes
    both from the file (kept in .removed), and the next resume warns no more."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + good_rows(10))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    assert run_cli(args, cli_env).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    lines[4] = "this is not a result\n"  # p0004's line is lost
    out.write_text("".join(lines) + "junk appended by hand")
    resumed = run_cli([*args, "--resume"], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "not results" in resumed.stderr
    ids = sorted(r["pair_id"] for r in records(out))  # every line parses again
    assert ids == [f"p{i:04d}" for i in range(10)]
    removed = (tmp_path / "out.jsonl.removed").read_text()
    assert "this is not a result" in removed
    assert "junk appended by hand" in removed
    again = run_cli([*args, "--resume"], cli_env)
    assert again.returncode == 0
    assert "not results" not in again.stderr
    assert "torn" not in again.stderr


# -- 12. a full temp folder ------------------------------------------------------------------


def test_a_full_index_folder_says_what_is_full_and_where(
    cli_env: dict[str, str], img: Path, tmp_path: Path
) -> None:
    """The on-disk index cannot grow (a full temp folder): exit 74 with one line naming the
    folder and how to choose another, no sqlite traceback; --index-dir elsewhere works."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + good_rows(60_000))
    index_dir = tmp_path / "tmp"
    index_dir.mkdir()
    env = {**cli_env, "TMPDIR": str(index_dir)}
    args = ["batch", str(manifest), "--dry-run"]
    full = run_cli(args, env, file_size_limit=64 * 1024)
    assert full.returncode == 74, full.stderr
    assert "Traceback" not in full.stderr
    assert "OperationalError" not in full.stderr
    assert str(index_dir) in full.stderr
    assert "--index-dir" in full.stderr
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    fine = run_cli([*args, "--index-dir", str(roomy)], env)
    assert fine.returncode == 0, fine.stderr
    assert "60000 ready" in fine.stdout


# -- found by an outside attack on the fixes above -------------------------------------------


def test_a_number_too_long_to_read_is_its_rows_error(tmp_path: Path) -> None:
    """An integer over Python's 4,300 digits fails its JSONL row, not the manifest."""
    manifest = tmp_path / "pairs.jsonl"
    rows = [
        '{"pair_id": "big", "file_a": "a.png", "file_b": "b.jpg", "n": ' + "9" * 5000 + "}",
        '{"pair_id": "ok", "file_a": "a.png", "file_b": "b.jpg"}',
    ]
    manifest.write_text("\n".join(rows) + "\n")
    specs = list(read_manifest(manifest))
    assert [(spec.line, spec.problem is None) for spec in specs] == [(1, False), (2, True)]


def test_ids_that_look_like_line_keys_are_refused_so_no_record_hides_another(
    tmp_path: Path,
) -> None:
    """A pair_id '@line:4' would collide with the key of a row filed under line 4."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n@line:4,a.png,b.jpg\nq3,a.png,b.jpg\nq3,a.png,b.jpg\n"
    )
    specs = list(read_manifest(manifest))
    assert specs[0].problem is not None and "reserved" in specs[0].problem.message
    assert specs[0].key == "@line:2"


@pytest.mark.parametrize("header", ["-5", "0", "nan", "Thu, 01 Jan 1970 00:00:00 GMT"])
async def test_a_429_whose_retry_after_means_no_wait_still_pauses_the_batch(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, header: str
) -> None:
    """A negative, zero, NaN or past Retry-After backs off as if none was sent (1 s first),
    instead of hammering the API until every pair is an error."""
    sandbox.scripted.add(
        ScriptedResponse(
            path="/v1/facematch",
            status=429,
            json={"detail": "slow down"},
            headers={"Retry-After": header},
        )
    )
    runner = BatchRunner(make_client(max_retries=0), concurrency=1, rate_limit=None)
    started = time.monotonic()
    out = await collect(runner, [("p0", faces.alice_png, faces.alice_jpg)])
    assert out["p0"].status == "match"  # the round after the pause went through
    assert time.monotonic() - started >= 0.9


def test_a_hand_made_line_with_an_unknown_status_never_replaces_a_result(tmp_path: Path) -> None:
    """`{"pair_id": "d7", "status": "bogus"}` after d7's real line is not a result: it is
    set aside, and d7 keeps its decision."""
    path = tmp_path / "out.jsonl"
    real = {"pair_id": "d7", "status": "match", "match": True, "finished_at": time.time()}
    path.write_text(json.dumps(real) + "\n" + '{"pair_id": "d7", "status": "bogus"}\n')
    results = ResultsFile(path)
    results.open(resume=True)
    assert results.status("d7") == "match"
    assert results.unreadable == 1
    results.close()
    assert [r["status"] for r in records(path)] == ["match"]
    assert "bogus" in (tmp_path / "out.jsonl.removed").read_text()


async def test_a_nan_confidence_is_a_validation_error(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer
) -> None:
    """NaN would pass `confidence >= 80` silently and break strict JSON readers."""
    from facematch_async import APIResponseValidationError

    for value in ("NaN", "Infinity", "1" + "0" * 400):
        sandbox.scripted.add(
            ScriptedResponse(
                path="/v1/facematch",
                status=200,
                text='{"data": {"match": true, "confidence": ' + value + "}}",
                content_type="application/json",
            )
        )
        with pytest.raises(APIResponseValidationError):
            await make_client().match(faces.alice_png, faces.alice_jpg)


def test_a_resume_on_a_still_full_disk_is_a_disk_error_with_the_resume_command(
    cli_env: dict[str, str], img: Path, tmp_path: Path
) -> None:
    """Even the torn line's copy cannot be written: exit 74 and the resume command, not a
    usage error."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n" + good_rows(5))
    out = tmp_path / "out.jsonl"
    out.write_text('{"pair_id": "p0000", "status": "match"}\n{"pair_id": "p00')
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none", "--resume"]
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    full = run_cli([*args, "--index-dir", str(index_dir)], cli_env, file_size_limit=8)
    assert full.returncode == 74, full.stderr
    assert "Traceback" not in full.stderr
    assert "--resume" in full.stderr
    done = run_cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    assert sorted(r["pair_id"] for r in records(out)) == [f"p{i:04d}" for i in range(5)]
