"""One-shot cleanup: LIST per rule and namespace, plan, execute, report.

The plan is built from paginated LISTs (one per rule and listed namespace; globs list
all namespaces once and filter locally). Objects matched by several rules are planned
once, by the first rule in the file. Deletions beyond ``max_deletions_per_run`` are
reported as skipped. Execution happens either in this process (``--local``) or on the
``cleanup`` Celery queue (task :data:`opsq.core.signatures.CLEANUP_OBJECT`, sent by
name), whose outcomes are collected from the result backend.

Either way every deletion goes through :class:`opsq.engines.cleanup.executor.Executor`
with the resourceVersion seen in the LIST as a precondition, so an object that
changed between plan and delete is re-judged, not deleted blindly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from opsq.core import signatures
from opsq.core.config.cleanup import CleanupSettings, Rule
from opsq.core.errors import OpsqError, TemporaryError
from opsq.core.metrics.cleanup import CLEANUP_OBJECTS, TERMINATING_SEEN
from opsq.core.redis_errors import redis_errors
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import Executor, Outcome, Target, count, outcome_of
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.lister import list_all
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import PlanItem

Obj = dict[str, Any]
Execute = Callable[[Sequence[Target], bool], list[Outcome]]


@dataclass
class Report:
    dry_run: bool
    planned: list[PlanItem] = field(default_factory=list)
    deleted: list[Outcome] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    plan: list[PlanItem] = field(default_factory=list)
    """Every planned entry, delete or skip, in plan order (for the table)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "planned": [i.to_json() for i in self.planned],
            "deleted": [o.to_json() for o in self.deleted],
            "skipped": self.skipped,
            "errors": self.errors,
        }


def build_plan(
    settings: CleanupSettings, kube: Kube, now: float
) -> tuple[list[PlanItem], list[dict[str, Any]]]:
    """LIST every rule's objects and plan them; listing failures become errors."""
    known: dict[str, Obj] = {}
    owners = OwnerResolver(kube, known=known.get)
    per_rule: list[tuple[Rule, list[Obj]]] = []
    errors: list[dict[str, Any]] = []
    for rule in settings.rules:
        objects: list[Obj] = []
        for namespace in planner.list_namespaces(rule.namespaces):
            try:
                listing = list_all(
                    kube, rule.resource, namespace, page_size=settings.page_size,
                    label_selector=rule.label_selector, field_selector=rule.field_selector,
                )  # fmt: skip
            except OpsqError as exc:
                errors.append(_error(rule, namespace or "", str(exc), "list-failed"))
                continue
            objects.extend(listing.items)
        known.update({str(planner.meta(o).get("uid")): o for o in objects})
        per_rule.append((rule, objects))
    seen: set[str] = set()
    items: list[PlanItem] = []
    for rule, objects in per_rule:
        for item in planner.make_plan(rule, objects, now, owners, settings.ttl_annotation):
            if item.uid not in seen:  # first rule wins for an object matched twice
                seen.add(item.uid)
                items.append(item)
    return planner.cap_deletions(items, settings.max_deletions_per_run), errors


def _error(rule: Rule, namespace: str, message: str, reason: str) -> dict[str, Any]:
    return {
        "resource": str(rule.resource), "namespace": namespace, "name": "", "uid": "",
        "rule": rule.name, "reason": reason, "message": message,
    }  # fmt: skip


def target_of(item: PlanItem) -> Target:
    return Target(
        rule=item.rule, resource=item.resource, namespace=item.namespace, name=item.name,
        uid=item.uid, resource_version=item.resource_version or None, reason=item.reason,
    )  # fmt: skip


def run_once(
    settings: CleanupSettings, kube: Kube, execute: Execute, *, dry_run: bool, now: float
) -> Report:
    """Plan, execute the deletions through *execute*, and sort the outcomes."""
    plan, errors = build_plan(settings, kube, now)
    report = Report(dry_run=dry_run, plan=plan, errors=errors)
    for item in plan:
        if item.action == "delete":
            report.planned.append(item)
        else:
            _count_skip(item)
            report.skipped.append(item.to_json())
    for outcome in execute([target_of(i) for i in report.planned], dry_run):
        if outcome.result in ("deleted", "would_delete"):
            report.deleted.append(outcome)
        elif outcome.result == "skipped":
            report.skipped.append(outcome.to_json())
        else:
            report.errors.append(outcome.to_json())
    return report


def _count_skip(item: PlanItem) -> None:
    if item.reason == planner.NOT_DUE_YET or item.reason.startswith("not-"):
        return  # not matching (yet) is the normal state of most objects: not an event
    if item.reason == planner.TERMINATING:
        TERMINATING_SEEN.labels(item.resource, item.rule).inc()
    CLEANUP_OBJECTS.labels(item.resource, item.rule, "skipped", item.reason).inc()


def local_executor(executor: Executor) -> Execute:
    """Execute in this process, one object at a time (paced by the executor's limiter)."""

    def execute(targets: Sequence[Target], dry_run: bool) -> list[Outcome]:
        outcomes = []
        for target in targets:
            try:
                outcomes.append(executor.execute(target, dry_run=dry_run))
            except TemporaryError as exc:
                outcomes.append(count(outcome_of(target, "failed", "unavailable", str(exc))))
        return outcomes

    return execute


def task_kwargs(target: Target, dry_run: bool) -> dict[str, Any]:
    """The CLEANUP_OBJECT contract (see :mod:`opsq.core.signatures`)."""
    return {
        "rule": target.rule, "resource": target.resource, "namespace": target.namespace,
        "name": target.name, "uid": target.uid, "dry_run": dry_run,
        "resource_version": target.resource_version, "reason": target.reason,
    }  # fmt: skip


def celery_executor(app: Celery, *, timeout: float) -> Execute:
    """Send every target to the ``cleanup`` queue, then wait for all outcomes."""

    def execute(targets: Sequence[Target], dry_run: bool) -> list[Outcome]:
        with redis_errors("enqueue cleanup tasks"):
            sent = [
                (t, app.send_task(signatures.CLEANUP_OBJECT, kwargs=task_kwargs(t, dry_run)))
                for t in targets
            ]
        deadline = time.monotonic() + timeout
        return [_collect(t, r, deadline) for t, r in sent]

    return execute


def _collect(target: Target, result: Any, deadline: float) -> Outcome:
    try:
        doc = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
    except CeleryTimeout:
        return outcome_of(target, "failed", "timeout", "no outcome from a cleanup worker in time")
    if isinstance(doc, dict) and "result" in doc:
        return Outcome(**doc)
    return outcome_of(target, "failed", "worker-error", f"task failed: {doc!r}")
