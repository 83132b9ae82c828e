"""The sandbox's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from facematch_async.sandbox._engines import FaceEngine

__all__ = ["SandboxConfig"]


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Its repr never shows ``client_secret`` or ``jwt_secret``.

    Attributes:
        client_id: the one client the sandbox knows.
        client_secret: that client's secret (also its ``x-api-key``).
        token_ttl: access-token lifetime, seconds (Deepvue: 24 hours).
        inactive: the client is inactive: authorize and facematch answer 400
            ``{"detail": "Inactive client_id"}``.
        verdict_status: HTTP status of the ``NO_FACE_FOUND`` and ``UNSUPPORTED_FILE_FORMAT``
            answers, which Deepvue does not document (400 and 200 are both plausible).
        engine: compares the faces; ``None`` means :class:`TestEngine`.
        max_upload_bytes: the largest accepted file part; larger ones get 413.
        jwt_secret: the token signing key; ``None`` means a random key per server.
    """

    client_id: str
    client_secret: str = field(repr=False)
    token_ttl: float = 86400.0
    inactive: bool = False
    verdict_status: int = 400
    engine: FaceEngine | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    jwt_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token_ttl <= 0:
            raise ValueError(f"token_ttl must be positive, got {self.token_ttl}")
        if not 100 <= self.verdict_status <= 599:
            raise ValueError(f"verdict_status must be an HTTP status, got {self.verdict_status}")
        if self.max_upload_bytes <= 0:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
