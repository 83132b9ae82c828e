"""The command line: match, batch (resume, retry, dry run, shards, signals, kill -9), exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facematch_async.cli import main
from facematch_async.sandbox import make_test_image, sandbox_process
from tests.helpers import CLIENT_ID, CLIENT_SECRET, records

# A sandbox in its own process whose engine takes DELAY seconds per pair, so that a batch
# CLI can be interrupted (or killed) mid-run.
SANDBOX_SCRIPT = """
import asyncio, sys, time
from facematch_async.sandbox import SandboxConfig, TestEngine, serve

class SlowEngine(TestEngine):
    def compare(self, a, b):
        time.sleep(float(sys.argv[1]))
        return super().compare(a, b)

config = SandboxConfig(client_id=sys.argv[2], client_secret=sys.argv[3], engine=SlowEngine())
asyncio.run(serve(config, "127.0.0.1", 0))
"""


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    """A sandbox subprocess on loopback (50 ms per pair)."""
    script = [sys.executable, "-c", SANDBOX_SCRIPT, "0.05", CLIENT_ID, CLIENT_SECRET]
    with sandbox_process(command=script) as url:
        yield url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, sandbox_url: str) -> dict[str, str]:
    """Credentials and base URL in the environment, as a user would set them."""
    values = {
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_BASE_URL": sandbox_url,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEEPVUE_RATE_LIMIT", raising=False)
    return {**os.environ, **values}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Tagged images in tmp_path/img: alice (png, jpg), bob, a face-less one, a GIF."""
    folder = tmp_path / "img"
    folder.mkdir()
    (folder / "alice.png").write_bytes(make_test_image("alice", "png"))
    (folder / "alice.jpg").write_bytes(make_test_image("alice", "jpeg"))
    (folder / "bob.jpg").write_bytes(make_test_image("bob", "jpeg"))
    (folder / "none.png").write_bytes(make_test_image("none", "png"))
    (folder / "anim.jpg").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    return folder


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text(
        "pair_id,file_a,file_b\n" + "".join(f"{p},img/{a},img/{b}\n" for p, a, b in rows)
    )
    return path


def matching(n: int) -> list[tuple[str, str, str]]:
    return [(f"p{i:03d}", "alice.png", "alice.jpg") for i in range(n)]


def test_match_prints_the_decision_as_json(env, images: Path, capsys) -> None:
    """`match a b` prints match/confidence/transaction_id as JSON and exits 0."""
    assert main(["match", str(images / "alice.png"), str(images / "alice.jpg")]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["match"], body["confidence"]) == (True, 98.0)
    assert body["transaction_id"]


def test_match_errors_exit_1_with_the_error_as_json(env, images: Path, capsys) -> None:
    """A refused pair prints the typed error (no secret) and exits 1."""
    assert main(["match", str(images / "alice.png"), str(images / "none.png")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["sub_code"] == "NO_FACE_FOUND"
    assert CLIENT_SECRET not in captured.out + captured.err


def test_the_secret_is_never_a_flag(env, images: Path, monkeypatch, capsys) -> None:
    """There is no --client-secret flag; without env or file the command exits 2."""
    with pytest.raises(SystemExit) as caught:
        main(["match", "a", "b", "--client-secret", "x"])
    assert caught.value.code == 2
    monkeypatch.delenv("DEEPVUE_CLIENT_SECRET")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert main(["match", "a", "b"]) == 2
    assert "DEEPVUE_CLIENT_SECRET" in capsys.readouterr().err
    secret_file = images / "secret.txt"
    secret_file.write_text(CLIENT_SECRET + "\n")
    args = ["match", str(images / "alice.png"), str(images / "bob.jpg")]
    assert main([*args, "--client-secret-file", str(secret_file)]) == 0


def test_batch_writes_one_line_per_pair_with_every_status(
    env, images: Path, tmp_path: Path, capsys
) -> None:
    """Every status lands in the results file once; errors make the exit code 1."""
    manifest = write_manifest(
        tmp_path / "pairs.csv",
        [
            ("m", "alice.png", "alice.jpg"),
            ("n", "alice.png", "bob.jpg"),
            ("f", "none.png", "alice.jpg"),
            ("e", "anim.jpg", "alice.jpg"),
            ("x", "missing.jpg", "alice.jpg"),
        ],
    )
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]) == 1
    statuses = {r["pair_id"]: r["status"] for r in records(out)}
    assert statuses == {"m": "match", "n": "no_match", "f": "no_face", "e": "error", "x": "error"}
    summary = capsys.readouterr().out
    assert "NO_FACE_FOUND" in summary
    assert "p50" in summary


def test_batch_exits_0_when_every_pair_is_decided_and_writes_csv(
    env, images: Path, tmp_path: Path
) -> None:
    """All decided → exit 0; --format csv writes a header and a row per pair."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(5))
    out = tmp_path / "out.txt"
    args = ["batch", str(manifest), "--out", str(out), "--format", "csv", "--rate-limit", "none"]
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 6


def test_an_existing_results_file_needs_resume(env, images: Path, tmp_path: Path) -> None:
    """Pointing --out at earlier results without --resume exits 2 and leaves them alone."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(2))
    out = tmp_path / "out.jsonl"
    out.write_text('{"pair_id": "p000", "status": "match"}\n')
    assert main(["batch", str(manifest), "--out", str(out)]) == 2
    assert len(records(out)) == 1


def test_retry_failed_reruns_only_errors_and_keeps_one_line_per_pair(
    env, images: Path, tmp_path: Path
) -> None:
    """After fixing a missing file, --retry-failed re-runs only the error pairs."""
    rows = [*matching(3), ("late", "alice.png", "later.jpg"), ("face", "none.png", "bob.jpg")]
    manifest = write_manifest(tmp_path / "pairs.csv", rows)
    out = tmp_path / "out.jsonl"
    base = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    assert main(base) == 1
    first = {r["pair_id"]: r for r in records(out)}
    assert first["late"]["status"] == "error"
    (images / "later.jpg").write_bytes(make_test_image("alice", "jpeg"))
    assert main([*base, "--retry-failed"]) == 0
    final = records(out)
    assert sorted(r["pair_id"] for r in final) == sorted(p for p, _, _ in rows)
    by_id = {r["pair_id"]: r for r in final}
    assert by_id["late"]["status"] == "match"
    # The others were not run again: their lines are the very same.
    assert all(by_id[p] == first[p] for p in by_id if p != "late")


def test_dry_run_checks_locally_without_network_or_credentials(
    images: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """--dry-run needs no credentials, makes no call and reports problems and the run time."""
    for name in ("DEEPVUE_CLIENT_ID", "DEEPVUE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    manifest = write_manifest(
        tmp_path / "pairs.csv",
        [*matching(200), ("e", "anim.jpg", "alice.jpg"), ("p001", "alice.png", "bob.jpg")],
    )
    args = ["batch", str(manifest), "--dry-run", "--base-url", "http://127.0.0.1:9"]
    assert main([*args, "--rate-limit", "business"]) == 1
    out = capsys.readouterr().out
    assert "200 ready, 2 would fail" in out
    assert "UNSUPPORTED_FILE_FORMAT" in out
    assert "DUPLICATE_PAIR_ID" in out
    assert "about 00:01:" in out  # 200 requests at 2/s and 100/min: past the minute window


def test_shards_partition_the_manifest(env, images: Path, tmp_path: Path) -> None:
    """--shard 1/3, 2/3 and 3/3 together process every pair exactly once."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(30))
    seen: list[str] = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}.jsonl"
        args = ["batch", str(manifest), "--out", str(out), "--shard", f"{k}/3"]
        assert main([*args, "--rate-limit", "none"]) == 0
        ids = [str(r["pair_id"]) for r in records(out)]
        assert 0 < len(ids) < 30
        seen += ids
    assert sorted(seen) == [f"p{i:03d}" for i in range(30)]
    assert main(["batch", str(manifest), "--dry-run", "--shard", "4/3"]) == 2


def test_stop_at_quota_exits_75_and_a_resume_remembers_the_quota(
    env, images: Path, tmp_path: Path, capsys
) -> None:
    """At a used-up daily quota the run stops (75); a resume the same day stops at once."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(6))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "3/day"]
    assert main([*args, "--stop-at-quota", "--concurrency", "1"]) == 75
    assert len(records(out)) == 3
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--stop-at-quota", "--resume"]) == 75
    assert len(records(out)) == 3


def test_refused_credentials_exit_3(env, images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Wrong credentials stop the batch at once with exit code 3 and record nothing."""
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", "wrong")
    manifest = write_manifest(tmp_path / "pairs.csv", matching(50))
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]) == 3
    assert records(out) == []
    captured = capsys.readouterr()
    assert "--resume" in captured.err
    assert "wrong" not in captured.out + captured.err


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 (our interpreter, our CLI)
        [sys.executable, "-m", "facematch_async.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, "the batch finished before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("the batch made no progress")


def test_kill_9_then_resume_gives_each_pair_exactly_once(env, images: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run loses only pairs in flight; --resume completes with one line per pair."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(60))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none", "--concurrency", "3"]
    process = run_cli(args, env)
    wait_for_lines(out, 8, process)
    process.kill()
    process.communicate(timeout=10)  # reaped, and its pipes closed
    with open(out, "ab") as file:
        file.write(b'{"pair_id": "p059", "sta')  # as if the kill tore a line mid-write
    done_before = len(out.read_text().splitlines()) - 1
    assert done_before < 60
    resumed = run_cli([*args, "--resume"], env)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert "torn last line" in err
    ids = [r["pair_id"] for r in records(out)]
    assert sorted(ids) == [f"p{i:03d}" for i in range(60)]


def test_sigint_stops_dispatching_flushes_and_prints_the_resume_command(
    env, images: Path, tmp_path: Path
) -> None:
    """Ctrl-C lets in-flight pairs finish, exits 130 and prints how to resume; resuming finishes."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(60))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none", "--concurrency", "3"]
    process = run_cli(args, env)
    wait_for_lines(out, 5, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "--resume" in err
    first = records(out)
    assert len(first) < 60
    assert out.read_bytes().endswith(b"\n")  # nothing torn: in-flight pairs were flushed
    resumed = run_cli([*args, "--resume"], env)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert sorted(r["pair_id"] for r in records(out)) == [f"p{i:03d}" for i in range(60)]


def test_folder_manifests_and_root_confinement(env, images: Path, tmp_path: Path) -> None:
    """A folder of pair folders runs; with --root an image outside it is a per-pair error."""
    pairs = tmp_path / "pairs"
    for name, files in {"a1": ("alice.png", "alice.jpg"), "b2": ("alice.png", "bob.jpg")}.items():
        (pairs / name).mkdir(parents=True)
        for file in files:
            (pairs / name / file).write_bytes((images / file).read_bytes())
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(pairs), "--out", str(out), "--rate-limit", "none"]) == 0
    assert {r["pair_id"]: r["status"] for r in records(out)} == {"a1": "match", "b2": "no_match"}
    manifest = write_manifest(tmp_path / "pairs.csv", [*matching(1), ("up", "../../x.jpg", "a")])
    out = tmp_path / "confined.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--root", str(tmp_path / "img")]
    assert main([*args, "--rate-limit", "none"]) == 1
    by_id = {r["pair_id"]: r for r in records(out)}
    assert by_id["p000"]["status"] == "match"
    assert (by_id["up"]["sub_code"], by_id["up"]["line"]) == ("PATH_OUTSIDE_ROOT", 3)


def test_the_wait_for_in_flight_pairs_is_bounded_by_grace(
    env, images: Path, tmp_path: Path
) -> None:
    """Pairs still waiting for the rate limit at Ctrl-C are abandoned after --grace seconds."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(10))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "1/20s", "--grace", "0.5"]
    process = run_cli([*args, "--concurrency", "4"], env)
    wait_for_lines(out, 1, process)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert time.monotonic() - interrupted < 5
    assert len(records(out)) == 1
    left = re.search(r"(\d+) pair\(s\) still to run", err)
    assert left is not None
    assert int(left.group(1)) == 9  # every pair without a decision, not only those in flight


def test_an_unreachable_api_exits_69_after_a_few_pairs(
    env, images: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """With nothing listening, the batch stops early (exit 69, EX_UNAVAILABLE: resume later)
    instead of failing 300 pairs."""
    monkeypatch.setenv("DEEPVUE_BASE_URL", "http://127.0.0.1:9")
    manifest = write_manifest(tmp_path / "pairs.csv", matching(300))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(manifest), "--out", str(out), "--rate-limit", "none"]
    assert main([*args, "--max-retries", "0", "--concurrency", "2"]) == 69
    assert len(records(out)) < 40
    assert "unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DEEPVUE_RATE_LIMIT", "garbage", "rate limit 'garbage'"),
        ("DEEPVUE_RATE_LIMIT_STORE", "redis://127.0.0.1:1/0", "needs a rate_limit"),
    ],
)
def test_a_bad_rate_limit_setting_is_a_usage_error_not_a_traceback(
    images: Path, monkeypatch, capsys, variable: str, value: str, says: str
) -> None:
    """A bad $DEEPVUE_RATE_LIMIT(_STORE) is one line and exit 2, for match as for batch."""
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv(variable, value)
    assert main(["match", str(images / "alice.png"), str(images / "alice.jpg")]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_an_empty_rate_limit_argument_is_an_error_and_an_empty_variable_is_unset(
    monkeypatch,
) -> None:
    """rate_limit="" would quietly mean no pacing: a ValueError; DEEPVUE_RATE_LIMIT left
    empty is unset (the client's default: no pacing), as an empty variable usually means."""
    from facematch_async import FaceMatchClient

    with pytest.raises(ValueError, match="empty"):
        FaceMatchClient(client_id="id", client_secret="secret", rate_limit="")
    monkeypatch.setenv("DEEPVUE_RATE_LIMIT", " ")
    assert FaceMatchClient(client_id="id", client_secret="secret").rate_limiter is None


def test_a_store_that_is_not_a_redis_url_is_refused_when_the_client_is_built() -> None:
    """rate_limit_store="http://..." fails at construction, naming the URL's kind."""
    from facematch_async import FaceMatchClient

    with pytest.raises(ValueError, match="redis://"):
        FaceMatchClient(
            client_id="id", client_secret="secret", rate_limit="5/s", rate_limit_store="http://x"
        )


def test_an_empty_rate_limit_setting_never_turns_pacing_off(
    images: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """DEEPVUE_RATE_LIMIT left empty (as a deployment manifest may) is unset: the batch paces
    at the default plan; an empty --rate-limit is a usage error, never "no limit"."""
    monkeypatch.setenv("DEEPVUE_RATE_LIMIT", " ")
    manifest = write_manifest(tmp_path / "pairs.csv", matching(200))
    args = ["batch", str(manifest), "--dry-run", "--base-url", "http://127.0.0.1:9"]
    assert main(args) == 0
    assert "about 00:01:" in capsys.readouterr().out  # business: 2/s and 100/min
    assert main([*args, "--rate-limit", ""]) == 2
    assert "the rate limit is empty" in capsys.readouterr().err


def test_the_resume_command_hides_the_stores_password() -> None:
    """The line a stopped batch prints to resume it shows a store URL's password as ***."""
    import argparse

    from facematch_async.cli._batch import _resume_command

    argv = ["batch", "p.csv", "--rate-limit-store", "redis://:hunter2@h:6379/0"]
    line = _resume_command(argparse.Namespace(argv=[*argv, "--rate-limit-store=redis://pw3@h"]))
    assert "hunter2" not in line and "pw3" not in line
    assert "redis://:***@h:6379/0" in line and "--resume" in line


def test_the_dry_runs_estimate_counts_the_reserve(images: Path, tmp_path: Path, capsys) -> None:
    """With --reserve 25% the batch takes 7 of every 10/s: 300 requests take ~43 s, not 30."""
    manifest = write_manifest(tmp_path / "pairs.csv", matching(300))
    args = ["batch", str(manifest), "--dry-run", "--rate-limit", "10/s"]
    assert main([*args, "--reserve", "25%"]) == 0
    assert "at 7/s (--reserve 25% of 10/s): about 00:00:4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "url", ["redis://:hunter2@h:abc/0", "redis://h:6379/abc", "redis://:hunter2@h/0?bogus=1"]
)
def test_a_malformed_store_url_is_a_usage_error(images: Path, monkeypatch, capsys, url) -> None:
    """A store URL redis-py cannot read is exit 2 and one line (password hidden), like an
    http:// one, not exit 3 as if a good store were down."""
    monkeypatch.setenv("DEEPVUE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DEEPVUE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("DEEPVUE_RATE_LIMIT", "5/s")
    monkeypatch.setenv("DEEPVUE_RATE_LIMIT_STORE", url)
    assert main(["match", str(images / "alice.png"), str(images / "alice.jpg")]) == 2
    err = capsys.readouterr().err
    assert "rate_limit_store" in err and "hunter2" not in err and "Traceback" not in err
