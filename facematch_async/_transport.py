"""One HTTP attempt: the pooled aiohttp session, a POST, a capped read, typed failures."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

import aiohttp
import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter

from facematch_async._images import UploadImage
from facematch_async._responses import RawResponse, redact
from facematch_async._version import __version__
from facematch_async.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ClientClosedError,
)

__all__ = ["MAX_RESPONSE_BYTES", "MultipartBody", "Transport"]

MAX_RESPONSE_BYTES = 1024 * 1024  # the API's bodies are a few hundred bytes
USER_AGENT = (
    f"facematch-async/{__version__} aiohttp/{aiohttp.__version__} "
    f"python/{platform.python_version()}"
)


class SendListener(Protocol):
    """Hears how long a request took from its slot to the wire."""

    def on_sent(self, delay: float) -> None: ...


class MultipartBody(aiohttp.payload.Payload):
    """A ``multipart/form-data`` body of file parts, laid out byte for byte as
    ``aiohttp.FormData`` does, but written to the socket chunk by chunk as it stands.

    ``aiohttp.MultipartWriter`` makes nine writes per two-image body and a Python object per
    header; joining the parts into one ``bytes`` would copy both images again (and keep the
    copy alive through the request). This is five writes of what is already in memory: the
    part headers, which are the client's own names (``file_a``, ``file_a.jpg``,
    ``image/jpeg``) and need no quoting, and the images themselves. Immutable, so every
    attempt of a call can send it again.

    Only aiohttp's public ``Payload`` API is used (``size``, ``autoclose``, ``decode``,
    ``write``, ``write_with_length``): the chunks live in this class's own attribute.

    ``listener``, when set, hears each attempt's seconds from ``ready_at`` (its slot) to the
    body's first write, just after its headers: when it reached the wire, what a rate limit
    at the server counts by. (The listener holds no reference back to the body: no cycle
    keeps the images alive.)
    """

    listener: SendListener | None = None
    ready_at = 0.0

    def __init__(self, images: Iterable[UploadImage]) -> None:
        boundary = os.urandom(16).hex()  # as random as aiohttp's uuid4().hex boundary
        chunks: list[bytes] = []
        lead = ""
        for image in images:
            chunks.append(
                f"{lead}--{boundary}\r\nContent-Type: {image.content_type}\r\n"
                f'Content-Disposition: form-data; name="{image.field}"; '
                f'filename="{image.filename}"\r\n\r\n'.encode("ascii")
            )
            chunks.append(image.data)
            lead = "\r\n"
        chunks.append(f"{lead}--{boundary}--\r\n".encode("ascii"))
        self.chunks = tuple(chunks)
        self.length = sum(map(len, chunks))
        super().__init__(self.chunks, content_type=f"multipart/form-data; boundary={boundary}")

    @property
    def size(self) -> int:
        """The body's length in bytes (sent as ``Content-Length``)."""
        return self.length

    @property
    def autoclose(self) -> bool:
        """Nothing to close: the chunks are bytes in memory."""
        return True

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self.chunks).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        if self.listener is not None:
            self.listener.on_sent(time.monotonic() - self.ready_at)
        if content_length is None:
            for chunk in self.chunks:
                await writer.write(chunk)
            return
        for chunk in self.chunks:
            if content_length <= 0:
                break
            await writer.write(chunk[:content_length])
            content_length -= len(chunk)


class Transport:
    """Owns the client's one ``aiohttp.ClientSession``, created lazily on first use.

    The session belongs to the event loop it was created in; using it from another loop
    raises a clear error instead of hanging.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: aiohttp.ClientTimeout,
        max_connections: int,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # True: aiohttp's default, certificate and host name verified against the system CAs.
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._trace_configs = trace_configs
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.closed_reason = "the client is closed"

    def _get_session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise ClientClosedError(self.closed_reason)
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT},
                trace_configs=self._trace_configs,
            )
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this FaceMatchClient was first used in another event loop; "
                "create one client per event loop"
            )
        return self._session

    async def post(
        self, path: str, data: aiohttp.FormData | MultipartBody, headers: Mapping[str, str]
    ) -> RawResponse:
        """POST ``data`` to ``path`` once; never follows a redirect (it would carry our key).

        Raises:
            APITimeoutError: no complete response within the timeout.
            APIConnectionError: the connection failed or dropped.
            APIResponseValidationError: the body is larger than ``MAX_RESPONSE_BYTES``.
            ClientClosedError: the client was closed before or during the call.
        """
        session = self._get_session()
        try:
            async with session.post(
                self.base_url + path, data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await _read_capped(response)
                status, response_headers = response.status, response.headers
        except TimeoutError:
            raise APITimeoutError(f"POST {path} timed out") from None
        except (aiohttp.ClientError, RuntimeError) as exc:
            if self.closed:
                raise ClientClosedError("the client was closed during the call") from None
            if isinstance(exc, RuntimeError):
                raise
            # aiohttp's text for a malformed answer quotes the raw bytes, which a hostile
            # server fills with what we sent; the exception also holds our request headers.
            failure = _describe(exc, _sent_secrets(headers))
        else:
            return RawResponse(status, response_headers, body)
        # Raised outside the except block, so that not even __context__ keeps the aiohttp
        # exception (and the secrets in its text and request_info) alive.
        raise APIConnectionError(f"POST {path} failed: {failure}")

    async def aclose(self) -> None:
        """Close the session and its connections; later calls raise ``ClientClosedError``."""
        self.closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


# A Python bytes literal, as aiohttp quotes the raw bytes of a response it cannot parse.
_BYTES_LITERAL = re.compile(r"""(?<!\w)b(['"])(?:\\.|(?!\1).)*\1""", re.DOTALL)
_CARET_LINE = re.compile(r"^\s*\^\s*$", re.MULTILINE)  # aiohttp's pointer under the excerpt


def _describe(exc: aiohttp.ClientError, secrets: tuple[str, ...]) -> str:
    """``exc`` as one line that quotes nothing the server sent: its type and its text
    with aiohttp's excerpts of the raw response left out, then redacted."""
    # ClientResponseError's str() repeats the message through repr(); .message is plain.
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    text = _CARET_LINE.sub("", _BYTES_LITERAL.sub("<response bytes>", text))
    text = redact(text, secrets)  # before whitespace is collapsed: it may fold an echo
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def _sent_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials a request carries (``x-api-key``, the bearer token): what a server
    that echoes its input would hand back."""
    secrets = []
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "x-api-key":
            secrets.append(value)
        elif lowered == "authorization":
            secrets.append(value.partition(" ")[2] or value)
    return tuple(secrets)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length <= MAX_RESPONSE_BYTES:
        return await response.read()  # aiohttp reads no more than Content-Length says
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise APIResponseValidationError(
                f"response body is over {MAX_RESPONSE_BYTES} bytes", status_code=response.status
            )
    return bytes(body)
