"""The planner: objects + rules -> a plan of what to delete, what to skip, and why.

Pure functions over plain dicts (the JSON the API server returns): no I/O, no clock.
The one-shot command, the informer, the executor and the worker all call the same
:func:`evaluate`, so "why was this deleted" has one answer everywhere.

:func:`evaluate` answers *when* an object becomes due under a rule (``due_at``, epoch
seconds) rather than *whether it is due now*: the informer needs the future time to
schedule the object without polling, and the one-shot compares it with ``now``. A
``due_at`` of ``None`` means the object's current state (not yet finished, wrong phase)
can never make it due; only a change to the object (a watch event) can.

Several rules may select the same object (three rules on ``v1/pods``). The object is
then judged under each of them and :func:`choose` picks one answer that does not depend
on the order of the rules in the file: a deletion by the rule that made it due first
(ties: the rule name), otherwise the most telling skip. The one-shot and the informer
both go through it, so they give the same plan for the same objects.

Safety rules that override every condition:

- An object with ``metadata.deletionTimestamp`` is *terminating*: it is reported and
  counted, never deleted again (kube-janitor re-deletes such objects in a loop while
  finalizers hold them).
- The owner guard (:func:`owner_verdict`): never delete a Pod owned by an active Job;
  never delete an object whose owner still exists unless the rule says
  ``delete_if_owner_exists``; when the owner cannot be checked (RBAC), skip.
- The usage guard (``when.unused``): a PersistentVolumeClaim that a pod mounts or a
  workload references is never deleted; when usage is unknown (pods not listed), skip.
- The namespaces Kubernetes itself needs (``default``, ``kube-system``...) are never
  deleted, whatever the rule says.

Reasons form a fixed vocabulary (they are metric labels).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal

from opsq.core.config.cleanup import CleanupSettings, Namespaces, Rule, When, compile_match
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
EXPIRES_ANNOTATION = "expires-annotation"
# Reasons an object is skipped.
TERMINATING = "terminating"
NOT_DUE_YET = "not-due-yet"
NOT_FINISHED = "not-finished"
PHASE_MISMATCH = "phase-mismatch"
NOT_EVICTED = "not-evicted"
NOT_PENDING = "not-pending"
BAD_TTL = "bad-ttl-annotation"
BAD_EXPIRES = "bad-expires-annotation"
TTL_FOREVER = "ttl-forever"
NO_ANNOTATION = "no-expiry-annotation"
NOT_MATCHED = "not-matched"
MATCH_ERROR = "match-error"
"""The rule's ``match`` failed on this object (a type error such as ``status.phase > `3```)."""
PVC_IN_USE = "pvc-in-use"
USAGE_UNVERIFIABLE = "usage-unverifiable"
PROTECTED_NAMESPACE = "protected-namespace"
OWNER_EXISTS = "owner-exists"
OWNER_ACTIVE_JOB = "owner-active-job"
OWNER_UNVERIFIABLE = "owner-unverifiable"
MAX_DELETIONS = "max-deletions-reached"
RECREATED = "recreated"
ALREADY_GONE = "already-gone"
NOT_SELECTED = "not-selected"
"""Changed since the plan so that the rule's label or field selector no longer selects it."""
NAMESPACE_EXCLUDED = "namespace-excluded"

QUIET = frozenset(
    {NOT_DUE_YET, NOT_FINISHED, PHASE_MISMATCH, NOT_EVICTED, NOT_PENDING, NO_ANNOTATION,
     NOT_MATCHED, TTL_FOREVER}
)  # fmt: skip
"""Skip reasons that mean "does not match (yet)": the normal state of most objects, so
they are neither counted in metrics nor shown in the table by default."""
GUARDS = frozenset(
    {TERMINATING, OWNER_EXISTS, OWNER_ACTIVE_JOB, OWNER_UNVERIFIABLE, PVC_IN_USE,
     USAGE_UNVERIFIABLE, PROTECTED_NAMESPACE}
)  # fmt: skip
"""Skip reasons of an object that a rule found due but a safety rule kept."""
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


class OwnerState(Enum):
    GONE = "gone"
    EXISTS = "exists"
    ACTIVE_JOB = "active-job"
    UNKNOWN = "unknown"


OwnerLookup = Callable[[str, Obj], OwnerState]
"""(namespace, ownerReference) -> what we know about that owner."""


class UsageState(Enum):
    UNUSED = "unused"
    IN_USE = "in-use"
    UNKNOWN = "unknown"


UsageLookup = Callable[[str, str], UsageState]
"""(namespace, claim name) -> whether a pod or workload uses that PersistentVolumeClaim."""


def _unknown_usage(namespace: str, name: str) -> UsageState:
    return UsageState.UNKNOWN


def _unknown_owner(namespace: str, ref: Obj) -> OwnerState:
    return OwnerState.UNKNOWN


@dataclass(frozen=True)
class Guards:
    """What the planner asks the world before it says "delete"."""

    owners: OwnerLookup = _unknown_owner
    usage: UsageLookup = _unknown_usage


@dataclass(frozen=True)
class Annotations:
    """Which annotations set an object's expiry (from the settings)."""

    ttl: tuple[str, ...] = ("opsq.io/ttl",)
    expires: tuple[str, ...] = ("opsq.io/expires",)

    @classmethod
    def of(cls, settings: CleanupSettings) -> Annotations:
        return cls(settings.ttl_annotations, settings.expires_annotations)


NO_ANNOTATIONS = Annotations((), ())


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
    kind: str = ""

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


def kind_of(obj: Obj) -> str:
    """The object's kind (LIST items carry none; the lister and informer add it)."""
    return str(obj.get("kind") or "")


def object_namespace(rule: Rule, obj: Obj) -> str:
    """Where the rule's namespace filter looks: a Namespace is filtered by its own name."""
    if rule.resource.is_namespace:
        return str(meta(obj).get("name") or "")
    return str(meta(obj).get("namespace") or "")


def selected(rule: Rule, obj: Obj) -> bool:
    return namespace_selected(object_namespace(rule, obj), rule.namespaces)


def namespace_selected(namespace: str, namespaces: Namespaces) -> bool:
    included = any(fnmatch.fnmatchcase(namespace, p) for p in namespaces.include)
    excluded = any(fnmatch.fnmatchcase(namespace, p) for p in namespaces.exclude)
    return included and not excluded


def has_glob(namespaces: Namespaces) -> bool:
    return any(ch in pattern for pattern in namespaces.include for ch in "*?[")


def list_namespaces(rule: Rule) -> list[str | None]:
    """Where to LIST: the named namespaces, or ``[None]`` (all, filtered locally) for globs
    and cluster-scoped kinds.

    Listing across all namespaces with one paginated request beats discovering every
    namespace first: it needs no RBAC on namespaces and costs one LIST per page.
    """
    if rule.is_cluster_scoped or has_glob(rule.namespaces):
        return [None]
    named = dict.fromkeys(rule.namespaces.include)  # minus what exclude removes: neither
    return [ns for ns in named if namespace_selected(ns, rule.namespaces)]  # listed nor granted


# --- rule evaluation ---------------------------------------------------------------------


def evaluate(rule: Rule, obj: Obj, annotations: Annotations = NO_ANNOTATIONS) -> Decision:
    """When does *rule* make *obj* due? Ignores terminating state and guards (see plan).

    An expiry annotation (TTL or absolute) decides on its own for any object the rule
    selects; a rule with ``when.ttl_annotation`` selects only objects that carry one
    (and its other conditions, if any, must hold too).
    """
    expiry = expiry_decision(obj, annotations)
    early = _annotation_gate(rule, expiry)
    if early is not None:
        return early
    state = _state(rule.when, obj)
    if isinstance(state, str):
        return Decision(None, state)
    since, reason = state
    if since is None:
        return Decision(None, NOT_DUE_YET)
    extra = []
    if rule.when.older_than is not None:
        extra.append(since + rule.when.older_than)
    if rule.when.pending_longer_than is not None:
        extra.append((created_at(obj) or since) + rule.when.pending_longer_than)
    if expiry is not None and expiry.due_at is not None:  # a ttl_annotation rule
        due = max([expiry.due_at, *extra])
        return Decision(due, expiry.reason if due == expiry.due_at else reason, since)
    return Decision(max([since, *extra]), reason, since)


def _annotation_gate(rule: Rule, expiry: Decision | None) -> Decision | None:
    """The decision when the expiry annotation alone settles it, else None."""
    if not rule.when.ttl_annotation:
        return expiry  # present: it overrides the conditions; absent: they decide
    if expiry is None:
        return Decision(None, NO_ANNOTATION)
    return expiry if expiry.due_at is None else None


def _state(when: When, obj: Obj) -> tuple[float | None, str] | str:
    """``(since, reason)`` when the state conditions hold, else the skip reason."""
    since, reason = created_at(obj), OLDER_THAN
    phase = pod_phase(obj)
    if when.match is not None and (unmatched := _match_verdict(when.match, obj)) is not None:
        return unmatched
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


def _match_verdict(expression: str, obj: Obj) -> str | None:
    """None when the ``match`` expression holds for *obj*, else the skip reason."""
    try:
        found = compile_match(expression).search(obj)
    except Exception:  # a user's expression over any object: its failure is this
        return MATCH_ERROR  # object's skip, never the end of the run (or of the watch)
    return None if _truthy(found) else NOT_MATCHED


def _truthy(value: object) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false (0 is true)."""
    return value is not None and value is not False and value not in ("", [], {})


def _phase_since(obj: Obj, phase: str | None) -> float | None:
    if phase in ("Succeeded", "Failed"):
        return pod_ended_at(obj)
    return created_at(obj)


_TTL = re.compile(r"^(\d+)w$")
_EXPIRY_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


def parse_ttl(text: str) -> float:
    """A TTL annotation: opsq durations (``90m``, ``1h30m``) plus kube-janitor's weeks
    (``2w``); ``forever`` is infinite. ValueError otherwise."""
    text = text.strip()
    if text.lower() == "forever":
        return math.inf
    if match := _TTL.match(text):
        return int(match.group(1)) * 7 * 86400.0
    return parse_duration(text)


def parse_expiry(text: str) -> float:
    """An absolute expiry: RFC 3339 (``2024-05-01T10:00:00+02:00``), kube-janitor's
    ``2024-05-01T10:00`` (UTC) or a date (``2024-05-01``, midnight UTC)."""
    text = text.strip()
    for fmt in _EXPIRY_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expiry {text!r} is neither a date (2024-05-01) nor an RFC 3339 time "
            "(2024-05-01T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def expiry_decision(obj: Obj, annotations: Annotations) -> Decision | None:
    """What the object's own expiry annotations say (the earliest wins), else None."""
    values = meta(obj).get("annotations") or {}
    decisions: list[Decision] = []
    created = created_at(obj)
    for key in annotations.ttl:
        if key in values:
            decisions.append(_ttl_decision(str(values[key]), created))
    for key in annotations.expires:
        if key in values:
            decisions.append(_expires_decision(str(values[key]), created))
    if not decisions:
        return None
    due = [d for d in decisions if d.due_at is not None]
    if due:
        return min(due, key=lambda d: d.due_at or 0.0)
    bad = [d for d in decisions if d.reason != TTL_FOREVER]
    return bad[0] if bad else decisions[0]


def _ttl_decision(text: str, created: float | None) -> Decision:
    try:
        ttl = parse_ttl(text)
    except ValueError:
        return Decision(None, BAD_TTL)
    if math.isinf(ttl):
        return Decision(None, TTL_FOREVER)
    if created is None:
        return Decision(None, BAD_TTL)
    return Decision(created + ttl, TTL_ANNOTATION, created)


def _expires_decision(text: str, created: float | None) -> Decision:
    try:
        return Decision(parse_expiry(text), EXPIRES_ANNOTATION, created)
    except ValueError:
        return Decision(None, BAD_EXPIRES)


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


def guard_verdict(rule: Rule, obj: Obj, guards: Guards) -> str | None:
    """Every safety rule that may keep a due object: a skip reason, or None to delete."""
    md = meta(obj)
    if rule.resource.is_namespace and md.get("name") in PROTECTED_NAMESPACES:
        return PROTECTED_NAMESPACE
    if rule.when.unused:
        usage = guards.usage(str(md.get("namespace") or ""), str(md.get("name") or ""))
        if usage is UsageState.IN_USE:
            return PVC_IN_USE
        if usage is UsageState.UNKNOWN:
            return USAGE_UNVERIFIABLE
    return owner_verdict(rule, obj, guards.owners)


def plan_object(
    rule: Rule,
    obj: Obj,
    now: float,
    guards: Guards,
    annotations: Annotations = NO_ANNOTATIONS,
) -> PlanItem:
    """The plan entry for one object under one rule at time *now*."""
    decision = evaluate(rule, obj, annotations)
    age = None if decision.since is None else max(0.0, now - decision.since)
    action: Action = "skip"
    reason = decision.reason
    if is_terminating(obj):
        reason = TERMINATING
    elif decision.due_at is not None and decision.due_at > now:
        reason = NOT_DUE_YET
    elif decision.due_at is not None:
        guard = guard_verdict(rule, obj, guards)
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
        reason=reason, age=age, due_at=due_at, kind=kind_of(obj),
    )  # fmt: skip


def _skip_rank(item: PlanItem) -> tuple[int, float, str]:
    """Most telling skip first: kept by a guard, then due soonest, then the rest."""
    if item.reason in GUARDS:
        return (0, item.due_at or 0.0, item.rule)
    if item.due_at is not None:
        return (1, item.due_at, item.rule)
    return (2, 0.0, item.rule)


def choose(items: Sequence[PlanItem]) -> PlanItem:
    """One answer for an object judged by several rules, whatever their order in the file:
    delete by the rule that made it due first (ties: rule name), else the best skip."""
    deletes = [i for i in items if i.action == "delete"]
    if deletes:
        return min(deletes, key=lambda i: (i.due_at or 0.0, i.rule))
    return min(items, key=_skip_rank)


@dataclass
class Candidates:
    """An object and the rules that selected it (in the order they were met)."""

    obj: Obj
    rules: list[Rule] = field(default_factory=list)


def group_by_object(per_rule: Iterable[tuple[Rule, Iterable[Obj]]]) -> list[Candidates]:
    """Objects by UID with every rule that selects them (namespace filter applied)."""
    by_uid: dict[str, Candidates] = {}
    for rule, objects in per_rule:
        for obj in objects:
            if not selected(rule, obj):
                continue
            uid = str(meta(obj).get("uid") or "")
            entry = by_uid.setdefault(uid, Candidates(obj))
            if rule not in entry.rules:
                entry.rules.append(rule)
    return list(by_uid.values())


def make_plan(
    per_rule: Iterable[tuple[Rule, Iterable[Obj]]],
    now: float,
    guards: Guards,
    annotations: Annotations = NO_ANNOTATIONS,
) -> list[PlanItem]:
    """One plan entry per object, judged under every rule that selects it."""
    return [
        choose([plan_object(rule, c.obj, now, guards, annotations) for rule in c.rules])
        for c in group_by_object(per_rule)
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
