"""Access tokens: real HS256 JWTs, issued, verified and revoked by the sandbox."""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

__all__ = ["IssuedToken", "TokenAuthority"]

_ALGORITHM = "HS256"
_PRUNE_AT = 1024  # tokens remembered before expired ones are pruned


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token and its expiry.

    Attributes:
        access_token: the encoded JWT.
        exp: expiry, integer epoch seconds (the JWT's ``exp`` claim).
    """

    access_token: str
    exp: int

    @property
    def expiry(self) -> str:
        """``exp`` as Deepvue formats it: ISO-8601 UTC with a trailing ``Z``."""
        return datetime.fromtimestamp(self.exp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenAuthority:
    """Issues and checks the tokens of one sandbox client.

    Args:
        client_id: the only ``sub`` a valid token may carry.
        ttl: token lifetime in seconds.
        secret: HMAC key; a random one when ``None``.
    """

    def __init__(self, client_id: str, ttl: float, secret: bytes | None = None) -> None:
        self._client_id = client_id
        self._ttl = ttl
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        # jti -> exp. Expired entries are pruned now and then: an expired token fails
        # anyway, and a long run with short-lived tokens must not grow these forever.
        self._issued: dict[str, int] = {}
        self._revoked: dict[str, int] = {}
        self._prune_at = _PRUNE_AT

    def issue(self) -> IssuedToken:
        """Sign a new token for the client, valid for ``ttl`` seconds from now."""
        now = time.time()
        exp = int(now + self._ttl)
        jti = uuid.uuid4().hex
        claims = {"sub": self._client_id, "iat": int(now), "exp": exp, "jti": jti}
        token = jwt.encode(claims, self._secret, algorithm=_ALGORITHM)
        if len(self._issued) >= self._prune_at:
            self._prune(now)
            # Many live tokens: prune less often, so issuing stays cheap on average.
            self._prune_at = max(_PRUNE_AT, 2 * len(self._issued))
        self._issued[jti] = exp
        return IssuedToken(access_token=token, exp=exp)

    def _prune(self, now: float) -> None:
        """Forget tokens that have expired."""
        for seen in (self._issued, self._revoked):
            for jti in [jti for jti, exp in seen.items() if exp <= now]:
                del seen[jti]

    def verify(self, token: str) -> bool:
        """Whether ``token`` is a live token of this client.

        Rejects a bad signature, any algorithm but HS256 (``none`` included), an expired or
        revoked token, a token for another ``sub`` and a token missing a claim.
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],  # pinning the algorithm is what defeats `alg: none`
                options={"require": ["sub", "exp", "iat", "jti"]},
            )
        except jwt.InvalidTokenError:
            return False
        return claims["sub"] == self._client_id and claims["jti"] not in self._revoked

    def revoke(self, token: str) -> None:
        """Reject ``token`` from now on; tokens this authority never signed are ignored."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={"verify_exp": False},  # an expired token may still be revoked
            )
        except jwt.InvalidTokenError:
            return
        jti, exp = claims.get("jti"), claims.get("exp")
        if isinstance(jti, str) and isinstance(exp, int):
            self._revoked[jti] = exp

    def revoke_all(self) -> None:
        """Reject every token issued so far; later ones are unaffected."""
        self._revoked.update(self._issued)
