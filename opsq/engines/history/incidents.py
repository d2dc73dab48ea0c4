"""Incidents: a target's time out of ``up``, built from its state transitions.

Pure. An incident opens at a transition into ``degraded`` or ``down`` while none is
open, follows every further transition (``degraded`` -> ``down`` escalates it: the
state, reason and detail become the worse ones), and closes at the transition back to
``up``. It keeps the locations that saw the target failing in any of its transitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opsq.core.records import Record

FAILING = ("degraded", "down")


@dataclass
class Incident(Record):
    id: str
    """The id of the transition that opened it."""
    set: str
    target: str
    name: str
    url: str
    state: str
    """The worst state reached: ``degraded`` or ``down``."""
    started_at: float
    ended_at: float | None = None
    reason: str = ""
    detail: str | None = None
    locations: list[str] = field(default_factory=list)
    transitions: int = 1

    def duration(self, now: float) -> float:
        return (self.ended_at if self.ended_at is not None else now) - self.started_at


def _seen_by(locations: Mapping[str, Any]) -> list[str]:
    return sorted(
        name
        for name, result in locations.items()
        if isinstance(result, Mapping) and result.get("verdict") in FAILING
    )


def follow(open_incident: Incident | None, change: Mapping[str, Any]) -> Incident | None:
    """The incident after one transition (a dict as :class:`Transition.to_dict`), or
    None when the transition neither opens nor touches one."""
    to_state = change["to_state"]
    seen = _seen_by(change.get("locations") or {})
    if open_incident is None:
        if to_state not in FAILING:
            return None
        return Incident(
            id=change["id"],
            set=change["set"],
            target=change["target"],
            name=change["name"],
            url=change["url"],
            state=to_state,
            started_at=change["at"],
            reason=change["reason"],
            detail=change.get("detail"),
            locations=seen,
        )
    incident = Incident.from_dict(open_incident.to_dict())
    incident.transitions += 1
    incident.locations = sorted(set(incident.locations) | set(seen))
    if to_state == "down" and incident.state != "down":
        incident.state, incident.reason, incident.detail = (
            "down",
            change["reason"],
            change.get("detail"),
        )
    if to_state not in FAILING:
        incident.ended_at = change["at"]
    return incident
