"""The exceptions raised by facematch_async, all importable from the package root.

```
FaceMatchError                       base: status_code, sub_code, message, detail, transaction_id
├── ClientClosedError                the client was closed before or during the call
├── CallStoppedError                 the caller's stop signal was set: no further attempt sent
├── PacingStoreError                 the shared rate-limit store (Redis) cannot be reached at start
├── ImageError                       an input image cannot be matched (found locally or by the API)
│   ├── ImageReadError               the file cannot be read: missing, a directory, no permission
│   │   └── ImageUnavailableError    a store did not serve it now: missing key, denied,
│   │                                throttled or down after the store's retries      (retryable)
│   ├── EmptyImageError              the image has no bytes
│   ├── ImageTooLargeError           over the client's ``max_image_bytes``
│   ├── CorruptImageError            truncated (no end marker) or not decodable
│   ├── UnsupportedFileFormatError   not JPEG/PNG by magic bytes, or UNSUPPORTED_FILE_FORMAT
│   └── NoFaceFoundError             sub_code NO_FACE_FOUND
├── APIConnectionError               no response: refused, reset, dropped, DNS        (retried)
│   └── APITimeoutError              no response within the timeout                   (retried)
│       └── DeadlineExceededError    the call's total ``deadline`` ran out              (final)
├── APIResponseValidationError       a response that is not the documented JSON
└── APIStatusError                   the API answered with an error status
    ├── BadRequestError              400
    ├── AuthenticationError          401, or authorize refused the credentials
    │   ├── InvalidTokenError        "Not a valid token" / "Not authenticated" on a face match
    │   └── InactiveClientError      "Inactive client_id" (never retried)
    ├── PermissionDeniedError        403 for another reason (e.g. IP allow-list)
    ├── RequestValidationError       422: the form fields were not accepted
    ├── RateLimitError               429, or no rate-limit slot within the deadline   (retried)
    │   └── QuotaExceededError       the day's quota is used up                          (final)
    └── InternalServerError          5xx                                    (500, 502-504 retried)
```

Errors carry what the response said and never a client secret or token: the client
redacts both from any text it copies out of a response.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CallStoppedError",
    "ClientClosedError",
    "CorruptImageError",
    "DeadlineExceededError",
    "EmptyImageError",
    "FaceMatchError",
    "ImageError",
    "ImageReadError",
    "ImageTooLargeError",
    "ImageUnavailableError",
    "InactiveClientError",
    "InternalServerError",
    "InvalidTokenError",
    "NoFaceFoundError",
    "PacingStoreError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestValidationError",
    "UnsupportedFileFormatError",
]


class FaceMatchError(Exception):
    """Base class of every error this package raises.

    Attributes:
        message: A human-readable summary.
        status_code: The HTTP status of the response, or ``None`` when there was none.
        sub_code: The response's ``sub_code`` (e.g. ``"NO_FACE_FOUND"``), if any.
        detail: The response's ``detail`` (a string, or FastAPI's list of field errors), if any.
        transaction_id: Deepvue's ``transaction_id``; log it when reporting a problem to them.
        attempts: Set when a ``match`` call fails: the face-match requests it sent
            (retries included; ``0`` when it failed before sending one).
        latency: Set when a ``match`` call fails: seconds its requests took (token fetch and
            attempts; waits for a rate-limit slot and between retries left out).
    """

    attempts: int | None = None
    latency: float | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        sub_code: str | None = None,
        detail: Any = None,
        transaction_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.sub_code = sub_code
        self.detail = detail
        self.transaction_id = transaction_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.sub_code is not None:
            parts.append(f"sub_code={self.sub_code}")
        if self.transaction_id is not None:
            parts.append(f"transaction_id={self.transaction_id}")
        return " | ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class PacingStoreError(FaceMatchError):
    """The shared rate-limit store (``rate_limit_store``, Redis) cannot be reached, or
    answered too slowly, at the start; the message names its URL (never its password).
    Lost later, the client falls back to a local share of the plan instead of raising."""


class ClientClosedError(FaceMatchError):
    """The client was closed (``aclose()``) before or while the call ran."""


class CallStoppedError(FaceMatchError):
    """The caller's stop signal (``send(..., stop=event)``) was set while the call waited for
    a rate-limit slot or a retry: no further request was sent (``attempts`` tells how many
    were). How a batch stops without waiting out a pause."""


class ImageError(FaceMatchError):
    """An input image cannot be matched.

    Attributes:
        field: Which image: ``"file_a"`` or ``"file_b"`` when known, else ``None``
            (the API's verdicts do not say which of the two it was).
    """

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field


class ImageReadError(ImageError):
    """The image file could not be read: missing, a directory, no permission, a link loop."""


class ImageUnavailableError(ImageReadError):
    """An object store (``s3://``, ``gs://``, ``az://``, ``https://``) did not serve the image
    now: no such key, access denied, throttled or unreachable after the store's own retries,
    its library not installed, or a read past ``image_read_timeout``. Retryable: the same
    pair may be read later (after an upload, a fixed bucket policy, the outage), unlike a
    local file that is missing or an object that is not an image, which are final. S3
    answers "access denied" for a missing key to a reader that may not list the bucket, so
    the two are alike here."""


class EmptyImageError(ImageError):
    """The image has no bytes."""


class ImageTooLargeError(ImageError):
    """The image is larger than the client's ``max_image_bytes``."""


class CorruptImageError(ImageError):
    """The image is truncated (no JPEG/PNG end marker) or, when downscaling, not decodable."""


class UnsupportedFileFormatError(ImageError):
    """Not a JPEG or PNG (PDF too on v2): found locally by magic bytes or by the API."""


class NoFaceFoundError(ImageError):
    """The API found no face in at least one of the two images (``NO_FACE_FOUND``)."""


class APIConnectionError(FaceMatchError):
    """No response arrived: the connection failed, was reset or dropped. Retried."""


class APITimeoutError(APIConnectionError):
    """No complete response arrived within the timeout. Retried."""


class DeadlineExceededError(APITimeoutError):
    """The call's total ``deadline`` ran out, or what was left of it could not cover the
    next wait (a backoff before a retry). Never retried: the budget is spent.

    Attributes:
        deadline: The call's budget, in seconds.
        elapsed: Seconds the call had run when it gave up.
        last_error: The failure of the last attempt, if one failed (also ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        deadline: float,
        elapsed: float,
        last_error: FaceMatchError | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.deadline = deadline
        self.elapsed = elapsed
        self.last_error = last_error


class APIResponseValidationError(FaceMatchError):
    """The response was not the documented JSON (e.g. an HTML page, a truncated body)."""


class APIStatusError(FaceMatchError):
    """The API answered with an error status.

    Attributes:
        retry_after: Seconds the server asked us to wait (``Retry-After`` or
            ``retry-after-ms``), if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the request was refused as malformed."""


class AuthenticationError(APIStatusError):
    """401, or the authorize call refused the client id and secret."""


class InvalidTokenError(AuthenticationError):
    """The API refused the access token (``Not a valid token``, ``Not authenticated``)."""


class InactiveClientError(AuthenticationError):
    """The client id is inactive (``Inactive client_id``). Never retried."""


class PermissionDeniedError(APIStatusError):
    """403 for a reason other than the token, such as an IP allow-list."""


class RequestValidationError(APIStatusError):
    """422: the API did not accept the form fields (``detail`` lists them)."""


class RateLimitError(APIStatusError):
    """429: a per-second, per-minute or per-day window of the plan is used up. Retried.

    Also raised, without a request, when the client's own rate limit cannot give the call a
    slot within its deadline: then ``status_code`` is ``None`` and ``retry_after`` says when
    a slot opens (a web service can answer 503 with that ``Retry-After``)."""


class QuotaExceededError(RateLimitError):
    """The key's daily quota is used up: the API asked to wait longer than the retry
    policy's ``max_retry_after``, or the client's own day window is full. Not retried (unless
    the policy says ``wait_for_quota``); ``retry_after`` says when it reopens, when known."""


class InternalServerError(APIStatusError):
    """5xx: the API or a proxy in front of it failed. 500, 502, 503 and 504 are retried."""
