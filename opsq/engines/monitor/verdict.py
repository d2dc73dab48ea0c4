"""From stored probe results to one verdict per target: per location, then by quorum.

Pure functions, no I/O. A location's result is judged ``up``, ``degraded`` (up, but
past a warning line: ``expect.degraded_latency`` or ``expect.cert_warn_days``) or
``down``; a location with no result is ``missing``. The target's verdict:

- ``down`` when at least ``quorum`` locations report it down;
- ``degraded`` when at least ``quorum`` locations report it degraded or down;
- ``up`` otherwise;
- ``unknown`` when fewer than ``quorum`` locations answered at all. A missing location
  is never counted as failing (a stopped worker is not an outage of the target), and
  ``unknown`` never changes state (:mod:`.state`).

The reason is a category people can act on: the probe's error kind for ``down``
(``dns``, ``connect``, ``tls``, ``timeout``, ``status``...), ``latency`` or ``cert``
for ``degraded``, ``ok`` for ``up`` and ``no_quorum`` for ``unknown``; with several
failing locations, the category most of them report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["up", "degraded", "down"]
Verdict = Literal["up", "degraded", "down", "unknown"]
LocationVerdict = Literal["up", "degraded", "down", "missing"]
SEVERITY: dict[str, int] = {"up": 0, "degraded": 1, "down": 2}
DETAIL_MAX = 300
"""Error texts are cut to this many characters in states, transitions and messages."""


@dataclass(frozen=True)
class WarningLines:
    """The thresholds that make an up target ``degraded`` (None: not checked)."""

    degraded_latency: float | None = None
    cert_warn_days: float | None = None


@dataclass(frozen=True)
class LocationResult:
    """One location's judgement of one target in one run."""

    verdict: LocationVerdict
    reason: str
    detail: str | None = None
    duration_s: float | None = None
    status_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail,
            "duration_s": self.duration_s,
            "status_code": self.status_code,
        }


MISSING = LocationResult("missing", "missing", "no result before the run's deadline")


@dataclass(frozen=True)
class TargetVerdict:
    verdict: Verdict
    reason: str
    detail: str | None
    locations: dict[str, LocationResult] = field(default_factory=dict)

    def locations_dict(self) -> dict[str, dict[str, Any]]:
        return {name: result.to_dict() for name, result in self.locations.items()}


def _reason_of(error_kind: str | None) -> str:
    # Older engines said "5xx" where newer ones say "status": one category for people.
    if error_kind in (None, ""):
        return "other"
    return "status" if error_kind == "5xx" else str(error_kind)


def _cut(text: object) -> str | None:
    if text is None:
        return None
    value = str(text)
    return value if len(value) <= DETAIL_MAX else value[: DETAIL_MAX - 3] + "..."


def judge_result(result: Mapping[str, Any], lines: WarningLines) -> LocationResult:
    """A stored probe result (the engine's dict) as up / degraded / down."""
    duration = result.get("duration_s")
    status = result.get("status_code")
    if not result.get("up"):
        reason = _reason_of(result.get("error_kind"))
        return LocationResult("down", reason, _cut(result.get("error")), duration, status)
    if lines.degraded_latency is not None and (duration or 0.0) > lines.degraded_latency:
        detail = f"took {duration:.3f}s, over degraded_latency {lines.degraded_latency:g}s"
        return LocationResult("degraded", "latency", detail, duration, status)
    days = result.get("cert_days_left")
    if lines.cert_warn_days is not None and days is not None and days < lines.cert_warn_days:
        detail = f"certificate expires in {days:.1f} days (cert_warn_days {lines.cert_warn_days:g})"
        return LocationResult("degraded", "cert", detail, duration, status)
    return LocationResult("up", "ok", None, duration, status)


def combine(
    results: Mapping[str, LocationResult], locations: Sequence[str], quorum: int
) -> TargetVerdict:
    """The target's verdict from its locations' results (absent ones are missing)."""
    if len(locations) == 1 and quorum == 1:
        return _one_location(locations[0], results.get(locations[0], MISSING))
    per_location = {name: results.get(name, MISSING) for name in locations}
    answered = [r for r in per_location.values() if r.verdict != "missing"]
    if len(answered) < quorum:
        detail = f"{len(answered)} of {len(locations)} location(s) answered, quorum is {quorum}"
        return TargetVerdict("unknown", "no_quorum", detail, per_location)
    down = [r for r in answered if r.verdict == "down"]
    bad = [r for r in answered if r.verdict in ("down", "degraded")]
    if len(down) >= quorum:
        return _failing("down", down, per_location)
    if len(bad) >= quorum:
        return _failing("degraded", [r for r in bad if r.verdict == "degraded"] or bad,
                        per_location)  # fmt: skip
    return TargetVerdict("up", "ok", None, per_location)


def _one_location(name: str, result: LocationResult) -> TargetVerdict:
    """:func:`combine` for one location and quorum 1 (most sets), without the lists: the
    location's own verdict, reason and detail (called once per target of every run)."""
    verdict = result.verdict
    if verdict == "missing":
        return TargetVerdict("unknown", "no_quorum", "0 of 1 location(s) answered, quorum is 1",
                             {name: result})  # fmt: skip
    if verdict == "up":
        return TargetVerdict("up", "ok", None, {name: result})
    return TargetVerdict(verdict, result.reason, result.detail, {name: result})


def _failing(
    verdict: Verdict, failing: list[LocationResult], per_location: dict[str, LocationResult]
) -> TargetVerdict:
    if len(failing) == 1:  # one location (most sets): no vote to count
        return TargetVerdict(verdict, failing[0].reason, failing[0].detail, per_location)
    reason = Counter(r.reason for r in failing).most_common(1)[0][0]
    detail = next(r.detail for r in failing if r.reason == reason)
    return TargetVerdict(verdict, reason, detail, per_location)
