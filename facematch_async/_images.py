"""Image sources (paths, bytes, binary files), magic-byte checks and size limits.

Both images of a pair are read and checked before any network call, in one worker-thread
hop when either comes from disk: a hop per open/read/close (as aiofiles does) costs more
CPU than the read itself for files of a few hundred kilobytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import weakref
from dataclasses import dataclass, replace
from typing import IO, TypeAlias

import anyio.to_thread

from facematch_async._downscale import downscale
from facematch_async._readers import reader_pool
from facematch_async.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageReadError,
    ImageTooLargeError,
    UnsupportedFileFormatError,
)

__all__ = ["ImageInput", "UploadImage", "detect_format", "load_pair", "start_load"]

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""What ``match`` accepts for each image: a path, the bytes themselves, or a binary file."""

# (magic prefix, format name, upload extension, content type)
_SIGNATURES: tuple[tuple[bytes, str, str, str], ...] = (
    (b"\xff\xd8\xff", "JPEG", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "PNG", "png", "image/png"),
    (b"%PDF-", "PDF", "pdf", "application/pdf"),
)
# A complete file holds these markers (at its end, bar trailing bytes some cameras add);
# a file without one was cut short, by a failed upload or copy, and is refused locally.
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
# Formats we name in the error message so a mislabelled file is easy to spot.
_FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass(frozen=True, slots=True)
class UploadImage:
    """One checked image, ready to be sent as a multipart file part.

    The upload file name is the field name plus the format's extension (``file_a.jpg``):
    local file names can hold customers' names and never leave the machine.
    """

    field: str
    data: bytes
    format: str
    filename: str
    content_type: str


def detect_format(data: bytes) -> str | None:
    """Name the image format by its magic bytes: ``"JPEG"``, ``"PNG"``, ``"PDF"`` or ``None``."""
    for prefix, name, _, _ in _SIGNATURES:
        if data.startswith(prefix):
            return name
    return None


def _describe_foreign(data: bytes) -> str:
    for prefix, name in _FOREIGN_SIGNATURES:
        if data.startswith(prefix):
            return f"{name} data"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP data"
    if data[4:8] == b"ftyp":
        return "HEIC/MP4-family data"
    return "data of an unknown type"


def _read_source(field: str, source: ImageInput, max_bytes: int | None) -> bytes:
    """Read one source fully (blocking); a path's size is checked before its bytes are read."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        try:
            return _read_path(field, source, max_bytes)
        except ImageError:
            raise
        except FileNotFoundError:
            raise ImageReadError(f"{field}: no such file", field=field) from None
        except IsADirectoryError:
            raise ImageReadError(f"{field}: is a directory, not a file", field=field) from None
        except PermissionError:
            raise ImageReadError(f"{field}: permission denied", field=field) from None
        except OSError as exc:
            raise ImageReadError(f"{field}: cannot read ({exc.strerror})", field=field) from None
    read = getattr(source, "read", None)
    if read is None:
        raise TypeError(
            f"{field} must be a path, bytes or a binary file object, not {type(source).__name__}"
        )
    # Bounded so that a stream with no end cannot exhaust memory.
    data = read() if max_bytes is None else read(max_bytes + 1)
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"{field}: the file object must be opened in binary mode ('rb')")
    return bytes(data)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows only
_CHUNK = 64 * 1024


def _read_path(field: str, path: str | os.PathLike[str], max_bytes: int | None) -> bytes:
    """Read a file whole, refusing one over ``max_bytes`` before reading it.

    ``os.read`` of exactly the size ``fstat`` gave: no buffered file object per image, and
    the bytes are not reallocated to fit (asking for the limit would allocate 10 MiB per
    image). A file that grew since, or that has no size (a pipe), is read on in chunks,
    never past ``max_bytes + 1`` bytes, so that ``_check`` refuses it.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        size = info.st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageTooLargeError(
                f"{field} is {size} bytes, over the limit of {max_bytes}", field=field
            )
        data = os.read(fd, size) if size else b""
        if len(data) == size:
            more = os.read(fd, 1)  # b"" at the end of a file that kept its size
            if not more:
                return data
            data += more
        parts, total = [data], len(data)
        limit = None if max_bytes is None else max_bytes + 1
        while limit is None or total < limit:
            chunk = os.read(fd, _CHUNK if limit is None else min(_CHUNK, limit - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _check(field: str, data: bytes, max_bytes: int | None, allow_pdf: bool) -> UploadImage:
    if not data:
        raise EmptyImageError(f"{field} is empty", field=field)
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{field} is {len(data)} bytes, over the limit of {max_bytes}", field=field
        )
    for prefix, name, extension, content_type in _SIGNATURES:
        if data.startswith(prefix) and (name != "PDF" or allow_pdf):
            end = _END_MARKERS.get(name)
            if end is not None and data.rfind(end) == -1:
                raise CorruptImageError(
                    f"{field} is a truncated {name}: it has no end marker", field=field
                )
            return UploadImage(field, data, name, f"{field}.{extension}", content_type)
    accepted = "JPEG, PNG or PDF" if allow_pdf else "JPEG or PNG"
    found = "PDF data (v2 only)" if detect_format(data) == "PDF" else _describe_foreign(data)
    raise UnsupportedFileFormatError(
        f"{field} is {found}, not {accepted}", field=field, sub_code="UNSUPPORTED_FILE_FORMAT"
    )


MAX_SOURCE_BYTES = 64 * 1024 * 1024
"""The most bytes read from one source when downscaling is on (then ``max_bytes`` applies
to what is sent, after downscaling)."""


def _prepare(
    field: str,
    source: ImageInput,
    max_bytes: int | None,
    allow_pdf: bool,
    max_side: int | None,
) -> UploadImage:
    """Read, check and (when ``max_side`` is set) downscale one image."""
    read_limit = max_bytes
    if max_side is not None and max_bytes is not None:
        read_limit = max(max_bytes, MAX_SOURCE_BYTES)
    image = _check(field, _read_source(field, source, read_limit), read_limit, allow_pdf)
    if max_side is None or image.format == "PDF":
        return image
    data = downscale(field, image.data, image.format, max_side, max_bytes)
    return image if data is image.data else replace(image, data=data)


def _load_pair_blocking(
    file_a: ImageInput,
    file_b: ImageInput,
    max_bytes: int | None,
    allow_pdf: bool,
    max_side: int | None,
) -> tuple[UploadImage, UploadImage]:
    return (
        _prepare("file_a", file_a, max_bytes, allow_pdf, max_side),
        _prepare("file_b", file_b, max_bytes, allow_pdf, max_side),
    )


_BATCH_LIMIT = 16
"""The most pairs one worker-thread hop reads, so a slow disk delays few calls at once."""

_Job: TypeAlias = tuple["asyncio.Future[tuple[UploadImage, UploadImage]]", ImageInput, ImageInput]
_Batch: TypeAlias = tuple[list[_Job], int | None, bool]
# Weak keys: a loop closed before its dispatch ran is not kept alive by its pending batch.
_open_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Batch]] = (
    weakref.WeakKeyDictionary()
)


def _read_batch(loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
    """In a worker thread: read and check every pair, then hand all results back at once."""
    jobs, max_bytes, allow_pdf = batch
    results: list[tuple[asyncio.Future[tuple[UploadImage, UploadImage]], object, bool]] = []
    for future, file_a, file_b in jobs:
        try:
            pair = _load_pair_blocking(file_a, file_b, max_bytes, allow_pdf, None)
        except BaseException as error:  # delivered to the caller, as a direct call would raise
            results.append((future, error, False))
        else:
            results.append((future, pair, True))
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
        loop.call_soon_threadsafe(_deliver, results)


def _deliver(
    results: list[tuple[asyncio.Future[tuple[UploadImage, UploadImage]], object, bool]],
) -> None:
    for future, value, ok in results:
        if future.done():  # the call was cancelled while its images were being read
            continue
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]


def _dispatch(loop: asyncio.AbstractEventLoop) -> None:
    # Straight to the pool, not loop.run_in_executor: _read_batch wakes the loop itself,
    # so an asyncio future (and the second wake-up it would cost) is not needed.
    pool = reader_pool()
    for batch in _open_batches.pop(loop, ()):
        pool.submit(_read_batch, loop, batch)


def start_load(
    file_a: ImageInput, file_b: ImageInput, *, max_bytes: int | None, allow_pdf: bool = False
) -> asyncio.Future[tuple[UploadImage, UploadImage]]:
    """Queue both images of a pair for reading and checking; the future holds the result.

    Pairs queued in the same turn of the event loop are read one after the other by one
    worker thread (at most ``_BATCH_LIMIT`` pairs per hop), which then wakes the loop once
    for all of them: waking a thread and being woken back costs more CPU than reading a few
    hundred kilobytes from the page cache. Cancelling the future drops the pair's bytes.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[UploadImage, UploadImage]] = loop.create_future()
    batches = _open_batches.get(loop)
    if batches is None:
        batches = _open_batches[loop] = []
        loop.call_soon(_dispatch, loop)
    batch = batches[-1] if batches else None
    if batch is None or len(batch[0]) >= _BATCH_LIMIT or batch[1:] != (max_bytes, allow_pdf):
        batch = ([], max_bytes, allow_pdf)
        batches.append(batch)
    batch[0].append((future, file_a, file_b))
    return future


async def load_pair(
    file_a: ImageInput,
    file_b: ImageInput,
    *,
    max_bytes: int | None,
    allow_pdf: bool = False,
    max_side: int | None = None,
) -> tuple[UploadImage, UploadImage]:
    """Read and check both images; disk reads and any downscaling share one thread hop.

    Calls that start in the same turn of the event loop share their hop too (see
    :func:`start_load`). A call cancelled while its images are being read is cancelled at
    once; the worker finishes the read and the bytes are dropped.

    Raises:
        ImageError: a subclass naming the image (``field``) and what is wrong with it.
        TypeError: a source of a type ``match`` does not take.
    """
    in_memory = (bytes, bytearray, memoryview)
    if max_side is None and isinstance(file_a, in_memory) and isinstance(file_b, in_memory):
        return _load_pair_blocking(file_a, file_b, max_bytes, allow_pdf, None)
    if max_side is not None:  # downscaling is CPU work: one hop per pair, in parallel
        return await anyio.to_thread.run_sync(
            _load_pair_blocking, file_a, file_b, max_bytes, allow_pdf, max_side
        )
    return await start_load(file_a, file_b, max_bytes=max_bytes, allow_pdf=allow_pdf)
