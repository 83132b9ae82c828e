"""The sandbox's settings."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from facematch_async.sandbox._choice import ENGINE_NAMES
from facematch_async.sandbox._engines import FaceEngine
from facematch_async.sandbox._random_faults import FaultConfig
from facematch_async.sandbox._ratelimit import RateWindow, parse_rate_limit
from facematch_async.sandbox._unknowns import (
    PESSIMISTIC_NULL_CONFIDENCE,
    PESSIMISTIC_PLAN,
    PESSIMISTIC_REVOKE_RATE,
    PESSIMISTIC_TOKEN_REFUSAL_STATUSES,
    PESSIMISTIC_TOKEN_TTL,
    PESSIMISTIC_VERDICT_STATUSES,
    ConfidenceScale,
    statuses,
)

__all__ = ["SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Its repr never shows ``client_secret`` or ``jwt_secret``.

    Attributes:
        client_id: the one client the sandbox knows.
        client_secret: that client's secret (also its ``x-api-key``).
        token_ttl: access-token lifetime, seconds (Deepvue: 24 hours; a few seconds makes
            a client renew mid-run).
        inactive: the client is inactive: authorize, and facematch for any request that
            names the client (its ``x-api-key`` or one of its tokens), answer 400
            ``{"detail": "Inactive client_id"}``.
        verdict_status: HTTP status of the ``NO_FACE_FOUND`` and ``UNSUPPORTED_FILE_FORMAT``
            answers, which Deepvue does not document (400 and 200 are both plausible); a
            tuple is taken in turn, answer after answer.
        token_refusal_status: HTTP status of ``Not a valid token`` (an expired, revoked or
            forged token): "most likely 403; could be 401"; a tuple is taken in turn.
        engine: compares the faces: an engine, or a name (``"test"``, ``"dlib"``, or
            ``"auto"``: dlib when the ``face`` extra is installed); ``None`` means
            :class:`TestEngine`.
        max_upload_bytes: the largest accepted file part; larger ones get 413.
        jwt_secret: the token signing key; ``None`` means a random key per server.
        rate_limit: per-key limits on the facematch routes: a plan (``"business"``), a spec
            (``"10/s,300/min"``), windows, or ``None`` for none. Enforced as sliding windows.
        retry_after: send ``Retry-After`` (whole seconds) with rate-limit 429s; Deepvue
            documents none, so off by default.
        faults: random faults to inject (see :class:`FaultConfig`); ``None`` for none.
        null_confidence: answer v1 successes with ``"confidence": null``, as the vendor's own
            v1 example does (the contract allows ``null`` or a number), so code that compares
            ``confidence`` without a ``None`` check fails here rather than in production.
            ``True`` always; a number from 0 to 1 is the share of successes (drawn from
            ``seed``).
        confidence_scale: answer confidences on another scale than the engine's (see
            :class:`ConfidenceScale`); ``None`` keeps the engine's 0-100.
        strict_uploads: also judge each file part by its file name's extension and its
            ``Content-Type`` (when it has one), as production may: ``blob``,
            ``application/octet-stream`` or ``photo.gif`` get ``UNSUPPORTED_FILE_FORMAT``
            even when the bytes are a JPEG.
        read_timeout: seconds a connection may take to send a request's headers (from its
            opening, or its last answer), and seconds its body may go quiet between two
            reads, as a proxy counts them (a steady slow upload is never cut); past either
            bound it is closed (a body gets a 408 first). ``None`` waits forever.
        seed: seeds the sandbox's own draws (which v1 successes answer ``null``); ``None``
            is unseeded. :class:`FaultConfig` has a seed of its own.
    """

    client_id: str
    client_secret: str = field(repr=False)
    token_ttl: float = 86400.0
    inactive: bool = False
    verdict_status: int | tuple[int, ...] = 400
    token_refusal_status: int | tuple[int, ...] = 403
    engine: FaceEngine | str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    jwt_secret: bytes | None = field(default=None, repr=False)
    rate_limit: str | Sequence[RateWindow] | None = None
    retry_after: bool = False
    faults: FaultConfig | None = None
    null_confidence: bool | float = False
    strict_uploads: bool = False
    read_timeout: float | None = 30.0
    confidence_scale: ConfidenceScale | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.token_ttl <= 0:
            raise ValueError(f"token_ttl must be positive, got {self.token_ttl}")
        for name in ("verdict_status", "token_refusal_status"):
            try:
                statuses(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} must be an HTTP status or a tuple of them, got {getattr(self, name)!r}"
                ) from None
        if not 0 <= self.null_confidence <= 1:
            raise ValueError(
                f"null_confidence must be a bool or a share from 0 to 1, got {self.null_confidence}"
            )
        if self.max_upload_bytes <= 0:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if isinstance(self.engine, str) and self.engine not in ENGINE_NAMES:
            names = ", ".join(ENGINE_NAMES)
            raise ValueError(f"engine must be one of {names}; got {self.engine!r}")
        if self.read_timeout is not None and self.read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive or None, got {self.read_timeout}")
        parse_rate_limit(self.rate_limit)  # a malformed spec fails here, not on a request

    @classmethod
    def pessimistic(
        cls, client_id: str, client_secret: str, *, seed: int | None = None, **fields: Any
    ) -> Self:
        """A sandbox with every production unknown at its least forgiving plausible value.

        At once: the plan's rate limits (``business`` unless ``rate_limit`` is given), v1
        ``confidence`` ``null`` in about 30% of successes, strict uploads (file name and
        ``Content-Type`` judged too), the verdict errors' status taken in turn from 400, 200
        and 422, ``Not a valid token`` from 403 and 401, a confidence scale of the run's own
        (drawn from ``seed``: see :class:`ConfidenceScale`), 10 s tokens, and about 3% of
        calls having their token revoked first. The start-up banner lists them.

        Args:
            client_id: the one client the sandbox knows.
            client_secret: that client's secret.
            seed: seeds every draw of the run (the scale, the nulls, the revocations);
                ``None`` picks one at random, which the banner shows so a run can be
                repeated.
            fields: any other :class:`SandboxConfig` field; a field given here wins over
                the pessimistic value. Given ``faults`` replace the revocations (give them a
                ``revoke_rate`` to keep some); unseeded, they take the run's ``seed``.
        """
        if seed is None:
            seed = random.SystemRandom().randrange(1_000_000)
        faults = fields.pop("faults", FaultConfig(revoke_rate=PESSIMISTIC_REVOKE_RATE))
        if faults is not None and faults.seed is None:
            faults = dataclasses.replace(faults, seed=seed)
        settings: dict[str, Any] = {
            "rate_limit": PESSIMISTIC_PLAN,
            "null_confidence": PESSIMISTIC_NULL_CONFIDENCE,
            "strict_uploads": True,
            "verdict_status": PESSIMISTIC_VERDICT_STATUSES,
            "token_refusal_status": PESSIMISTIC_TOKEN_REFUSAL_STATUSES,
            "confidence_scale": ConfidenceScale.draw(random.Random(seed)),  # noqa: S311
            "token_ttl": PESSIMISTIC_TOKEN_TTL,
            "faults": faults,
            "seed": seed,
        }
        settings.update(fields)
        return cls(client_id, client_secret, **settings)

    @property
    def rate_windows(self) -> tuple[RateWindow, ...]:
        """``rate_limit`` as windows (empty for no limit)."""
        return parse_rate_limit(self.rate_limit)
