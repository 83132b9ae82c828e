"""Deepvue's plans and the rate-limit spec syntax: contract data, shared by the client's
pacing and the sandbox's enforcement (neither depends on the other's machinery).

Deepvue counts requests per API key in a per-second, a per-minute and a per-day window at
once; exceeding any one gives 429 (API reference, section 5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PLANS", "Window", "parse_rate_limit"]


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` requests in any ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a window's limit must be at least 1, not {self.limit}")
        if self.period <= 0:
            raise ValueError(f"a window's period must be positive, not {self.period}")

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """A short name such as ``"2/s"``, ``"100/min"``, ``"10000/day"`` or ``"3/0.5s"``."""
        for unit, seconds in (("day", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{self.limit}/{unit}"
        return f"{self.limit}/{self.period:g}s"


_DAY = 86400.0
PLANS: dict[str, tuple[Window, ...]] = {
    "starter": (Window(1, 1.0), Window(30, 60.0), Window(1000, _DAY)),
    "business": (Window(2, 1.0), Window(100, 60.0), Window(10000, _DAY)),
    "growth": (Window(5, 1.0), Window(500, 60.0), Window(20000, _DAY)),
    "enterprise": (Window(17, 1.0), Window(1000, 60.0), Window(50000, _DAY)),
}
"""Deepvue's documented limits per plan (API reference, section 5)."""

_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
_UNITS.update(d=_DAY, day=_DAY)
_PART = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*")
_MOST_PER_WINDOW = 1_000_000_000  # requests: far above any plan, far below an overflow
_LONGEST_WINDOW = 366 * _DAY  # seconds: longer would overflow Redis's integer times


def parse_rate_limit(spec: str | Sequence[Window] | None) -> tuple[Window, ...]:
    """Turn a plan name, a custom spec or windows into windows; ``None``/``"none"`` is no limit.

    A custom spec is comma-separated ``LIMIT/[N]UNIT`` parts, units ``s``, ``min``, ``h``,
    ``day``: ``"10/s,300/min,20000/day"``, or ``"5/0.5s"`` for scaled-down tests.

    Raises:
        ValueError: an unknown plan or a malformed spec.
    """
    if spec is None:
        return ()
    if not isinstance(spec, str):
        return tuple(spec)
    name = spec.strip().lower()
    if not name:
        # An empty setting (`DEEPVUE_RATE_LIMIT=` in a manifest) must not quietly turn pacing off.
        raise ValueError("the rate limit is empty: give a plan, a spec, or 'none' for no limit")
    if name in ("none", "off", "unlimited"):
        return ()
    if name in PLANS:
        return PLANS[name]
    windows = []
    for part in name.split(","):
        found = _PART.fullmatch(part)
        if found is None or found.group(3) not in _UNITS:
            raise ValueError(
                f"rate limit {spec!r}: expected a plan ({', '.join(PLANS)}), 'none', or "
                "parts like '10/s,300/min,20000/day'"
            )
        count, multiple, unit = found.groups()
        if int(count) > _MOST_PER_WINDOW:
            raise ValueError(
                f"rate limit {spec!r}: {count} is more than any plan allows in a window "
                f"(at most {_MOST_PER_WINDOW:,}); use 'none' for no limit"
            )
        period = float(multiple or 1) * _UNITS[unit]
        if period > _LONGEST_WINDOW:
            raise ValueError(f"rate limit {spec!r}: a window longer than a year is not a plan")
        windows.append(Window(int(count), period))
    return tuple(windows)
