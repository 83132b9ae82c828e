"""--shard auto from the scheduler's variables, and `summary` over shards' results files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facematch_async.batch._shard import resolve_shard
from facematch_async.batch._state import job_state as summarize
from facematch_async.cli import main


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("3/8", {}, (3, 8)),
        ("auto/4", {"JOB_COMPLETION_INDEX": "0"}, (1, 4)),
        ("auto", {"JOB_COMPLETION_INDEX": "3", "FACEMATCH_SHARD_COUNT": "4"}, (4, 4)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8"}, (8, 8)),
        (
            "auto",
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "5",
            },
            (5, 5),
        ),
        (
            "auto/3",
            {
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            (3, 3),
        ),
        ("auto/10", {"AWS_BATCH_JOB_ARRAY_INDEX": "9"}, (10, 10)),
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "FACEMATCH_SHARD_COUNT": "2"}, (1, 2)),
        (None, {"JOB_COMPLETION_INDEX": "0"}, None),
    ],
)
def test_shard_resolves_from_each_scheduler(text, environ, expected) -> None:
    """Kubernetes, Slurm and AWS Batch indexes become 1-based K of N."""
    assert resolve_shard(text, environ) == expected


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("auto", {}, "no scheduler index"),
        ("auto", {"JOB_COMPLETION_INDEX": "2"}, "auto/N"),
        ("auto", {"AWS_BATCH_JOB_ARRAY_INDEX": "2"}, "FACEMATCH_SHARD_COUNT"),
        ("auto/4", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, "says 8"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "4"}, "outside 0..3"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2"}, "grid"),
        ("auto", {"JOB_COMPLETION_INDEX": "x"}, "whole number"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "1_0"}, "whole number"),
        ("auto/4", {"JOB_COMPLETION_INDEX": "-1"}, "whole number"),
        ("4/3", {}, "between 1 and N"),
        ("x", {}, "2/8"),
        ("1_0/2_0", {}, "2/8"),
        ("+1/2", {}, "2/8"),
        ("\u0661/\u0662", {}, "2/8"),  # Arabic-Indic digits: int() takes them
        ("auto/1_0", {"JOB_COMPLETION_INDEX": "1"}, "auto/N"),
    ],
)
def test_shard_refuses_what_would_skip_or_repeat_pairs(text, environ, message) -> None:
    """No count, a count that disagrees, an index out of range: a clear usage error."""
    with pytest.raises(ValueError, match=message):
        resolve_shard(text, environ)


def test_batch_takes_shard_auto_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    """`batch --shard auto` reads the index: a wrong one is a usage error (exit 2)."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\n")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "5")
    assert main(["batch", str(manifest), "--dry-run", "--shard", "auto/4"]) == 2
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert main(["batch", str(manifest), "--dry-run", "--shard", "auto/4"]) == 0


def _line(pair_id: str, status: str = "match", **extra: object) -> str:
    record = {"pair_id": pair_id, "status": status, "attempts": 1, "latency_ms": 100.0}
    record.update(extra)
    return json.dumps(record) + "\n"


def test_summary_combines_shards_and_finds_missing_and_repeated_pairs(
    tmp_path: Path, capsys
) -> None:
    """Counts add up across files; with the manifest, gaps and repeats are named."""
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n" + "".join(f"p{i},a.jpg,b.jpg\n" for i in range(6))
    )
    one = tmp_path / "results-1.jsonl"
    two = tmp_path / "results-2.jsonl"
    one.write_text(
        _line("p0")
        + _line("p1", "error", sub_code="ImageReadError", latency_ms=None, attempts=0)
        + _line("p1", "no_face", sub_code="NO_FACE_FOUND")  # supersedes the error line
        + _line("p2", "no_match", latency_ms=300.0)
    )
    two.write_text(_line("p3") + _line("p2") + '{"pair_id": "p9", "stat')  # a torn last line
    summary = summarize([one, two], manifest)
    assert summary.files == {str(one): 3, str(two): 2}
    assert summary.statuses == {"match": 2, "no_face": 1, "no_match": 1}
    assert summary.codes == {("no_face", "NO_FACE_FOUND"): 1}
    assert summary.duplicated == 1 and summary.duplicated_ids == ["p2"]
    assert summary.missing == 2 and summary.missing_ids == ["p4", "p5"]
    assert summary.latency.count == 4
    assert main(["summary", str(one), str(two), "--manifest", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert "in the manifest but in no file: 2" in out and "p4" in out
    assert "in more than one file: 1" in out and "latency  p50" in out


def test_summary_of_complete_csv_and_jsonl_shards_exits_0_and_an_error_line_exits_1(
    tmp_path: Path, capsys
) -> None:
    """Every pair decided exactly once, across a CSV and a JSONL file: exit 0; an error
    line (a final one) makes it 1 and says to use --retry-failed."""
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"pair_id": f"p{i}", "file_a": "a", "file_b": "b"}) + "\n" for i in range(3)
        )
    )
    csv_file = tmp_path / "results-1.csv"
    csv_file.write_text("pair_id,status,attempts,latency_ms,sub_code\np0,match,1,50.0,SUCCESS\n")
    jsonl = tmp_path / "results-2.jsonl"
    jsonl.write_text(_line("p1") + _line("p2", "no_face", sub_code="NO_FACE_FOUND", attempts=3))
    assert main(["summary", str(csv_file), str(jsonl), "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "3 pairs in 2 files, 5 face-match requests" in out and "NO_FACE_FOUND" in out
    with jsonl.open("a") as file:
        file.write(_line("p2", "error", error_type="UnsupportedFileFormatError", attempts=1))
    assert main(["summary", str(csv_file), str(jsonl), "--manifest", str(manifest)]) == 1
    captured = capsys.readouterr()
    assert "final errors           1" in captured.out and "--retry-failed" in captured.err
    assert main(["summary", str(tmp_path / "absent.jsonl")]) == 2


def test_summary_refuses_what_it_cannot_read_in_one_line(tmp_path: Path, capsys) -> None:
    """Random bytes as a CSV, a manifest without its header, a directory: exit 2, one line,
    no traceback; lines that are not results make the exit 1, not 0."""
    from facematch_async.cli import main as cli_main

    garbage = tmp_path / "bad.csv"
    garbage.write_bytes(bytes(range(256)) * 12)
    results = tmp_path / "r.jsonl"
    results.write_text('{"pair_id": "a", "status": "match"}\nnot a result\n')
    assert cli_main(["summary", str(garbage)]) == 2
    assert cli_main(["summary", str(results), "--manifest", str(garbage)]) == 2
    assert cli_main(["summary", str(tmp_path)]) == 2
    assert cli_main(["summary", str(results)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "not results" in err
