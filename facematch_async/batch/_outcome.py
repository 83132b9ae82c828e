"""What the runner reports for each pair: :class:`PairOutcome` and its :class:`PairError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from facematch_async._models import FaceMatchResult
from facematch_async.batch._manifest import ManifestProblem
from facematch_async.errors import FaceMatchError

__all__ = ["STATUSES", "PairError", "PairOutcome", "Status"]

Status: TypeAlias = Literal["match", "no_match", "no_face", "error"]
STATUSES: tuple[Status, ...] = ("match", "no_match", "no_face", "error")
_MAX_MESSAGE = 500


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
