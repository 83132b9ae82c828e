"""The client's hot path: the multipart body it builds itself, and batched image reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from facematch_async import EmptyImageError, FaceMatchClient, ImageReadError, ImageTooLargeError
from facematch_async._images import UploadImage, load_pair
from facematch_async._readers import ReaderPool
from facematch_async._transport import MultipartBody
from facematch_async.sandbox import make_test_image
from tests.helpers import Faces

IMAGES = (
    UploadImage("file_a", make_test_image("a", "jpeg"), "JPEG", "file_a.jpg", "image/jpeg"),
    UploadImage("file_b", make_test_image("b", "png"), "PNG", "file_b.png", "image/png"),
)


async def test_multipart_body_is_byte_for_byte_what_formdata_sends() -> None:
    """Our one-piece body equals aiohttp.FormData's on the wire, boundary aside."""
    seen: list[tuple[str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers["Content-Type"], await request.read()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            for image in IMAGES:
                form.add_field(
                    image.field,
                    image.data,
                    filename=image.filename,
                    content_type=image.content_type,
                )
            for data in (form, MultipartBody(IMAGES)):
                async with session.post(f"http://127.0.0.1:{port}/", data=data):
                    pass
    finally:
        await runner.cleanup()

    def normal(content_type: str, raw: bytes) -> tuple[str, bytes]:
        boundary = re.fullmatch(r"multipart/form-data; boundary=(\w+)", content_type)
        assert boundary is not None
        return "B", raw.replace(boundary.group(1).encode(), b"B")

    assert normal(*seen[0]) == normal(*seen[1])
    assert seen[0][0] != seen[1][0]  # each body has a boundary of its own


async def test_concurrent_reads_share_hops_but_not_errors(faces: Faces, tmp_path: Path) -> None:
    """Pairs read in one hop each get their own images, or their own error."""
    missing = tmp_path / "missing.jpg"
    sources = [(faces.alice_png, faces.bob_jpg), (missing, faces.bob_jpg)] * 20
    results = await asyncio.gather(
        *(load_pair(a, b, max_bytes=None) for a, b in sources), return_exceptions=True
    )
    for (a, _), result in zip(sources, results, strict=True):
        if a == missing:
            assert isinstance(result, ImageReadError)
            assert result.field == "file_a"
        else:
            assert not isinstance(result, BaseException)
            assert result[0].data == faces.alice_png.read_bytes()
            assert result[1].filename == "file_b.jpg"


async def test_a_call_cancelled_while_reading_leaves_the_others_alone(faces: Faces) -> None:
    """Cancelling one call during its read neither fails nor hangs the calls beside it."""
    calls = [
        asyncio.ensure_future(load_pair(faces.alice_png, faces.alice_jpg, max_bytes=None))
        for _ in range(5)
    ]
    await asyncio.sleep(0)
    calls[2].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert all(isinstance(pair, tuple) for i, pair in enumerate(done) if i != 2)


@pytest.mark.parametrize("api_version", ["v1", "v2"])
async def test_match_sends_the_prebuilt_body(sandbox, faces: Faces, api_version: str) -> None:
    """The sandbox parses the body the client builds itself, on either API version."""
    async with FaceMatchClient(
        client_id="test-client",
        client_secret="s3cr3t-KEY-do-not-leak-7f9a",
        base_url=sandbox.base_url,
        api_version=api_version,  # type: ignore[arg-type]
    ) as client:
        assert (await client.match(faces.alice_png, faces.alice_jpg)).match is True
        assert (await client.match(faces.alice_png, faces.bob_jpg)).match is False


def _fifo_fed_with(tmp_path: Path, data: bytes) -> tuple[Path, threading.Thread]:
    """A named pipe (no size for fstat) that a thread fills with ``data`` once opened."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return fifo, writer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
async def test_a_source_without_a_size_is_read_to_its_end(tmp_path: Path) -> None:
    """A pipe given as a file object (no size to ask for) is read to its end: 300 KB, whole.
    (A pipe given by its path is refused: only regular files are read from paths.)"""
    image = make_test_image("piped", "jpeg", pad_to=300_000)
    fifo, writer = _fifo_fed_with(tmp_path, image)
    with open(fifo, "rb") as stream:
        first, _ = await load_pair(stream, IMAGES[1].data, max_bytes=1_000_000)
    writer.join(5)
    assert first.data == image


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX only")
async def test_a_source_without_a_size_is_cut_at_the_limit(tmp_path: Path) -> None:
    """A pipe longer than max_bytes is refused after reading max_bytes + 1, not all of it."""
    fifo, writer = _fifo_fed_with(tmp_path, make_test_image("big", "jpeg", pad_to=500_000))
    with (
        open(fifo, "rb") as stream,
        pytest.raises(ImageTooLargeError, match="100001 bytes, over the limit of 100000"),
    ):
        await load_pair(stream, IMAGES[1].data, max_bytes=100_000)
    writer.join(5)


async def test_files_are_read_exactly_at_and_refused_over_the_limit(tmp_path: Path) -> None:
    """A file of exactly max_bytes is read whole; one byte more is refused before reading."""
    image = make_test_image("edge", "jpeg", pad_to=50_000)
    path = tmp_path / "edge.jpg"
    path.write_bytes(image)
    first, _ = await load_pair(path, IMAGES[1].data, max_bytes=len(image))
    assert first.data == image
    with pytest.raises(ImageTooLargeError, match=f"is {len(image)} bytes"):
        await load_pair(path, IMAGES[1].data, max_bytes=len(image) - 1)


async def test_a_stuck_read_holds_up_one_reader_not_all(faces: Faces) -> None:
    """A read that never ends (a pipe nobody writes to, like a hung network mount) delays
    the reads queued behind it by the pool's patience only: another reader starts."""
    read_end, write_end = os.pipe()
    with open(read_end, "rb", buffering=0) as pipe:
        stuck = asyncio.ensure_future(load_pair(pipe, faces.bob_jpg, max_bytes=None))
        await asyncio.sleep(0.05)  # longer than the pool's patience (20 ms)
        pair = await asyncio.wait_for(load_pair(faces.alice_png, faces.bob_jpg, max_bytes=None), 5)
        assert pair[0].data == faces.alice_png.read_bytes()
        assert not stuck.done()
        os.close(write_end)  # let the stuck reader go: it reads an empty file
        with pytest.raises(EmptyImageError):
            await asyncio.wait_for(stuck, 5)


def test_the_reader_pool_keeps_to_one_thread_while_reads_are_fast() -> None:
    """Bursts of quick jobs share one thread; a slow job lets a second one start."""
    pool = ReaderPool(limit=3, patience=0.3)  # long enough that a busy CI never trips it
    done = threading.Semaphore(0)
    for _ in range(50):
        pool.submit(done.release)
    for _ in range(50):
        assert done.acquire(timeout=5)
    assert pool.threads == 1
    release = threading.Event()
    pool.submit(release.wait, 5)
    time.sleep(0.5)  # the only thread has now been busy past its patience
    pool.submit(done.release)
    assert done.acquire(timeout=5)
    assert pool.threads == 2
    release.set()
