"""Batches whose manifests and photos live in buckets (moto's S3 server and a GCS emulator on
loopback), results kept local; and manifests confined to their folder or prefix by default,
on disk and in buckets, with the check holding at the moment of the open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from facematch_async import BatchRunner, PairOutcome, read_manifest
from facematch_async.sandbox import SandboxConfig, SandboxServer, make_test_image
from tests.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    S3_SECRET,
    GCSServer,
    MakeClient,
    RecordingEngine,
    S3Bucket,
    S3Server,
    records,
)

ALICE_JPG = make_test_image("alice", "jpeg")
ALICE_PNG = make_test_image("alice", "png")
BOB = make_test_image("bob", "jpeg")
SECRET_FACE = make_test_image("mallory", "jpeg")  # must never reach the API


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    """The sandbox with an engine that remembers every image it was sent."""
    return SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, engine=RecordingEngine())


def received(sandbox: SandboxServer) -> list[bytes]:
    """Every image the sandbox's engine was sent."""
    engine = sandbox.config.engine
    assert isinstance(engine, RecordingEngine)
    return engine.received


async def collect(runner: BatchRunner, pairs: Any) -> dict[str, PairOutcome]:
    """Every outcome of a run, by key."""
    return {outcome.key: outcome async for outcome in runner.run(pairs)}


def photos(s3: S3Bucket, prefix: str = "jobs/") -> None:
    """Pair p1 (alice twice), p2 (alice and bob) under ``prefix``."""
    s3.put(f"{prefix}selfies/p1.jpg", ALICE_JPG)
    s3.put(f"{prefix}ids/p1.png", ALICE_PNG)
    s3.put(f"{prefix}selfies/p2.jpg", ALICE_JPG)
    s3.put(f"{prefix}ids/p2.jpg", BOB)


async def test_a_csv_manifest_in_s3_runs_to_a_local_results_file(
    s3: S3Bucket, make_client: MakeClient, tmp_path: Path
) -> None:
    """s3://.../pairs.csv with keys relative to its prefix: every pair decided, results in a
    local file, nothing written to the bucket."""
    photos(s3)
    manifest = s3.put(
        "jobs/pairs.csv",
        "pair_id,file_a,file_b,case\n"
        "p1,selfies/p1.jpg,ids/p1.png,C-1\n"
        f"p2,{s3.url('jobs/selfies/p2.jpg')},ids/p2.jpg,C-2\n",
    )
    before = s3.keys()
    runner = BatchRunner(make_client(), rate_limit=None)
    out = tmp_path / "results.jsonl"
    summary = await runner.run_to_file(read_manifest(manifest), out)
    assert summary.statuses == {"match": 1, "no_match": 1}
    by_id = {record["pair_id"]: record for record in records(out)}
    assert by_id["p1"]["status"] == "match" and by_id["p1"]["extra"] == {"case": "C-1"}
    assert s3.keys() == before  # results stay local


async def test_jsonl_and_folder_manifests_in_s3(s3: S3Bucket, make_client: MakeClient) -> None:
    """A JSONL manifest and a prefix of <pair_id>/ folders in a bucket are read like local ones."""
    photos(s3)
    rows = [
        {"pair_id": "p1", "file_a": "selfies/p1.jpg", "file_b": "ids/p1.png"},
        {"pair_id": "p2", "file_a": "selfies/p2.jpg", "file_b": "ids/p2.jpg"},
    ]
    jsonl = s3.put("jobs/pairs.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    s3.put("folders/f1/a_selfie.jpg", ALICE_JPG)
    s3.put("folders/f1/b_id.png", ALICE_PNG)
    s3.put("folders/f2/only_one.jpg", ALICE_JPG)
    runner = BatchRunner(make_client(), rate_limit=None)
    outcomes = await collect(runner, read_manifest(jsonl))
    assert {key: o.status for key, o in outcomes.items()} == {"p1": "match", "p2": "no_match"}
    outcomes = await collect(runner, read_manifest(s3.url("folders/")))
    assert outcomes["f1"].status == "match"
    assert outcomes["f2"].error is not None and outcomes["f2"].error.sub_code == "MALFORMED_ROW"


async def test_a_missing_object_is_its_pairs_retryable_error_and_the_rest_are_decided(
    s3: S3Bucket, make_client: MakeClient
) -> None:
    """One pair's key is missing: that pair is ImageUnavailableError; the others decide."""
    photos(s3)
    lines = ["pair_id,file_a,file_b"]
    lines += [f"ok{i},selfies/p1.jpg,ids/p1.png" for i in range(4)]
    lines.append("gone,selfies/p1.jpg,ids/deleted.png")
    manifest = s3.put("jobs/pairs.csv", "\n".join(lines) + "\n")
    outcomes = await collect(BatchRunner(make_client(), rate_limit=None), read_manifest(manifest))
    assert [o.status for k, o in sorted(outcomes.items()) if k != "gone"] == ["match"] * 4
    error = outcomes["gone"].error
    assert error is not None and error.type == "ImageUnavailableError"
    assert "file_b: no such object" in error.message


async def test_a_bucket_manifest_reads_nothing_outside_its_prefix_unless_allowed(
    s3: S3Bucket, s3_server: S3Server, make_client: MakeClient, sandbox: SandboxServer
) -> None:
    """A manifest in s3://a/jobs/ naming s3://b/..., ../other/... or /other/... : each is
    PATH_OUTSIDE_ROOT and its image never reaches the API; with root= both prefixes, read."""
    photos(s3)
    other = s3_server.new_bucket()
    outside_url = other.put("x.jpg", SECRET_FACE)
    s3.put("other/x.jpg", SECRET_FACE)
    manifest = s3.put(
        "jobs/pairs.csv",
        "pair_id,file_a,file_b\n"
        f"b,selfies/p1.jpg,{outside_url}\n"
        "up,selfies/p1.jpg,../other/x.jpg\n"
        "abs,selfies/p1.jpg,/other/x.jpg\n",
    )
    runner = BatchRunner(make_client(), rate_limit=None)
    outcomes = await collect(runner, read_manifest(manifest))
    for key in ("b", "up", "abs"):
        error = outcomes[key].error
        assert error is not None and error.sub_code == "PATH_OUTSIDE_ROOT", key
    assert SECRET_FACE not in received(sandbox)
    allowed = read_manifest(manifest, root=[s3.url(), other.url()])
    outcomes = await collect(runner, allowed)
    assert {o.status for o in outcomes.values()} == {"no_match"}


def test_a_local_manifest_names_no_bucket_or_web_address_by_default(tmp_path: Path) -> None:
    """A local manifest's rows naming s3:// or a cloud metadata URL are PATH_OUTSIDE_ROOT
    when read (nothing is fetched); ../ and absolute paths out of its folder too."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "a.jpg").write_bytes(ALICE_JPG)
    (tmp_path / "secret.jpg").write_bytes(SECRET_FACE)
    manifest = tmp_path / "jobs" / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n"
        "s3,a.jpg,s3://bucket/x.jpg\n"
        "meta,a.jpg,http://169.254.169.254/latest/meta-data/iam/x.jpg\n"
        "up,a.jpg,../secret.jpg\n"
        f"abs,a.jpg,{tmp_path / 'secret.jpg'}\n"
        "ok,a.jpg,a.jpg\n"
    )
    specs = {spec.pair_id: spec for spec in read_manifest(manifest)}
    for key in ("s3", "meta", "up", "abs"):
        assert specs[key].problem is not None
        assert specs[key].problem.sub_code == "PATH_OUTSIDE_ROOT"  # type: ignore[union-attr]
    assert specs["ok"].problem is None
    unconfined = {spec.pair_id: spec for spec in read_manifest(manifest, confined=False)}
    assert unconfined["up"].problem is None and unconfined["s3"].file_b == "s3://bucket/x.jpg"
    with pytest.raises(ValueError, match="not both"):
        read_manifest(manifest, root=tmp_path, confined=False)


async def test_a_symlink_swapped_after_its_row_was_read_is_never_uploaded(
    tmp_path: Path, make_client: MakeClient, sandbox: SandboxServer
) -> None:
    """The outside attack, 5 times: the row's link points inside when the manifest is read,
    then is swapped to a photo outside before the batch opens it. Each time the pair is
    PATH_OUTSIDE_ROOT and the outside photo never reaches the API (it did 5 of 5 before)."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(ALICE_JPG)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(SECRET_FACE)
    manifest = folder / "pairs.csv"
    manifest.write_text("pair_id,file_a,file_b\np1,a.jpg,link.jpg\n")
    runner = BatchRunner(make_client(), rate_limit=None)
    for _ in range(5):
        link = folder / "link.jpg"
        link.unlink(missing_ok=True)
        link.symlink_to(folder / "a.jpg")
        specs = list(read_manifest(manifest))  # checked now: inside
        assert specs[0].problem is None
        link.unlink()
        link.symlink_to(secret)  # swapped before the open
        outcomes = await collect(runner, specs)
        error = outcomes["p1"].error
        assert error is not None and error.sub_code == "PATH_OUTSIDE_ROOT"
    assert SECRET_FACE not in received(sandbox)


async def test_gcs_manifest_and_images(gcs: GCSServer, make_client: MakeClient) -> None:
    """A CSV manifest in gs:// naming gs:// images relative to its prefix: decided."""
    bucket = gcs.new_bucket()
    gcs.put(bucket, "jobs/a.jpg", ALICE_JPG)
    gcs.put(bucket, "jobs/b.png", ALICE_PNG)
    manifest = gcs.put(bucket, "jobs/pairs.csv", "pair_id,file_a,file_b\np1,a.jpg,b.png\n")
    outcomes = await collect(BatchRunner(make_client(), rate_limit=None), read_manifest(manifest))
    assert outcomes["p1"].status == "match"


# --- The command line ------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "facematch_async.cli", *args]
    return subprocess.run(  # noqa: S603 (our own CLI, our arguments)
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_batch_runs_a_bucket_manifest_and_resumes_exactly_once(
    s3: S3Bucket, cli_sandbox_url: str, tmp_path: Path
) -> None:
    """`batch s3://.../pairs.csv --out local.jsonl`: every pair decided, exit 0; --resume sends
    nothing again; `summary --manifest s3://...` finds every pair; the bucket holds no
    result; no credential is printed."""
    photos(s3)
    manifest = s3.put(
        "jobs/pairs.csv",
        "pair_id,file_a,file_b\np1,selfies/p1.jpg,ids/p1.png\np2,selfies/p2.jpg,ids/p2.jpg\n",
    )
    before = s3.keys()
    env = {
        **os.environ,
        "DEEPVUE_BASE_URL": cli_sandbox_url,
        "DEEPVUE_CLIENT_ID": CLIENT_ID,
        "DEEPVUE_CLIENT_SECRET": CLIENT_SECRET,
        "DEEPVUE_RATE_LIMIT": "none",
    }
    out = tmp_path / "results.jsonl"
    first = _cli(["batch", manifest, "--out", str(out)], env)
    assert first.returncode == 0, first.stderr
    assert {r["pair_id"]: r["status"] for r in records(out)} == {"p1": "match", "p2": "no_match"}
    again = _cli(["batch", manifest, "--out", str(out), "--resume"], env)
    assert again.returncode == 0, again.stderr
    assert "0 face-match requests, 2 skipped" in again.stdout
    summary = _cli(["summary", str(out), "--manifest", manifest], env)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    assert s3.keys() == before
    for text in (first.stdout, first.stderr, again.stdout, again.stderr, out.read_text()):
        assert S3_SECRET not in text


def test_cli_dry_run_of_a_bucket_manifest_checks_objects_without_downloading(
    s3: S3Bucket, tmp_path: Path
) -> None:
    """--dry-run on a bucket manifest reports the missing and the oversized objects and a
    row outside the prefix, exit 1; --root widens the confinement, --no-root lifts it."""
    photos(s3)
    s3.put("jobs/big.jpg", ALICE_JPG[:-2] + b"\0" * (10 * 1024 * 1024) + b"\xff\xd9")
    s3.put("elsewhere/a.jpg", ALICE_JPG)
    manifest = s3.put(
        "jobs/pairs.csv",
        "pair_id,file_a,file_b\n"
        "ok,selfies/p1.jpg,ids/p1.png\n"
        "gone,selfies/p1.jpg,ids/nope.png\n"
        "big,selfies/p1.jpg,big.jpg\n"
        "out,selfies/p1.jpg,../elsewhere/a.jpg\n",
    )
    env = {**os.environ, "DEEPVUE_RATE_LIMIT": "none"}
    dry = _cli(["batch", manifest, "--dry-run"], env)
    assert dry.returncode == 1, dry.stderr
    assert "1 ready, 3 would fail" in dry.stdout
    for code in ("ImageUnavailableError", "ImageTooLargeError", "PATH_OUTSIDE_ROOT"):
        assert code in dry.stdout
    wider = _cli(["batch", manifest, "--dry-run", "--root", s3.url()], env)
    assert "2 ready, 2 would fail" in wider.stdout, wider.stdout + wider.stderr
    free = _cli(["batch", manifest, "--dry-run", "--no-root"], env)
    assert "2 ready, 2 would fail" in free.stdout
    both = _cli(["batch", manifest, "--dry-run", "--no-root", "--root", s3.url()], env)
    assert both.returncode == 2 and both.stderr.startswith("facematch-async batch:")
    assert "Traceback" not in both.stderr


def test_cli_a_missing_bucket_manifest_is_one_line(s3: S3Bucket) -> None:
    """A bucket manifest that does not exist: exit 2, one line, no traceback."""
    result = _cli(["batch", s3.url("nope.csv"), "--dry-run"], dict(os.environ))
    assert result.returncode == 2
    assert result.stderr.startswith("facematch-async batch: no such manifest")
    assert "Traceback" not in result.stderr
