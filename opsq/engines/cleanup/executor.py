"""The executor: delete one planned object, or prove it must not be deleted.

A plan is a snapshot, and snapshots go stale: the Job may have been deleted and
recreated under the same name, relabelled, or be terminating already. The executor
therefore never deletes a *name*; it deletes the exact object that was judged, and
the API server checks that atomically:

- every DELETE carries ``preconditions: {uid, resourceVersion}`` of the object the
  rule was evaluated on. A recreated object has another UID; a changed one another
  resourceVersion; either way the server answers 409 and nothing is deleted.
- with a resourceVersion from the plan (LIST or informer cache), the DELETE itself is
  the freshness check: if it succeeds, the object was byte-for-byte the one judged.
  That is one request per object. Without one (or with ``verify_with_get``) the
  executor GETs first and re-evaluates the rule on the fresh object, like the
  TTL-after-finished controller.
- 409: re-plan from a fresh read (bounded: an object changing on every attempt is
  reported as a failure, not fought over). A rule with a label or field selector reads
  through them (a LIST with ``metadata.name=``): the server, not a copy of its
  grammar, says whether an owner who relabelled the object has taken it out of the
  rule (``not-selected``).
- 404: already gone, which is what we wanted. 403: a permanent failure naming verb,
  resource and namespace. 429/5xx/timeouts: retried here with exponential backoff and
  full jitter (honouring Retry-After), then raised as TemporaryError for the caller's
  own retry loop (Celery's).
- ``dryRun=All`` when dry-running: the server runs admission, RBAC and preconditions
  and changes nothing, so a dry run proves the real run would be allowed.
- ``propagationPolicy`` is always explicit (Background by default): batch/v1 Jobs
  default to Orphan server-side, which would strand their pods.
- a PersistentVolumeClaim rule (``unused``) asks :attr:`Guards.usage` once more right
  before the DELETE: a plan minutes old must not delete a claim a new pod mounts.
- ``proceed`` is asked after the rate limiter granted the permit and right before the
  DELETE: a one-shot that gave up waiting (timeout, Ctrl-C) has cancelled its batch,
  and its queued tasks must not act after it reported failure.
- every real deletion is handed to ``audit`` (the Redis audit stream).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, TypeVar

from opsq.core.config.cleanup import CleanupSettings, ResourceRef, Rule
from opsq.core.errors import PermanentError
from opsq.core.metrics.cleanup import CLEANUP_OBJECTS, TERMINATING_SEEN
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.kube import Conflict, Forbidden, Kube, NotFound
from opsq.engines.cleanup.planner import Guards
from opsq.engines.cleanup.ratelimit import RateLimiter, Unlimited
from opsq.engines.cleanup.retry import Retrier

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = dict[str, Any]
CANCELLED = "cancelled"
"""Outcome reason of a target whose one-shot gave up before it ran."""
EVENTS_NAMESPACE = "default"
"""Where Events about cluster-scoped objects go (as the apiserver's own do)."""


class Audit(Protocol):
    def record(self, target: Target, rule: Rule, *, deleted_at: float) -> None:
        """Append one real deletion to the audit trail (raises on failure)."""


Result = Literal["deleted", "would_delete", "skipped", "failed"]

MAX_REPLANS = 3
"""Fresh GETs after a 409 before giving up on an object that keeps changing."""


@dataclass(frozen=True)
class Target:
    """The object to delete, as the planner saw it."""

    rule: str
    resource: str
    namespace: str
    name: str
    uid: str
    resource_version: str | None = None
    """Observed resourceVersion; None makes the executor GET before deleting."""
    reason: str = ""
    """Why the planner found it due (reported with the outcome)."""
    kind: str = ""
    """The object's kind (``Job``), for Events; empty when unknown."""
    judged_by: str = ""
    """Who planned it (``opsq watch@host``), for the audit trail."""
    judged_at: float | None = None


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str
    resource: str
    namespace: str
    name: str
    uid: str
    rule: str
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Executor:
    """Deletes :class:`Target` objects safely; see the module docstring for the rules."""

    def __init__(
        self,
        kube: Kube,
        settings: CleanupSettings,
        *,
        guards: Guards | None = None,
        limiter: RateLimiter | None = None,
        audit: Audit | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        retries: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.guards = guards or Guards()
        self.limiter = limiter or Unlimited()
        self.audit = audit
        self.clock = clock
        self.annotations = planner.Annotations.of(settings)
        self.retrier = Retrier(
            retries=settings.retries if retries is None else retries,
            base=settings.backoff_base, cap=settings.backoff_cap, stop=stop, sleep=sleep, rng=rng,
        )  # fmt: skip

    def execute(
        self, target: Target, *, dry_run: bool, proceed: Callable[[], bool] | None = None
    ) -> Outcome:
        """Delete *target* (or dry-run it) and report what happened; count it.

        *proceed* is asked right before the DELETE; False ends with a ``cancelled`` skip.
        """
        try:
            rule = self.settings.rule(target.rule)
        except KeyError:
            message = f"rule {target.rule!r} is not in this process's cleanup config"
            return count(outcome_of(target, "failed", "unknown-rule", message))
        try:
            outcome = self._execute(rule, target, dry_run, proceed or (lambda: True))
        except PermanentError as exc:
            reason = "forbidden" if isinstance(exc, Forbidden) else "rejected"
            outcome = outcome_of(target, "failed", reason, str(exc))
        return count(outcome)

    def _execute(
        self, rule: Rule, target: Target, dry_run: bool, proceed: Callable[[], bool]
    ) -> Outcome:
        resource_version = None if self.settings.verify_with_get else target.resource_version
        reason = target.reason or "due"
        for _ in range(MAX_REPLANS + 1):
            if resource_version is None:
                verdict, resource_version, reason = self._fresh(rule, target)
                if verdict is not None:
                    return verdict
            if rule.when.unused and (kept := self._in_use(rule, target)) is not None:
                return kept
            self.limiter.acquire()
            if not proceed():
                return outcome_of(target, "skipped", CANCELLED, "the command that sent it gave up")
            try:
                self._delete(rule, target, resource_version, dry_run)
            except NotFound:
                return outcome_of(target, "skipped", planner.ALREADY_GONE)
            except Conflict:
                resource_version = None  # the object changed: judge it again
                continue
            if not dry_run:
                self._record(rule, target)
            self._announce(rule, target, dry_run)
            return outcome_of(target, "would_delete" if dry_run else "deleted", reason)
        return outcome_of(
            target, "failed", "conflict", f"still changing after {MAX_REPLANS} re-plans"
        )

    def _fresh(self, rule: Rule, target: Target) -> tuple[Outcome | None, str | None, str]:
        """Read the object again and re-evaluate the rule: a skip outcome, or its RV and
        reason. The rule's selectors are judged too (by the server): an owner who
        relabelled the object to keep it has taken it out of the rule."""
        resource = ResourceRef.parse(target.resource)
        obj = self._selected_now(rule, resource, target) if _has_selectors(rule) else None
        if obj is None:
            try:
                obj = self._call(
                    lambda: self.kube.get(resource, target.namespace or None, target.name)
                )
            except NotFound:
                return outcome_of(target, "skipped", planner.ALREADY_GONE), None, ""
            if _has_selectors(rule) and planner.meta(obj).get("uid") == target.uid:
                return outcome_of(target, "skipped", planner.NOT_SELECTED), None, ""
        if planner.meta(obj).get("uid") != target.uid:
            return outcome_of(target, "skipped", planner.RECREATED), None, ""
        item = planner.plan_object(rule, obj, self.clock(), self.guards, self.annotations)
        if item.reason == planner.TERMINATING:
            TERMINATING_SEEN.labels(target.resource, target.rule).inc()
        if item.action != "delete":
            return outcome_of(target, "skipped", item.reason), None, ""
        return None, item.resource_version, item.reason

    def _selected_now(self, rule: Rule, resource: ResourceRef, target: Target) -> Obj | None:
        """The object as a LIST through the rule's selectors returns it now, else None
        (gone, or no longer selected: the caller's GET tells which)."""
        fields = ",".join(f for f in (f"metadata.name={target.name}", rule.field_selector) if f)
        page = self._call(
            lambda: self.kube.list(
                resource, target.namespace or None, limit=2,
                label_selector=rule.label_selector, field_selector=fields,
            )
        )  # fmt: skip
        items = [i for i in page.get("items") or [] if planner.meta(i).get("name") == target.name]
        return items[0] if items else None

    def _in_use(self, rule: Rule, target: Target) -> Outcome | None:
        """The last look before deleting a claim: a skip when something uses it now."""
        verdict = planner.guard_verdict(
            rule, {"metadata": {"namespace": target.namespace, "name": target.name}}, self.guards
        )
        return None if verdict is None else outcome_of(target, "skipped", verdict)

    def _record(self, rule: Rule, target: Target) -> None:
        """Audit a done deletion; a failure is logged loudly, never undoes the result."""
        if self.audit is None:
            return
        try:
            self.audit.record(target, rule, deleted_at=self.clock())
        except Exception as exc:  # the deletion happened; the outcome must say so
            log.error("audit trail: could not record %s/%s: %s", target.namespace, target.name, exc)

    def _delete(
        self, rule: Rule, target: Target, resource_version: str | None, dry_run: bool
    ) -> None:
        resource = ResourceRef.parse(target.resource)
        self._call(
            lambda: self.kube.delete(
                resource, target.namespace or None, target.name, uid=target.uid,
                resource_version=resource_version, propagation_policy=rule.propagation_policy,
                grace_period_seconds=rule.grace_period_seconds, dry_run=dry_run,
            )
        )  # fmt: skip

    def _call(self, request: Callable[[], T]) -> T:
        """Run one API request, retrying temporary failures with backoff."""
        return self.retrier.call(request)

    def _announce(self, rule: Rule, target: Target, dry_run: bool) -> None:
        """Optional Kubernetes Event on the deleted object (best effort, never fatal)."""
        if not self.settings.events or dry_run:
            return
        message = f"deleted by opsq cleanup rule {rule.name!r}"
        event = make_event(target, "OpsqCleanupDeleted", message, self.clock())
        try:
            self.kube.create_event(target.namespace or EVENTS_NAMESPACE, event)
        except Exception as exc:  # an Event is a courtesy: never fail a deletion for it
            log.warning("could not create event for %s/%s: %s", target.namespace, target.name, exc)


def _has_selectors(rule: Rule) -> bool:
    return bool(rule.label_selector or rule.field_selector)


def count(outcome: Outcome) -> Outcome:
    """Record *outcome* in ``opsq_cleanup_objects_total`` and return it."""
    CLEANUP_OBJECTS.labels(outcome.resource, outcome.rule, outcome.result, outcome.reason).inc()
    return outcome


def outcome_of(target: Target, result: Result, reason: str, message: str = "") -> Outcome:
    """The outcome for *target*; the one constructor producers and the task share."""
    return Outcome(
        result=result, reason=reason, resource=target.resource, namespace=target.namespace,
        name=target.name, uid=target.uid, rule=target.rule, message=message,
    )  # fmt: skip


def kind_guess(resource: ResourceRef) -> str:
    """``jobs`` -> ``Job`` when the object did not say (good for every built-in kind)."""
    plural = resource.plural
    for suffix, replacement in (("sses", "ss"), ("ies", "y"), ("ses", "s"), ("s", "")):
        if plural.endswith(suffix):
            plural = plural[: -len(suffix)] + replacement
            break
    return plural[:1].upper() + plural[1:]


def make_event(
    target: Target, reason: str, message: str, now: float, *, name: str | None = None
) -> Obj:
    """A core/v1 Event about *target* (cluster-scoped objects: in ``default``)."""
    resource = ResourceRef.parse(target.resource)
    stamp = planner.format_time(now)
    namespace = target.namespace or EVENTS_NAMESPACE
    md: Obj = {"namespace": namespace}
    if name:
        md["name"] = name
    else:
        md["generateName"] = f"{target.name}.opsq-"
    involved: Obj = {
        "apiVersion": resource.api_version, "kind": target.kind or kind_guess(resource),
        "name": target.name, "uid": target.uid,
    }  # fmt: skip
    if target.namespace:
        involved["namespace"] = target.namespace
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": md,
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "opsq-cleanup"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }  # fmt: skip
