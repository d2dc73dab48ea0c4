"""The planner: objects + rules -> a plan of what to delete, what to skip, and why.

Pure functions over plain dicts (the JSON the API server returns): no I/O, no clock.
The one-shot command, the informer, the executor and the worker all call the same
:func:`evaluate`, so "why was this deleted" has one answer everywhere.

:func:`evaluate` answers *when* an object becomes due under a rule (``due_at``, epoch
seconds) rather than *whether it is due now*: the informer needs the future time to
schedule the object without polling, and the one-shot compares it with ``now``. A
``due_at`` of ``None`` means the object's current state (not yet finished, wrong phase)
can never make it due; only a change to the object (a watch event) can.

Safety rules that override every condition:

- An object with ``metadata.deletionTimestamp`` is *terminating*: it is reported and
  counted, never deleted again (kube-janitor re-deletes such objects in a loop while
  finalizers hold them).
- The owner guard (:func:`owner_verdict`): never delete a Pod owned by an active Job;
  never delete an object whose owner still exists unless the rule says
  ``delete_if_owner_exists``; when the owner cannot be checked (RBAC), skip.

Reasons form a fixed vocabulary (they are metric labels).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal

from opsq.core.config.cleanup import Namespaces, Rule, When
from opsq.core.durations import parse_duration

Obj = dict[str, Any]
Action = Literal["delete", "skip"]

# Reasons an object is (or would be) deleted.
JOB_FINISHED = "job-finished"
POD_PHASE = "pod-phase"
EVICTED = "evicted"
PENDING_TOO_LONG = "pending-too-long"
OLDER_THAN = "older-than"
TTL_ANNOTATION = "ttl-annotation"
# Reasons an object is skipped.
TERMINATING = "terminating"
NOT_DUE_YET = "not-due-yet"
NOT_FINISHED = "not-finished"
PHASE_MISMATCH = "phase-mismatch"
NOT_EVICTED = "not-evicted"
NOT_PENDING = "not-pending"
BAD_TTL = "bad-ttl-annotation"
OWNER_EXISTS = "owner-exists"
OWNER_ACTIVE_JOB = "owner-active-job"
OWNER_UNVERIFIABLE = "owner-unverifiable"
MAX_DELETIONS = "max-deletions-reached"
RECREATED = "recreated"
ALREADY_GONE = "already-gone"
NAMESPACE_EXCLUDED = "namespace-excluded"


class OwnerState(Enum):
    GONE = "gone"
    EXISTS = "exists"
    ACTIVE_JOB = "active-job"
    UNKNOWN = "unknown"


OwnerLookup = Callable[[str, Obj], OwnerState]
"""(namespace, ownerReference) -> what we know about that owner."""


@dataclass(frozen=True)
class Decision:
    due_at: float | None
    """Epoch seconds at which the rule makes the object due; None: never in this state."""
    reason: str
    since: float | None = None
    """The moment the object's age counts from (completion, pod end, creation)."""


@dataclass(frozen=True)
class PlanItem:
    action: Action
    resource: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    rule: str
    reason: str
    age: float | None
    due_at: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- object accessors --------------------------------------------------------------------


def parse_time(value: object) -> float | None:
    """RFC 3339 time from the API (``2024-05-01T10:00:00Z``) -> epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Obj) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def status(obj: Obj) -> dict[str, Any]:
    value = obj.get("status")
    return value if isinstance(value, dict) else {}


def is_terminating(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def created_at(obj: Obj) -> float | None:
    return parse_time(meta(obj).get("creationTimestamp"))


def job_finished_at(obj: Obj) -> float | None:
    """When a Job finished (condition Complete or Failed is True), else None."""
    for cond in status(obj).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            completion = parse_time(status(obj).get("completionTime"))
            if cond.get("type") == "Complete" and completion is not None:
                return completion
            return parse_time(cond.get("lastTransitionTime")) or created_at(obj)
    return None


def pod_phase(obj: Obj) -> str | None:
    phase = status(obj).get("phase")
    return phase if isinstance(phase, str) else None


def pod_ended_at(obj: Obj) -> float | None:
    """Latest container termination, else the latest condition change, else start."""
    times: list[float] = []
    for container in status(obj).get("containerStatuses") or []:
        finished = ((container.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if (when := parse_time(finished)) is not None:
            times.append(when)
    if not times:
        for cond in status(obj).get("conditions") or []:
            if (when := parse_time(cond.get("lastTransitionTime"))) is not None:
                times.append(when)
    if times:
        return max(times)
    return parse_time(status(obj).get("startTime")) or created_at(obj)


def namespace_selected(namespace: str, namespaces: Namespaces) -> bool:
    included = any(fnmatch.fnmatchcase(namespace, p) for p in namespaces.include)
    excluded = any(fnmatch.fnmatchcase(namespace, p) for p in namespaces.exclude)
    return included and not excluded


def list_namespaces(namespaces: Namespaces) -> list[str | None]:
    """Where to LIST: the named namespaces, or ``[None]`` (all, filtered locally) for globs.

    Listing across all namespaces with one paginated request beats discovering every
    namespace first: it needs no RBAC on namespaces and costs one LIST per page.
    """
    if any(ch in pattern for pattern in namespaces.include for ch in "*?["):
        return [None]
    return list(dict.fromkeys(namespaces.include))


# --- rule evaluation ---------------------------------------------------------------------


def evaluate(rule: Rule, obj: Obj, ttl_annotation: str | None = None) -> Decision:
    """When does *rule* make *obj* due? Ignores terminating state and owners (see plan)."""
    ttl = _ttl_decision(obj, ttl_annotation)
    if ttl is not None:
        return ttl
    state = _state(rule.when, obj)
    if isinstance(state, str):
        return Decision(None, state)
    since, reason = state
    if since is None:
        return Decision(None, NOT_DUE_YET)
    times = [since]
    if rule.when.older_than is not None:
        times.append(since + rule.when.older_than)
    if rule.when.pending_longer_than is not None:
        times.append((created_at(obj) or since) + rule.when.pending_longer_than)
    return Decision(max(times), reason, since)


def _state(when: When, obj: Obj) -> tuple[float | None, str] | str:
    """``(since, reason)`` when the state conditions hold, else the skip reason."""
    since, reason = created_at(obj), OLDER_THAN
    phase = pod_phase(obj)
    if when.finished:
        since = job_finished_at(obj)
        if since is None:
            return NOT_FINISHED
        reason = JOB_FINISHED
    if when.evicted:
        if phase != "Failed" or status(obj).get("reason") != "Evicted":
            return NOT_EVICTED
        since, reason = pod_ended_at(obj), EVICTED
    if when.phase is not None:
        if phase not in when.phase:
            return PHASE_MISMATCH
        if reason == OLDER_THAN:
            since, reason = _phase_since(obj, phase), POD_PHASE
    if when.pending_longer_than is not None:
        if phase != "Pending":
            return NOT_PENDING
        reason = PENDING_TOO_LONG
    return since, reason


def _phase_since(obj: Obj, phase: str | None) -> float | None:
    if phase in ("Succeeded", "Failed"):
        return pod_ended_at(obj)
    return created_at(obj)


def _ttl_decision(obj: Obj, ttl_annotation: str | None) -> Decision | None:
    """The TTL annotation makes any object due that long after creation."""
    if not ttl_annotation:
        return None
    annotations = meta(obj).get("annotations") or {}
    if ttl_annotation not in annotations:
        return None
    created = created_at(obj)
    try:
        ttl = parse_duration(annotations[ttl_annotation])
    except ValueError:
        return Decision(None, BAD_TTL)
    if created is None:
        return Decision(None, BAD_TTL)
    return Decision(created + ttl, TTL_ANNOTATION, created)


def owner_verdict(rule: Rule, obj: Obj, owners: OwnerLookup) -> str | None:
    """A skip reason when an owner forbids deleting *obj*, else None."""
    namespace = str(meta(obj).get("namespace") or "")
    for ref in meta(obj).get("ownerReferences") or []:
        is_job = ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/")
        if rule.delete_if_owner_exists and not is_job:
            continue  # only an *active* Job could still forbid it: no need to look
        state = owners(namespace, ref)
        if state is OwnerState.ACTIVE_JOB:
            return OWNER_ACTIVE_JOB
        if state is OwnerState.UNKNOWN:
            return OWNER_UNVERIFIABLE
        if state is OwnerState.EXISTS and not rule.delete_if_owner_exists:
            return OWNER_EXISTS
    return None


def plan_object(
    rule: Rule,
    obj: Obj,
    now: float,
    owners: OwnerLookup,
    ttl_annotation: str | None = None,
) -> PlanItem:
    """The plan entry for one object under one rule at time *now*."""
    decision = evaluate(rule, obj, ttl_annotation)
    age = None if decision.since is None else max(0.0, now - decision.since)
    action: Action = "skip"
    reason = decision.reason
    if is_terminating(obj):
        reason = TERMINATING
    elif decision.due_at is not None and decision.due_at > now:
        reason = NOT_DUE_YET
    elif decision.due_at is not None:
        guard = owner_verdict(rule, obj, owners)
        action, reason = ("skip", guard) if guard else ("delete", decision.reason)
    return _item(rule, obj, action=action, reason=reason, age=age, due_at=decision.due_at)


def _item(
    rule: Rule, obj: Obj, *, action: Action, reason: str, age: float | None, due_at: float | None
) -> PlanItem:
    md = meta(obj)
    return PlanItem(
        action=action, resource=str(rule.resource), namespace=str(md.get("namespace") or ""),
        name=str(md.get("name") or ""), uid=str(md.get("uid") or ""),
        resource_version=str(md.get("resourceVersion") or ""), rule=rule.name,
        reason=reason, age=age, due_at=due_at,
    )  # fmt: skip


def make_plan(
    rule: Rule,
    objects: Iterable[Obj],
    now: float,
    owners: OwnerLookup,
    ttl_annotation: str | None = None,
) -> list[PlanItem]:
    """Plan entries for every object of *rule* that lies in the rule's namespaces."""
    return [
        plan_object(rule, obj, now, owners, ttl_annotation)
        for obj in objects
        if namespace_selected(str(meta(obj).get("namespace") or ""), rule.namespaces)
    ]


def cap_deletions(items: list[PlanItem], limit: int) -> list[PlanItem]:
    """Turn deletions beyond *limit* into skips (``max_deletions_per_run``)."""
    out, kept = [], 0
    for item in items:
        capped = item
        if item.action == "delete":
            if kept >= limit:
                capped = PlanItem(**{**item.to_json(), "action": "skip", "reason": MAX_DELETIONS})
            kept += 1
        out.append(capped)
    return out
