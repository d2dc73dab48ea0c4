"""Is a (set, target) inside a maintenance window at time *now*? Pure, clock injected.

A window silences notifications (and reminders) but never state or history: runs
still judge targets and transitions are still recorded.

Recurring windows are ``cron`` + ``duration`` in an IANA ``timezone``. The window
covering *now*, if any, is the one that opened last at or before *now*: every opening
lasts the same ``duration``, so an earlier one cannot cover *now* when the latest does
not. cronsim walks back from *now* in the window's zone, with Debian cron's rules at
daylight-saving changes (a start in the skipped hour opens when the clock jumps, one in
the repeated hour opens once); durations are elapsed time, so a 1 h window that opens
just before the clocks go back still lasts 60 real minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim

from opsq.core.config.alerts import MaintenanceWindow


@dataclass(frozen=True)
class ActiveWindow:
    name: str
    start: float
    end: float


def _applies(window: MaintenanceWindow, set_name: str, target_name: str) -> bool:
    if window.sets is not None and set_name not in window.sets:
        return False
    return window.targets is None or target_name in window.targets


def opening(window: MaintenanceWindow, now: float) -> tuple[float, float] | None:
    """(start, end) of the opening of *window* that covers *now*, or None."""
    if window.cron is None or window.duration is None:
        if window.start is None or window.end is None:  # the model refuses this
            raise ValueError("a maintenance window needs start/end or cron/duration")
        start, end = window.start.timestamp(), window.end.timestamp()
        return (start, end) if start <= now < end else None
    latest = _latest_start(window.cron, ZoneInfo(window.timezone), now)
    if latest is None:
        return None
    start = latest
    end = start + window.duration
    return (start, end) if start <= now < end else None


def active_window(
    windows: Mapping[str, MaintenanceWindow], set_name: str, target_name: str, now: float
) -> ActiveWindow | None:
    """The window silencing (set, target) at *now*; the one ending last if several."""
    found: ActiveWindow | None = None
    for name, window in windows.items():
        if not _applies(window, set_name, target_name):
            continue
        span = opening(window, now)
        if span is not None and (found is None or span[1] > found.end):
            found = ActiveWindow(name, span[0], span[1])
    return found


_SEARCH_AHEAD = timedelta(hours=2)
"""Longer than any daylight-saving shift (at most 1 h today, 2 h historically)."""
_MAX_SKIPPED = 2000


def _latest_start(cron: str, zone: ZoneInfo, now: float) -> float | None:
    """The last cron match at or before *now* (epoch seconds), in *zone*.

    cronsim iterates by wall-clock time. In the repeated hour after the clocks go back,
    a match earlier in real time can be later on the wall clock (02:30 CEST happened
    before 02:15 CET), so the reverse search starts two wall-clock hours ahead and
    skips the matches that lie after *now*.
    """
    wall = datetime.fromtimestamp(now, UTC).astimezone(zone).replace(fold=0) + _SEARCH_AHEAD
    for skipped, match in enumerate(CronSim(cron, wall, reverse=True)):
        if match.timestamp() <= now:
            return match.timestamp()
        if skipped > _MAX_SKIPPED:
            break
    return None
