"""From informer events to due deletions: the engine behind ``opsq watch``.

Each rule gets informers (one per listed namespace, or one for all namespaces). Every
time an object is announced (list, watch event, resync) the rule is evaluated and the
object's *due time* is put into a :class:`DueQueue`, replacing the previous one: an
object that changed is re-judged, one that was deleted or became terminating leaves
the queue. Nothing is polled: a Job that finishes now and is due in an hour costs no
request until then.

:meth:`Watcher.due` pops everything due before a horizon. The guards run at that
moment (owners are looked up in the informer caches first; PVC usage in the pod and
workload informers), so they judge the world as it is when the deletion is sent, not
when the object was first seen. An object due under several rules is sent once, by
the rule :func:`planner.choose` picks, exactly as the one-shot plans it.

A rule with ``notify_before`` also puts the object into :attr:`Watcher.notices` at
``due_at - notify_before``; the producer announces what pops from it.
Sending (Celery, dedupe in Redis) is the producer's job; this module has no I/O
besides the informers' and the owner lookups.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opsq.core.config.cleanup import CleanupSettings, Rule
from opsq.core.metrics.cleanup import CLEANUP_OBJECTS, TERMINATING_SEEN
from opsq.engines.cleanup import planner, usage
from opsq.engines.cleanup.executor import Target
from opsq.engines.cleanup.informer import Informer
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.lister import keep_spec, slim
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import Guards, UsageState

Obj = dict[str, Any]


@dataclass(frozen=True)
class Due:
    target: Target
    due_at: float
    backoff_for: int = 0
    """Failure count whose backoff is already included in ``due_at``."""


class DueQueue:
    """A heap of due times keyed by (rule, uid); the latest upsert wins (lazy deletion)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._entries: dict[tuple[str, str], tuple[int, Due]] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def upsert(self, due: Due) -> None:
        key = (due.target.rule, due.target.uid)
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current[1] == due:
                return  # unchanged: do not grow the heap on every resync
            seq = next(self._seq)
            self._entries[key] = (seq, due)
            heapq.heappush(self._heap, (due.due_at, seq, key))

    def remove(self, rule: str, uid: str) -> None:
        with self._lock:
            self._entries.pop((rule, uid), None)

    def peek_until(self, horizon: float) -> list[Due]:
        """What :meth:`pop_until` would return, leaving the queue as it is."""
        with self._lock:
            return [due for _, due in self._entries.values() if due.due_at <= horizon]

    def pop_until(self, horizon: float) -> list[Due]:
        out: list[Due] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= horizon:
                _, seq, key = heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is not None and entry[0] == seq:
                    del self._entries[key]
                    out.append(entry[1])
        return out

    def next_due(self) -> float | None:
        with self._lock:
            while self._heap:
                _, seq, key = self._heap[0]
                entry = self._entries.get(key)
                if entry is not None and entry[0] == seq:
                    return self._heap[0][0]
                heapq.heappop(self._heap)
        return None

    def __len__(self) -> int:
        return len(self._entries)


class Watcher:
    """Informers for every rule feeding one :class:`DueQueue`."""

    def __init__(
        self,
        settings: CleanupSettings,
        kube: Kube,
        *,
        clock: Callable[[], float] = time.time,
        informer_clock: Callable[[], float] = time.monotonic,
        judged_by: str = "opsq watch",
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.judged_by = judged_by
        self.annotations = planner.Annotations.of(settings)
        self.queue = DueQueue()
        self.notices = DueQueue()
        self.informers: list[Informer] = []
        self.usage_informers: list[Informer] = []
        self._rules: dict[str, Rule] = {r.name: r for r in settings.rules}
        self._terminating: set[str] = set()
        self.guards = Guards(OwnerResolver(kube, known=self.known), self._usage)
        for rule in settings.rules:
            for namespace in planner.list_namespaces(rule):
                self.informers.append(self._informer(rule, namespace, informer_clock))
        for namespace in usage_namespaces(settings):
            for referrer in usage.REFERRERS:
                self.usage_informers.append(
                    Informer(
                        kube, referrer.resource, namespace, transform=usage.reducer(referrer),
                        fatal_before_sync=True,
                        page_size=settings.page_size, watch_timeout=settings.watch_timeout,
                        resync=settings.resync, relist=settings.relist, clock=informer_clock,
                    )
                )  # fmt: skip

    def _informer(self, rule: Rule, namespace: str | None, clock: Callable[[], float]) -> Informer:
        return Informer(
            self.kube, rule.resource, namespace,
            on_object=lambda obj: self.on_object(rule, obj),
            on_gone=lambda obj: self.on_gone(rule, obj),
            label_selector=rule.label_selector, field_selector=rule.field_selector,
            transform=keep_spec if rule.when.match else slim, fatal_before_sync=True,
            page_size=self.settings.page_size, watch_timeout=self.settings.watch_timeout,
            resync=self.settings.resync, relist=self.settings.relist, clock=clock,
        )  # fmt: skip

    @property
    def all_informers(self) -> list[Informer]:
        return self.informers + self.usage_informers

    @property
    def synced(self) -> bool:
        return all(informer.synced for informer in self.all_informers)

    def _usage(self, namespace: str, name: str) -> UsageState:
        """PVC usage from the pod and workload caches (UNKNOWN until all synced)."""
        if not all(i.synced for i in self.usage_informers) or not self.usage_informers:
            return UsageState.UNKNOWN
        index = usage.UsageIndex()
        for informer in self.usage_informers:
            if informer.namespace in (None, namespace):
                for obj in informer.objects():
                    if planner.meta(obj).get("namespace") == namespace:
                        index.add(obj)
        return index(namespace, name)

    def known(self, uid: str) -> Obj | None:
        for informer in self.informers:
            obj = informer.get_by_uid(uid)
            if obj is not None:
                return obj
        return None

    def on_object(self, rule: Rule, obj: Obj) -> None:
        """Re-judge one object: schedule its due time, or drop it from the queue."""
        md = planner.meta(obj)
        uid = str(md.get("uid"))
        if not planner.selected(rule, obj):
            return
        if planner.is_terminating(obj):
            self._unschedule(rule.name, uid)
            if uid not in self._terminating:  # count each object once, not every event
                self._terminating.add(uid)
                TERMINATING_SEEN.labels(str(rule.resource), rule.name).inc()
            return
        decision = planner.evaluate(rule, obj, self.annotations)
        if decision.due_at is None:
            self._unschedule(rule.name, uid)
            return
        target = Target(
            rule=rule.name, resource=str(rule.resource), namespace=str(md.get("namespace") or ""),
            name=str(md.get("name")), uid=uid, resource_version=str(md.get("resourceVersion")),
            reason=decision.reason, kind=planner.kind_of(obj), judged_by=self.judged_by,
        )  # fmt: skip
        self.queue.upsert(Due(target, decision.due_at))
        if rule.notify_before is not None:
            self.notices.upsert(Due(target, decision.due_at - rule.notify_before))

    def _unschedule(self, rule: str, uid: str) -> None:
        self.queue.remove(rule, uid)
        self.notices.remove(rule, uid)

    def due(self, horizon: float) -> list[Due]:
        """Pop what is due before *horizon*: one entry per object, by the rule
        :func:`planner.choose` picks among those due, minus what the guards forbid."""
        return self._select(self.queue.pop_until(horizon), count=True)

    def plan(self, now: float) -> dict[str, str]:
        """``uid -> rule`` of what :meth:`due` would send at *now*, without popping
        (the property test compares it with the one-shot's plan)."""
        chosen = self._select(self.queue.peek_until(now), count=False)
        return {d.target.uid: d.target.rule for d in chosen}

    def _select(self, popped: list[Due], *, count: bool) -> list[Due]:
        by_uid: dict[str, list[Due]] = {}
        for item in popped:
            by_uid.setdefault(item.target.uid, []).append(item)
        ready = []
        for uid, items in by_uid.items():
            cached = self.known(uid)
            if cached is None:
                continue  # gone since it was queued
            ordered = sorted(items, key=lambda d: (d.due_at, d.target.rule))
            chosen = self._first_allowed(ordered, cached, count=count)
            if chosen is not None:
                ready.append(chosen)
        return ready

    def _first_allowed(self, items: list[Due], obj: Obj, *, count: bool) -> Due | None:
        verdicts = []
        for item in items:
            rule = self._rules[item.target.rule]
            verdict = planner.guard_verdict(rule, obj, self.guards)
            if verdict is None:
                return item
            verdicts.append((rule, verdict))
        rule, verdict = verdicts[0]
        if count:
            CLEANUP_OBJECTS.labels(str(rule.resource), rule.name, "skipped", verdict).inc()
        return None

    def on_gone(self, rule: Rule, obj: Obj) -> None:
        uid = str(planner.meta(obj).get("uid"))
        self._unschedule(rule.name, uid)
        self._terminating.discard(uid)


def usage_namespaces(settings: CleanupSettings) -> list[str | None]:
    """Where PVC rules need pods and workloads listed: their namespaces (None: all)."""
    wanted: list[str | None] = []
    for rule in settings.rules:
        if rule.when.unused:
            wanted.extend(planner.list_namespaces(rule))
    if None in wanted:
        return [None]
    return list(dict.fromkeys(wanted))
