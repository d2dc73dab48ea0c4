"""Uptime windows and period lookups over rollups: pure, shared by reader and tests.

Windows (documented in the README, matched by the brute-force test):

- ``24h``: the current hour and the 23 before it (hourly rollups);
- ``7d``, ``30d``, ``90d``: today (UTC, so far) and the 6, 29 or 89 days before it
  (daily rollups).

A period's rollup comes from its sealed blob, or, while it is still live (the hour or
day of the set's last run), from the live accumulator. No raw verdict is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opsq.engines.history.rollup import Acc

HOUR_S = 3600
DAY_S = 86400
WINDOWS: dict[str, tuple[str, int]] = {
    "24h": ("h", 24),
    "7d": ("d", 7),
    "30d": ("d", 30),
    "90d": ("d", 90),
}
"""name -> (period kind, number of periods ending with the current one)."""

Lookup = Callable[[str, int], Acc | None]
"""(kind ``h``/``d``, period) -> that period's rollup of one target, if any."""


def current(kind: str, now: float) -> int:
    return int(now // (HOUR_S if kind == "h" else DAY_S))


def periods(window: str, now: float) -> tuple[str, range]:
    """The kind and the periods (oldest first) a window covers at *now*."""
    kind, count = WINDOWS[window]
    last = current(kind, now)
    return kind, range(last - count + 1, last + 1)


def members(windows: Iterable[str], now: float) -> set[str]:
    """The blob members (``h<hour>``/``d<day>``) the windows need, the live ones included."""
    needed: set[str] = set()
    for window in windows:
        kind, span = periods(window, now)
        needed.update(f"{kind}{p}" for p in span)
    return needed


@dataclass
class Counts:
    available: int = 0
    down: int = 0

    @property
    def uptime(self) -> float | None:
        total = self.available + self.down
        return self.available / total if total else None


def counts(lookup: Lookup, window: str, now: float) -> Counts:
    """Runs up-or-degraded vs down over *window* (unknown runs are not judged)."""
    kind, span = periods(window, now)
    result = Counts()
    for period in span:
        acc = lookup(kind, period)
        if acc is not None:
            result.available += acc.up + acc.degraded
            result.down += acc.down
    return result


def merged(lookup: Lookup, window: str, now: float) -> Acc:
    """Everything over *window* merged into one accumulator (latency percentiles too)."""
    kind, span = periods(window, now)
    total = Acc(0)
    for period in span:
        acc = lookup(kind, period)
        if acc is not None:
            total.merge(acc)
    return total
