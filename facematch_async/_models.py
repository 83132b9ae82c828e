"""The values the client returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaceMatchResult"]


@dataclass(frozen=True, slots=True)
class FaceMatchResult:
    """The API's decision on one pair of images.

    Attributes:
        match: Whether the two images show the same person.
        confidence: The API's confidence, when it gives one (v1 may send ``null``;
            v2 sends an integer 0-100, kept here as a float).
        transaction_id: Deepvue's id for this call; log it when reporting a problem.
        sub_code: ``"SUCCESS"`` for a decision.
        message: The API's message.
        timestamp: Server time of the decision in epoch milliseconds (v1 only).
        raw: The whole JSON body as received.
        attempts: Face-match requests the call sent, retries included.
        latency: Seconds the call's requests took (token fetch and attempts; waits for a
            rate-limit slot and between retries left out), when the client measured it.
    """

    match: bool
    confidence: float | None
    transaction_id: str | None = None
    sub_code: str | None = None
    message: str | None = None
    timestamp: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    attempts: int = field(default=1, compare=False)
    latency: float | None = field(default=None, repr=False, compare=False)
