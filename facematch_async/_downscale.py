"""Opt-in downscaling of large JPEG/PNG photos before upload (extra ``images``: Pillow).

A 4000 px phone photo is several megabytes; face matching needs far fewer pixels. With
``FaceMatchClient(max_image_side=N)``, an image whose longer side is over ``N``, or whose
size is over ``max_image_bytes``, is decoded (JPEG at a reduced scale, which libjpeg does
cheaply), turned upright by its EXIF orientation, resized and re-encoded in its own format.
Re-encoding drops the other metadata too (GPS position included). Images already within
both limits are sent byte for byte.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from facematch_async.errors import CorruptImageError, ImageTooLargeError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["JPEG_QUALITY", "downscale", "require_pillow"]

JPEG_QUALITY = 90
_SHRINK_STEP = 0.75  # when the bytes still exceed the limit, shrink the sides by this much


def require_pillow() -> None:
    """Fail early, at client construction, when Pillow is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "max_image_side needs Pillow: pip install 'facematch-async[images]'"
        ) from exc


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def downscale(
    field: str, data: bytes, image_format: str, max_side: int, max_bytes: int | None
) -> bytes:
    """Return ``data`` unchanged if within ``max_side`` and ``max_bytes``, else a smaller copy.

    Raises:
        CorruptImageError: the image cannot be decoded (truncated, damaged, a pixel bomb).
        ImageTooLargeError: still over ``max_bytes`` at 64 px on the longer side.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            within_bytes = max_bytes is None or len(data) <= max_bytes
            if max(width, height) <= max_side and within_bytes:
                return data
            if image_format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work for big photos.
                # draft() keeps both sides at least as large as asked, so ask in proportion.
                ratio = max_side / max(width, height)
                opened.draft("RGB", (int(width * ratio) + 1, int(height * ratio) + 1))
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"{field} cannot be decoded: {exc}", field=field) from None
    side = min(max_side, max(image.size))
    while True:
        resized = image.copy()
        resized.thumbnail((side, side), Image.Resampling.LANCZOS)
        encoded = _encode(resized, image_format)
        if max_bytes is None or len(encoded) <= max_bytes:
            return encoded
        if side <= 64:
            raise ImageTooLargeError(
                f"{field} is still over {max_bytes} bytes after downscaling", field=field
            )
        side = max(64, int(side * _SHRINK_STEP))
