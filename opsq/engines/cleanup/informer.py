"""A list-then-watch informer with a local indexed cache, as client-go builds them.

Polling every resource every interval (kube-janitor) costs a full LIST per interval
whether anything changed or not. An informer pays one LIST, then follows changes:

1. LIST (paginated, see :mod:`.lister`) and remember the list's resourceVersion;
2. WATCH from that resourceVersion with ``allowWatchBookmarks`` (bookmarks move our
   resourceVersion forward on quiet streams, so a reconnect does not fall off the
   server's history window), ``timeoutSeconds`` (the server ends the watch
   periodically) and a client-side read timeout (a half-open TCP connection after a
   network partition never delivers EOF; without it the watch would hang forever);
3. when the stream ends, WATCH again from the last seen resourceVersion;
4. on ``410 Gone`` / an ERROR event with code 410 ("too old resource version") the
   history we need is compacted: relist from scratch. Objects missing from the new
   list are reported gone; every object is re-announced, so nothing that became due
   while we were away is missed.

The cache is indexed by namespace/name and by UID. ``synced`` is False until the first
LIST completed: callers must not act on a partial view (an empty cache would look like
"nothing to do", a half-filled one like "owner is gone"). Every ``resync`` seconds all
cached objects are re-announced so that a dropped or failed action is retried.

Generic on purpose (the cleanup watcher, the PVC usage index and the log agent's
node-local pod metadata all use it): any resource, namespace, label and field selector
(``spec.nodeName=node-1``), a ``transform`` applied to every object before it is
cached (default: drop ``spec`` and ``managedFields``), and optional handlers; without
handlers it is just a cache. Every error backs off and retries, keeping the last good
cache; with ``fatal_before_sync`` (the cleanup watcher) a permission error before the
first sync ends :meth:`run` with :attr:`fatal` set instead, because retrying a missing
Role forever only hides it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from opsq.core.backoff import full_jitter
from opsq.core.config.base import default_of
from opsq.core.config.cleanup import CleanupSettings, ResourceRef
from opsq.core.errors import PermanentError, TemporaryError
from opsq.core.metrics.cleanup import INFORMER_CACHE_OBJECTS, WATCH_RELISTS, WATCH_RESTARTS
from opsq.engines.cleanup.kube import ApiUnavailable, Expired, Kube
from opsq.engines.cleanup.lister import Transform, list_all, slim
from opsq.engines.cleanup.planner import meta

log = logging.getLogger(__name__)
BACKOFF_CAP_S = 30.0
"""Longest wait between an informer's attempts, the server's Retry-After included."""
Obj = dict[str, Any]
Callback = Callable[[Obj], None]


def _ignore(obj: Obj) -> None:
    """The default handler: the informer is then only a cache."""


def _key(obj: Obj) -> tuple[str, str]:
    md = meta(obj)
    return str(md.get("namespace") or ""), str(md.get("name") or "")


class Informer:
    """Keeps a cache of one resource (optionally one namespace and selectors) current."""

    def __init__(
        self,
        kube: Kube,
        resource: ResourceRef,
        namespace: str | None = None,
        *,
        on_object: Callback = _ignore,
        on_gone: Callback = _ignore,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Transform = slim,
        fatal_before_sync: bool = False,
        page_size: int = default_of(CleanupSettings, "page_size"),
        watch_timeout: float = default_of(CleanupSettings, "watch_timeout"),
        resync: float = default_of(CleanupSettings, "resync"),
        relist: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.on_object = on_object
        self.on_gone = on_gone
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform
        self.fatal_before_sync = fatal_before_sync
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_timeout = watch_timeout + max(5.0, watch_timeout * 0.2)
        self.resync_every = resync
        self.relist_every = relist
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.by_name: dict[tuple[str, str], Obj] = {}
        self.by_uid: dict[str, Obj] = {}
        self.resource_version = ""
        self.synced = False
        self.error: str | None = None
        self.fatal: PermanentError | None = None
        """Set when :meth:`run` gave up: a permanent error before the first sync."""
        self._lock = threading.Lock()
        self._last_resync = 0.0
        self._last_list = 0.0
        self._needs_list = True
        self._failures = 0

    # --- cache -----------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self.by_name.get((namespace, name))

    def get_by_uid(self, uid: str) -> Obj | None:
        with self._lock:
            return self.by_uid.get(uid)

    def objects(self) -> list[Obj]:
        """A snapshot of every cached object."""
        with self._lock:
            return list(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def _put(self, obj: Obj) -> None:
        with self._lock:
            old = self.by_name.get(_key(obj))
            if old is not None:
                self.by_uid.pop(str(meta(old).get("uid")), None)
            self.by_name[_key(obj)] = obj
            self.by_uid[str(meta(obj).get("uid"))] = obj

    def _drop(self, obj: Obj) -> Obj | None:
        with self._lock:
            old = self.by_name.pop(_key(obj), None)
            if old is not None:
                self.by_uid.pop(str(meta(old).get("uid")), None)
            return old

    def _gauge(self) -> None:
        INFORMER_CACHE_OBJECTS.labels(str(self.resource)).set(len(self.by_name))

    # --- list and watch --------------------------------------------------------------

    def relist(self) -> None:
        """Full LIST: replace the cache, announce every object, report the missing."""
        WATCH_RELISTS.labels(str(self.resource)).inc()
        listing = list_all(
            self.kube, self.resource, self.namespace, page_size=self.page_size,
            label_selector=self.label_selector, field_selector=self.field_selector,
            transform=self.transform,
        )  # fmt: skip
        fresh = {_key(o): o for o in listing.items}
        with self._lock:
            stale = [o for k, o in self.by_name.items() if k not in fresh]
            self.by_name = fresh
            self.by_uid = {str(meta(o).get("uid")): o for o in listing.items}
        self.resource_version = listing.resource_version
        self._needs_list = False
        self._last_list = self._last_resync = self.clock()
        self._gauge()
        for obj in stale:
            self.on_gone(obj)
        for obj in listing.items:
            self.on_object(obj)
        self.synced = True

    def resync(self) -> None:
        """Re-announce every cached object (retries anything dropped on the way)."""
        self._last_resync = self.clock()
        with self._lock:
            objects = list(self.by_name.values())
        for obj in objects:
            self.on_object(obj)

    def watch_once(self, stop: threading.Event | None = None) -> None:
        """One WATCH from the current resourceVersion until the stream ends."""
        stream = self.kube.watch(
            self.resource, self.namespace, resource_version=self.resource_version,
            timeout_seconds=max(1, int(self.watch_timeout)), read_timeout=self.read_timeout,
            label_selector=self.label_selector, field_selector=self.field_selector,
        )  # fmt: skip
        for event in stream:
            self.handle(event)
            self._failures = 0
            if stop is not None and stop.is_set():
                return
            if self._resync_due():
                self.resync()

    def handle(self, event: Obj) -> None:
        """Apply one watch event to the cache and announce it."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Expired(f"watch of {self.resource}: {obj.get('message', 'expired')}")
            raise ApiUnavailable(f"watch of {self.resource}: error event {obj}")
        version = meta(obj).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self._drop(obj)
            self._gauge()
            self.on_gone(obj)
            return
        obj = self.transform(obj)
        self._put(obj)
        self._gauge()
        self.on_object(obj)

    def _resync_due(self) -> bool:
        return self.clock() - self._last_resync >= self.resync_every

    def _relist_due(self) -> bool:
        return self.relist_every is not None and self.clock() - self._last_list >= self.relist_every

    def step(self, stop: threading.Event | None = None) -> None:
        """One turn of the loop: (re)list if needed, resync if due, one WATCH."""
        if self._needs_list or self._relist_due():
            self.relist()
        if self._resync_due():
            self.resync()
        self.watch_once(stop)
        WATCH_RESTARTS.labels(str(self.resource)).inc()

    def run(self, stop: threading.Event) -> None:
        """Loop until *stop* is set; temporary failures back off, 410 relists."""
        while not stop.is_set():
            try:
                self.step(stop)
                self.error = None
            except Expired:
                log.info("%s: resourceVersion expired; relisting", self.resource)
                self._needs_list = True
            except PermanentError as exc:
                if self.fatal_before_sync and not self.synced:
                    self.error, self.fatal = str(exc), exc
                    log.debug("%s: %s; giving up (the caller reports it)", self.resource, exc)
                    return
                self._back_off(stop, exc)
            except TemporaryError as exc:
                self._back_off(stop, exc)

    def _back_off(self, stop: threading.Event, exc: Exception) -> None:
        """Remember the error and wait (full jitter) before the next attempt."""
        self.error = str(exc)
        self._failures += 1
        hint = getattr(exc, "delay", None)
        delay = full_jitter(
            self._failures, base=0.5, cap=BACKOFF_CAP_S, rng=self.rng,
            at_least=None if hint is None else min(hint, BACKOFF_CAP_S),
        )  # fmt: skip
        log.warning("%s: %s; retrying in %.1fs", self.resource, exc, delay)
        stop.wait(delay)
