"""Random faults: production's bad days, at configured rates, repeatable with a seed.

Where :class:`~facematch_async.sandbox.ScriptedResponse` answers *the next* requests, a
:class:`FaultConfig` makes every request to the chosen paths fail with some probability:
extra latency, a 500 or 503, a burst of 429s, a dropped connection, a response that stalls
past the client's timeout, an HTML 502 page from a proxy, or a token revoked under it.

The random draws are the same number per request whatever the outcome, so with a ``seed``
the n-th request always meets the same fault (for requests arriving in the same order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["FAULT_KINDS", "FaultConfig", "FaultInjector", "FaultKind", "FaultPlan"]

FaultKind = Literal["drop", "stall", "500", "503", "html_502", "429", "revoke"]
FAULT_KINDS: tuple[FaultKind, ...] = ("drop", "stall", "500", "503", "html_502", "429", "revoke")

_FACEMATCH_PATHS = ("/v1/facematch", "/v2/facematch")


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities of each fault, per request to one of ``paths``.

    At most one fault hits a request; ``drop_rate`` to ``rate_429_burst`` are exclusive
    outcomes of one roll, so their sum must not exceed 1. ``latency`` adds to any of them.

    Attributes:
        latency: seconds added before answering: fixed, or a ``(low, high)`` uniform range.
        error_rate_500: answer 500 ``{"detail": "Internal Server Error"}``.
        error_rate_503: answer 503 ``{"detail": "Source Unavailable"}``.
        html_502_rate: answer 502 with an HTML page, as a reverse proxy does.
        drop_rate: close the connection without a byte of answer.
        stall_rate: wait ``stall_seconds`` before handling (past most client timeouts).
        stall_seconds: how long a stall lasts.
        rate_429_burst: start a burst of ``burst_length`` consecutive 429s (this request
            included), as when another process shares the API key.
        burst_length: requests a 429 burst answers.
        revoke_rate: revoke the request's (valid) token just before it is checked, so it
            gets 403 ``Not a valid token`` and the client must authorize again.
        seed: seeds the random draws; ``None`` is unseeded.
        paths: the request paths faults apply to (default: both facematch routes, so
            authorize keeps working unless asked).
    """

    latency: float | tuple[float, float] = 0.0
    error_rate_500: float = 0.0
    error_rate_503: float = 0.0
    html_502_rate: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    rate_429_burst: float = 0.0
    burst_length: int = 3
    revoke_rate: float = 0.0
    seed: int | None = None
    paths: tuple[str, ...] = _FACEMATCH_PATHS

    def __post_init__(self) -> None:
        low, high = self.latency_range
        if not 0 <= low <= high:
            raise ValueError(f"latency must be 0 or more, low <= high; got {self.latency}")
        rates = [*self._exclusive_rates(), ("revoke_rate", self.revoke_rate)]
        for name, rate in rates:
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if sum(rate for _, rate in self._exclusive_rates()) > 1:
            raise ValueError("the fault rates (all but revoke_rate) must not add up to more than 1")
        if self.stall_seconds < 0:
            raise ValueError(f"stall_seconds must not be negative, got {self.stall_seconds}")
        if self.burst_length < 1:
            raise ValueError(f"burst_length must be at least 1, got {self.burst_length}")

    def summary(self) -> str:
        """The settings that differ from the defaults, e.g. ``"drop_rate=0.1 seed=7"``."""
        changed = [
            f"{spec.name}={getattr(self, spec.name)}"
            for spec in fields(self)
            if getattr(self, spec.name) != spec.default
        ]
        return " ".join(changed) or "none"

    @property
    def latency_range(self) -> tuple[float, float]:
        """``latency`` as a ``(low, high)`` range (equal ends when fixed)."""
        if isinstance(self.latency, tuple):
            return self.latency
        return (self.latency, self.latency)

    def _exclusive_rates(self) -> list[tuple[str, float]]:
        return [
            ("drop_rate", self.drop_rate),
            ("stall_rate", self.stall_rate),
            ("error_rate_500", self.error_rate_500),
            ("error_rate_503", self.error_rate_503),
            ("html_502_rate", self.html_502_rate),
            ("rate_429_burst", self.rate_429_burst),
        ]


@dataclass(frozen=True)
class FaultPlan:
    """What happens to one request.

    Attributes:
        latency: seconds to wait first.
        kind: the fault to inject, ``None`` for none.
        stall_seconds: how long a ``"stall"`` lasts.
    """

    latency: float = 0.0
    kind: FaultKind | None = None
    stall_seconds: float = 0.0


_KIND_OF_RATE: dict[str, FaultKind] = {
    "drop_rate": "drop",
    "stall_rate": "stall",
    "error_rate_500": "500",
    "error_rate_503": "503",
    "html_502_rate": "html_502",
    "rate_429_burst": "429",
}


class FaultInjector:
    """Draws a :class:`FaultPlan` per request from a :class:`FaultConfig`."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)  # noqa: S311 - chaos, not cryptography
        self._burst_left = 0

    def plan(self, path: str) -> FaultPlan | None:
        """The plan for a request to ``path``; ``None`` when faults do not apply to it."""
        config = self.config
        if path not in config.paths:
            return None
        # Always three draws, so a seeded run stays in step whatever each request meets.
        latency = self._random.uniform(*config.latency_range)
        roll = self._random.random()
        revoke_roll = self._random.random()
        kind: FaultKind | None = None
        if self._burst_left > 0:
            self._burst_left -= 1
            kind = "429"
        else:
            threshold = 0.0
            for name, rate in config._exclusive_rates():
                threshold += rate
                if roll < threshold:
                    kind = _KIND_OF_RATE[name]
                    break
            if kind == "429":
                self._burst_left = config.burst_length - 1
            elif kind is None and revoke_roll < config.revoke_rate:
                kind = "revoke"
        stall = config.stall_seconds if kind == "stall" else 0.0
        return FaultPlan(latency=latency, kind=kind, stall_seconds=stall)
