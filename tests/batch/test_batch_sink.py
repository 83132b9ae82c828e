"""The results file: appended lines, torn-line repair, resume index, superseding and compaction."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from facematch_async import FaceMatchResult, PairError, PairOutcome, ResultsFile
from facematch_async.batch._sink import FIELDS


def ok(pair_id: str, **extra: str) -> PairOutcome:
    result = FaceMatchResult(match=True, confidence=98.0, transaction_id="t-1", sub_code="SUCCESS")
    return PairOutcome(pair_id, "match", result=result, attempts=1, latency=0.0123, line=2,
                       extra=extra, finished_at=time.time(), key=pair_id)  # fmt: skip


def failed(pair_id: str, message: str = "boom") -> PairOutcome:
    error = PairError("InternalServerError", message, None, 500, "t-2")
    return PairOutcome(pair_id, "error", error=error, attempts=3, latency=0.5, line=3,
                       finished_at=time.time(), key=pair_id)  # fmt: skip


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_outcome_is_one_flushed_jsonl_line(tmp_path: Path) -> None:
    """Every write is on disk at once (readable before close) as one JSON object."""
    results = ResultsFile(tmp_path / "out.jsonl")
    results.open(resume=False)
    results.write(ok("a", case="C-1"))
    [record] = lines(results.path)
    assert record["pair_id"] == "a"
    assert record["status"] == "match"
    assert record["confidence"] == 98.0
    assert record["latency_ms"] == 12.3
    assert record["extra"] == {"case": "C-1"}
    results.close()


def test_an_existing_file_needs_resume(tmp_path: Path) -> None:
    """Opening a file that already holds results without resume refuses, so nothing is lost."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"pair_id": "a", "status": "match"}\n')
    with pytest.raises(FileExistsError):
        ResultsFile(path).open(resume=False)


def test_resume_cuts_a_torn_last_line_and_indexes_the_rest(tmp_path: Path) -> None:
    """A last line without its newline is dropped; earlier pairs are known with their status."""
    path = tmp_path / "out.jsonl"
    path.write_text(
        '{"pair_id": "a", "status": "match"}\n{"pair_id": "b", "status": "error"}\n{"pair_id": "c", "sta'
    )
    results = ResultsFile(path)
    results.open(resume=True)
    assert results.repaired
    assert (results.status("a"), results.status("b"), results.status("c")) == (
        "match",
        "error",
        None,
    )
    results.write(ok("c"))
    results.close()
    assert [r["pair_id"] for r in lines(path)] == ["a", "b", "c"]


def test_a_later_line_supersedes_and_close_compacts(tmp_path: Path) -> None:
    """A retried pair's new line replaces its error line; close() leaves one line per pair."""
    path = tmp_path / "out.jsonl"
    first = ResultsFile(path)
    first.open(resume=False)
    for outcome in (ok("a"), failed("b"), ok("c")):
        first.write(outcome)
    first.close()
    second = ResultsFile(path)
    second.open(resume=True)
    second.write(ok("b"))
    assert second.superseded == 1
    second.close()
    assert [(r["pair_id"], r["status"]) for r in lines(path)] == [
        ("a", "match"),
        ("c", "match"),
        ("b", "match"),
    ]
    assert not path.with_name("out.jsonl.compacting").exists()


def test_superseded_lines_left_by_a_crash_are_compacted_next_time(tmp_path: Path) -> None:
    """If a run died before compacting, the next one reads the last line and compacts."""
    path = tmp_path / "out.jsonl"
    path.write_text(
        '{"pair_id": "b", "status": "error"}\n{"pair_id": "a", "status": "match"}\n'
        '{"pair_id": "b", "status": "no_face"}\n'
    )
    results = ResultsFile(path)
    results.open(resume=True)
    assert results.status("b") == "no_face"
    assert (results.recorded, results.superseded) == (2, 1)
    results.close()
    assert [(r["pair_id"], r["status"]) for r in lines(path)] == [("a", "match"), ("b", "no_face")]


def test_csv_results_have_a_header_and_one_row_per_pair(tmp_path: Path) -> None:
    """CSV output: the fixed columns then the extras; a newline in a message is quoted and
    read back unchanged, by the csv module and by a resume."""
    path = tmp_path / "out.csv"
    results = ResultsFile(path)
    results.open(resume=False)
    results.write(ok("a", case="C-1"))
    results.write(failed("b", "two\nlines"))
    results.close()
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == [*FIELDS, "case"]
    assert (rows[0]["case"], rows[1]["message"], rows[1]["status_code"]) == (
        "C-1",
        "two\nlines",
        "500",
    )
    again = ResultsFile(path)
    again.open(resume=True)
    assert (again.status("a"), again.status("b")) == ("match", "error")
    again.write(ok("b"))
    again.close()
    with open(path, newline="") as file:
        assert [r["status"] for r in csv.DictReader(file)] == ["match", "match"]


def test_recent_attempts_are_kept_to_seed_the_limiter(tmp_path: Path) -> None:
    """On resume, the last day's request times (one per attempt) are collected."""
    path = tmp_path / "out.jsonl"
    now = time.time()
    path.write_text(
        json.dumps({"pair_id": "old", "status": "match", "attempts": 1, "finished_at": now - 90000})
        + "\n"
        + json.dumps({"pair_id": "new", "status": "error", "attempts": 3, "finished_at": now - 60})
        + "\n"
    )
    results = ResultsFile(path)
    results.open(resume=True, seed_limit=100)
    assert list(results.recent) == [pytest.approx(now - 60)] * 3
    results.close()


def test_a_file_of_another_format_is_refused_on_resume(tmp_path: Path) -> None:
    """Resuming a JSONL file as CSV (or garbage as JSONL) raises instead of appending to it."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"pair_id": "a", "status": "match"}\n')
    with pytest.raises(ValueError, match="not a CSV results file"):
        ResultsFile(path, "csv").open(resume=True)
    other = tmp_path / "notes.txt"
    other.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="not a jsonl results file"):
        ResultsFile(other).open(resume=True)
    assert other.read_text() == "hello\nworld\n"
