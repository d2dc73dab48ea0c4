"""The state machine of one (set, target): ``up``, ``degraded`` or ``down``.

Pure: :func:`advance` takes the stored state and one run's verdict and returns the new
state and, when the state changed, a :class:`Transition`. Storage and exactly-once
application live in :mod:`.store`.

Rules (the README's "Target state" section says the same):

- A state keeps the last :data:`~opsq.core.config.probes.MAX_THRESHOLD` known verdicts.
  ``unknown`` verdicts (no quorum) are ignored: they neither count nor break a streak.
- **Worse**: the state moves to the worst state S such that the last
  ``failure_threshold`` verdicts were all at least as bad as S. So ``up`` needs
  ``failure_threshold`` consecutive ``degraded``-or-worse verdicts to become
  ``degraded``, and ``failure_threshold`` consecutive ``down`` ones to become ``down``.
- **Better**: otherwise it moves to the best state S such that the last
  ``success_threshold`` verdicts were all at least as good as S.
- **New targets** start ``unknown`` (never judged): the first ``up`` verdict makes them
  ``up`` at once; ``degraded``/``down`` need ``failure_threshold`` verdicts as above.
- **Order**: a run older than the last one applied to the target is ignored (two runs
  of a set can finish out of order when a location is slow).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from opsq.core.config.probes import MAX_THRESHOLD
from opsq.core.records import Record
from opsq.engines.monitor.verdict import SEVERITY, TargetVerdict

UNKNOWN = "unknown"
"""The state of a target no run has judged yet (never the result of a transition)."""


@dataclass(frozen=True)
class Thresholds:
    failure: int = 3
    success: int = 2


@dataclass
class TargetState(Record):
    """What Redis keeps per (set, target); JSON through :meth:`to_dict`."""

    name: str
    url: str
    state: str = UNKNOWN
    since: float = 0.0
    reason: str = ""
    detail: str | None = None
    recent: list[str] = field(default_factory=list)
    last_run: str = ""
    last_run_at: float = 0.0
    last_verdict: str = UNKNOWN
    last_reason: str = ""
    locations: dict[str, Any] = field(default_factory=dict)
    transition_id: str | None = None
    """Id of the transition into the current state (alerts and reminders refer to it)."""


@dataclass(frozen=True)
class Transition(Record):
    """One state change, as recorded in the transitions stream and sent to notifiers."""

    id: str
    set: str
    target: str
    """The target's key, ``name|url``."""
    name: str
    url: str
    from_state: str
    to_state: str
    at: float
    reason: str
    detail: str | None
    run_id: str
    locations: dict[str, Any]


def transition_id(set_name: str, target_key: str, run_id: str) -> str:
    """Deterministic: the same run can only ever produce the same id for a target."""
    digest = hashlib.sha256(f"{set_name}\0{target_key}\0{run_id}".encode()).hexdigest()
    return digest[:20]


def _worse(current: str, recent: list[str], threshold: int) -> str | None:
    if len(recent) < threshold:
        return None
    floor = min(SEVERITY[v] for v in recent[-threshold:])
    base = SEVERITY.get(current, 0)  # unknown: judged against up
    return _state_of(floor) if floor > base else None


def _better(current: str, recent: list[str], threshold: int) -> str | None:
    if current == UNKNOWN:
        return "up" if recent and recent[-1] == "up" else None
    if len(recent) < threshold:
        return None
    ceiling = max(SEVERITY[v] for v in recent[-threshold:])
    return _state_of(ceiling) if ceiling < SEVERITY[current] else None


def _state_of(severity: int) -> str:
    return next(name for name, value in SEVERITY.items() if value == severity)


def advance(
    state: TargetState,
    verdict: TargetVerdict,
    thresholds: Thresholds,
    *,
    set_name: str,
    target_key: str,
    run_id: str,
    run_at: float,
    now: float,
) -> tuple[TargetState, Transition | None]:
    """Apply one run's verdict. Returns the new state and the transition, if any."""
    if run_at < state.last_run_at:
        return state, None  # an older run finishing late: already superseded
    state.last_run, state.last_run_at = run_id, run_at
    state.last_verdict, state.last_reason = verdict.verdict, verdict.reason
    state.locations = verdict.locations_dict()
    if verdict.verdict == UNKNOWN:
        return state, None
    state.recent = [*state.recent, verdict.verdict][-MAX_THRESHOLD:]
    if verdict.verdict == state.state:
        # The usual case, and never a change: the newest verdict is in both windows, so
        # _worse's floor cannot pass the state's severity nor _better's ceiling go below.
        state.reason, state.detail = verdict.reason, verdict.detail
        return state, None
    target = _worse(state.state, state.recent, thresholds.failure) or _better(
        state.state, state.recent, thresholds.success
    )
    if target is None or target == state.state:
        return state, None
    change = Transition(
        id=transition_id(set_name, target_key, run_id), set=set_name, target=target_key,
        name=state.name, url=state.url, from_state=state.state, to_state=target, at=now,
        reason=verdict.reason, detail=verdict.detail, run_id=run_id,
        locations=state.locations,
    )  # fmt: skip
    state.state, state.since = target, now
    state.reason, state.detail = verdict.reason, verdict.detail
    state.transition_id = change.id
    return state, change
