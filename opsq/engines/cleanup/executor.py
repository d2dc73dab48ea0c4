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
- 409: re-plan from a fresh GET (bounded: an object changing on every attempt is
  reported as a failure, not fought over).
- 404: already gone, which is what we wanted. 403: a permanent failure naming verb,
  resource and namespace. 429/5xx/timeouts: retried here with exponential backoff and
  full jitter (honouring Retry-After), then raised as TemporaryError for the caller's
  own retry loop (Celery's).
- ``dryRun=All`` when dry-running: the server runs admission, RBAC and preconditions
  and changes nothing, so a dry run proves the real run would be allowed.
- ``propagationPolicy`` is always explicit (Background by default): batch/v1 Jobs
  default to Orphan server-side, which would strand their pods.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from opsq.core.config.cleanup import CleanupSettings, ResourceRef, Rule
from opsq.core.errors import PermanentError
from opsq.core.metrics.cleanup import CLEANUP_OBJECTS, TERMINATING_SEEN
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.kube import ApiUnavailable, Conflict, Forbidden, Kube, NotFound
from opsq.engines.cleanup.planner import OwnerLookup, OwnerState
from opsq.engines.cleanup.ratelimit import RateLimiter, Unlimited

log = logging.getLogger(__name__)
T = TypeVar("T")
Obj = dict[str, Any]
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


def backoff_delay(
    attempt: int, base: float, cap: float, hint: float | None, rng: Callable[[], float]
) -> float:
    """Full jitter (AWS architecture blog), never shorter than a Retry-After hint."""
    jitter = rng() * min(cap, base * 2**attempt)
    return max(float(jitter), hint or 0.0)


class Executor:
    """Deletes :class:`Target` objects safely; see the module docstring for the rules."""

    def __init__(
        self,
        kube: Kube,
        settings: CleanupSettings,
        *,
        owners: OwnerLookup | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        retries: int | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.owners = owners or (lambda namespace, ref: OwnerState.UNKNOWN)
        self.limiter = limiter or Unlimited()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.retries = settings.retries if retries is None else retries

    def execute(self, target: Target, *, dry_run: bool) -> Outcome:
        """Delete *target* (or dry-run it) and report what happened; count it."""
        try:
            rule = self.settings.rule(target.rule)
        except KeyError:
            message = f"rule {target.rule!r} is not in this process's cleanup config"
            return count(outcome_of(target, "failed", "unknown-rule", message))
        try:
            outcome = self._execute(rule, target, dry_run)
        except PermanentError as exc:
            reason = "forbidden" if isinstance(exc, Forbidden) else "rejected"
            outcome = outcome_of(target, "failed", reason, str(exc))
        return count(outcome)

    def _execute(self, rule: Rule, target: Target, dry_run: bool) -> Outcome:
        resource_version = None if self.settings.verify_with_get else target.resource_version
        reason = target.reason or "due"
        for _ in range(MAX_REPLANS + 1):
            if resource_version is None:
                verdict, resource_version, reason = self._fresh(rule, target)
                if verdict is not None:
                    return verdict
            try:
                self._delete(rule, target, resource_version, dry_run)
            except NotFound:
                return outcome_of(target, "skipped", planner.ALREADY_GONE)
            except Conflict:
                resource_version = None  # the object changed: judge it again
                continue
            self._announce(rule, target, dry_run)
            return outcome_of(target, "would_delete" if dry_run else "deleted", reason)
        return outcome_of(
            target, "failed", "conflict", f"still changing after {MAX_REPLANS} re-plans"
        )

    def _fresh(self, rule: Rule, target: Target) -> tuple[Outcome | None, str | None, str]:
        """GET the object and re-evaluate the rule: a skip outcome, or its RV and reason."""
        resource = ResourceRef.parse(target.resource)
        try:
            obj = self._call(lambda: self.kube.get(resource, target.namespace or None, target.name))
        except NotFound:
            return outcome_of(target, "skipped", planner.ALREADY_GONE), None, ""
        if planner.meta(obj).get("uid") != target.uid:
            return outcome_of(target, "skipped", planner.RECREATED), None, ""
        item = planner.plan_object(
            rule, obj, self.clock(), self.owners, self.settings.ttl_annotation
        )
        if item.reason == planner.TERMINATING:
            TERMINATING_SEEN.labels(target.resource, target.rule).inc()
        if item.action != "delete":
            return outcome_of(target, "skipped", item.reason), None, ""
        return None, item.resource_version, item.reason

    def _delete(
        self, rule: Rule, target: Target, resource_version: str | None, dry_run: bool
    ) -> None:
        resource = ResourceRef.parse(target.resource)
        self.limiter.acquire()
        self._call(
            lambda: self.kube.delete(
                resource, target.namespace or None, target.name, uid=target.uid,
                resource_version=resource_version, propagation_policy=rule.propagation_policy,
                grace_period_seconds=rule.grace_period_seconds, dry_run=dry_run,
            )
        )  # fmt: skip

    def _call(self, request: Callable[[], T]) -> T:
        """Run one API request, retrying temporary failures with backoff."""
        for attempt in range(self.retries + 1):
            try:
                return request()
            except ApiUnavailable as exc:
                if attempt >= self.retries:
                    raise
                delay = backoff_delay(
                    attempt,
                    self.settings.backoff_base,
                    self.settings.backoff_cap,
                    exc.delay,
                    self.rng,
                )
                log.warning("kube API unavailable (%s); retrying in %.2fs", exc, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _announce(self, rule: Rule, target: Target, dry_run: bool) -> None:
        """Optional Kubernetes Event on the deleted object (best effort, never fatal)."""
        if not self.settings.events or dry_run or not target.namespace:
            return
        try:
            self.kube.create_event(target.namespace, _event(rule, target, self.clock()))
        except Exception as exc:  # an Event is a courtesy: never fail a deletion for it
            log.warning("could not create event for %s/%s: %s", target.namespace, target.name, exc)


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


def _event(rule: Rule, target: Target, now: float) -> Obj:
    resource = ResourceRef.parse(target.resource)
    stamp = planner.format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{target.name}.opsq-", "namespace": target.namespace},
        "involvedObject": {
            "apiVersion": resource.api_version, "kind": resource.plural,
            "namespace": target.namespace, "name": target.name, "uid": target.uid,
        },
        "reason": "OpsqCleanupDeleted",
        "message": f"deleted by opsq cleanup rule {rule.name!r}",
        "type": "Normal",
        "source": {"component": "opsq-cleanup"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }  # fmt: skip
