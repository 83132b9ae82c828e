"""Local image checks: bad input is refused before any network call, with a typed error."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from facematch_async import (
    CorruptImageError,
    EmptyImageError,
    ImageReadError,
    ImageTooLargeError,
    UnsupportedFileFormatError,
)
from facematch_async._images import detect_format
from facematch_async.sandbox import SandboxServer, make_test_image
from tests.helpers import FACES, Faces, MakeClient

GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 "
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00"


def assert_no_request(sandbox: SandboxServer) -> None:
    assert sum(sandbox.counters.requests.values()) == 0, sandbox.counters.requests


@pytest.mark.parametrize(
    ("content", "named"),
    [(GIF, "GIF"), (WEBP, "WebP"), (HEIC, "HEIC"), (b"BM\x00\x00", "BMP"), (b"hello", "unknown")],
)
async def test_foreign_format_renamed_jpg_is_refused_locally(
    client, faces: Faces, sandbox: SandboxServer, content: bytes, named: str
) -> None:
    """A non-JPEG/PNG file named .jpg is refused by magic bytes, naming what it is."""
    fake = faces.write("photo.jpg", content)
    with pytest.raises(UnsupportedFileFormatError) as caught:
        await client.match(faces.alice_png, fake)
    assert caught.value.field == "file_b"
    assert named in caught.value.message
    assert caught.value.status_code is None
    assert_no_request(sandbox)


async def test_png_named_txt_is_accepted(client, faces: Faces) -> None:
    """The extension does not matter: a PNG named .txt is sent, as file_a.png."""
    renamed = faces.write("scan.txt", faces.alice_png.read_bytes())
    assert (await client.match(renamed, faces.alice_jpg)).match is True


async def test_pdf_is_refused_on_v1(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A PDF is accepted only by v2; v1 refuses it locally and says so."""
    with pytest.raises(UnsupportedFileFormatError, match="v2 only"):
        await client.match(b"%PDF-1.7 ...", faces.alice_png)
    assert_no_request(sandbox)


async def test_empty_file_is_refused(client, faces: Faces, sandbox: SandboxServer) -> None:
    """An empty file raises EmptyImageError for that image."""
    empty = faces.write("empty.jpg", b"")
    with pytest.raises(EmptyImageError) as caught:
        await client.match(empty, faces.alice_png)
    assert caught.value.field == "file_a"
    assert_no_request(sandbox)


async def test_missing_file_is_refused(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A path that does not exist raises ImageReadError."""
    with pytest.raises(ImageReadError, match="no such file"):
        await client.match(faces.alice_png, faces.root / "missing.jpg")
    assert_no_request(sandbox)


async def test_directory_is_refused(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A directory given as an image raises ImageReadError."""
    with pytest.raises(ImageReadError, match="directory"):
        await client.match(faces.root, faces.alice_png)
    assert_no_request(sandbox)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
async def test_unreadable_file_is_refused(client, faces: Faces) -> None:
    """A file without read permission raises ImageReadError."""
    locked = faces.write("locked.jpg", make_test_image("x", "jpeg"))
    locked.chmod(0)
    with pytest.raises(ImageReadError, match="permission"):
        await client.match(locked, faces.alice_png)


async def test_symlink_loop_is_refused(client, faces: Faces, sandbox: SandboxServer) -> None:
    """A symlink loop raises ImageReadError instead of hanging or crashing."""
    loop = faces.root / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageReadError):
        await client.match(loop, faces.alice_png)
    assert_no_request(sandbox)


@pytest.mark.parametrize("as_path", [True, False])
async def test_oversized_image_is_refused(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, as_path: bool
) -> None:
    """An image over max_image_bytes raises ImageTooLargeError, from disk or from memory."""
    big = make_test_image("alice", "png", pad_to=50_000)
    source: Path | bytes = faces.write("big.png", big) if as_path else big
    client = make_client(max_image_bytes=40_000)
    with pytest.raises(ImageTooLargeError, match="over the limit of 40000"):
        await client.match(faces.alice_png, source)
    assert_no_request(sandbox)


async def test_size_limit_can_be_lifted(make_client: MakeClient, faces: Faces) -> None:
    """max_image_bytes=None sends large images (the sandbox still takes them)."""
    big = make_test_image("alice", "png", pad_to=200_000)
    client = make_client(max_image_bytes=None)
    assert (await client.match(big, faces.alice_jpg)).match is True


async def test_text_mode_file_is_a_type_error(client, faces: Faces) -> None:
    """A file opened in text mode is a programming error: TypeError says to use 'rb'."""
    with pytest.raises(TypeError, match="binary mode"):
        await client.match(io.StringIO("x"), faces.alice_png)


async def test_unsupported_source_type_is_a_type_error(client, faces: Faces) -> None:
    """An int is not an image source."""
    with pytest.raises(TypeError, match="path, bytes or a binary file"):
        await client.match(42, faces.alice_png)


def test_detect_format_reads_magic_bytes() -> None:
    """JPEG, PNG and PDF are told by their first bytes; anything else is None."""
    assert detect_format(make_test_image(fmt="jpeg")) == "JPEG"
    assert detect_format(make_test_image(fmt="png")) == "PNG"
    assert detect_format(b"%PDF-1.4") == "PDF"
    assert detect_format(GIF) is None


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
async def test_truncated_image_is_refused_locally(
    client, faces: Faces, sandbox: SandboxServer, fmt: str
) -> None:
    """A JPEG or PNG cut short (no end marker) raises CorruptImageError before sending."""
    whole = make_test_image("alice", fmt, pad_to=5000)  # type: ignore[arg-type]
    cut = faces.write(f"cut.{fmt}", whole[: len(whole) // 2])
    with pytest.raises(CorruptImageError, match="truncated"):
        await client.match(cut, faces.alice_png)
    assert_no_request(sandbox)


async def test_non_utf8_file_name_is_read_and_not_sent(
    client, faces: Faces, sandbox: SandboxServer
) -> None:
    """A file name that is not UTF-8 is read fine; the upload is named file_a.jpg."""
    name = os.fsdecode(b"caf\xe9-\xff.jpg")
    path = faces.root / name
    path.write_bytes(make_test_image("alice", "jpeg"))
    assert (await client.match(path, faces.alice_png)).match is True


def test_unreadable_file_is_refused_for_an_unprivileged_user(tmp_path: Path) -> None:
    """A file without read permission raises ImageReadError (checked as 'nobody' under root)."""
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(make_test_image("x", "jpeg"))
    locked.chmod(0)
    tmp_path.chmod(0o755)
    program = (
        "import asyncio, os, sys\n"
        "from facematch_async._images import load_pair\n"
        "from facematch_async import ImageReadError\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: /root is not theirs\n"
        "try:\n"
        "    asyncio.run(load_pair(sys.argv[1], sys.argv[1], max_bytes=None))\n"
        "except ImageReadError as error:\n"
        "    print(type(error).__name__, error.field, error.message)\n"
    )
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-c", program, str(locked)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.stdout.strip() == "ImageReadError file_a file_a: permission denied", (
        completed.stderr
    )


def camera_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A JPEG laid out as a camera writes one: an EXIF APP1 segment right after SOI whose
    IFD1 holds a JPEG thumbnail (with an end marker of its own), then the main image."""
    from PIL import Image

    def jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    main, thumbnail = jpeg((width, height), (200, 120, 80)), jpeg((160, 120), (200, 120, 80))
    # TIFF, little-endian: IFD0 (no entries) -> IFD1 (JPEGInterchangeFormat and its length).
    ifd1_at = 8 + 2 + 4
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    tiff = b"II*\x00" + (8).to_bytes(4, "little")
    tiff += (0).to_bytes(2, "little") + ifd1_at.to_bytes(4, "little")
    tiff += (2).to_bytes(2, "little")
    tiff += bytes.fromhex("0102") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little")
    tiff += thumb_at.to_bytes(4, "little")  # tag 0x0201, LONG: where the thumbnail starts
    tiff += bytes.fromhex("0202") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little")
    tiff += len(thumbnail).to_bytes(4, "little")  # tag 0x0202: its length
    tiff += (0).to_bytes(4, "little") + thumbnail
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return main[:2] + app1 + main[2:]


async def test_a_cut_camera_jpeg_with_an_exif_thumbnail_is_refused_before_any_call(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A camera file cut short (`head -c`) still holds its EXIF thumbnail's end marker: it is
    CorruptImageError naming the field, before any call; the whole file passes."""
    whole = camera_jpeg()
    assert whole.count(b"\xff\xd9") == 2  # the thumbnail's and the image's
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    client = make_client()
    with pytest.raises(CorruptImageError, match="truncated") as caught:
        await client.match(cut, faces.alice_jpg)
    assert caught.value.field == "file_a"
    assert_no_request(sandbox)
    (tmp_path / "whole.jpg").write_bytes(whole)
    await client.prepare(tmp_path / "whole.jpg", faces.alice_jpg)  # the whole file is fine


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg"])
async def test_real_camera_photos_cut_short_are_refused(
    make_client: MakeClient, faces: Faces, tmp_path: Path, name: str
) -> None:
    """The public-domain photos in ../shared/faces (EXIF thumbnails inside): the first
    100,000 bytes are refused as truncated; the whole photo is accepted."""
    photo = FACES / name
    if not photo.exists():
        pytest.skip(f"needs the sample photos in {FACES}")
    cut = tmp_path / name
    cut.write_bytes(photo.read_bytes()[:100_000])
    client = make_client()
    with pytest.raises(CorruptImageError, match="truncated"):
        await client.prepare(cut, faces.alice_jpg)
    await client.prepare(photo, faces.alice_jpg)


async def test_a_prepared_match_in_a_log_line_holds_no_photo(
    make_client: MakeClient, faces: Faces
) -> None:
    """repr() of what prepare returns names the images' fields and formats, never their
    bytes: a 10 MB photo must not become a 10 MB log line."""
    prepared = await make_client().prepare(faces.alice_png, faces.alice_jpg)
    text = repr(prepared)
    assert "file_a" in text and "PNG" in text
    assert len(text) < 400
