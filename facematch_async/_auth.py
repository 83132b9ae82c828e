"""Access tokens: when a token is due for renewal, and single-flight refresh.

A token is renewed a safety margin before it expires. The margin scales with the
token's lifetime (a tenth of it, at most five minutes): a 24 h token is renewed five
minutes early, a 2 s token 0.2 s early, so short-lived tokens are not renewed on every call.
A caller may ask for a token that stays valid a while longer (``get(ahead=...)``: the time
its request takes to reach the API), and the expiry is read on the API's clock when its
``Date`` header shows this machine's clock is off by more than a couple of seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from facematch_async.errors import APIResponseValidationError

__all__ = ["AccessToken", "StaticTokenSource", "TokenManager", "token_from_response"]

logger = logging.getLogger("facematch_async")

MAX_REFRESH_MARGIN = 300.0  # seconds: how early a long-lived token is renewed
REFRESH_FRACTION = 0.1  # of a token's lifetime: how early a short-lived token is renewed
SKEW_TOLERANCE = 2.0  # seconds: a Date header this far off is the clock, not its rounding


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and the monotonic time at which it should be renewed.

    ``renew_at`` is ``None`` when the expiry is unknown: the token is then used until the
    API rejects it.
    """

    value: str = field(repr=False)
    renew_at: float | None

    def is_fresh(self, now: float, ahead: float = 0.0) -> bool:
        """Whether the token may still be sent at monotonic time ``now``, and will still be
        ``ahead`` seconds later."""
        return self.renew_at is None or now + ahead < self.renew_at


def _jwt_claims(token: str) -> dict[str, object]:
    """The JWT's payload claims, unverified (only the server can verify), or ``{}``."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment))
    except (ValueError, binascii.Error, RecursionError):  # nested too deep: unreadable too
        return {}
    return claims if isinstance(claims, dict) else {}


def _parse_expiry(expiry: str | None) -> float | None:
    """Epoch seconds of an ISO-8601 ``expiry`` (a naive one is taken as UTC), or ``None``."""
    if not expiry:
        return None
    try:
        when = datetime.fromisoformat(expiry)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _claim_seconds(claims: dict[str, object], name: str) -> float | None:
    """A numeric time claim as float seconds, ``None`` when absent or not a number.

    Raises:
        ValueError: the number is out of a float's range (``10**400``) or not finite.
    """
    value = claims.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"the token's {name!r} claim is out of range") from None
    if not math.isfinite(seconds):
        raise ValueError(f"the token's {name!r} claim is not a finite number")
    return seconds


def token_lifetime(token: str, expiry: str | None, now_wall: float) -> float | None:
    """Seconds the token has left, or ``None`` when it cannot be told.

    Raises:
        ValueError: ``exp``, ``iat`` or the lifetime they give is out of range.

    The ``expiry`` field (else the JWT's ``exp``) is compared with the local clock. When
    the JWT also has ``iat``, ``exp - iat`` (both from the server's clock) bounds the
    answer, so a local clock that runs behind cannot stretch it, and one that runs ahead
    (the token looks expired on arrival) cannot make every call renew it.
    """
    claims = _jwt_claims(token)
    exp, iat = _claim_seconds(claims, "exp"), _claim_seconds(claims, "iat")
    expires_at = _parse_expiry(expiry)
    if expires_at is None:
        expires_at = exp
    issued_for = exp - iat if exp is not None and iat is not None else None
    if expires_at is None:
        lifetime = issued_for
    elif issued_for is None:
        lifetime = expires_at - now_wall
    elif expires_at - now_wall <= 0:
        # ``iat`` is whole seconds, so up to a second of the lifetime may already be gone.
        lifetime = issued_for - 1.0
    else:
        lifetime = min(expires_at - now_wall, issued_for)
    if not all(math.isfinite(value) for value in (issued_for, lifetime) if value is not None):
        raise ValueError("the token's lifetime is out of range")  # e.g. exp 1e308, iat -1e308
    return lifetime


def token_from_response(
    token: str, expiry: str | None, requested_at: float, server_now: float | None = None
) -> AccessToken:
    """Build an :class:`AccessToken`; ``requested_at`` is the monotonic time of the request,
    ``server_now`` the API's clock when it answered (its ``Date`` header), if known.

    The expiry is the API's, on its clock: when this machine's clock is off by more than
    :data:`SKEW_TOLERANCE` (a VM whose clock drifted), the lifetime is counted from the
    API's time instead, so that a clock 20 s behind does not send tokens the API expired.

    Raises:
        APIResponseValidationError: the token's ``exp`` or ``iat`` is out of range
            (``10**400``, not finite).
    """
    now = time.time()
    if server_now is not None and abs(server_now - now) > SKEW_TOLERANCE:
        logger.warning(
            "this machine's clock is %.0f s %s the API's (its Date header): token expiry is "
            "counted on the API's clock",
            abs(server_now - now),
            "behind" if server_now > now else "ahead of",
        )
        now = server_now
    try:
        lifetime = token_lifetime(token, expiry, now)
    except ValueError as exc:  # its text names the claim, never the token
        raise APIResponseValidationError(f"authorize response: {exc}") from None
    if lifetime is None:
        return AccessToken(token, None)
    if lifetime <= 0:
        logger.warning(
            "the access token's expiry is already past by the local clock (clock skew?); "
            "using it until the API rejects it"
        )
        return AccessToken(token, None)
    margin = min(MAX_REFRESH_MARGIN, lifetime * REFRESH_FRACTION)
    return AccessToken(token, requested_at + lifetime - margin)


class StaticTokenSource:
    """A fixed token given by the user (``access_token=``): never refreshed."""

    can_refresh = False

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenSource()"

    async def get(self, ahead: float = 0.0) -> str:
        """Return the fixed token."""
        return self._token

    def invalidate(self, token: str) -> None:
        """Do nothing: a fixed token cannot be replaced."""

    def cached(self) -> str | None:
        """The fixed token."""
        return self._token

    def close(self) -> None:
        """Nothing to release."""


class TokenManager:
    """Hands out a fresh token; one authorize call serves every concurrent caller.

    Args:
        fetch: Performs the authorize call and returns the new token.
        clock: Monotonic clock (seconds), replaceable in tests.
    """

    can_refresh = True

    def __init__(
        self,
        fetch: Callable[[], Awaitable[AccessToken]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: AccessToken | None = None
        self._flight: asyncio.Future[AccessToken] | None = None

    def __repr__(self) -> str:
        return f"TokenManager(has_token={self._token is not None})"

    def cached(self) -> str | None:
        """The cached token's value, fresh or not, or ``None``."""
        return None if self._token is None else self._token.value

    async def get(self, ahead: float = 0.0) -> str:
        """Return a token that is not due for renewal, and will not be for ``ahead`` more
        seconds (the time a request takes to reach the API), fetching one if needed.

        Concurrent callers share one authorize call (and its failure). The call runs in
        its own task, so a caller that is cancelled does not cancel it for the others.
        """
        token = self._token
        if token is not None and token.is_fresh(self._clock(), ahead):
            return token.value
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._refresh())
            self._flight.add_done_callback(_consume_exception)
        fresh = await asyncio.shield(self._flight)
        return fresh.value

    async def _refresh(self) -> AccessToken:
        try:
            token = await self._fetch()
            self._token = token
            return token
        finally:
            self._flight = None

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after the API rejected it, unless it was already replaced."""
        if self._token is not None and self._token.value == token:
            self._token = None

    def close(self) -> None:
        """Cancel an authorize call in flight."""
        if self._flight is not None:
            self._flight.cancel()


def _consume_exception(future: asyncio.Future[AccessToken]) -> None:
    # Every waiter sees the failure; this only silences "exception was never retrieved"
    # when all of them were cancelled first.
    if not future.cancelled():
        future.exception()
