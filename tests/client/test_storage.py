"""Images in buckets, read by the client: ``ImageLocation`` URLs against a real S3-protocol
server (moto's server mode) and a GCS emulator on loopback, with the same guarantees as
local files; and confinement of local paths that holds at the moment of the open.

What moto cannot do (answer SlowDown, deny access, change an object between HEAD and GET,
stall) a small S3-speaking aiohttp server on loopback does (``FakeS3``): botocore and s3fs
parse its answers as they parse Amazon's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from facematch_async import (
    CorruptImageError,
    EmptyImageError,
    FaceMatchClient,
    ImageError,
    ImageLocation,
    ImageReadError,
    ImageTooLargeError,
    ImageUnavailableError,
    UnsupportedFileFormatError,
)
from facematch_async._images import check_pair, load_pair
from facematch_async._retry import is_retryable
from facematch_async._storage import MAX_OBJECTS_IN_FLIGHT
from facematch_async.sandbox import SandboxConfig, make_test_image
from tests.helpers import (
    CLIENT_ID,
    CLIENT_SECRET,
    S3_SECRET,
    STORE_SAFETY_ENV,
    GCSServer,
    MakeClient,
    RecordingEngine,
    S3Bucket,
)

JPEG = make_test_image("alice", "jpeg")
PNG = make_test_image("alice", "png")
BOB = make_test_image("bob", "jpeg")


# --- S3 (moto) -------------------------------------------------------------------------------


async def test_match_reads_both_images_from_s3(s3: S3Bucket, client: FaceMatchClient) -> None:
    """client.match takes ImageLocation URLs: both objects are read from the S3 server."""
    selfie = s3.put("selfies/p1.jpg", JPEG)
    document = s3.put("ids/p1.png", PNG)
    result = await client.match(ImageLocation(selfie), ImageLocation(document))
    assert result.match is True
    other = await client.match(ImageLocation(selfie), ImageLocation(s3.put("ids/p2.jpg", BOB)))
    assert other.match is False


async def test_a_url_mixed_with_a_local_file_and_bytes(
    s3: S3Bucket, client: FaceMatchClient, tmp_path: Path
) -> None:
    """One image in a bucket, the other on disk or in memory: both are read and checked."""
    local = tmp_path / "id.png"
    local.write_bytes(PNG)
    remote = ImageLocation(s3.put("selfie.jpg", JPEG))
    assert (await client.match(remote, local)).match is True
    assert (await client.match(PNG, remote)).match is True


async def test_a_plain_string_url_is_a_local_path_never_fetched(
    s3: S3Bucket, client: FaceMatchClient
) -> None:
    """A plain string is never fetched as a URL (a service forwarding one cannot be made to
    read a bucket): the error says to pass ImageLocation."""
    url = s3.put("selfie.jpg", JPEG)
    with pytest.raises(ImageReadError, match="ImageLocation") as caught:
        await client.match(url, JPEG)
    assert not isinstance(caught.value, ImageUnavailableError)
    assert caught.value.field == "file_a"


async def test_missing_keys_and_buckets_are_retryable_unavailable(s3: S3Bucket) -> None:
    """A missing key or bucket is that image's ImageUnavailableError: retryable, not final."""
    good = ImageLocation(s3.put("a.jpg", JPEG))
    for url in (s3.url("nope.jpg"), "s3://no-such-bucket-here/a.jpg"):
        with pytest.raises(ImageUnavailableError, match="file_b: no such object") as caught:
            await load_pair(good, ImageLocation(url), max_bytes=10**7)
        assert caught.value.field == "file_b"
        assert is_retryable(caught.value)


async def test_not_an_image_in_a_bucket_is_final(s3: S3Bucket) -> None:
    """A GIF renamed .jpg, an empty object and a truncated JPEG are final errors, as on disk."""
    gif = ImageLocation(s3.put("x.jpg", b"GIF89a" + b"\0" * 64))
    with pytest.raises(UnsupportedFileFormatError, match="GIF data") as caught:
        await load_pair(gif, JPEG, max_bytes=10**7)
    assert not is_retryable(caught.value)
    with pytest.raises(EmptyImageError):
        await load_pair(ImageLocation(s3.put("empty.jpg", b"")), JPEG, max_bytes=10**7)
    truncated = ImageLocation(s3.put("cut.jpg", JPEG[: len(JPEG) // 2]))
    with pytest.raises(CorruptImageError, match="truncated"):
        await load_pair(truncated, JPEG, max_bytes=10**7)


async def test_a_prefix_is_a_folder_not_an_image(s3: S3Bucket) -> None:
    """A URL naming a prefix (a folder) is a final read error."""
    s3.put("folder/a.jpg", JPEG)
    with pytest.raises(ImageReadError, match="is a folder") as caught:
        await load_pair(ImageLocation(s3.url("folder")), JPEG, max_bytes=10**7)
    assert not isinstance(caught.value, ImageUnavailableError)


async def test_the_store_is_found_by_the_standard_variables_only(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL (and the key pair in the environment) is all the reader is given:
    point it elsewhere and the same URL is no longer found there."""
    location = ImageLocation(s3.put("a.jpg", JPEG))
    images = await load_pair(location, location, max_bytes=10**7)
    assert images.file_a.data == JPEG
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ImageUnavailableError) as caught:
        await load_pair(location, location, max_bytes=10**7, read_timeout=20)
    assert S3_SECRET not in str(caught.value) and "127.0.0.1" not in str(caught.value)


async def test_the_dry_runs_check_asks_sizes_and_refuses_what_the_run_refuses(
    s3: S3Bucket,
) -> None:
    """check_pair on URLs: missing and too-large objects are refused, a good pair passes."""
    good = ImageLocation(s3.put("a.jpg", JPEG))
    await check_pair(good, good, max_bytes=10**7)
    with pytest.raises(ImageUnavailableError):
        await check_pair(good, ImageLocation(s3.url("nope.jpg")), max_bytes=10**7)
    with pytest.raises(ImageTooLargeError):
        await check_pair(good, good, max_bytes=len(JPEG) - 1)


async def test_reads_from_a_bucket_take_no_thread_per_read(s3: S3Bucket) -> None:
    """Sixty reads from S3 start no reader or worker thread of ours (nor asyncio's or
    anyio's): they run on fsspec's one event-loop thread, through s3fs's async API."""
    location = ImageLocation(s3.put("a.jpg", JPEG))
    await load_pair(location, location, max_bytes=10**7)  # fsspec's loop thread starts here
    before = {thread.ident for thread in threading.enumerate()}
    await asyncio.gather(*(load_pair(location, location, max_bytes=10**7) for _ in range(30)))
    started = [t.name for t in threading.enumerate() if t.ident not in before]
    # (the moto server, in this process, starts a thread per request it serves)
    assert [name for name in started if "process_request_thread" not in name] == []


# --- Confinement of URLs ---------------------------------------------------------------------


async def test_a_url_outside_its_root_is_refused_before_any_request(s3: S3Bucket) -> None:
    """root='s3://a/jobs/': s3://a/other/x and s3://b/x are PATH_OUTSIDE_ROOT, and so is a
    '..' that climbs out; the message does not say whether the object exists."""
    inside = s3.put("jobs/a.jpg", JPEG)
    s3.put("other/a.jpg", JPEG)
    root = s3.url("jobs/")
    images = await load_pair(ImageLocation(inside, root), JPEG, max_bytes=10**7)
    assert images.file_a.data == JPEG
    messages = set()
    for url in (
        s3.url("other/a.jpg"),  # exists
        s3.url("other/missing.jpg"),  # does not
        s3.url("jobs/../other/a.jpg"),
        "s3://another-bucket/jobs/a.jpg",
        s3.url("jobs/../../x.jpg"),
    ):
        with pytest.raises(ImageReadError) as caught:
            await load_pair(ImageLocation(url, root), JPEG, max_bytes=10**7)
        assert caught.value.sub_code == "PATH_OUTSIDE_ROOT"
        messages.add(caught.value.message)
    assert len(messages) == 1  # the same words whether or not the object is there


def test_roots_are_normalized_and_refuse_unconfinable_urls() -> None:
    """s3a:// and s3:// are one root; a root with no bucket or climbing above it is refused."""
    location = ImageLocation("s3a://b/kyc/x.jpg", root="s3://b/kyc")
    assert location.url == "s3://b/kyc/x.jpg" and location.roots == ("s3://b/kyc/",)
    for bad in ("s3://", "s3://b/../../"):
        with pytest.raises(ValueError, match="can confine"):
            ImageLocation("s3://b/x.jpg", root=bad)


def test_a_urls_secrets_never_show_in_its_repr() -> None:
    """A presigned URL's signature and a URL's password stay out of reprs and messages."""
    location = ImageLocation("https://user:pw-123@cdn.test/x.jpg?X-Amz-Signature=sig-456")
    assert "sig-456" not in repr(location) and "pw-123" not in repr(location)


def test_a_scheme_whose_extra_is_missing_names_the_extra_to_install() -> None:
    """Without fsspec (a plain install): an s3:// image is that pair's retryable error naming
    the extra, and a bucket manifest a ValueError (the CLI's usage error) naming it too."""
    program = """
import asyncio, sys
sys.modules["fsspec"] = None  # as if the s3 extra were not installed
from facematch_async import ImageLocation, ImageUnavailableError, read_manifest
from facematch_async._images import load_pair
try:
    asyncio.run(load_pair(ImageLocation("s3://b/x.jpg"), b"", max_bytes=10))
except ImageUnavailableError as error:
    print("image:", error.message)
try:
    read_manifest("s3://b/pairs.csv")
except ValueError as error:
    print("manifest:", error)
"""
    done = subprocess.run(  # noqa: S603 (this interpreter, our program)
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    extra = "pip install 'facematch-async[s3]'"
    assert f"image: file_a: s3:// URLs need the s3 extra: {extra}" in done.stdout
    assert f"manifest: s3:// URLs need the s3 extra: {extra}" in done.stdout


# --- Faults moto cannot make: a small S3-speaking server ----------------------------------


class FakeS3:
    """Answers S3's HEAD and GET as Amazon does, with scripted faults per key."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.faults: dict[str, tuple[int, str]] = {}
        self.head_size: dict[str, int] = {}  # what HEAD says, when it lies (a replaced object)
        self.stall: set[str] = set()  # GETs that hang until ``release`` is set
        self.release = asyncio.Event()
        self.gets: list[tuple[str, str | None]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.path.lstrip("/").partition("/")[2]
        if request.method == "GET":
            self.gets.append((key, request.headers.get("Range")))
        if key in self.faults:
            status, code = self.faults[key]
            body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>"
            text = "" if request.method == "HEAD" else body
            return web.Response(status=status, text=text, content_type="application/xml")
        data = self.objects.get(key)
        if data is None:
            body = "<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
            return web.Response(status=404, text=body, content_type="application/xml")
        headers = {"ETag": '"e"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
        if request.method == "HEAD":
            headers["Content-Length"] = str(self.head_size.get(key, len(data)))
            return web.Response(headers=headers)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if key in self.stall:
                await self.release.wait()
            await asyncio.sleep(0.02)
            start, _, end = (
                request.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
            )
            part = data[int(start) : int(end) + 1 if end else None]
            headers["Content-Range"] = f"bytes {start}-{int(start) + len(part) - 1}/{len(data)}"
            return web.Response(status=206, body=part, headers=headers)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def fake_s3(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeS3]:
    """A FakeS3 on loopback, and the standard AWS variables pointing at it (one attempt)."""
    fake = FakeS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    env = {
        **STORE_SAFETY_ENV,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_MAX_ATTEMPTS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


async def test_throttled_and_denied_objects_are_retryable_errors_of_their_image(
    fake_s3: FakeS3,
) -> None:
    """SlowDown after the store's retries and AccessDenied are ImageUnavailableError naming
    the image, retryable, with neither the key nor a secret in the message."""
    fake_s3.objects["a.jpg"] = JPEG
    fake_s3.faults["slow.jpg"] = (503, "SlowDown")
    fake_s3.faults["denied.jpg"] = (403, "AccessDenied")
    good = ImageLocation("s3://b/a.jpg")
    for key, words in (("slow.jpg", "throttled"), ("denied.jpg", "access denied")):
        with pytest.raises(ImageUnavailableError, match=words) as caught:
            await load_pair(good, ImageLocation(f"s3://b/{key}"), max_bytes=10**7)
        assert caught.value.field == "file_b" and is_retryable(caught.value)
        assert key not in str(caught.value) and S3_SECRET not in str(caught.value)


async def test_an_object_over_the_limit_is_refused_before_a_byte_is_fetched(
    fake_s3: FakeS3,
) -> None:
    """HEAD says 50 MB: ImageTooLargeError, and no GET was sent."""
    fake_s3.objects["big.jpg"] = JPEG
    fake_s3.head_size["big.jpg"] = 50_000_000
    with pytest.raises(ImageTooLargeError, match="50000000 bytes"):
        await load_pair(ImageLocation("s3://b/big.jpg"), JPEG, max_bytes=10**7)
    assert fake_s3.gets == []


async def test_an_object_grown_after_its_head_is_read_no_further_than_the_limit(
    fake_s3: FakeS3,
) -> None:
    """HEAD says small, the object is 3 MB by the GET: the read asks for max_bytes + 1 bytes
    at most, and the image is refused as too large."""
    limit = 100_000
    fake_s3.objects["grown.jpg"] = JPEG[:-2] + b"\0" * 3_000_000 + b"\xff\xd9"
    fake_s3.head_size["grown.jpg"] = 1_000
    with pytest.raises(ImageTooLargeError):
        await load_pair(ImageLocation("s3://b/grown.jpg"), JPEG, max_bytes=limit)
    assert fake_s3.gets == [("grown.jpg", f"bytes=0-{limit}")]


async def test_the_dry_runs_check_downloads_nothing(fake_s3: FakeS3) -> None:
    """check_pair on two URLs sends HEADs only: no object is downloaded."""
    fake_s3.objects["a.jpg"] = JPEG
    await check_pair(ImageLocation("s3://b/a.jpg"), ImageLocation("s3://b/a.jpg"), max_bytes=10**7)
    assert fake_s3.gets == []


async def test_a_stalled_store_fails_its_pair_at_the_read_deadline(
    fake_s3: FakeS3, make_client: MakeClient
) -> None:
    """A GET that never answers: that call fails at image_read_timeout with a retryable
    ImageUnavailableError; a pair read meanwhile from the same store completes."""
    fake_s3.objects["a.jpg"] = JPEG
    fake_s3.objects["stuck.jpg"] = JPEG
    fake_s3.stall.add("stuck.jpg")
    client = make_client(image_read_timeout=0.5)
    stuck = asyncio.ensure_future(client.prepare(ImageLocation("s3://b/stuck.jpg"), JPEG))
    good = await client.prepare(ImageLocation("s3://b/a.jpg"), JPEG)
    assert good.file_a.data == JPEG and not stuck.done()
    with pytest.raises(ImageUnavailableError, match=r"file_a: read did not finish within 0\.5 s"):
        await stuck


async def test_objects_in_flight_are_bounded(fake_s3: FakeS3) -> None:
    """Sixty pairs read at once from one store: never more than MAX_OBJECTS_IN_FLIGHT
    objects are fetched at the same time."""
    fake_s3.objects["a.jpg"] = JPEG
    location = ImageLocation("s3://b/a.jpg")
    await asyncio.gather(*(load_pair(location, location, max_bytes=10**7) for _ in range(60)))
    assert len(fake_s3.gets) == 120
    assert 1 < fake_s3.most_in_flight <= MAX_OBJECTS_IN_FLIGHT


async def test_an_image_on_a_web_server_is_read_inside_its_root(client: FaceMatchClient) -> None:
    """http(s):// URLs are read through fsspec's HTTP filesystem, confined like the others."""

    async def photo(request: web.Request) -> web.Response:
        return web.Response(body=JPEG if request.match_info["name"] == "a.jpg" else PNG)

    app = web.Application()
    app.router.add_get("/kyc/{name}", photo)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        root = f"http://127.0.0.1:{runner.addresses[0][1]}/kyc/"
        selfie, document = ImageLocation(root + "a.jpg", root), ImageLocation(root + "b.png", root)
        assert (await client.match(selfie, document)).match is True
        with pytest.raises(ImageReadError, match="outside the root"):
            await client.match(ImageLocation(root + "%2e%2e/a.jpg", root), document)
    finally:
        await runner.cleanup()


async def test_redirects_are_not_followed_out_of_an_https_root() -> None:
    """An https:// image whose server redirects elsewhere: the redirect is not followed
    (the other host is never asked), so a root cannot be left that way."""
    asked: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=JPEG)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{other_port}/x.jpg")

    other = web.Application()
    other.router.add_get("/x.jpg", elsewhere)
    first = web.Application()
    first.router.add_route("*", "/kyc/x.jpg", redirect)
    runners = [web.AppRunner(other), web.AppRunner(first)]
    for runner in runners:
        await runner.setup()
    try:
        sites = [web.TCPSite(runner, "127.0.0.1", 0) for runner in runners]
        for site in sites:
            await site.start()
        other_port = runners[0].addresses[0][1]
        port = runners[1].addresses[0][1]
        url = f"http://127.0.0.1:{port}/kyc/x.jpg"
        with pytest.raises(ImageError):  # the redirect's own body is no image
            await load_pair(
                ImageLocation(url, root=f"http://127.0.0.1:{port}/kyc/"), JPEG, max_bytes=10**7
            )
        assert asked == []
    finally:
        for runner in runners:
            await runner.cleanup()


# --- GCS (emulator) --------------------------------------------------------------------------


async def test_match_reads_images_from_gcs(gcs: GCSServer, client: FaceMatchClient) -> None:
    """gs:// URLs are read through gcsfs from the GCS emulator."""
    bucket = gcs.new_bucket()
    selfie = gcs.put(bucket, "selfies/p1.jpg", JPEG)
    document = gcs.put(bucket, "ids/p1.png", PNG)
    assert (await client.match(ImageLocation(selfie), ImageLocation(document))).match is True
    with pytest.raises(ImageUnavailableError, match="no such object"):
        await client.match(ImageLocation(selfie), ImageLocation(f"gs://{bucket}/nope.png"))


# --- Local confinement at the moment of the open -----------------------------------------------


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    """The sandbox with an engine that remembers every image it was sent."""
    return SandboxConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, engine=RecordingEngine())


def _folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A root holding a photo and a link to it; a secret photo outside the root."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "photo.jpg").write_bytes(JPEG)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(BOB)
    link = root / "link.jpg"
    link.symlink_to(root / "photo.jpg")
    return root, link, secret


async def test_a_symlink_swapped_just_before_the_open_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: FaceMatchClient, sandbox: object
) -> None:
    """The race made deterministic: the link points inside when checked and is swapped to
    the secret outside just before os.open; what was opened is judged, so the call fails
    PATH_OUTSIDE_ROOT and the secret never reaches the API."""
    root, link, secret = _folders(tmp_path)
    real_open = os.open

    def swap_then_open(path: object, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == str(link):  # type: ignore[call-overload]
            link.unlink()
            link.symlink_to(secret)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(ImageReadError) as caught:
        await client.match(ImageLocation(link, root=root), ImageLocation(root / "photo.jpg", root))
    monkeypatch.setattr(os, "open", real_open)
    assert caught.value.sub_code == "PATH_OUTSIDE_ROOT"
    engine = client_engine(sandbox)
    assert BOB not in engine.received


async def test_a_link_inside_the_root_that_stays_inside_is_read(
    tmp_path: Path, client: FaceMatchClient
) -> None:
    """Confinement follows symlinks: one that resolves inside the root is read."""
    root, link, _ = _folders(tmp_path)
    result = await client.match(ImageLocation(link, root=root), ImageLocation(link, root=root))
    assert result.match is True


async def test_refusals_outside_the_root_do_not_say_whether_the_file_exists(
    tmp_path: Path,
) -> None:
    """An existing file, a missing one, a '..' escape and a symlink out: one message, one
    code, whether or not there is a file there."""
    root, _, secret = _folders(tmp_path)
    out_link = root / "out.jpg"
    out_link.symlink_to(secret)
    dangling = root / "dangling.jpg"
    dangling.symlink_to(tmp_path / "missing.jpg")
    messages = set()
    for path in (secret, tmp_path / "missing.jpg", root / ".." / "secret.jpg", out_link, dangling):
        with pytest.raises(ImageReadError) as caught:
            await load_pair(ImageLocation(path, root=root), JPEG, max_bytes=10**7)
        assert caught.value.sub_code == "PATH_OUTSIDE_ROOT"
        messages.add(str(caught.value))
    assert len(messages) == 1


def client_engine(sandbox: object) -> RecordingEngine:
    """The sandbox's recording engine."""
    engine = sandbox.config.engine  # type: ignore[attr-defined]
    assert isinstance(engine, RecordingEngine)
    return engine
