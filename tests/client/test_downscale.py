"""Opt-in downscaling: big photos shrink before upload, upright and in their own format."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facematch_async import FaceMatchClient
from facematch_async.errors import CorruptImageError
from facematch_async.sandbox import SandboxConfig, SandboxServer
from tests.helpers import CLIENT_ID, CLIENT_SECRET, FAST_RETRIES, RecordingEngine

Image = pytest.importorskip("PIL.Image", reason="downscaling needs the 'images' extra (Pillow)")


def photo(width: int, height: int, fmt: str = "JPEG", orientation: int | None = None) -> bytes:
    """A noisy photo-like image (noise defeats compression, as real detail does)."""
    image = Image.effect_noise((width, height), 64).convert("RGB")
    buffer = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        exif[0x8825] = {2: (12.0, 58.0, 0.0)}  # a GPS position that must not be uploaded
        image.save(buffer, fmt, exif=exif)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
async def recording() -> AsyncIterator[tuple[SandboxServer, RecordingEngine]]:
    engine = RecordingEngine()
    async with SandboxServer(SandboxConfig(CLIENT_ID, CLIENT_SECRET, engine=engine)) as server:
        yield server, engine


def client_for(server: SandboxServer, **options: object) -> FaceMatchClient:
    return FaceMatchClient(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        base_url=server.base_url,
        retry_policy=FAST_RETRIES,
        **options,  # type: ignore[arg-type]
    )


async def test_large_jpeg_is_downscaled_upright_without_metadata(recording, tmp_path: Path) -> None:
    """A 4000x3000 JPEG rotated by EXIF arrives as an upright JPEG of at most 1024 px, no EXIF."""
    server, engine = recording
    original = photo(4000, 3000, orientation=6)  # 6: rotate 90° clockwise to view
    path = tmp_path / "phone.jpg"
    path.write_bytes(original)
    async with client_for(server, max_image_side=1024) as client:
        await client.match(path, original)
    for sent in engine.received:
        image = Image.open(io.BytesIO(sent))
        assert image.format == "JPEG"
        assert image.size == (768, 1024)  # portrait: the EXIF rotation was applied
        assert not image.getexif()
        assert len(sent) < len(original) / 5


async def test_large_png_stays_png(recording) -> None:
    """A large PNG is downscaled and re-encoded as PNG."""
    server, engine = recording
    async with client_for(server, max_image_side=500) as client:
        await client.match(photo(1600, 800, "PNG"), photo(300, 300))
    first = Image.open(io.BytesIO(engine.received[0]))
    assert (first.format, first.size) == ("PNG", (500, 250))


async def test_small_images_are_sent_byte_for_byte(recording) -> None:
    """Images within both limits are not re-encoded."""
    server, engine = recording
    small = photo(400, 300)
    async with client_for(server, max_image_side=1024) as client:
        await client.match(small, small)
    assert engine.received == [small, small]


async def test_byte_limit_shrinks_until_the_image_fits(recording) -> None:
    """With downscaling on, an image over max_image_bytes is shrunk instead of refused."""
    server, engine = recording
    big = photo(700, 700, "PNG")  # about 1.5 MB of noise
    async with client_for(server, max_image_side=2000, max_image_bytes=200_000) as client:
        await client.match(big, big)
    assert len(big) > 200_000
    assert all(len(sent) <= 200_000 for sent in engine.received)


async def test_truncated_image_is_a_corrupt_image_error(recording) -> None:
    """A truncated big JPEG cannot be decoded: CorruptImageError, nothing sent."""
    server, engine = recording
    truncated = photo(3000, 2000)[:50_000]
    async with client_for(server, max_image_side=1024) as client:
        with pytest.raises(CorruptImageError) as caught:
            await client.match(truncated, photo(100, 100))
    assert caught.value.field == "file_a"
    assert engine.received == []


def test_max_image_side_is_validated() -> None:
    """A side under 64 px is refused at construction."""
    with pytest.raises(ValueError, match="at least 64"):
        FaceMatchClient(client_id="a", client_secret="b", max_image_side=10)
