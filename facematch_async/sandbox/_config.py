"""The sandbox's settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from facematch_async.sandbox._choice import ENGINE_NAMES
from facematch_async.sandbox._engines import FaceEngine
from facematch_async.sandbox._random_faults import FaultConfig
from facematch_async.sandbox._ratelimit import RateWindow, parse_rate_limit

__all__ = ["SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Its repr never shows ``client_secret`` or ``jwt_secret``.

    Attributes:
        client_id: the one client the sandbox knows.
        client_secret: that client's secret (also its ``x-api-key``).
        token_ttl: access-token lifetime, seconds (Deepvue: 24 hours; a few seconds makes
            a client renew mid-run).
        inactive: the client is inactive: authorize and facematch answer 400
            ``{"detail": "Inactive client_id"}``.
        verdict_status: HTTP status of the ``NO_FACE_FOUND`` and ``UNSUPPORTED_FILE_FORMAT``
            answers, which Deepvue does not document (400 and 200 are both plausible).
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
        strict_uploads: also judge each file part by its file name's extension and its
            ``Content-Type`` (when it has one), as production may: ``blob``,
            ``application/octet-stream`` or ``photo.gif`` get ``UNSUPPORTED_FILE_FORMAT``
            even when the bytes are a JPEG.
        read_timeout: seconds a connection may take to send a request's headers, and again
            its body; past either bound it is closed (a body gets a 408 first). ``None``
            waits forever.
    """

    client_id: str
    client_secret: str = field(repr=False)
    token_ttl: float = 86400.0
    inactive: bool = False
    verdict_status: int = 400
    engine: FaceEngine | str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    jwt_secret: bytes | None = field(default=None, repr=False)
    rate_limit: str | Sequence[RateWindow] | None = None
    retry_after: bool = False
    faults: FaultConfig | None = None
    null_confidence: bool = False
    strict_uploads: bool = False
    read_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        if self.token_ttl <= 0:
            raise ValueError(f"token_ttl must be positive, got {self.token_ttl}")
        if not 100 <= self.verdict_status <= 599:
            raise ValueError(f"verdict_status must be an HTTP status, got {self.verdict_status}")
        if self.max_upload_bytes <= 0:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if isinstance(self.engine, str) and self.engine not in ENGINE_NAMES:
            names = ", ".join(ENGINE_NAMES)
            raise ValueError(f"engine must be one of {names}; got {self.engine!r}")
        if self.read_timeout is not None and self.read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive or None, got {self.read_timeout}")
        parse_rate_limit(self.rate_limit)  # a malformed spec fails here, not on a request

    @property
    def rate_windows(self) -> tuple[RateWindow, ...]:
        """``rate_limit`` as windows (empty for no limit)."""
        return parse_rate_limit(self.rate_limit)
