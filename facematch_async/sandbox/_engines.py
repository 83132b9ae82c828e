"""Face engines: the protocol the sandbox calls, and the deterministic ``TestEngine``.

Also :func:`make_test_image`, which builds small valid PNG/JPEG files that carry an identity
tag the ``TestEngine`` reads.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

__all__ = ["EngineVerdict", "FaceEngine", "TestEngine", "make_test_image"]

_IDENTITY_TAG = re.compile(rb"fm-identity=([A-Za-z0-9_.-]+)")
_IDENTITY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class EngineVerdict:
    """What an engine concluded about a pair of images.

    Attributes:
        face_found: False when at least one image has no detectable face.
        match: whether both images show the same person (meaningless without a face).
        confidence: similarity on a 0-100 scale.
        distance: the engine's raw distance between the two faces, when it has one (the dlib
            engine's Euclidean embedding distance); ``None`` otherwise.
    """

    face_found: bool
    match: bool
    confidence: float
    distance: float | None = None


class FaceEngine(Protocol):
    """Anything that compares two images.

    ``compare`` is synchronous: the sandbox runs it in a worker thread, so a slow engine
    never blocks the event loop (only the built-in :class:`TestEngine`, a regex search,
    runs inline). It may raise; the sandbox answers 500.
    """

    name: str

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        """Compare two image files (their raw bytes)."""
        ...


class TestEngine:
    """A deterministic engine for tests. It does NOT recognise faces.

    Each image's identity is the ASCII tag ``fm-identity=<name>`` found anywhere in its bytes
    (``<name>`` matches ``[A-Za-z0-9_.-]+``), else the sha256 hex digest of the whole file.

    * identity ``none``: no face found;
    * identity ``crash``: ``compare`` raises :class:`RuntimeError` (the server answers 500);
    * otherwise the images match iff their identities are equal, with confidence 98.0 on a
      match and 12.0 otherwise.

    :func:`make_test_image` builds images carrying such a tag.
    """

    __test__ = False  # not a pytest test class, despite the name
    name: str = "test"
    MATCH_CONFIDENCE: ClassVar[float] = 98.0
    MISMATCH_CONFIDENCE: ClassVar[float] = 12.0

    @staticmethod
    def identity(image: bytes) -> str:
        """The identity the engine reads from ``image`` (tag, else sha256 hex)."""
        found = _IDENTITY_TAG.search(image)
        if found is not None:
            return found.group(1).decode("ascii")
        return hashlib.sha256(image).hexdigest()

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        """Compare two images by their identities (see the class docstring)."""
        identities = (self.identity(image_a), self.identity(image_b))
        if "crash" in identities:
            raise RuntimeError("TestEngine: identity 'crash' requested a failure")
        if "none" in identities:
            return EngineVerdict(face_found=False, match=False, confidence=0.0)
        match = identities[0] == identities[1]
        confidence = self.MATCH_CONFIDENCE if match else self.MISMATCH_CONFIDENCE
        return EngineVerdict(face_found=True, match=match, confidence=confidence)


def make_test_image(
    identity: str | None = None, fmt: Literal["png", "jpeg"] = "png", pad_to: int = 0
) -> bytes:
    """Build a small valid 8x8 image, optionally tagged for :class:`TestEngine`.

    Args:
        identity: written as ``fm-identity=<identity>`` (a PNG ``tEXt`` chunk or a JPEG
            comment); ``None`` leaves the image untagged, so its identity is its sha256.
        fmt: ``"png"`` or ``"jpeg"``.
        pad_to: pad the file with ancillary data (a private PNG chunk, JPEG comments) to at
            least this many bytes, for size-limit tests.

    Raises:
        ValueError: ``identity`` is not made of ``[A-Za-z0-9_.-]``, or ``fmt`` is unknown.
    """
    if identity is not None and _IDENTITY_NAME.fullmatch(identity) is None:
        raise ValueError(f"identity must match [A-Za-z0-9_.-]+, got {identity!r}")
    if fmt == "png":
        return _png(identity, pad_to)
    if fmt == "jpeg":
        return _jpeg(identity, pad_to)
    raise ValueError(f"fmt must be 'png' or 'jpeg', got {fmt!r}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_OVERHEAD = 12  # length, type, CRC


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(identity: str | None, pad_to: int) -> bytes:
    width = height = 8
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\x00" + bytes((200, 120, 80)) * width  # filter type 0, then the pixels
    chunks = [_png_chunk(b"IHDR", header)]
    if identity is not None:
        # The newline ends the tag, so the CRC bytes after it never extend the name.
        chunks.append(_png_chunk(b"tEXt", b"Comment\x00fm-identity=" + identity.encode() + b"\n"))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(row * height)))
    end = _png_chunk(b"IEND", b"")
    size = len(_PNG_SIGNATURE) + sum(map(len, chunks)) + len(end)
    if pad_to > size:
        # "fmPd": ancillary, private, safe-to-copy; decoders skip it.
        padding = max(0, pad_to - size - _PNG_CHUNK_OVERHEAD)
        chunks.append(_png_chunk(b"fmPd", bytes(padding)))
    return _PNG_SIGNATURE + b"".join(chunks) + end


# An 8x8 baseline JFIF JPEG (Pillow, quality 50), checked to decode.
_TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a18161618"
    "3123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c656763ffdb00"
    "43011112121815182f1a1a2f63423842636363636363636363636363636363636363636363636363636363636363"
    "6363636363636363636363636363636363636363ffc00011080008000803012200021101031101ffc4001f000001"
    "0501010101010100000000000000000102030405060708090a0bffc400b510000201030302040305050404000001"
    "7d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25"
    "262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a8384"
    "85868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5"
    "d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000"
    "000102030405060708090a0bffc400b5110002010204040304070504040001027700010203110405213106124151"
    "0761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a43"
    "4445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a929394959697"
    "98999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8"
    "e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f009a8a28af3cf50fffd9"
)
_JPEG_SOI = 2
_JPEG_MAX_COMMENT = 65533  # the 2-byte segment length counts itself
_JPEG_SEGMENT_OVERHEAD = 4  # marker + length


def _jpeg_comment(payload: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload


def _jpeg(identity: str | None, pad_to: int) -> bytes:
    segments: list[bytes] = []
    if identity is not None:
        segments.append(_jpeg_comment(b"fm-identity=" + identity.encode()))
    missing = pad_to - len(_TINY_JPEG) - sum(map(len, segments))
    while missing > 0:
        payload = min(_JPEG_MAX_COMMENT, max(0, missing - _JPEG_SEGMENT_OVERHEAD))
        segments.append(_jpeg_comment(bytes(payload)))
        missing -= payload + _JPEG_SEGMENT_OVERHEAD
    return _TINY_JPEG[:_JPEG_SOI] + b"".join(segments) + _TINY_JPEG[_JPEG_SOI:]
