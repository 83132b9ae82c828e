"""The results line as a format: every pair_id survives JSONL and CSV, quoted multi-line CSV
records read back, older files still read, the schema holds for every line written, and a
long resume reads off the event loop with progress and a prompt stop."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facematch_async import (
    BatchRunner,
    FaceMatchResult,
    PairError,
    PairOutcome,
    job_state,
    read_manifest,
)
from facematch_async.batch import FORMAT_VERSION, ResultsFile, ScanProgress, results_schema
from facematch_async.batch._records import (
    FIELDS,
    ResultsReader,
    encode_jsonl,
    index_fields,
    line_state,
    outcome_record,
    record_key,
)
from facematch_async.batch._state import results_format
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import CLIENT_ID, CLIENT_SECRET, Faces, MakeClient, every_status_manifest
from tests.helpers import decided_outcome as ok
from tests.helpers import failed_outcome as failed

HOSTILE_IDS = [
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\ninside",
    'a "quoted" id',
    "comma,separated",
    "nul\x00byte",
    "tab\tid",
    "line\u2028separator",
    "next\x85line",
    "ünïcødé-ÿ",
    "=HYPERLINK()",
    "x" * 4096,
]


def jsonl_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_every_pair_id_survives_the_results_file_and_a_resume_sends_nothing_again(
    make_client: MakeClient, faces: Faces, tmp_path: Path, sandbox: SandboxServer, suffix: str
) -> None:
    """Newlines, CRs, quotes, commas, NUL, tabs, Unicode separators: each id comes back
    unchanged (the csv module reads the CSV), a resume skips every pair, and the job's state
    finds none missing. Ids no format could read back (a lone surrogate, over 4,096
    characters) are refused at the manifest, naming their line."""
    rows = [{"pair_id": pid, "file_a": "alice.png", "file_b": "alice.jpg"} for pid in HOSTILE_IDS]
    rows += [
        {"pair_id": "\ud800lone", "file_a": "alice.png", "file_b": "alice.jpg"},
        {"pair_id": "y" * 4097, "file_a": "alice.png", "file_b": "alice.jpg"},
    ]
    manifest = jsonl_manifest(faces.root / "pairs.jsonl", rows)
    out = tmp_path / f"out{suffix}"
    runner = BatchRunner(make_client(), concurrency=4, rate_limit=None)
    summary = await runner.run_to_file(read_manifest(manifest), out)
    assert summary.statuses["match"] == len(HOSTILE_IDS)
    if suffix == ".csv":
        written = {row["pair_id"]: row for row in csv_rows(out)}
    else:
        written = {
            record["pair_id"]: record
            for record in map(json.loads, out.read_bytes().decode().split("\n")[:-1])
        }
    assert set(HOSTILE_IDS) <= set(written)
    refused = {key: written[key]["message"] for key in written if key.startswith("@line:")}
    assert sorted(refused) == [f"@line:{len(HOSTILE_IDS) + 1}", f"@line:{len(HOSTILE_IDS) + 2}"]
    assert "lone surrogate" in refused[f"@line:{len(HOSTILE_IDS) + 1}"]
    assert "over 4096" in refused[f"@line:{len(HOSTILE_IDS) + 2}"]
    sent = sandbox.counters.requests[("/v1/facematch", 200)]
    again = await BatchRunner(make_client(), rate_limit=None).run_to_file(
        read_manifest(manifest), out, resume=True
    )
    assert (again.done, again.skipped) == (0, len(rows))
    assert sandbox.counters.requests[("/v1/facematch", 200)] == sent
    state = job_state(out, manifest)
    assert (state.missing, state.decided, state.final_errors, state.not_in_manifest) == (
        0,
        len(HOSTILE_IDS),
        2,
        0,
    )


def test_quoted_multi_line_csv_records_read_back_and_a_stray_quote_spoils_one_line(
    tmp_path: Path,
) -> None:
    """A CSV results file with ids and messages over several lines reads back whole; junk
    with an unclosed quote appended between runs is one line that is not a result (the
    results after it still count) and compaction sets it aside."""
    path = tmp_path / "out.csv"
    results = ResultsFile(path)
    results.open(resume=False)
    results.write(ok("one\ntwo"))
    results.write(failed("cr\rid", "a message\nover\r\nthree lines"))
    results.close()
    with open(path, "ab") as file:
        file.write(b'he said "hi\n')  # a stray quote, never closed
    again = ResultsFile(path)
    again.open(resume=True)
    assert (again.status("one\ntwo"), again.status("cr\rid")) == ("match", "error")
    again.write(ok("after\njunk"))
    again.close()
    third = ResultsFile(path)
    third.open(resume=True)
    assert (third.unreadable, third.recorded) == (0, 3)  # the junk was set aside
    third.close()
    assert b'he said "hi' in third.removed_path.read_bytes()
    rows = csv_rows(path)
    assert [row["pair_id"] for row in rows] == ["one\ntwo", "cr\rid", "after\njunk"]
    assert rows[1]["message"] == "a message\nover\r\nthree lines"
    assert list(rows[0]) == list(FIELDS)


@pytest.mark.parametrize("cut", ["after the embedded newline", "before the record's end"])
def test_a_torn_multi_line_csv_record_is_cut_off_on_resume(tmp_path: Path, cut: str) -> None:
    """A write torn inside a quoted multi-line record (the process died) is cut off on
    resume; its pair runs again; the file is valid CSV again."""
    path = tmp_path / "out.csv"
    results = ResultsFile(path)
    results.open(resume=False)
    results.write(ok("whole"))
    results.close()
    record = ResultsFile(tmp_path / "scratch.csv")
    record.open(resume=False)
    record.write(ok("torn\nid"))
    record.close()
    line = (tmp_path / "scratch.csv").read_bytes().split(b"\r\n", 1)[1]
    part = line[: line.index(b"\n") + 1] if cut.startswith("after") else line[:-3]
    with open(path, "ab") as file:
        file.write(part)
    again = ResultsFile(path)
    again.open(resume=True)
    assert again.repaired
    assert again.status("torn\nid") is None
    again.write(ok("torn\nid"))
    again.close()
    assert [row["pair_id"] for row in csv_rows(path)] == ["whole", "torn\nid"]


def test_older_files_without_a_version_still_read_and_classify_their_errors(
    tmp_path: Path,
) -> None:
    """Lines written before the format had `v` and `retryable`: errors are transient or
    final by error_type and status_code, so a resume runs the transient ones again; an old
    CSV keeps its header when appended to."""
    old = [
        {"pair_id": "down", "status": "error", "error_type": "APIConnectionError"},
        {"pair_id": "busy", "status": "error", "error_type": "RateLimitError", "status_code": 429},
        {
            "pair_id": "5xx",
            "status": "error",
            "error_type": "InternalServerError",
            "status_code": 503,
        },
        {"pair_id": "gif", "status": "error", "error_type": "UnsupportedFileFormatError"},
        {
            "pair_id": "row",
            "status": "error",
            "error_type": "ManifestError",
            "sub_code": "MALFORMED_ROW",
        },
        {"pair_id": "done", "status": "match", "match": True, "confidence": 97.0},
    ]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in old))
    results = ResultsFile(path)
    results.open(resume=True)
    skip = results.skip_rule(resume=True, retry_failed=False)
    assert skip is not None
    assert [pid for pid in ("down", "busy", "5xx", "gif", "row", "done") if not skip(pid)] == [
        "down",
        "busy",
        "5xx",
    ]
    assert results.retryable == 3
    results.close()
    state = job_state(path)
    assert (state.decided, state.retryable, state.final_errors, state.exit_code) == (1, 3, 2, 69)

    old_csv = tmp_path / "old.csv"
    old_csv.write_text(
        "pair_id,status,match,confidence,error_type,status_code\r\n"
        "a,match,True,99.0,,\r\nb,error,,,APITimeoutError,\r\n"
    )
    resumed = ResultsFile(old_csv)
    resumed.open(resume=True)
    assert (resumed.state("a"), resumed.state("b")) == ("decided", "retryable")
    resumed.write(ok("b"))
    resumed.close()
    assert [(r["pair_id"], r["match"]) for r in csv_rows(old_csv)] == [
        ("a", "True"),
        ("b", "True"),
    ]
    assert old_csv.read_text().startswith("pair_id,status,match,confidence,error_type")


async def test_open_async_reads_off_the_loop_with_progress_and_stops_when_cancelled(
    tmp_path: Path,
) -> None:
    """Indexing a large file in open_async leaves the event loop running (a heartbeat task
    keeps beating), reports progress, and a cancel stops the read long before its end,
    leaves the file as it was and unlocked."""
    path = tmp_path / "big.jsonl"
    template = '{"pair_id": "p%07d", "status": "match", "attempts": 1, "finished_at": 1.0}\n'
    with open(path, "w") as file:
        file.writelines(template % i for i in range(400_000))
    size = path.stat().st_size
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            await asyncio.sleep(0.01)
            beats += 1

    seen: list[ScanProgress] = []
    beating = asyncio.create_task(heartbeat())
    results = ResultsFile(path)
    opening = asyncio.create_task(results.open_async(resume=True, on_progress=seen.append))
    while not seen:  # noqa: ASYNC110 (the progress callback is the event)
        await asyncio.sleep(0.01)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    reported = len(seen)
    await asyncio.sleep(0.3)
    assert len(seen) == reported  # the read stopped: nothing more is reported
    assert 0 < seen[-1].records < 400_000 and (seen[-1].fraction or 0) < 1
    assert beats >= 3  # the loop ran while the file was read
    assert path.stat().st_size == size
    again = ResultsFile(path)  # the lock was let go
    done: list[ScanProgress] = []
    await again.open_async(resume=True, on_progress=done.append)
    assert again.recorded == 400_000 and done[-1].fraction == 1
    assert "reading" in done[-1].format() and "400,000 lines" in done[-1].format()
    again.close()
    beating.cancel()


# --- The schema: every line written, from Python and from the CLI, every status ----------

VALIDATOR = jsonschema.Draft202012Validator(results_schema())


def test_the_schema_describes_every_field() -> None:
    """Each field a line holds has a description, and the version is the one written."""
    jsonschema.Draft202012Validator.check_schema(results_schema())
    properties = results_schema()["properties"]
    assert set(FIELDS) | {"extra"} == set(properties)
    assert all(len(spec["description"]) > 40 for spec in properties.values())
    assert properties["v"]["const"] == FORMAT_VERSION


def validate(path: Path) -> list[dict[str, Any]]:
    """Every line of a results file, typed (CSV cells as JSON values), each validated."""
    records = []
    for _offset, raw, record in ResultsReader(path, results_format(path)):
        assert record is not None, raw
        VALIDATOR.validate(record)
        records.append(record)
    return records


def check_every_status(records: list[dict[str, Any]]) -> None:
    by_id = {record["pair_id"]: record for record in records}
    statuses = {pid: (r["status"], r["retryable"]) for pid, r in by_id.items()}
    assert statuses == {
        "transient": ("error", True),
        "same": ("match", False),
        "different": ("no_match", False),
        "noface": ("no_face", False),
        "gif": ("error", False),
        "missing": ("error", False),
        "malformed": ("error", False),
        "@line:9": ("error", False),
    }
    assert all(record["v"] == 1 for record in records)
    assert by_id["transient"]["status_code"] == 503


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_every_line_run_to_file_writes_validates(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, tmp_path: Path, suffix: str
) -> None:
    """From Python, every status (a 503 after the retries among them): each line holds
    the version and validates against the shipped schema."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={"x": 1}))
    out = tmp_path / f"out{suffix}"
    runner = BatchRunner(make_client(max_retries=0), concurrency=1, rate_limit=None)
    await runner.run_to_file(read_manifest(every_status_manifest(faces)), out)
    check_every_status(validate(out))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
async def test_every_line_the_cli_writes_validates(
    faces: Faces, sandbox: SandboxServer, tmp_path: Path, suffix: str
) -> None:
    """From `facematch-async batch`, every status: each line validates."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={"x": 1}))
    out = tmp_path / f"out{suffix}"
    env = {**os.environ, "DEEPVUE_CLIENT_ID": CLIENT_ID, "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET}
    command = [sys.executable, "-m", "facematch_async.cli", "batch",
               str(every_status_manifest(faces)), "--out", str(out), "--concurrency", "1",
               "--rate-limit", "none", "--max-retries", "0", "--base-url", sandbox.base_url]  # fmt: skip

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    started = time.monotonic()
    done = await asyncio.to_thread(run)  # the sandbox answers on this loop meanwhile
    assert time.monotonic() - started < 60
    assert "Traceback" not in done.stderr, done.stderr
    check_every_status(validate(out))


# --- The resume's fast read of version-1 lines agrees with the full parse -----------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ['"retryable": true, "finished_at": 1', '{"v": 1, "pair_id": "x"', "\\", '"', "\n", "}"]
)


@st.composite
def outcomes(draw: st.DrawFn) -> PairOutcome:
    status = draw(st.sampled_from(["match", "no_match", "no_face", "error"]))
    key = draw(TEXT.filter(bool))
    result = error = None
    if status in ("match", "no_match"):
        confidence = draw(st.none() | st.floats(allow_nan=True, allow_infinity=True))
        result = FaceMatchResult(match=status == "match", confidence=confidence)
    else:
        kind = draw(st.sampled_from(["NoFaceFoundError", "APITimeoutError", "ImageReadError"]))
        code = draw(st.none() | st.sampled_from([429, 400, 503]))
        error = PairError(kind, draw(TEXT), draw(st.none() | TEXT), code)
    extra = draw(st.dictionaries(TEXT, TEXT, max_size=3))
    return PairOutcome(
        key, status, result=result, error=error, attempts=draw(st.integers(0, 9)),  # type: ignore[arg-type]
        latency=draw(st.none() | st.floats(0, 100)), line=draw(st.none() | st.integers(1, 10**6)),
        extra=extra, finished_at=draw(st.floats(0, 4e9)), key=key,
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(outcome=outcomes(), glue=st.booleans())
def test_the_fast_read_of_a_line_agrees_with_the_full_parse(
    outcome: PairOutcome, glue: bool
) -> None:
    """Any line encode_jsonl writes (odd ids, messages and extra keys that look like our
    keys) gives the fast read the key, state, time and attempts the full parse gives; two
    lines glued by a torn write are never read fast."""
    line = encode_jsonl(outcome_record(outcome))
    if glue:
        line = line[: len(line) // 2] + line
    fast = index_fields(line)
    record = json.loads(line) if not glue else None
    if glue:
        assert fast is None
        return
    assert record is not None and fast is not None
    assert fast == (
        record_key(record),
        record["status"],
        line_state(record),
        record["finished_at"],
        record["attempts"],
    )
