"""Image reads that block or never end: only regular files are read, reads have a deadline,
a stuck file delays only its own pair, and the batch dry run checks exactly what a run does.

Every bound below is generous (seconds, not milliseconds): they prove "does not hang", not
speed. Reads that would block are released at the end of each test, so that no reader
thread of the process is left stuck for the tests that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from facematch_async import (
    BatchRunner,
    CorruptImageError,
    EmptyImageError,
    ImageReadError,
    PairSpec,
)
from facematch_async._images import load_pair
from facematch_async.sandbox import SandboxServer, make_test_image
from tests.helpers import Faces, MakeClient

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
HANG = 20.0  # seconds after which a call is taken to hang: far over any real wait here


def release(fifo: Path) -> None:
    """Let a reader blocked on ``fifo`` go (it reads an empty file); a no-op when none is."""
    with contextlib.suppress(OSError):  # ENXIO: nobody has it open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe with no writer: reading it would block for ever."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    yield path
    release(path)


@pytest.fixture
def stuck_stream() -> Iterator[IO[bytes]]:
    """A binary file object whose read blocks until the test ends: a pipe whose writer
    stays open and silent, as a stalled upload stream or a hung network mount would."""
    read_end, write_end = os.pipe()
    stream = open(read_end, "rb", buffering=0)  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        os.close(write_end)  # the stuck reader thread reads the end of the pipe and is freed
        stream.close()


@needs_fifo
async def test_a_fifo_is_refused_at_once_by_match(client, faces: Faces, fifo: Path) -> None:
    """A FIFO with no writer is refused from its fstat, before any read: it cannot block."""
    with pytest.raises(ImageReadError, match=r"file_b: is a FIFO \(named pipe\), not a regular"):
        await asyncio.wait_for(client.match(faces.alice_png, fifo), HANG)


@needs_dev_zero
async def test_dev_zero_is_refused_before_any_read(client, faces: Faces) -> None:
    """A device that never ends is refused as a device, not read up to the size limit."""
    with pytest.raises(ImageReadError, match="file_a: is a character device, not a regular"):
        await asyncio.wait_for(client.match("/dev/zero", faces.alice_png), HANG)


async def test_a_path_holding_a_nul_byte_is_an_image_read_error(client, faces: Faces) -> None:
    """A NUL byte in a path is that image's ImageReadError, not an untyped ValueError."""
    with pytest.raises(ImageReadError, match="file_a: the path holds a NUL byte") as caught:
        await client.match(str(faces.root / "a\0b.jpg"), faces.alice_png)
    assert caught.value.field == "file_a"


async def test_a_stuck_read_hits_its_deadline_and_a_match_in_the_same_turn_completes(
    make_client: MakeClient, faces: Faces, stuck_stream: IO[bytes]
) -> None:
    """A read past image_read_timeout fails its own call with ImageReadError; a call started
    in the same loop turn (so queued in the same reader hop, behind it) still completes."""
    client = make_client(image_read_timeout=1.0)
    stuck, fine = await asyncio.wait_for(
        asyncio.gather(
            client.match(stuck_stream, faces.alice_png),
            client.match(faces.alice_png, faces.alice_jpg),
            return_exceptions=True,
        ),
        HANG,
    )
    assert isinstance(stuck, ImageReadError), stuck
    assert stuck.message == "file_a: read did not finish within 1 s"
    assert not isinstance(fine, BaseException), fine
    assert fine.match is True


async def test_pairs_sharing_a_hop_with_a_stuck_read_are_not_held_to_its_deadline(
    faces: Faces, stuck_stream: IO[bytes]
) -> None:
    """Fifteen pairs queued in one hop behind a stuck one are handed to another reader
    thread after the stall time, long before the stuck pair's deadline."""
    stuck = asyncio.ensure_future(
        load_pair(stuck_stream, faces.bob_jpg, max_bytes=None, read_timeout=600)
    )
    others = [
        asyncio.ensure_future(load_pair(faces.alice_png, faces.bob_jpg, max_bytes=None))
        for _ in range(15)
    ]
    pairs = await asyncio.wait_for(asyncio.gather(*others), HANG)
    assert all(pair[0].data == faces.alice_png.read_bytes() for pair in pairs)
    assert not stuck.done()  # still reading, its deadline 10 minutes away
    stuck.cancel()


@needs_fifo
async def test_a_fifo_in_a_batch_of_20_is_that_pairs_error_and_the_others_are_decided(
    make_client: MakeClient, faces: Faces, fifo: Path, sandbox: SandboxServer
) -> None:
    """One FIFO among 20 pairs (all read ahead in the same hops) ends as its pair's
    ImageReadError; the 19 others reach the sandbox and are decided."""
    pairs = [PairSpec(f"p{i:02d}", faces.alice_png, faces.alice_jpg) for i in range(20)]
    pairs[7] = PairSpec("p07", faces.alice_png, fifo)
    runner = BatchRunner(make_client(), concurrency=20, rate_limit=None)

    async def run() -> dict[str, object]:
        return {outcome.pair_id: outcome async for outcome in runner.run(pairs)}

    outcomes = await asyncio.wait_for(run(), HANG)
    assert len(outcomes) == 20
    broken = outcomes.pop("p07")
    assert broken.status == "error"  # type: ignore[attr-defined]
    assert broken.error.type == "ImageReadError"  # type: ignore[attr-defined]
    assert "FIFO" in broken.error.message  # type: ignore[attr-defined]
    assert {o.status for o in outcomes.values()} == {"match"}  # type: ignore[attr-defined]
    assert sandbox.counters.requests[("/v1/facematch", 200)] == 19


async def test_the_dry_runs_check_is_what_match_checks(tmp_path: Path) -> None:
    """The dry run reads and checks through load_pair, as match does: it refuses a JPEG
    without its end marker (which the dry run once let through) and an empty file."""
    whole = make_test_image("asha", "jpeg")
    good, cut, empty = tmp_path / "good.jpg", tmp_path / "cut.jpg", tmp_path / "empty.jpg"
    good.write_bytes(whole)
    cut.write_bytes(whole[: len(whole) // 2].replace(b"\xff\xd9", b""))
    empty.write_bytes(b"")
    assert (await load_pair(good, good, max_bytes=None))[0].data == whole
    with pytest.raises(CorruptImageError, match="file_b is a truncated JPEG"):
        await load_pair(good, cut, max_bytes=None)
    with pytest.raises(EmptyImageError):
        await load_pair(empty, good, max_bytes=None)


# ---------------------------------------------------------------- the dry run and the run


def _hostile_files(folder: Path) -> dict[str, str]:
    """pair id -> the path of its second image: one good, then each kind of bad file."""
    folder.mkdir()
    whole = make_test_image("asha", "jpeg")
    (folder / "good.jpg").write_bytes(whole)
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2].replace(b"\xff\xd9", b""))
    (folder / "gif.jpg").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "huge.jpg").write_bytes(whole[:-2] + b"\0" * (10 * 1024 * 1024) + b"\xff\xd9")
    files = {
        "good": folder / "good.jpg",
        "truncated": folder / "truncated.jpg",
        "gif": folder / "gif.jpg",
        "empty": folder / "empty.jpg",
        "huge": folder / "huge.jpg",
        "missing": folder / "missing.jpg",
        "nul": folder / "nul\0.jpg",
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.jpg")
        files["fifo"] = folder / "fifo.jpg"
    if os.path.exists("/dev/zero"):
        files["dev_zero"] = Path("/dev/zero")
    return {pair_id: str(path) for pair_id, path in files.items()}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, so that a hang on old code fails the test (timeout)."""
    command = [sys.executable, "-m", "facematch_async.cli", *args]
    return subprocess.run(  # noqa: S603 (our own CLI, our arguments)
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_dry_run_and_the_run_refuse_the_same_files_the_same_way(
    facematch_sandbox, tmp_path: Path
) -> None:
    """Fed the same hostile files, --dry-run and the run agree pair by pair on which are
    refused and under which code (the API's sub_code, else the error's type)."""
    files = _hostile_files(tmp_path / "img")
    good = files["good"]
    manifest = tmp_path / "pairs.jsonl"
    with manifest.open("w") as out:
        for pair_id, path in files.items():
            out.write(json.dumps({"pair_id": pair_id, "file_a": good, "file_b": path}) + "\n")
    env = {
        **os.environ,
        **facematch_sandbox.env(),
        "DEEPVUE_RATE_LIMIT": "none",
    }
    line_of = {pair_id: line for line, pair_id in enumerate(files, start=1)}

    dry = _cli(["batch", str(manifest), "--dry-run", "--no-root"], env)
    assert dry.returncode == 1, dry.stderr
    refused_dry = {}
    for text in dry.stdout.splitlines():
        if text.startswith("  line "):
            where, code, _ = text.strip().split(": ", 2)
            refused_dry[int(where.removeprefix("line "))] = code
    assert f"1 ready, {len(files) - 1} would fail" in dry.stdout

    results = tmp_path / "out.jsonl"
    run = _cli(["batch", str(manifest), "--out", str(results), "--no-root"], env)
    assert run.returncode == 1, run.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    refused_run = {}
    for record in records:
        if record["status"] == "error":
            code = record["sub_code"] or record["error_type"]
            refused_run[line_of[record["pair_id"]]] = code
    assert {r["pair_id"]: r["status"] for r in records}["good"] == "match"

    assert refused_dry == refused_run
    expected = {
        "truncated": "CorruptImageError",
        "gif": "UNSUPPORTED_FILE_FORMAT",
        "empty": "EmptyImageError",
        "huge": "ImageTooLargeError",
        "missing": "ImageReadError",
        "nul": "ImageReadError",
        "fifo": "ImageReadError",
        "dev_zero": "ImageReadError",
    }
    assert refused_run == {line_of[p]: code for p, code in expected.items() if p in files}


@needs_dev_zero
def test_dev_zero_is_refused_the_same_way_by_the_dry_run(tmp_path: Path) -> None:
    """/dev/zero in a manifest: the dry run reports the run's ImageReadError, not "empty"."""
    good = tmp_path / "good.jpg"
    good.write_bytes(make_test_image("asha", "jpeg"))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"pair_id,file_a,file_b\nz,{good},/dev/zero\n")
    dry = _cli(["batch", str(manifest), "--dry-run", "--no-root"], dict(os.environ))
    assert dry.returncode == 1, dry.stderr
    assert "line 2: ImageReadError: file_b: is a character device, not a regular file" in (
        dry.stdout
    )
