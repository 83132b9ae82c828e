"""Production's unknowns: what the contract leaves open, and the sandbox's answers to them.

The contract documents bodies better than statuses, scales and lifetimes. For each open
question the sandbox has a friendly default (a first run should just work) and a least
forgiving plausible answer; :meth:`SandboxConfig.pessimistic` takes all of the latter at
once. :func:`unknowns_banner` says which ones a sandbox meets and which its settings hide,
and :class:`UnknownAnswers` makes the per-answer choices (statuses in turn, nulls at a rate,
the run's confidence scale).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from facematch_async.sandbox._config import SandboxConfig

__all__ = [
    "PESSIMISTIC_NULL_CONFIDENCE",
    "PESSIMISTIC_PLAN",
    "PESSIMISTIC_REVOKE_RATE",
    "PESSIMISTIC_TOKEN_REFUSAL_STATUSES",
    "PESSIMISTIC_TOKEN_TTL",
    "PESSIMISTIC_VERDICT_STATUSES",
    "ConfidenceScale",
    "UnknownAnswers",
    "statuses",
    "unknowns_banner",
]

PESSIMISTIC_PLAN = "business"
"""The plan whose limits a pessimistic sandbox enforces unless told another."""
PESSIMISTIC_TOKEN_TTL = 10.0
"""Seconds a pessimistic sandbox's tokens live (Deepvue documents 24 hours)."""
PESSIMISTIC_REVOKE_RATE = 0.03
"""The share of facematch calls whose token a pessimistic sandbox revokes first."""
PESSIMISTIC_NULL_CONFIDENCE = 0.3
"""The share of v1 successes a pessimistic sandbox answers with ``"confidence": null``."""
PESSIMISTIC_VERDICT_STATUSES = (400, 200, 422)
"""``NO_FACE_FOUND``/``UNSUPPORTED_FILE_FORMAT`` statuses a pessimistic sandbox takes in turn:
undocumented; "4xx most likely, 200 included" (400, and 422 as FastAPI's own)."""
PESSIMISTIC_TOKEN_REFUSAL_STATUSES = (403, 401)
"""``Not a valid token`` statuses a pessimistic sandbox takes in turn ("most likely 403;
could be 401")."""


def statuses(value: int | tuple[int, ...]) -> tuple[int, ...]:
    """One status or several as a non-empty tuple of HTTP statuses.

    Raises:
        ValueError: empty, or not an HTTP status (100-599).
    """
    found = (value,) if isinstance(value, int) else tuple(value)
    if not found or not all(isinstance(s, int) and 100 <= s <= 599 for s in found):
        raise ValueError(f"expected HTTP statuses (100-599), got {value!r}")
    return found


@dataclass(frozen=True)
class ConfidenceScale:
    """The scale confidences are answered on, so no threshold can be tuned to the sandbox.

    The engine's 0-100 confidence ``c`` is answered as ``low + (high - low) * c / 100``:
    the engine's match threshold (50 for dlib) lands half-way, and a sure match near
    ``high``. v1 answers that divided by 100 when ``fraction`` (a 0-1 scale, as Azure's);
    v2 keeps whole numbers on 0-100, as documented.

    Attributes:
        low: what the engine's 0 becomes (0 to 100).
        high: what the engine's 100 becomes (above ``low``, at most 100).
        fraction: v1 answers on a 0-1 scale.
    """

    low: float = 0.0
    high: float = 100.0
    fraction: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(
                f"a confidence scale needs 0 <= low < high <= 100, got {self.low}-{self.high}"
            )

    @classmethod
    def draw(cls, rng: random.Random) -> ConfidenceScale:
        """A scale of the kind a pessimistic run takes: a sure match lands anywhere from
        60 to 100, the engine's threshold from 30 to 70, on 0-100 or 0-1 alike."""
        low = round(rng.uniform(0.0, 40.0), 1)
        high = round(rng.uniform(max(60.0, low + 30.0), 100.0), 1)
        return cls(low, high, fraction=rng.random() < 0.5)

    def apply(self, confidence: float, version: Literal[1, 2]) -> float | int:
        """``confidence`` (the engine's, 0-100) as a ``version`` answer says it."""
        mapped = self.low + (self.high - self.low) * confidence / 100.0
        if version == 2:
            return round(mapped)
        return round(mapped / 100.0, 4) if self.fraction else round(mapped, 2)

    def describe(self) -> str:
        """E.g. ``v1 on 0-1: the engine's 0-100 answered as 0.124-0.713 (its threshold at
        0.419); v2 12-71``."""
        middle = (self.low + self.high) / 2
        if self.fraction:
            v1 = f"v1 on 0-1: the engine's 0-100 answered as {self.low / 100:.3f}-"
            v1 += f"{self.high / 100:.3f} (its match threshold at {middle / 100:.3f})"
        else:
            v1 = f"v1 on 0-100: the engine's 0-100 answered as {self.low:g}-{self.high:g} "
            v1 += f"(its match threshold at {middle:.1f})"
        return f"{v1}; v2 {round(self.low)}-{round(self.high)}"


class UnknownAnswers:
    """The per-answer choices a config's unknowns make, for one running sandbox.

    Statuses are taken in turn (so a handful of calls meets each of them); nulls are drawn
    at their rate from ``config.seed``, one draw per v1 success, so a seeded run repeats.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self._verdict: Iterator[int] = itertools.cycle(statuses(config.verdict_status))
        self._token_refusal: Iterator[int] = itertools.cycle(statuses(config.token_refusal_status))
        self._null_rate = float(config.null_confidence)
        self._scale = config.confidence_scale
        self._random = random.Random(config.seed)  # noqa: S311 - test variety, not secrets

    def verdict_status(self) -> int:
        """The status of the next ``NO_FACE_FOUND``/``UNSUPPORTED_FILE_FORMAT`` answer."""
        return next(self._verdict)

    def token_refusal_status(self) -> int:
        """The status of the next ``Not a valid token`` answer."""
        return next(self._token_refusal)

    def confidence(self, engine_confidence: float, version: Literal[1, 2]) -> float | int | None:
        """The ``data.confidence`` of a success whose engine said ``engine_confidence``."""
        if version == 1:
            null = self._random.random() < self._null_rate  # drawn every time: runs repeat
            if null:
                return None
        if self._scale is not None:
            return self._scale.apply(engine_confidence, version)
        return float(engine_confidence) if version == 1 else round(engine_confidence)


def _rate_limit(config: SandboxConfig) -> tuple[str | None, str]:
    windows = config.rate_windows
    if windows:
        labels = ",".join(window.label for window in windows)
        named = isinstance(config.rate_limit, str) and config.rate_limit != labels
        plan = f"{config.rate_limit} ({labels})" if named else labels
        retry_after = "with" if config.retry_after else "without"
        return f"rate limit {plan}: sliding windows, 429s {retry_after} Retry-After", ""
    return None, "no rate limit: every plan allows 1-17 calls a second, so no 429 here"


def _null_confidence(config: SandboxConfig) -> tuple[str | None, str]:
    rate = float(config.null_confidence)
    if rate >= 1:
        return "v1 confidence is always null, as the vendor's only v1 example", ""
    if rate > 0:
        return f"v1 confidence is null in about {rate:.0%} of successes", ""
    return None, "v1 confidence is always a number (the vendor's only v1 example shows null)"


def _scale(config: SandboxConfig) -> tuple[str | None, str]:
    if config.confidence_scale is not None:
        return f"confidence on this run's own scale: {config.confidence_scale.describe()}", ""
    hidden = "confidence on the engine's own scale (a test-engine match is 98, two photos of "
    hidden += "one person about 69 with dlib): production's scale is undocumented"
    return None, hidden


def _uploads(config: SandboxConfig) -> tuple[str | None, str]:
    if config.strict_uploads:
        met = "file parts judged by file name and Content-Type too: a part named 'blob' or "
        return met + "sent as application/octet-stream gets UNSUPPORTED_FILE_FORMAT", ""
    hidden = "file parts judged by their bytes only: production may refuse a part named "
    return None, hidden + "'blob' or sent as application/octet-stream"


def _verdict_status(config: SandboxConfig) -> tuple[str | None, str]:
    found = statuses(config.verdict_status)
    if len(found) > 1:
        listed = ", ".join(map(str, found))
        return f"NO_FACE_FOUND and UNSUPPORTED_FILE_FORMAT answered {listed} in turn", ""
    others = _others(found, PESSIMISTIC_VERDICT_STATUSES)
    hidden = f"NO_FACE_FOUND and UNSUPPORTED_FILE_FORMAT always {found[0]}: their status is "
    return None, hidden + f"undocumented ({others} plausible too)"


def _token_refusal(config: SandboxConfig) -> tuple[str | None, str]:
    found = statuses(config.token_refusal_status)
    if len(found) > 1:
        return f"'Not a valid token' answered {', '.join(map(str, found))} in turn", ""
    others = _others(found, PESSIMISTIC_TOKEN_REFUSAL_STATUSES)
    return None, f"'Not a valid token' always {found[0]} (could be {others})"


def _others(found: tuple[int, ...], plausible: tuple[int, ...]) -> str:
    return " or ".join(str(status) for status in plausible if status not in found)


def _token_lifetime(config: SandboxConfig) -> tuple[str | None, str]:
    if config.token_ttl < 3600:
        return f"tokens live {config.token_ttl:g} s", ""
    return None, f"tokens live {config.token_ttl / 3600:g} h: a client that never renews passes"


def _revocations(config: SandboxConfig) -> tuple[str | None, str]:
    rate = config.faults.revoke_rate if config.faults is not None else 0.0
    if rate > 0:
        return f"about {rate:.0%} of calls have their token revoked first", ""
    return None, "tokens are never revoked under a client"


_UNKNOWNS = (
    _rate_limit,
    _null_confidence,
    _scale,
    _uploads,
    _verdict_status,
    _token_refusal,
    _token_lifetime,
    _revocations,
)


def unknowns_banner(config: SandboxConfig) -> str:
    """What the sandbox does about each of production's unknowns, for its start-up banner.

    Lists the unknowns the settings meet (at their least forgiving plausible value) and the
    ones they hide; with a ``seed``, how to repeat the run's draws.
    """
    met: list[str] = []
    hidden: list[str] = []
    for unknown in _UNKNOWNS:
        on, off = unknown(config)
        if on is not None:
            met.append(on)
        else:
            hidden.append(off)
    seed = f" (seed {config.seed})" if config.seed is not None else ""
    lines: list[str] = []
    if not hidden:
        lines.append(
            f"Pessimistic sandbox{seed}: every production unknown at its least forgiving "
            "plausible value:"
        )
    elif met:
        lines.append(f"Production's unknowns met here{seed}:")
    lines += [f"  - {line}" for line in met]
    if hidden:
        lines.append("These settings hide production's unknowns (--pessimistic meets them all):")
        lines += [f"  - {line}" for line in hidden]
    if config.seed is not None:
        lines.append(
            f"Repeat this run's draws with seed {config.seed} (the CLI's --seed, pytest's "
            "--facematch-seed)."
        )
    return "\n".join(lines)
