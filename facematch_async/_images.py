"""Image sources (paths, bytes, binary files, :class:`ImageLocation`), magic-byte checks and
size limits.

Both images of a pair are read and checked before any network call, in one worker-thread
hop when either comes from disk: a hop per open/read/close (as aiofiles does) costs more
CPU than the read itself for files of a few hundred kilobytes. A pair with an image in a
store (an :class:`ImageLocation` URL) is read on the event loop instead, through the store's
async API (``_storage``), under the same limits, checks and read deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import threading
import time
import weakref
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import IO, NamedTuple, TypeAlias

import anyio.to_thread

from facematch_async._downscale import downscale
from facematch_async._readers import reader_pool
from facematch_async._storage import (
    ImageLocation,
    Roots,
    check_opened,
    display,
    is_url,
    outside,
    path_inside,
    probe_object,
    read_object,
)
from facematch_async.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageReadError,
    ImageTooLargeError,
    ImageUnavailableError,
    UnsupportedFileFormatError,
)

__all__ = [
    "DEFAULT_IMAGE_READ_TIMEOUT",
    "DEFAULT_MAX_IMAGE_BYTES",
    "ImageInput",
    "ImageLocation",
    "PreparedMatch",
    "UploadImage",
    "check_pair",
    "detect_format",
    "load_pair",
    "start_load",
]

ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | ImageLocation
)
"""What ``match`` accepts for each image: a path, the bytes themselves, a binary file, or an
:class:`ImageLocation` (a URL, or a path confined to a root)."""

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
    data: bytes = dataclass_field(repr=False)  # a repr (a log line) never holds the photo
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
    roots: Roots | None = None
    if isinstance(source, ImageLocation):
        assert not source.is_url  # read by _load_remote, on the loop
        roots = source.roots
        source = source.location
    elif isinstance(source, str) and is_url(source):
        raise ImageReadError(
            f"{field}: {display(source)!r} is a URL; the client reads a URL only given as "
            "ImageLocation(url): a plain string is a local path",
            field=field,
        )
    if isinstance(source, str | os.PathLike):
        try:
            return _read_path(field, source, max_bytes, roots)
        except ImageError:
            raise
        except ValueError:  # os.open refuses a path holding a NUL byte
            raise ImageReadError(f"{field}: the path holds a NUL byte", field=field) from None
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


# O_NONBLOCK: opening a FIFO that has no writer returns at once instead of waiting for one
# (it is then refused by its fstat); reads of regular files ignore the flag. O_NOCTTY: a
# terminal device named as an image must not become our controlling terminal.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows only
)
_CHUNK = 64 * 1024
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _open_confined(field: str, path: str | os.PathLike[str], roots: Roots | None) -> int:
    """Open ``path``; with ``roots``, only a file inside them, judged on the file opened.

    A path that resolves outside is refused before the open (opening some devices acts);
    the opened file is checked again (a symlink swapped in meanwhile is caught); and an
    open that fails outside the roots says "outside", never whether the file exists.
    """
    if roots is None:
        return os.open(path, _OPEN_FLAGS)
    if not path_inside(path, roots):
        raise outside(field)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        if not path_inside(path, roots):  # swapped out meanwhile: hide what is there
            raise outside(field) from None
        raise
    try:
        check_opened(fd, path, roots, field)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_path(
    field: str, path: str | os.PathLike[str], max_bytes: int | None, roots: Roots | None = None
) -> bytes:
    """Read a regular file whole, refusing anything else, or one over ``max_bytes``, before
    reading a byte; with ``roots``, only a file inside them (:func:`_open_confined`).

    Only regular files: a FIFO or a socket can block a read for ever, and a device such as
    ``/dev/zero`` never ends. ``os.read`` of exactly the size ``fstat`` gave: no buffered
    file object per image, and the bytes are not reallocated to fit (asking for the limit
    would allocate 10 MiB per image). A file that grew since is read on in chunks, never
    past ``max_bytes + 1`` bytes, so that ``_check`` refuses it.
    """
    fd = _open_confined(field, path, roots)
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            kind = next(
                (name for test, name in _NOT_REGULAR if test(mode)), "an unusual kind of file"
            )
            raise ImageReadError(f"{field}: is {kind}, not a regular file", field=field)
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


# After a scan's header, its entropy-coded data runs to the next marker: 0xFF followed by
# anything but 0x00 (a stuffed 0xFF) or a restart marker (0xD0-0xD7).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers with no length after them


def _jpeg_complete(data: bytes) -> bool | None:
    """Whether a JPEG holds its main image's end marker, found by walking its segments:
    an end marker inside a segment (an EXIF thumbnail's, in a camera file cut short) is
    skipped with its segment, so it cannot pass for the image's own. ``None`` when the
    segments do not parse (an odd encoder): the caller falls back to any end marker."""
    pos, size = 2, len(data)
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            return False
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        pos += 2 + length
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            found = _NEXT_MARKER.search(data, min(pos, size))
            if found is None:
                return False
            pos = found.start()
    return False


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
            complete = _jpeg_complete(data) if name == "JPEG" else None
            if complete is False or (complete is None and end and data.rfind(end) == -1):
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


def _prepare(field: str, source: ImageInput, max_bytes: int | None, allow_pdf: bool) -> UploadImage:
    """Read and check one image: what ``match`` and the batch dry run both refuse."""
    return _check(field, _read_source(field, source, max_bytes), max_bytes, allow_pdf)


class PreparedMatch(NamedTuple):
    """Both images of a match, read and checked, ready to send (any number of times):
    what :meth:`FaceMatchClient.prepare` returns and :meth:`FaceMatchClient.send` takes."""

    file_a: UploadImage
    file_b: UploadImage


def _load_pair_blocking(
    file_a: ImageInput, file_b: ImageInput, max_bytes: int | None, allow_pdf: bool
) -> PreparedMatch:
    return PreparedMatch(
        _prepare("file_a", file_a, max_bytes, allow_pdf),
        _prepare("file_b", file_b, max_bytes, allow_pdf),
    )


DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
"""Images larger than this are refused locally, by the client and the batch dry run alike."""

DEFAULT_IMAGE_READ_TIMEOUT = 30.0
"""Seconds a pair's images may take to read before the read is given up as stuck."""

_BATCH_LIMIT = 16
"""The most pairs one worker-thread hop reads, so a slow disk delays few calls at once."""

_STALL = 0.5
"""Seconds a hop may spend on one pair before the pairs queued behind it in the hop are
handed to another reader thread: long enough that a busy machine does not start threads for
nothing (each costs page faults), short enough that a stuck file delays only its own pair."""

_PairFuture: TypeAlias = "asyncio.Future[PreparedMatch]"
_Job: TypeAlias = tuple[_PairFuture, ImageInput, ImageInput]
_Result: TypeAlias = tuple[_PairFuture, object, bool]


class _Hop:
    """Pairs read one after the other by one reader thread, then handed back in one wake-up.

    The reader thread and the event loop share it under ``lock``: the thread claims pairs
    one at a time (``next``), so that the loop can take the unclaimed rest away from a hop
    stuck on one file and give it to another thread. Everything else is the loop's alone.
    """

    __slots__ = (
        "allow_pdf",
        "current",
        "done",
        "field",
        "jobs",
        "lock",
        "loop",
        "max_bytes",
        "moved",
        "next",
        "queued_at",
        "started",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        jobs: list[_Job],
        max_bytes: int | None,
        allow_pdf: bool,
        timeout: float | None,
        queued_at: float,
    ) -> None:
        self.loop = loop
        self.jobs = jobs
        self.max_bytes = max_bytes
        self.allow_pdf = allow_pdf
        self.timeout = timeout
        self.queued_at = queued_at  # time.monotonic() when its first pair was queued
        self.moved = False  # moved out of the queue once already, never begun
        self.lock = threading.Lock()
        self.next = 0  # the first pair no reader has claimed
        self.current: _PairFuture | None = None  # the pair being read
        self.field = "file_a"  # which of its images
        self.started = 0.0  # time.monotonic() when its read began
        self.done: list[_Result] = []  # read, not yet handed back
        self.timer: asyncio.TimerHandle | None = None

    def read(self) -> None:
        """In a reader thread: read and check each pair, then wake the loop once."""
        jobs = self.jobs
        while True:
            with self.lock:
                index = self.next
                if index >= len(jobs):
                    break
                self.next = index + 1
                future, file_a, file_b = jobs[index]
                self.current, self.field, self.started = future, "file_a", time.monotonic()
            try:
                image_a = _prepare("file_a", file_a, self.max_bytes, self.allow_pdf)
                self.field = "file_b"
                image_b = _prepare("file_b", file_b, self.max_bytes, self.allow_pdf)
            except BaseException as error:  # delivered to the caller, as a direct call would raise
                result: _Result = (future, error, False)
            else:
                result = (future, (image_a, image_b), True)
            with self.lock:
                self.current = None
                self.done.append(result)
        with self.lock:
            if not self.done:  # all handed back by ``watch`` already: no wake-up needed
                return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:
        """On the loop: hand back what was read; stop watching once nothing is left."""
        with self.lock:
            done, self.done = self.done, []
            finished = self.current is None and self.next >= len(self.jobs)
        if finished and self.timer is not None:
            self.timer.cancel()
            self.timer = None
        _hand_back(done)

    def submit(self) -> None:
        """Queue the hop on the reader pool and start watching it (on the loop)."""
        delay = _STALL if self.timeout is None else min(_STALL, self.timeout)
        self.timer = self.loop.call_later(delay, self.watch)
        reader_pool().submit(self.read)

    def watch(self) -> None:
        """On the loop, when the hop has taken long: hand back what is read, move the pairs
        not yet begun to a new hop (the pool starts a thread for it if every one is busy),
        and fail a read past its deadline."""
        self.timer = None
        with self.lock:
            done, self.done = self.done, []
            begun = self.next > 0
            # A hop still queued is moved once, to make the pool grow past busy readers;
            # after that moving it again would only fill the queue with empty hops.
            movable = begun or not self.moved
            rest = self.jobs[self.next :] if movable else []
            if movable:
                self.next = len(self.jobs)  # the reader claims no more of them
            current, field, started = self.current, self.field, self.started
        _hand_back(done)
        if rest:
            hop = _Hop(
                self.loop, rest, self.max_bytes, self.allow_pdf, self.timeout, self.queued_at
            )
            hop.moved = not begun
            hop.submit()
        timeout = self.timeout
        if timeout is None:
            return  # no deadline: wait for the read, however long
        now = time.monotonic()
        if not movable:
            # Queued past the stall time, even after a move: every reader is stuck on
            # another file. Its pairs wait ``timeout`` for one, then fail.
            left = self.queued_at + timeout - now
            if left > 0:
                self.timer = self.loop.call_later(left, self.watch)
                return
            with self.lock:
                rest, self.next = self.jobs[self.next :], len(self.jobs)
            message = f"file_a: not read within {timeout:g} s: every image reader is stuck"
            _hand_back([(f, ImageReadError(message, field="file_a"), False) for f, _, _ in rest])
            return
        if current is None or current.done():
            return  # read meanwhile (its result is on its way to ``deliver``), or cancelled
        left = started + timeout - now
        if left > 0:
            self.timer = self.loop.call_later(left, self.watch)
            return
        current.set_exception(
            ImageReadError(f"{field}: read did not finish within {timeout:g} s", field=field)
        )


def _hand_back(results: list[_Result]) -> None:
    """On the loop: settle each future that is still waiting (a cancelled call is not)."""
    for future, value, ok in results:
        if future.done():  # cancelled while being read, or given up at its deadline
            continue
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]


# Weak keys: a loop closed before its dispatch ran is not kept alive by its pending hops.
_open_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Hop]] = (
    weakref.WeakKeyDictionary()
)


def _dispatch(loop: asyncio.AbstractEventLoop) -> None:
    # Straight to the pool, not loop.run_in_executor: the hop wakes the loop itself, so an
    # asyncio future (and the second wake-up it would cost) is not needed.
    for hop in _open_batches.pop(loop, ()):
        hop.submit()


def start_load(
    file_a: ImageInput,
    file_b: ImageInput,
    *,
    max_bytes: int | None,
    allow_pdf: bool = False,
    read_timeout: float | None = DEFAULT_IMAGE_READ_TIMEOUT,
) -> asyncio.Future[PreparedMatch]:
    """Queue both images of a pair for reading and checking; the future holds the result.

    Pairs queued in the same turn of the event loop are read one after the other by one
    worker thread (at most ``_BATCH_LIMIT`` pairs per hop), which then wakes the loop once
    for all of them: waking a thread and being woken back costs more CPU than reading a few
    hundred kilobytes from the page cache. A hop that spends over ``_STALL`` seconds on one
    pair gives the pairs behind it to another thread; a pair whose read has not finished
    ``read_timeout`` seconds after it began (or has found no free reader in that time)
    fails with :class:`ImageReadError`, its worker thread left to finish or hang on its
    own. ``None``: no deadline. Cancelling the future drops the pair's bytes.

    A pair with an image in a store (an :class:`ImageLocation` URL) is read on the loop
    instead (:func:`_load_remote`), within the same ``read_timeout``.
    """
    if _remote(file_a) or _remote(file_b):
        return asyncio.ensure_future(
            _load_remote(file_a, file_b, max_bytes, allow_pdf, read_timeout)
        )
    loop = asyncio.get_running_loop()
    future: asyncio.Future[PreparedMatch] = loop.create_future()
    hops = _open_batches.get(loop)
    if hops is None:
        hops = _open_batches[loop] = []
        loop.call_soon(_dispatch, loop)
    hop = hops[-1] if hops else None
    if (
        hop is None
        or len(hop.jobs) >= _BATCH_LIMIT
        or hop.max_bytes != max_bytes
        or hop.allow_pdf != allow_pdf
        or hop.timeout != read_timeout
    ):
        hop = _Hop(loop, [], max_bytes, allow_pdf, read_timeout, time.monotonic())
        hops.append(hop)
    hop.jobs.append((future, file_a, file_b))
    return future


def _remote(source: ImageInput) -> bool:
    return isinstance(source, ImageLocation) and source.is_url


async def _load_one(
    field: str, source: ImageInput, max_bytes: int | None, allow_pdf: bool
) -> UploadImage:
    """One image of a pair that has one in a store: a URL through the store's async API
    (no thread), a local file in a worker thread, bytes at once; checked alike."""
    if isinstance(source, ImageLocation) and source.is_url:
        return _check(field, await read_object(source, field, max_bytes), max_bytes, allow_pdf)
    if isinstance(source, bytes | bytearray | memoryview):
        return _prepare(field, source, max_bytes, allow_pdf)
    return await anyio.to_thread.run_sync(
        _prepare, field, source, max_bytes, allow_pdf, abandon_on_cancel=True
    )


async def _load_remote(
    file_a: ImageInput,
    file_b: ImageInput,
    max_bytes: int | None,
    allow_pdf: bool,
    read_timeout: float | None,
) -> PreparedMatch:
    """Both images of a pair with one in a store, one after the other (an error names the
    first bad image, as for local files), the pair within ``read_timeout``: a store that
    outlasts it is :class:`ImageUnavailableError` (retryable), not a stuck thread."""
    field = "file_a"
    try:
        async with asyncio.timeout(read_timeout):
            image_a = await _load_one(field, file_a, max_bytes, allow_pdf)
            field = "file_b"
            image_b = await _load_one(field, file_b, max_bytes, allow_pdf)
    except TimeoutError:
        message = f"{field}: read did not finish within {read_timeout:g} s"
        raise ImageUnavailableError(message, field=field) from None
    return PreparedMatch(image_a, image_b)


async def check_pair(
    file_a: ImageInput,
    file_b: ImageInput,
    *,
    max_bytes: int | None,
    allow_pdf: bool = False,
    read_timeout: float | None = DEFAULT_IMAGE_READ_TIMEOUT,
) -> None:
    """What the batch dry run checks of a pair, raising what a run would raise.

    Local images are read and checked exactly as :func:`load_pair` reads them (so the dry
    run and the run cannot disagree); an image in a store is only asked about (inside its
    root, exists, not a folder, not empty, within ``max_bytes``), never downloaded: its
    format is judged when the run reads it.

    Raises:
        ImageError: as :func:`load_pair`.
    """
    if not (_remote(file_a) or _remote(file_b)):
        await load_pair(
            file_a, file_b, max_bytes=max_bytes, allow_pdf=allow_pdf, read_timeout=read_timeout
        )
        return
    field = "file_a"
    try:
        async with asyncio.timeout(read_timeout):
            for field, source in (("file_a", file_a), ("file_b", file_b)):
                if isinstance(source, ImageLocation) and source.is_url:
                    await probe_object(source, field, max_bytes)
                else:
                    await _load_one(field, source, max_bytes, allow_pdf)
    except TimeoutError:
        message = f"{field}: read did not finish within {read_timeout:g} s"
        raise ImageUnavailableError(message, field=field) from None


def _downscale_pair(images: PreparedMatch, max_bytes: int | None, max_side: int) -> PreparedMatch:
    return PreparedMatch(
        _shrink(images[0], max_bytes, max_side),
        _shrink(images[1], max_bytes, max_side),
    )


def _shrink(image: UploadImage, max_bytes: int | None, max_side: int) -> UploadImage:
    if image.format == "PDF":  # a document, not a photo: sent as it is
        return image
    data = downscale(image.field, image.data, image.format, max_side, max_bytes)
    return image if data is image.data else replace(image, data=data)


async def load_pair(
    file_a: ImageInput,
    file_b: ImageInput,
    *,
    max_bytes: int | None,
    allow_pdf: bool = False,
    max_side: int | None = None,
    read_timeout: float | None = DEFAULT_IMAGE_READ_TIMEOUT,
) -> PreparedMatch:
    """Read and check both images; disk reads share one thread hop.

    Calls that start in the same turn of the event loop share their hop too (see
    :func:`start_load`, which also explains ``read_timeout``). A call cancelled while its
    images are being read is cancelled at once; the worker finishes the read and the bytes
    are dropped. With ``max_side`` the images are then downscaled in a thread of their own
    (CPU work: pairs in parallel).

    Raises:
        ImageError: a subclass naming the image (``field``) and what is wrong with it;
            ``ImageReadError`` for a read past ``read_timeout``.
        TypeError: a source of a type ``match`` does not take.
    """
    in_memory = (bytes, bytearray, memoryview)
    if max_side is None and isinstance(file_a, in_memory) and isinstance(file_b, in_memory):
        return _load_pair_blocking(file_a, file_b, max_bytes, allow_pdf)
    if max_side is None:
        return await start_load(
            file_a, file_b, max_bytes=max_bytes, allow_pdf=allow_pdf, read_timeout=read_timeout
        )
    read_limit = max_bytes
    if max_bytes is not None:  # max_bytes applies to what is sent, after downscaling
        read_limit = max(max_bytes, MAX_SOURCE_BYTES)
    images = await start_load(
        file_a, file_b, max_bytes=read_limit, allow_pdf=allow_pdf, read_timeout=read_timeout
    )
    return await anyio.to_thread.run_sync(_downscale_pair, images, max_bytes, max_side)
