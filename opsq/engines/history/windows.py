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


@dataclass
class TargetWindows:
    """One target's overview numbers: counts per window, 24 h latency, hourly means."""

    counts: dict[str, Counts]
    latency: Acc
    spark: list[float | None]

    @classmethod
    def empty(cls, names: Iterable[str]) -> TargetWindows:
        return cls({w: Counts() for w in names}, Acc(0), [None] * WINDOWS["24h"][1])

    def add(self, member: str, windows: list[str], acc: Acc, first_hour: int) -> None:
        for window in windows:
            counts = self.counts[window]
            counts.available += acc.up + acc.degraded
            counts.down += acc.down
        if member[0] == "h":
            self.latency.merge(acc)
            self.spark[int(member[1:]) - first_hour] = acc.mean()

    def copy(self) -> TargetWindows:
        latency = Acc(0)
        latency.merge(self.latency)
        counts = {w: Counts(c.available, c.down) for w, c in self.counts.items()}
        return TargetWindows(counts, latency, list(self.spark))


def plan(names: Iterable[str], now: float) -> dict[str, list[str]]:
    """Blob member -> the windows (of *names*) that include that period.

    The 24 h latency and sparkline come from the ``24h`` window's hours, so it is always
    part of the plan."""
    found: dict[str, list[str]] = {}
    for window in {"24h", *names}:
        kind, span = periods(window, now)
        for period in span:
            found.setdefault(f"{kind}{period}", []).append(window)
    return found


def sealed_windows(
    blobs: dict[str, dict[int, Acc]], names: Iterable[str], now: float
) -> dict[int, TargetWindows]:
    """Every target's numbers over the sealed blobs (roster id -> numbers), in one pass
    over each blob: a set's overview costs O(targets x blobs) once per hour, not per view.
    The ``24h`` window is always included (it gives the latency and the sparkline)."""
    wanted = list({"24h", *names})
    first_hour = periods("24h", now)[1].start
    out: dict[int, TargetWindows] = {}
    for member, windows_of in plan(wanted, now).items():
        blob = blobs.get(member)
        if blob is None:
            continue
        kept = windows_of
        for roster_id, acc in blob.items():
            numbers = out.get(roster_id)
            if numbers is None:
                numbers = out[roster_id] = TargetWindows.empty(wanted)
            numbers.add(member, kept, acc, first_hour)
    return out


def with_live(
    sealed: TargetWindows | None,
    live: Iterable[tuple[str, Acc]],
    sealed_members: set[str],
    schedule: dict[str, list[str]],
    now: float,
) -> TargetWindows:
    """*sealed* plus the live hour and day, (kind, acc) pairs, when not sealed yet;
    *schedule* is :func:`plan` of the windows *sealed* was built for."""
    windows_of = {w for ws in schedule.values() for w in ws}
    numbers = sealed.copy() if sealed is not None else TargetWindows.empty(windows_of)
    first_hour = periods("24h", now)[1].start
    for kind, acc in live:
        member = f"{kind}{acc.period}"
        if acc.runs and member in schedule and member not in sealed_members:
            numbers.add(member, schedule[member], acc, first_hour)
    return numbers
