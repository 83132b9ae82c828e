"""What the runner reports for each pair: :class:`PairOutcome` and its :class:`PairError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from facematch_async._models import FaceMatchResult
from facematch_async.batch._manifest import ManifestProblem
from facematch_async.errors import FaceMatchError

__all__ = ["DECISIONS", "STATUSES", "PairError", "PairOutcome", "Status", "is_retryable_error"]

Status: TypeAlias = Literal["match", "no_match", "no_face", "error"]
STATUSES: tuple[Status, ...] = ("match", "no_match", "no_face", "error")
DECISIONS: tuple[Status, ...] = ("match", "no_match", "no_face")
"""The statuses that are decisions: a pair with one of them is done."""
_MAX_MESSAGE = 500

# Failures of the service, the network or the job around the pair, never of the pair's own
# input: another attempt later may decide it. Everything else (an image the API or the
# client refused, a malformed or duplicate row, an unexpected exception) stays an error
# until the input is fixed, so that an automatic resume never loops on it.
_RETRYABLE_TYPES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "DeadlineExceededError",
        "RateLimitError",
        "InternalServerError",
        "APIResponseValidationError",
        "PacingStoreError",
        "ClientClosedError",
        "AuthenticationError",
        "InvalidTokenError",
        "InactiveClientError",
        "PermissionDeniedError",
    }
)


def is_retryable_error(error_type: str | None, status_code: int | None) -> bool:
    """Whether an error line leaves its pair to run again on a plain resume.

    True for a transient failure: no connection, a timeout or a spent deadline, a 5xx, a
    408 or 429 after the client's retries, a response that was not the API's JSON, a lost
    rate-limit store, or refused credentials (fixed outside the manifest). False for what
    only a change to the input fixes (a bad, unsupported or unreadable image, a malformed
    or duplicate row, a 400/413/422, an unexpected exception): those wait for
    ``--retry-failed``. Reads older results lines too, which carry only these two fields.
    """
    if status_code is not None and (status_code >= 500 or status_code in (408, 429)):
        return True
    return error_type in _RETRYABLE_TYPES


@dataclass(frozen=True, slots=True)
class PairError:
    """Why a pair has no decision. Never holds a secret: client errors are already redacted.

    Attributes:
        type: The exception's class name (``NoFaceFoundError``, ``ImageReadError``, ...), or
            ``ManifestError`` for an unusable manifest row.
        message: What went wrong.
        sub_code: The API's or the manifest's code (``NO_FACE_FOUND``, ``MALFORMED_ROW``...).
        status_code: The HTTP status, when there was a response.
        transaction_id: Deepvue's id for the call, when there was one.
    """

    type: str
    message: str
    sub_code: str | None = None
    status_code: int | None = None
    transaction_id: str | None = None

    @property
    def retryable(self) -> bool:
        """Whether a plain resume sends the pair again (see :func:`is_retryable_error`)."""
        return is_retryable_error(self.type, self.status_code)

    @classmethod
    def from_exception(cls, error: BaseException) -> PairError:
        """Describe ``error``: its type name and, for our errors, the API's fields."""
        if isinstance(error, FaceMatchError):
            return cls(
                type(error).__name__,
                error.message[:_MAX_MESSAGE],
                error.sub_code,
                error.status_code,
                error.transaction_id,
            )
        return cls(type(error).__name__, str(error)[:_MAX_MESSAGE])

    @classmethod
    def from_problem(cls, problem: ManifestProblem) -> PairError:
        """Describe an unusable manifest row."""
        return cls("ManifestError", problem.message, problem.sub_code)


@dataclass(frozen=True, slots=True)
class PairOutcome:
    """The final outcome of one pair.

    Attributes:
        pair_id: The pair's id from the manifest.
        status: ``"match"``, ``"no_match"``, ``"no_face"`` or ``"error"``.
        result: The API's decision (``match`` and ``no_match``), else ``None``.
        error: Why there is no decision (``no_face`` and ``error``), else ``None``.
        attempts: Face-match requests sent for this pair, retries included (0 when it was
            refused locally).
        latency: Seconds spent in ``match``, waits for the rate limiter excluded.
        line: The manifest line, when the pair came from a file.
        extra: The manifest's other columns.
        finished_at: Wall-clock time (epoch seconds) the outcome was reached.
        key: The id results are filed under (``pair_id``, or ``@line:N`` for a row that has
            no usable id of its own).
    """

    pair_id: str
    status: Status
    result: FaceMatchResult | None = None
    error: PairError | None = None
    attempts: int = 0
    latency: float | None = None
    line: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    finished_at: float = 0.0
    key: str = ""
