"""One-shot cleanup: LIST per rule and namespace, plan, execute, report.

The plan is built from paginated LISTs (one per rule and listed namespace; globs list
all namespaces once and filter locally; each page retried on 429/5xx). An object that
several rules select is judged under each of them (:func:`planner.make_plan`), exactly
as ``opsq watch`` judges it. Deletions beyond ``max_deletions_per_run`` are reported
as skipped. If any LIST cannot be served at all (API unreachable after retries) the
run stops before deleting anything: a partial view is no basis for deletion (a PVC
looks unused when the pods could not be listed).

Execution happens either in this process (``--local``) or on the ``cleanup`` Celery
queue (task :data:`opsq.core.signatures.CLEANUP_OBJECT`, sent by name). Sending to
the queue is guarded so that a command that reported failure never acts later:

1. before sending, a worker consuming ``cleanup`` must answer a broadcast within
   seconds, else :class:`NoWorkers` (exit 3) and nothing is queued;
2. every task carries Celery ``expires`` and a ``deadline`` (the end of ``--wait``) and
   a ``batch`` id; the worker skips a task past its deadline or whose batch is
   cancelled (:func:`opsq.core.keys.cleanup_cancelled`), checked right before DELETE;
3. on timeout, Ctrl-C or SIGTERM/SIGHUP (also while the tasks are still being sent:
   5,000 of them take seconds) the command cancels the batch and revokes the tasks
   still queued, and says so;
4. a task that comes back expired or past its deadline (a worker whose clock runs
   ahead) is a failure (``expired``), never a quiet skip: it was planned and not done.

Either way every deletion goes through :class:`opsq.engines.cleanup.executor.Executor`
with the resourceVersion seen in the LIST as a precondition, so an object that
changed between plan and delete is re-judged, not deleted blindly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from opsq.core import keys, signatures
from opsq.core.config.cleanup import CleanupSettings, Rule
from opsq.core.errors import OpsqError, TemporaryError
from opsq.core.metrics.cleanup import CLEANUP_OBJECTS, TERMINATING_SEEN
from opsq.core.redis_errors import redis_errors
from opsq.engines.alerts import Message
from opsq.engines.cleanup import planner, usage
from opsq.engines.cleanup.executor import CANCELLED, Executor, Outcome, Target, count, outcome_of
from opsq.engines.cleanup.kube import ApiUnavailable, Kube, Unauthorized
from opsq.engines.cleanup.lister import keep_spec, list_all, slim
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import Guards, PlanItem
from opsq.engines.cleanup.retry import Retrier
from opsq.engines.cleanup.watcher import usage_namespaces

log = logging.getLogger(__name__)
Obj = dict[str, Any]
Execute = Callable[[Sequence[Target], bool], list[Outcome]]
GIVE_UP_AFTER = 3
"""Objects in a row whose retries an unavailable API server used up: the run stops."""
NOT_ATTEMPTED = "not-attempted"
"""Failure reason of the objects a run left once the API server stopped answering."""
EXPIRED = "expired"
"""Failure reason of a task that a worker took only after its deadline."""
WORKER_CHECK_S = 2.0
"""How long a broadcast waits for a worker consuming ``cleanup`` to answer (twice)."""
START_WORKER = "celery -A tasks worker -Q cleanup"


class NoWorkers(TemporaryError):
    """No worker consumes the cleanup queue: nothing was sent."""


@dataclass
class Report:
    dry_run: bool
    planned: list[PlanItem] = field(default_factory=list)
    deleted: list[Outcome] = field(default_factory=list)
    skipped: list[Outcome] = field(default_factory=list)
    errors: list[Outcome] = field(default_factory=list)
    plan: list[PlanItem] = field(default_factory=list)
    """Every planned entry, delete or skip, in plan order (for the table)."""

    def to_json(self) -> dict[str, Any]:
        """planned[] holds plan entries; deleted[], skipped[], errors[] outcomes (one shape)."""
        return {
            "dry_run": self.dry_run,
            "planned": [i.to_json() for i in self.planned],
            "deleted": [o.to_json() for o in self.deleted],
            "skipped": [o.to_json() for o in self.skipped],
            "errors": [o.to_json() for o in self.errors],
        }


def build_plan(
    settings: CleanupSettings, kube: Kube, now: float, *, retrier: Retrier | None = None
) -> tuple[list[PlanItem], list[Outcome]]:
    """LIST every rule's objects and plan them; permission failures become errors.

    Raises ApiUnavailable when a LIST cannot be served even after retries, Unauthorized
    when the credentials are rejected.
    """
    retrier = retrier or Retrier(settings.retries, settings.backoff_base, settings.backoff_cap)
    errors: list[Outcome] = []
    per_rule: list[tuple[Rule, list[Obj]]] = []
    for rule in settings.rules:
        objects: list[Obj] = []
        for namespace in planner.list_namespaces(rule):
            try:
                listing = list_all(
                    kube, rule.resource, namespace, page_size=settings.page_size,
                    label_selector=rule.label_selector, field_selector=rule.field_selector,
                    transform=keep_spec if rule.when.match else slim, retrier=retrier,
                )  # fmt: skip
            except (ApiUnavailable, Unauthorized):
                raise
            except OpsqError as exc:
                errors.append(_error(rule, namespace or "", str(exc)))
                continue
            objects.extend(listing.items)
        per_rule.append((rule, objects))
    known = {str(planner.meta(o).get("uid")): o for _, objs in per_rule for o in objs}
    usage_index = _usage_index(settings, kube, retrier, errors)
    guards = Guards(OwnerResolver(kube, known=known.get), usage_index)
    items = planner.make_plan(per_rule, now, guards, planner.Annotations.of(settings))
    return planner.cap_deletions(items, settings.max_deletions_per_run), errors


def _usage_index(
    settings: CleanupSettings, kube: Kube, retrier: Retrier, errors: list[Outcome]
) -> usage.UsageIndex:
    """Pods and workloads where PVC rules look (only when there are PVC rules)."""
    index = usage.UsageIndex()
    pvc_rule = next((r for r in settings.rules if r.when.unused), None)
    for namespace in usage_namespaces(settings):
        for referrer in usage.REFERRERS:
            try:
                listing = list_all(
                    kube, referrer.resource, namespace, page_size=settings.page_size,
                    transform=usage.reducer(referrer), retrier=retrier,
                )  # fmt: skip
            except (ApiUnavailable, Unauthorized):
                raise
            except OpsqError as exc:
                index.unknown.add(namespace)
                if pvc_rule is not None:
                    errors.append(_error(pvc_rule, namespace or "", str(exc)))
                continue
            for obj in listing.items:
                index.add(obj)
    return index


def _error(rule: Rule, namespace: str, message: str) -> Outcome:
    target = Target(rule.name, str(rule.resource), namespace, "", "")
    return outcome_of(target, "failed", "list-failed", message)


def target_of(item: PlanItem, judged_by: str = "", judged_at: float | None = None) -> Target:
    return Target(
        rule=item.rule, resource=item.resource, namespace=item.namespace, name=item.name,
        uid=item.uid, resource_version=item.resource_version or None, reason=item.reason,
        kind=item.kind, judged_by=judged_by, judged_at=judged_at,
    )  # fmt: skip


def run_once(
    settings: CleanupSettings,
    kube: Kube,
    execute: Execute,
    *,
    dry_run: bool,
    now: float,
    judged_by: str = "",
    on_plan: Callable[[Report], None] | None = None,
    notify: Callable[[Target, float], object] | None = None,
) -> Report:
    """Plan, show the plan (*on_plan*), announce what falls due within a rule's
    ``notify_before`` (*notify*, real runs only), execute the deletions, sort the outcomes."""
    plan, errors = build_plan(settings, kube, now)
    if notify is not None and not dry_run:
        for item in upcoming(settings, plan, now):
            notify(target_of(item, judged_by, now), item.due_at or now)
    report = Report(dry_run=dry_run, plan=plan, errors=errors)
    for item in plan:
        if item.action == "delete":
            report.planned.append(item)
        else:
            _count_skip(item)
            report.skipped.append(outcome_of(target_of(item), "skipped", item.reason))
    if on_plan is not None:
        on_plan(report)
    targets = [target_of(i, judged_by, now) for i in report.planned]
    for outcome in execute(targets, dry_run):
        if outcome.result in ("deleted", "would_delete"):
            report.deleted.append(outcome)
        elif outcome.result == "skipped":
            report.skipped.append(outcome)
        else:
            report.errors.append(outcome)
    return report


def upcoming(settings: CleanupSettings, plan: list[PlanItem], now: float) -> list[PlanItem]:
    """Objects not due yet whose rule wants a heads-up by now."""
    out = []
    for item in plan:
        rule = settings.rule(item.rule)
        if item.reason != planner.NOT_DUE_YET or rule.notify_before is None:
            continue
        if item.due_at is not None and item.due_at - rule.notify_before <= now:
            out.append(item)
    return out


def _count_skip(item: PlanItem) -> None:
    if item.reason in planner.QUIET:
        return  # not matching (yet) is the normal state of most objects: not an event
    if item.reason == planner.TERMINATING:
        TERMINATING_SEEN.labels(item.resource, item.rule).inc()
    CLEANUP_OBJECTS.labels(item.resource, item.rule, "skipped", item.reason).inc()


def local_executor(executor: Executor) -> Execute:
    """Execute in this process, one object at a time (paced by the executor's limiter).

    When :data:`GIVE_UP_AFTER` objects in a row used up their retries on an unavailable
    API server, it is down, not busy: the rest are reported ``not-attempted`` at once
    instead of each waiting through its own retries (5,000 objects took hours). A single
    object that keeps failing (an admission webhook answering 500 for it) stops nothing.
    """

    def execute(targets: Sequence[Target], dry_run: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        in_a_row = 0
        for target in targets:
            if in_a_row >= GIVE_UP_AFTER:
                message = f"the API server stopped answering ({in_a_row} objects in a row)"
                outcomes.append(count(outcome_of(target, "failed", NOT_ATTEMPTED, message)))
                continue
            try:
                outcomes.append(executor.execute(target, dry_run=dry_run))
                in_a_row = 0
            except TemporaryError as exc:
                outcomes.append(count(outcome_of(target, "failed", "unavailable", str(exc))))
                in_a_row += 1
        return outcomes

    return execute


def task_kwargs(target: Target, dry_run: bool) -> dict[str, Any]:
    """The CLEANUP_OBJECT contract (see :mod:`opsq.core.signatures`)."""
    return {
        "rule": target.rule, "resource": target.resource, "namespace": target.namespace,
        "name": target.name, "uid": target.uid, "dry_run": dry_run,
        "resource_version": target.resource_version, "reason": target.reason,
        "kind": target.kind, "judged_by": target.judged_by, "judged_at": target.judged_at,
    }  # fmt: skip


def notify_relay(app: Celery) -> Callable[[str, Message], None]:
    """Heads-ups through the ``opsq.notify`` task (keyed, retried; on queue ``alerts``)."""

    def relay(notifier: str, message: Message) -> None:
        kwargs = {"notifier": notifier, "message": message.to_dict()}
        with redis_errors("queue a cleanup heads-up"):
            app.send_task(signatures.NOTIFY, kwargs=kwargs)

    return relay


def require_worker(app: Celery, *, timeout: float = WORKER_CHECK_S, attempts: int = 2) -> None:
    """Raise NoWorkers unless a worker consuming ``cleanup`` answers a broadcast."""
    for _ in range(attempts):
        with redis_errors("look for workers on the cleanup queue"):
            replies = app.control.inspect(timeout=timeout).active_queues() or {}
        for queues in replies.values():
            if any(q.get("name") == keys.QUEUE_CLEANUP for q in queues or []):
                return
    raise NoWorkers(
        f"no worker consumes queue {keys.QUEUE_CLEANUP!r}; nothing was sent "
        f"(fix: start one with `{START_WORKER}`, or run with --local)"
    )


@dataclass
class Batch:
    """Tasks sent by one `opsq cleanup`, and how to call them off."""

    app: Celery
    client: redis.Redis[Any]
    deadline: float
    """Wall-clock end of --wait: the tasks' ``expires`` and the in-task check."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent: list[tuple[Target, Any]] = field(default_factory=list)
    collected: set[str] = field(default_factory=set)
    """Ids of the tasks whose outcome arrived (the rest are cancelled on interruption)."""

    def send(self, targets: Sequence[Target], dry_run: bool) -> None:
        expires = dt.datetime.fromtimestamp(self.deadline, dt.UTC)
        extra = {"batch": self.id, "deadline": self.deadline}
        try:
            with redis_errors("enqueue cleanup tasks"):
                for target in targets:
                    kwargs = {**task_kwargs(target, dry_run), **extra}
                    result = self.app.send_task(
                        signatures.CLEANUP_OBJECT, kwargs=kwargs, expires=expires
                    )
                    self.sent.append((target, result))
        except OpsqError:
            self.cancel([r.id for _, r in self.sent])
            raise

    def cancel(self, task_ids: list[str]) -> bool:
        """Mark the batch cancelled and revoke *task_ids*; False if Redis refused."""
        ttl = max(60, int(self.deadline - time.time()) + 60)
        ok = True
        try:
            with redis_errors(f"cancel batch {self.id}"):
                self.client.set(keys.cleanup_cancelled(self.id), "1", ex=ttl)
        except OpsqError as exc:
            log.error(
                "could not cancel batch %s: %s (its tasks expire at the deadline)", self.id, exc
            )
            ok = False
        if task_ids:  # reaches running workers only; a later one sees expires/the key
            with contextlib.suppress(OpsqError), redis_errors("revoke cleanup tasks"):
                self.app.control.revoke(task_ids)
        return ok


def celery_executor(
    app: Celery,
    client: redis.Redis[Any],
    *,
    timeout: float,
    announce: Callable[[str], None] = lambda _: None,
) -> Execute:
    """Check for a worker, send every target to the ``cleanup`` queue, wait for all."""

    def execute(targets: Sequence[Target], dry_run: bool) -> list[Outcome]:
        if not targets:
            return []
        require_worker(app)
        batch = Batch(app, client, deadline=time.time() + timeout)
        try:
            batch.send(targets, dry_run)
            announce(
                f"waiting for {len(targets)} outcome(s) from workers on queue "
                f"{keys.QUEUE_CLEANUP!r} (up to {timeout:g}s; --wait)"
            )
            return _collect_all(batch, announce)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP (the CLI raises Terminated)
            # Sending 5,000 tasks takes seconds: tasks already sent must not run either.
            pending = [r.id for _, r in batch.sent if r.id not in batch.collected]
            batch.cancel(pending)
            announce(
                f"interrupted: cancelled {len(pending)} task(s) still queued; they will not run"
            )
            raise

    return execute


def _collect_all(batch: Batch, announce: Callable[[str], None]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + max(0.0, batch.deadline - time.time())
    for target, result in batch.sent:
        outcomes.append(_collect(target, result, deadline))
        batch.collected.add(result.id)
    late = [r.id for (_, r), o in zip(batch.sent, outcomes, strict=True) if o.reason == "timeout"]
    if late:
        batch.cancel(late)
        announce(f"gave up waiting: cancelled {len(late)} task(s) still queued; they will not run")
    return outcomes


EXPIRED_MESSAGE = (
    "a worker took it after its deadline (--wait) and did not run it; is the worker's clock "
    "ahead of this machine's?"
)


def _collect(target: Target, result: Any, deadline: float) -> Outcome:
    try:
        doc = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
    except CeleryTimeout:
        message = "no outcome from a cleanup worker within --wait; cancelled, it will not run"
        return outcome_of(target, "failed", "timeout", message)
    if isinstance(doc, dict) and "result" in doc:
        outcome = Outcome(**doc)
        if outcome.reason == CANCELLED:
            # This command has not cancelled anything while it still collects: the worker
            # found the task past its deadline. A planned deletion that never ran is a
            # failure, not a skip (exit 1, not 0).
            return outcome_of(target, "failed", EXPIRED, EXPIRED_MESSAGE)
        return outcome
    if result.state == "REVOKED":  # Celery's expires, judged by the worker's clock
        return outcome_of(target, "failed", EXPIRED, EXPIRED_MESSAGE)
    return outcome_of(target, "failed", "worker-error", f"task failed: {doc!r}")
