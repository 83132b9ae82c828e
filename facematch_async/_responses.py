"""Turn an HTTP response into a result or a typed error, as the contract describes.

Classification goes by ``sub_code`` first, whatever the status (the API's status for
``NO_FACE_FOUND`` and ``UNSUPPORTED_FILE_FORMAT`` is undocumented and may even be 200),
then by the ``detail`` strings the contract names, then by status.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from facematch_async._models import FaceMatchResult
from facematch_async.errors import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    FaceMatchError,
    InactiveClientError,
    InternalServerError,
    InvalidTokenError,
    NoFaceFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestValidationError,
    UnsupportedFileFormatError,
)

__all__ = [
    "RawResponse",
    "parse_authorize",
    "parse_facematch",
    "parse_retry_after",
    "redact",
    "server_time",
]

_REDACTED = "[REDACTED]"
MIN_REDACTED_LENGTH = 8
_SNIPPET = 200  # characters of a non-JSON body kept in an error message
_INVALID_TOKEN_DETAILS = ("not a valid token", "not authenticated")
# The contract's other 401 details: the credentials themselves, whatever status carries them.
_CREDENTIAL_DETAILS = (
    "could not validate credentials",
    "invalid client_id",
    "authorization failure",
)


class RawResponse:
    """A response as read off the wire: status, headers and the (capped) body bytes."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


# Characters that start an encoded form of a character (JSON ``\\u002d``, URL ``%2D``, HTML
# ``&#45;``) or a line fold: a text with none of them can hold a secret only verbatim.
_ENCODINGS = re.compile(r"[\\%&\r\n]")
_FOLD = r"(?:\r?\n[ \t]*)?"  # a line fold (a wrapped header or page) may split an echo


def _char_pattern(char: str) -> str:
    """A regex for ``char`` as itself or in any escaped form a server may echo it in."""
    # Backslash escapes may come doubled: a JSON escape quoted again by a repr.
    code = ord(char)
    forms = [re.escape(char)]
    if code <= 0xFFFF:
        forms.append(rf"\\+u(?i:{code:04x})")
    else:  # JSON writes a character outside the BMP as a surrogate pair
        high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.append(rf"\\+u(?i:{high:04x})\\+u(?i:{low:04x})")
    if code < 0x100:
        forms.append(rf"\\+x(?i:{code:02x})")  # Python's repr of bytes, as aiohttp quotes them
    short = json.dumps(char)[1:-1]
    if short.startswith("\\") and not short.startswith("\\u"):
        forms.append(r"\\+" + re.escape(short[1:]))  # JSON's \", \\, \n ...
    forms.append("".join(rf"%(?i:{byte:02x})" for byte in char.encode()))  # URL-encoded
    forms.append(rf"&#(?:0*{code}|(?i:x0*{code:x}));")  # HTML character references
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=64)
def _secret_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret and what can be derived from it alone: its base64 (a Basic header echoed
    back), and a JWT's payload and signature (its header is the same for every token).
    Matched in any case (a URL's host comes back lower-cased)."""
    forms: set[str] = set()
    for secret in secrets:
        forms.add(secret)
        encoded = secret.encode()
        forms.add(base64.b64encode(encoded).decode().rstrip("="))
        forms.add(base64.urlsafe_b64encode(encoded).decode().rstrip("="))
        if secret.count(".") == 2:
            forms.update(secret.split(".")[1:])
    return tuple(sorted((f for f in forms if len(f) >= MIN_REDACTED_LENGTH), key=len, reverse=True))


@functools.lru_cache(maxsize=64)
def _lowered(forms: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(form.lower() for form in forms)


@functools.lru_cache(maxsize=64)
def _secret_pattern(forms: tuple[str, ...]) -> re.Pattern[str] | None:
    # Cached: a client sends the same secret and token on many calls in a row.
    alternatives = [_FOLD.join(_char_pattern(char) for char in form) for form in forms]
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``[REDACTED]``, verbatim or encoded.

    A hostile or buggy server may echo what we sent, escaped (``\\u002d``), URL-encoded,
    as HTML character references, folded across lines, in another case, base64-encoded, or
    a token's payload or signature alone; nothing we copy out may carry it. Values too short
    to be real secrets are skipped: replacing every "t" in a body would garble it.
    """
    forms = _secret_forms(tuple(secrets))
    if _ENCODINGS.search(text) is None:  # the common case: no echo at all
        lowered = text.lower()
        if not any(form in lowered for form in _lowered(forms)):
            return text
    pattern = _secret_pattern(forms)
    return text if pattern is None else pattern.sub(_REDACTED, text)


def _redact_payload(payload: Any, secrets: tuple[str, ...]) -> Any:
    """Redact every string (keys included) of a decoded JSON value, in place.

    A loop, not recursion: a body nested just under the decoder's limit must not overflow
    the stack here.
    """
    if isinstance(payload, str):
        return redact(payload, secrets)
    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = redact(item, secrets)
                elif isinstance(item, list | dict):
                    stack.append(item)
        elif isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, value in items:
                if isinstance(value, str):
                    value = redact(value, secrets)
                elif isinstance(value, list | dict):
                    stack.append(value)
                node[redact(key, secrets)] = value
    return payload


def _decode(response: RawResponse, secrets: Iterable[str]) -> tuple[Any, str]:
    """Return ``(payload, text)``: the JSON value (``None`` if not JSON) and the redacted text.

    Both are redacted: the text as it came, the payload after decoding, since JSON may
    escape an echoed secret in ways the text does not show.

    Raises:
        APIResponseValidationError: the JSON is nested too deeply to decode.
    """
    secrets = tuple(secrets)
    text = redact(response.body.decode("utf-8", errors="replace"), secrets)
    try:
        payload = json.loads(text)
    except RecursionError:
        raise APIResponseValidationError(
            "response JSON is nested too deeply", status_code=response.status
        ) from None
    except ValueError:
        return None, text
    if "\\" in text:  # decoding changes a string only through backslash escapes
        payload = _redact_payload(payload, secrets)
    return payload, text


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (a bool, NaN, infinity, 10**400...): a NaN
    confidence would pass every comparison silently and break strict JSON readers."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _field_errors(detail: list[Any]) -> str:
    parts = []
    for item in detail:
        if isinstance(item, dict):
            where = ".".join(str(part) for part in item.get("loc", []))
            parts.append(f"{where}: {item.get('msg', '?')}")
    return "; ".join(parts) or "invalid request"


def _redirect_target(location: str | None, secrets: tuple[str, ...]) -> str:
    """Where a redirect pointed: scheme and host only, redacted.

    The rest of a ``Location`` (user info, path, query) is the server's to fill and may
    echo what we sent; the host is enough to tell a misconfigured base URL.
    """
    if not location:
        return "an unnamed location"
    try:
        parts = urlsplit(location)
    except ValueError:
        return "an unparseable location"
    # netloc, not hostname: hostname is lower-cased, and a lower-cased echo would not match.
    host = parts.netloc.rpartition("@")[2]  # user info dropped
    if not parts.scheme or not host:
        return "a relative location"
    return redact(f"{parts.scheme}://{host}", secrets)


def _status_error(
    response: RawResponse, payload: Any, text: str, secrets: tuple[str, ...]
) -> FaceMatchError:
    """The error for a non-2xx response (after sub_code classification found nothing)."""
    status = response.status
    body = payload if isinstance(payload, dict) else {}
    detail = body.get("detail")
    if isinstance(detail, str):
        message = detail
    elif isinstance(detail, list):
        message = f"request validation failed: {_field_errors(detail)}"
    elif isinstance(body.get("message"), str):
        message = body["message"]
    elif payload is None and text.strip():
        message = f"HTTP {status} with a non-JSON body: {' '.join(text.split())[:_SNIPPET]}"
    else:
        message = f"HTTP {status}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "sub_code": _str_or_none(body.get("sub_code")),
        "detail": detail,
        "transaction_id": _str_or_none(body.get("transaction_id")),
        "retry_after": parse_retry_after(response.headers),
    }
    lowered = message.lower()
    if "inactive client" in lowered:
        return InactiveClientError(message, **kwargs)
    if any(phrase in lowered for phrase in _INVALID_TOKEN_DETAILS):
        return InvalidTokenError(message, **kwargs)
    if any(phrase in lowered for phrase in _CREDENTIAL_DETAILS):
        return AuthenticationError(message, **kwargs)
    if 300 <= status < 400:
        target = _redirect_target(response.headers.get("location"), secrets)
        return APIStatusError(f"redirect to {target} not followed", **kwargs)
    error_types: dict[int, type[APIStatusError]] = {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        422: RequestValidationError,
        429: RateLimitError,
    }
    if status >= 500:
        return InternalServerError(message, **kwargs)
    return error_types.get(status, APIStatusError)(message, **kwargs)


def _verdict_error(response: RawResponse, body: Mapping[str, Any]) -> FaceMatchError | None:
    """The image-level errors named by ``sub_code``, whatever the status."""
    sub_code = body.get("sub_code")
    error_type: type[FaceMatchError]
    if sub_code == "NO_FACE_FOUND":
        error_type, default = NoFaceFoundError, "no face found in at least one image"
    elif sub_code == "UNSUPPORTED_FILE_FORMAT":
        error_type, default = UnsupportedFileFormatError, "file format not supported"
    else:
        return None
    return error_type(
        _str_or_none(body.get("message")) or default,
        status_code=response.status,
        sub_code=sub_code,
        detail=body.get("detail"),
        transaction_id=_str_or_none(body.get("transaction_id")),
    )


def parse_facematch(response: RawResponse, secrets: Iterable[str]) -> FaceMatchResult:
    """Return the result a face-match response carries, or raise its typed error."""
    secrets = tuple(secrets)
    payload, text = _decode(response, secrets)
    if isinstance(payload, dict) and (error := _verdict_error(response, payload)) is not None:
        raise error
    if not 200 <= response.status < 300:
        raise _status_error(response, payload, text, secrets)
    if not isinstance(payload, dict):
        raise APIResponseValidationError(
            f"expected a JSON object, got: {' '.join(text.split())[:_SNIPPET]!r}",
            status_code=response.status,
        )
    data = payload.get("data")
    match = data.get("match") if isinstance(data, dict) else None
    confidence = data.get("confidence") if isinstance(data, dict) else None
    if not isinstance(match, bool) or not (
        confidence is None or (confidence := _finite(confidence)) is not None
    ):
        raise APIResponseValidationError(
            "response has no valid data.match / data.confidence",
            status_code=response.status,
            sub_code=_str_or_none(payload.get("sub_code")),
            transaction_id=_str_or_none(payload.get("transaction_id")),
        )
    timestamp = payload.get("timestamp")
    return FaceMatchResult(
        match=match,
        confidence=confidence,
        transaction_id=_str_or_none(payload.get("transaction_id")),
        sub_code=_str_or_none(payload.get("sub_code")),
        message=_str_or_none(payload.get("message")),
        timestamp=timestamp
        if isinstance(timestamp, int) and not isinstance(timestamp, bool)
        else None,
        raw=payload,
    )


def server_time(response: RawResponse) -> float | None:
    """The server's clock when it answered (its ``Date`` header, epoch seconds), if it said."""
    value = response.headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_authorize(
    response: RawResponse, secrets: Iterable[str]
) -> tuple[str, str | None, float | None]:
    """Return ``(access_token, expiry, server_time)`` from an authorize response (the last:
    the server's clock when it answered, from ``Date``), or raise its error.

    A refused authorize is always an :class:`AuthenticationError` (or its subclass
    :class:`InactiveClientError`), whatever status the server chose for it.
    """
    secrets = tuple(secrets)
    payload, text = _decode(response, secrets)
    if not 200 <= response.status < 300:
        error = _status_error(response, payload, text, secrets)
        # Whatever status the server chose, a refused authorize is an AuthenticationError.
        if response.status in (400, 401, 403) and not isinstance(error, AuthenticationError):
            error = AuthenticationError(
                error.message,
                status_code=error.status_code,
                detail=error.detail,
                transaction_id=error.transaction_id,
            )
        raise error
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        raise APIResponseValidationError(
            "authorize response has no access_token", status_code=response.status
        )
    return token, _str_or_none(payload.get("expiry")), server_time(response)
