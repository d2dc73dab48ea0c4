"""From informer events to due deletions: the engine behind ``opsq watch``.

Each rule gets informers (one per listed namespace, or one for all namespaces). Every
time an object is announced (list, watch event, resync) the rule is evaluated and the
object's *due time* is put into a :class:`DueQueue`, replacing the previous one: an
object that changed is re-judged, one that was deleted or became terminating leaves
the queue. Nothing is polled: a Job that finishes now and is due in an hour costs no
request until then.

:meth:`Watcher.due` pops everything due before a horizon. The owner guard runs at
that moment (owners are looked up in the informer caches first), so it judges the
owners as they are when the deletion is sent, not when the object was first seen.
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
from opsq.engines.cleanup import planner
from opsq.engines.cleanup.executor import Target
from opsq.engines.cleanup.informer import Informer
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.owners import OwnerResolver

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
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self.queue = DueQueue()
        self.informers: list[Informer] = []
        self._rules: dict[str, Rule] = {r.name: r for r in settings.rules}
        self._terminating: set[str] = set()
        self._owners = OwnerResolver(kube, known=self._known)
        for rule in settings.rules:
            for namespace in planner.list_namespaces(rule.namespaces):
                self.informers.append(self._informer(rule, namespace, informer_clock))

    def _informer(self, rule: Rule, namespace: str | None, clock: Callable[[], float]) -> Informer:
        return Informer(
            self.kube, rule.resource, namespace,
            on_object=lambda obj: self.on_object(rule, obj),
            on_gone=lambda obj: self.on_gone(rule, obj),
            label_selector=rule.label_selector, field_selector=rule.field_selector,
            page_size=self.settings.page_size, watch_timeout=self.settings.watch_timeout,
            resync=self.settings.resync, relist=self.settings.relist, clock=clock,
        )  # fmt: skip

    @property
    def synced(self) -> bool:
        return all(informer.synced for informer in self.informers)

    def _known(self, uid: str) -> Obj | None:
        for informer in self.informers:
            obj = informer.get_by_uid(uid)
            if obj is not None:
                return obj
        return None

    def on_object(self, rule: Rule, obj: Obj) -> None:
        """Re-judge one object: schedule its due time, or drop it from the queue."""
        md = planner.meta(obj)
        uid = str(md.get("uid"))
        if not planner.namespace_selected(str(md.get("namespace") or ""), rule.namespaces):
            return
        if planner.is_terminating(obj):
            self.queue.remove(rule.name, uid)
            if uid not in self._terminating:  # count each object once, not every event
                self._terminating.add(uid)
                TERMINATING_SEEN.labels(str(rule.resource), rule.name).inc()
            return
        decision = planner.evaluate(rule, obj, self.settings.ttl_annotation)
        if decision.due_at is None:
            self.queue.remove(rule.name, uid)
            return
        target = Target(
            rule=rule.name, resource=str(rule.resource), namespace=str(md.get("namespace") or ""),
            name=str(md.get("name")), uid=uid, resource_version=str(md.get("resourceVersion")),
            reason=decision.reason,
        )  # fmt: skip
        self.queue.upsert(Due(target, decision.due_at))

    def due(self, horizon: float) -> list[Due]:
        """Pop what is due before *horizon*, minus what the owner guard forbids."""
        ready = []
        for item in self.queue.pop_until(horizon):
            rule = self._rules[item.target.rule]
            cached = self._known(item.target.uid)
            if cached is None:
                continue  # gone since it was queued
            verdict = planner.owner_verdict(rule, cached, self._owners)
            if verdict is not None:
                CLEANUP_OBJECTS.labels(item.target.resource, rule.name, "skipped", verdict).inc()
                continue
            ready.append(item)
        return ready

    def on_gone(self, rule: Rule, obj: Obj) -> None:
        uid = str(planner.meta(obj).get("uid"))
        self.queue.remove(rule.name, uid)
        self._terminating.discard(uid)
