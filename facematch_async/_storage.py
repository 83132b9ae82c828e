"""Where image bytes come from: local files, confined at the moment of the open, and fsspec
URLs (``s3://``, ``gs://``, ``az://``, ``https://``), read with each filesystem's async API.

Confinement. A manifest may be untrusted input, so every image it names must lie inside a
*root*: a local folder or a URL prefix. For a URL the check is on the very string that is
opened (dot segments resolved, one spelling per scheme); object stores have no symlinks.
For a local file the check is made on what was opened: the kernel's path of the open file
descriptor (``/proc/self/fd``, ``F_GETPATH`` on macOS), so a symlink swapped in between a
check and the open cannot lead outside. A refused image says only that it is outside the
root, never whether the file there exists.

Remote reads run on fsspec's own event-loop thread (one for the process, whatever the number
of reads; s3fs, gcsfs, adlfs and HTTP are asyncio-native), so no thread is taken per read,
and sessions live as long as the process: no loop of ours has to close them. Credentials
come from each library's standard chain (environment, profile, instance or workload
identity); none is ever passed, logged or put in an error. Errors never quote the store's
message or the URL (a presigned URL's query is a credential).
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import IO, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread

from facematch_async.errors import (
    EmptyImageError,
    ImageError,
    ImageReadError,
    ImageTooLargeError,
    ImageUnavailableError,
)

__all__ = [
    "MAX_OBJECTS_IN_FLIGHT",
    "ImageLocation",
    "Roots",
    "display",
    "is_url",
    "join",
    "list_folder",
    "normalize_roots",
    "open_manifest",
    "outside",
    "prefix_of",
    "probe_object",
    "read_object",
]

RootArg: TypeAlias = "str | os.PathLike[str]"

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The extra that installs each scheme's filesystem.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}
_EXTRAS.update(abfss="azure", adl="azure")
# One spelling per store, so that ``s3a://b/`` and ``s3://b/`` are the same root.
_CANONICAL = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}
_HTTP = ("http", "https")
# An encoded dot, slash or backslash: a web server may decode it into ``..`` after our check.
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)

MAX_OBJECTS_IN_FLIGHT = 16
"""The most objects one event loop fetches from stores at once (more wait their turn)."""

MANIFEST_BLOCK_BYTES = 8 * 1024 * 1024
"""A bucket manifest is read in blocks this large: one request per ~80,000 rows."""


def url_scheme(value: object) -> str | None:
    """The scheme of an fsspec URL (``"s3"``); ``None`` for a local path or ``file://``."""
    if not isinstance(value, str):
        return None
    match = _URL.match(value)
    if match is None:
        return None
    scheme = match.group(1).lower()
    return None if scheme == "file" else scheme


def is_url(value: object) -> bool:
    """Whether ``value`` is a URL read through fsspec (``s3://...``), not a local path."""
    return url_scheme(value) is not None


def _local(value: str | os.PathLike[str]) -> str:
    """A local path; ``file:///x`` as ``/x``."""
    text = os.fspath(value)
    return text[7:] if text[:7].lower() == "file://" else text


def _resolve_dots(path: str) -> str | None:
    """``path`` (starting with ``/``) with ``.`` and ``..`` segments resolved; ``None`` for one
    above the top."""
    parts: list[str] = []
    segments = path.split("/")[1:]
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(segment)
    trailing = "/" if segments and segments[-1] in (".", "..") and parts else ""
    return "/" + "/".join(parts) + trailing


def normalize_url(url: str) -> str | None:
    """The one string ``url`` is checked and opened as; ``None`` for a URL that cannot be
    confined (a ``..`` above its bucket or host, an encoded dot or slash, a NUL byte)."""
    scheme = url_scheme(url)
    if scheme is None or "\x00" in url:
        return None
    if scheme in _HTTP:
        parts = urlsplit(url)
        if _ENCODED_SEPARATOR.search(parts.path) or "\\" in parts.path:
            return None
        path = _resolve_dots(parts.path or "/")
        if path is None or not parts.hostname:
            return None
        # The fragment is never sent; the host is case-insensitive.
        return urlunsplit((scheme, parts.netloc.lower(), path, parts.query, ""))
    bucket, _, key = url[len(scheme) + 3 :].partition("/")
    path = _resolve_dots("/" + key)
    if not bucket or path is None:
        return None
    return f"{_CANONICAL.get(scheme, scheme)}://{bucket}{path}"


def display(value: str) -> str:
    """``value`` fit for a message or a results file: a URL without its query or user info
    (a presigned URL's signature, a password); a path as it is."""
    if not is_url(value):
        return value
    parts = urlsplit(value)
    host = parts.netloc.rpartition("@")[2]  # no user info: it may hold a password
    return f"{parts.scheme}://{host}{parts.path}"


class Roots(tuple[str, ...]):
    """Normalized roots: real local folders (no trailing separator) and URL prefixes (ending
    in ``/``). Made by :func:`normalize_roots`."""

    __slots__ = ()


def normalize_roots(root: RootArg | Sequence[RootArg] | Roots) -> Roots:
    """``root`` (one folder or URL prefix, or several) as :class:`Roots`.

    Raises:
        ValueError: a URL root that cannot be confined (``s3://`` with no bucket, ``..``).
    """
    if isinstance(root, Roots):
        return root
    items = [root] if isinstance(root, str | os.PathLike) else list(root)
    normalized = []
    for item in items:
        text = os.fspath(item)
        if is_url(text):
            url = normalize_url(text)
            if url is None:
                raise ValueError(f"root {display(text)!r} is not a URL prefix that can confine")
            normalized.append(url if url.endswith("/") else url + "/")
        else:
            normalized.append(os.path.realpath(_local(text)))
    return Roots(normalized)


def _inside_folder(real: str, root: str) -> bool:
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:  # one relative, or on different drives (Windows)
        return False


def url_inside(url: str, roots: Roots) -> bool:
    """Whether a normalized URL lies under one of ``roots``' URL prefixes."""
    return any(url.startswith(root) for root in roots if is_url(root))


def path_inside(path: str | os.PathLike[str], roots: Roots) -> bool:
    """Whether a local path resolves (symlinks followed, as they are now) inside a root: the
    early check. The one that holds is made on the opened file (:func:`check_opened`)."""
    try:
        real = os.path.realpath(path)
    except (ValueError, OSError):  # a NUL byte; a link loop on some Pythons
        return True  # the open fails, and says why, without our help
    return any(_inside_folder(real, root) for root in roots if not is_url(root))


def outside(field: str) -> ImageReadError:
    """The error of an image outside its roots: final, and silent on whether it exists."""
    return ImageReadError(
        f"{field}: outside the root (the manifest's folder, or --root)",
        field=field,
        sub_code="PATH_OUTSIDE_ROOT",
    )


def _opened_path(fd: int) -> str | None:
    """The kernel's path of an open file: what was opened, whatever the path says now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    if sys.platform == "darwin":
        import fcntl

        get_path = getattr(fcntl, "F_GETPATH", None)
        if get_path is not None:
            name = fcntl.fcntl(fd, get_path, b"\0" * 1024)
            return os.fsdecode(name.rstrip(b"\0"))
    return None


def check_opened(fd: int, path: str | os.PathLike[str], roots: Roots, field: str) -> None:
    """Refuse an opened file that lies outside ``roots``.

    The path of the descriptor is what the kernel opened: no symlink swapped in before the
    open, or after it, changes it. Without ``/proc`` or ``F_GETPATH`` the real path now is
    compared with the opened file's identity (device and inode) instead.
    """
    real = _opened_path(fd)
    if real is not None:
        real = real.removesuffix(" (deleted)")
        if any(_inside_folder(real, root) for root in roots if not is_url(root)):
            return
        raise outside(field)
    resolved = os.path.realpath(path)
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(resolved, follow_symlinks=False))
    except OSError:
        same = False
    if not (same and any(_inside_folder(resolved, r) for r in roots if not is_url(r))):
        raise outside(field)


class ImageLocation:
    """An image named by a local path or a URL, read only if it lies inside ``root``.

    The client reads a URL only when it comes as an ``ImageLocation``: a plain string is
    always a local path. A service that forwards a string it was sent can then never be
    made to fetch a URL with its own credentials (server-side request forgery), while a
    batch or a caller that means it writes ``ImageLocation("s3://kyc/selfie.jpg")``.

    ```python
    image = ImageLocation("s3://kyc/selfies/p1.jpg", root="s3://kyc/")
    result = await client.match(image, ImageLocation("s3://kyc/ids/p1.png", root="s3://kyc/"))
    ```

    Args:
        location: A local path, or an fsspec URL: ``s3://bucket/key.jpg`` (extra ``s3``),
            ``gs://`` (``gcs``), ``az://container/blob`` (``azure``), ``https://``.
        root: The folders or URL prefixes the image must lie inside, checked when it is
            opened; ``None`` (the default): anywhere.

    Raises:
        ValueError: a URL root that cannot confine anything (no bucket, ``..`` above it).
    """

    __slots__ = ("location", "roots", "url")

    def __init__(
        self,
        location: str | os.PathLike[str],
        root: RootArg | Sequence[RootArg] | Roots | None = None,
    ) -> None:
        text = os.fspath(location)
        self.location: str = text if is_url(text) else _local(text)
        self.roots: Roots | None = None if root is None else normalize_roots(root)
        # The string opened: normalized (None when it cannot be confined); paths as given.
        self.url: str | None = normalize_url(text) if is_url(text) else None

    @property
    def is_url(self) -> bool:
        """Whether the image is read from a store (a URL), not a local file."""
        return is_url(self.location)

    def __repr__(self) -> str:
        root = "" if self.roots is None else f", root={list(self.roots)!r}"
        return f"ImageLocation({display(self.location)!r}{root})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageLocation):
            return NotImplemented
        return (self.location, self.roots) == (other.location, other.roots)

    def __hash__(self) -> int:
        return hash((self.location, self.roots))


def prefix_of(url: str) -> str:
    """The prefix (``scheme://bucket/folder/``) an object's URL lies in, without a query."""
    path = urlsplit(url).path if url_scheme(url) in _HTTP else url.partition("://")[2]
    start = url[: url.index("://") + 3]
    if url_scheme(url) in _HTTP:
        start += urlsplit(url).netloc
    return start + path.rpartition("/")[0] + "/"


def join(base: str, value: str) -> str:
    """``value`` from a manifest at ``base`` (a folder or URL prefix): a URL as it is, else
    joined to the base (an absolute path replaces a folder, or a bucket's key path)."""
    if is_url(value) or not is_url(base):
        return value if is_url(value) else os.path.join(base, _local(value))
    if value.startswith("/"):
        scheme, _, rest = base.partition("://")
        return f"{scheme}://{rest.partition('/')[0]}{value}"
    return base.rstrip("/") + "/" + value


# --- Filesystems -----------------------------------------------------------------------------

_filesystems: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_filesystems_lock = threading.Lock()
# The variables the stores' libraries read their settings and credentials from: a
# filesystem is made again when they change (a rotated key, another endpoint).
_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCE_", "GCSFS_", "STORAGE_EMULATOR_HOST")


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kv for kv in os.environ.items() if kv[0].startswith(_ENV_PREFIXES)))


def _filesystem(scheme: str, field: str | None) -> Any:
    """The process's fsspec filesystem for ``scheme``, made on first use.

    Raises:
        ImageUnavailableError: its library is not installed (for an image: a resume after
            installing the extra reads it).
        ImageReadError: fsspec knows no such scheme.
        ValueError: the same two, for a manifest (``field`` is ``None``).
    """
    key = (scheme, _environment())
    with _filesystems_lock:
        fs = _filesystems.get(key)
        if fs is not None:
            return fs
        try:
            import fsspec
        except ImportError:
            fs = None
            problem = _missing(scheme)
        else:
            # No listings cache: a listing is read once, and info() must ask the store.
            options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
            if scheme in _HTTP:
                options["allow_redirects"] = False  # a redirect would leave the root
            try:
                fs = fsspec.filesystem(scheme, **options)
            except ImportError:
                fs, problem = None, _missing(scheme)
            except ValueError:
                fs, problem = None, f"{scheme}:// is not a scheme fsspec can read"
        if fs is not None:
            _filesystems[key] = fs
            return fs
    if field is None:
        raise ValueError(problem)
    if scheme in _EXTRAS or scheme in _HTTP:
        raise ImageUnavailableError(f"{field}: {problem}", field=field)
    raise ImageReadError(f"{field}: {problem}", field=field)


def _missing(scheme: str) -> str:
    extra = _EXTRAS.get(scheme)
    if extra is None:
        return f"{scheme}:// URLs need fsspec: pip install fsspec"
    return f"{scheme}:// URLs need the {extra} extra: pip install 'facematch-async[{extra}]'"


def _split(url: str) -> tuple[Any, str]:
    """The filesystem of a normalized URL and the path it takes."""
    scheme = url_scheme(url)
    assert scheme is not None
    fs = _filesystem(scheme, None)
    return fs, url if scheme in _HTTP else url.partition("://")[2]


# Weak keys: a closed loop is not kept alive by its semaphore.
_in_flight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _fetch_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _in_flight.get(loop)
    if slots is None:
        slots = _in_flight[loop] = asyncio.Semaphore(MAX_OBJECTS_IN_FLIGHT)
    return slots


async def _call(fs: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``fs.name(*args)``: an async filesystem's coroutine on fsspec's loop (no thread per
    call), a blocking one in a worker thread."""
    if getattr(fs, "async_impl", False):
        coroutine = getattr(fs, "_" + name)(*args, **kwargs)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, fs.loop))
    return await anyio.to_thread.run_sync(lambda: getattr(fs, name)(*args, **kwargs))


def _reason(error: BaseException) -> str:
    """Why a store failed, without its message (which may quote a URL or a key)."""
    if isinstance(error, OSError) and error.errno == errno.EBUSY:
        return "throttled or busy (SlowDown, 503), after the store's retries"
    if isinstance(error, TimeoutError):
        return "timed out, after the store's retries"
    if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
        return f"{type(error).__name__} {errno.errorcode.get(error.errno, error.errno)}"
    return type(error).__name__


def _store_error(field: str, error: BaseException) -> ImageError:
    if isinstance(error, ImageError):
        return error
    if isinstance(error, FileNotFoundError):
        # S3 answers 403 for a missing key to a reader without ListBucket: say both.
        message = f"{field}: no such object in the store"
    elif isinstance(error, PermissionError):
        message = f"{field}: access denied by the store (or no credentials for it)"
    elif isinstance(error, IsADirectoryError):
        return ImageReadError(f"{field}: is a folder, not an object", field=field)
    else:
        message = f"{field}: the store did not serve it: {_reason(error)}"
    return ImageUnavailableError(message, field=field)


async def _stat(location: ImageLocation, field: str, max_bytes: int | None) -> tuple[Any, str, int]:
    """Confine, then ask the store for the object's size (no byte of it is fetched)."""
    url = location.url
    if url is None or (location.roots is not None and not url_inside(url, location.roots)):
        raise outside(field)
    try:
        fs, path = _split(url)
    except ValueError as exc:
        raise _unavailable_or_final(field, str(exc), url) from None
    info = await _call(fs, "info", path)
    if info.get("type") == "directory":
        raise IsADirectoryError
    size = info.get("size")
    if not isinstance(size, int):
        raise ImageUnavailableError(f"{field}: the store did not say its size", field=field)
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLargeError(
            f"{field} is {size} bytes, over the limit of {max_bytes}", field=field
        )
    if size == 0:
        raise EmptyImageError(f"{field} is empty", field=field)
    return fs, path, size


def _unavailable_or_final(field: str, message: str, url: str) -> ImageError:
    scheme = url_scheme(url) or ""
    if scheme in _EXTRAS or scheme in _HTTP:
        return ImageUnavailableError(f"{field}: {message}", field=field)
    return ImageReadError(f"{field}: {message}", field=field)


async def probe_object(location: ImageLocation, field: str, max_bytes: int | None) -> int:
    """An object's size, checked (inside its roots, not a folder, not empty, within
    ``max_bytes``) without fetching a byte of it: what the dry run asks of a URL.

    Raises:
        ImageError: as :func:`read_object` would for the same object, but for its format.
    """
    async with _fetch_slots():
        try:
            return (await _stat(location, field, max_bytes))[2]
        except Exception as error:
            raise _store_error(field, error) from None


async def read_object(location: ImageLocation, field: str, max_bytes: int | None) -> bytes:
    """An object's bytes: its size asked first (one over ``max_bytes`` is refused before a
    byte is fetched), then one ranged read that never takes more than ``max_bytes + 1``
    (an object replaced by a larger one in between is still refused). At most
    :data:`MAX_OBJECTS_IN_FLIGHT` objects are fetched at once per event loop.

    Raises:
        ImageUnavailableError: missing, access denied, throttled or unreachable after the
            store's retries (retryable).
        ImageReadError: outside the roots (``PATH_OUTSIDE_ROOT``), a folder.
        ImageTooLargeError, EmptyImageError: by its size.
    """
    async with _fetch_slots():
        try:
            fs, path, _ = await _stat(location, field, max_bytes)
            end = None if max_bytes is None else max_bytes + 1
            data = await _call(fs, "cat_file", path, start=0, end=end)
        except Exception as error:
            raise _store_error(field, error) from None
    return bytes(data)


# --- Manifests in buckets -------------------------------------------------------------------


def open_manifest(url: str) -> IO[bytes]:
    """Open a bucket manifest for streaming (blocking; buffered in 8 MiB blocks).

    Raises:
        FileNotFoundError: no such manifest.
        OSError: the store refused or failed (the message names the URL without its query).
        ValueError: not a URL that can be read (a scheme without its extra installed).
    """
    normalized = normalize_url(url)
    if normalized is None:
        raise ValueError(f"{display(url)!r} is not a URL that can be read")
    fs, path = _split(normalized)
    try:
        # fsspec's file has no readline(limit): a standard reader over it has.
        raw = fs.open(path, "rb", block_size=MANIFEST_BLOCK_BYTES)
        file: IO[bytes] = io.BufferedReader(raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such manifest: {display(url)}") from None
    except Exception as error:
        raise OSError(f"cannot read the manifest {display(url)}: {_reason(error)}") from None
    return file


def manifest_is_folder(url: str) -> bool:
    """Whether a manifest URL names a prefix of pair folders rather than a CSV/JSONL object.

    Raises:
        FileNotFoundError: neither.
        OSError: the store refused or failed.
        ValueError: not a URL that can be read.
    """
    normalized = normalize_url(url)
    if normalized is None:
        raise ValueError(f"{display(url)!r} is not a URL that can be read")
    fs, path = _split(normalized)
    try:
        info = fs.info(path.rstrip("/") or path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such manifest: {display(url)}") from None
    except Exception as error:
        raise OSError(f"cannot read the manifest {display(url)}: {_reason(error)}") from None
    return bool(info.get("type") == "directory")


def list_folder(url: str) -> Iterator[tuple[str, bool]]:
    """The entries of a prefix: ``(name, is_folder)``, names without the prefix.

    The folder form of a bucket manifest lists its pair folders up front (a CSV or JSONL
    manifest streams instead: prefer one for millions of pairs).
    """
    normalized = normalize_url(url)
    if normalized is None:
        raise ValueError(f"{display(url)!r} is not a URL that can be read")
    fs, path = _split(normalized)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such manifest: {display(url)}") from None
    except Exception as error:
        raise OSError(f"cannot list {display(url)}: {_reason(error)}") from None
    for entry in entries:
        name = str(entry.get("name", "")).rstrip("/").rpartition("/")[2]
        if name:
            yield name, entry.get("type") == "directory"
