"""``opsq watch``: informers feed due times; due objects go to the ``cleanup`` queue.

The :class:`~opsq.engines.cleanup.watcher.Watcher` keeps a due-time queue current from
list+watch. This producer wakes when the next object is due and sends it by task name
with a ``countdown`` of at most :data:`DISPATCH_AHEAD_S`: far-future objects stay in
the local queue, because a Celery countdown is held un-acked by a worker and would be
redelivered after :data:`opsq.core.keys.VISIBILITY_TIMEOUT_S` (kombu#1306).

Before sending, the object's UID is claimed in Redis (``SET NX EX`` on
:func:`opsq.core.keys.cleanup_inflight`) so an object re-announced by a watch event
or a resync while its task is queued is not sent twice; the worker clears the claim.
An object whose previous attempts failed waits longer each time (the worker counts
failures in :func:`opsq.core.keys.cleanup_backoff`). Nothing is sent before every
informer has synced (no action on a partial view). At most
``max_deletions_per_run`` objects are sent per ``resync`` window; the rest wait for
the next window. In a dry run an object is sent once per resourceVersion: a resync
re-announces everything, and the same would-delete every ten minutes is noise.

Stopping: :meth:`WatchProducer.tick` checks the stop event between objects, so SIGTERM
during a backlog ends the loop after the object in hand (the executor's backoff sleeps
on the same event).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import Celery

from opsq.core import keys, signatures
from opsq.core.backoff import full_jitter
from opsq.core.config.cleanup import CleanupSettings
from opsq.core.errors import OpsqError, TemporaryError
from opsq.core.redis_errors import redis_errors
from opsq.engines.cleanup.executor import Outcome, Target
from opsq.engines.cleanup.watcher import Due, Watcher
from producers.cleanup import task_kwargs

log = logging.getLogger(__name__)

DISPATCH_AHEAD_S = 30.0
"""Objects due within this horizon are sent now with a countdown (<< visibility timeout)."""
INFLIGHT_MARGIN_S = 900
"""The in-flight claim outlives the countdown by this much, then expires by itself (a
worker that died without clearing it must not block the object forever)."""
IDLE_WAIT_S = 1.0
"""Longest sleep between checks, so stop requests and new due objects are seen quickly."""

Send = Callable[[Target, float], None]
Notify = Callable[[Target, float], object]


class Claims(Protocol):
    def claim(self, uid: str, ttl: int) -> bool:
        """True when *uid* was not in flight and now is."""

    def failures(self, uid: str) -> int:
        """How many times deleting *uid* failed recently."""

    def release(self, uid: str) -> None:
        """Undo :meth:`claim` when the task could not be sent after all."""


class RedisClaims:
    def __init__(self, client: redis.Redis[Any]) -> None:
        self.client = client

    def claim(self, uid: str, ttl: int) -> bool:
        with redis_errors(f"claim {uid}"):
            return bool(self.client.set(keys.cleanup_inflight(uid), "1", nx=True, ex=ttl))

    def failures(self, uid: str) -> int:
        with redis_errors(f"read the backoff of {uid}"):
            return int(self.client.get(keys.cleanup_backoff(uid)) or 0)

    def release(self, uid: str) -> None:
        # Best effort: if Redis is down too, the claim still expires by its TTL.
        with contextlib.suppress(OpsqError), redis_errors(f"release {uid}"):
            self.client.delete(keys.cleanup_inflight(uid))


def log_outcome(outcome: Outcome) -> None:
    """One line per object an in-process watch acted on (workers have Celery's task log;
    the one-shot prints its table): what was deleted, or would be, and what failed."""
    where = f"{outcome.namespace}/{outcome.name}" if outcome.namespace else outcome.name
    why = f"(rule {outcome.rule}: {outcome.reason})"
    verb = outcome.result.replace("_", " ")
    if outcome.result == "failed":
        log.warning("%s %s %s %s %s", verb, outcome.resource, where, why, outcome.message)
    else:
        log.info("%s %s %s %s", verb, outcome.resource, where, why)


class NoClaims:
    """In-process execution (``--local``, benchmarks): nothing is ever in flight."""

    def claim(self, uid: str, ttl: int) -> bool:
        return True

    def failures(self, uid: str) -> int:
        return 0

    def release(self, uid: str) -> None:
        return


def celery_sender(app: Celery, *, dry_run: bool) -> Send:
    def send(target: Target, countdown: float) -> None:
        with redis_errors(f"enqueue {target.name}"):
            app.send_task(
                signatures.CLEANUP_OBJECT, kwargs=task_kwargs(target, dry_run), countdown=countdown
            )

    return send


class WatchProducer:
    def __init__(
        self,
        settings: CleanupSettings,
        watcher: Watcher,
        send: Send,
        claims: Claims,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        ahead: float = DISPATCH_AHEAD_S,
        dry_run: bool = False,
        notify: Notify | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """*ahead*: 0 for in-process sends, which run at once and ignore the countdown.
        *notify*: announces upcoming deletions (``notify_before``)."""
        self.settings = settings
        self.dry_run = dry_run
        self.notify = notify
        self.stop = stop or threading.Event()
        self._dry_sent: dict[str, str | None] = {}
        self.ahead = ahead
        self.watcher = watcher
        self.send = send
        self.claims = claims
        self.clock = clock
        self.rng = rng
        self.sent = 0
        self._threads: list[threading.Thread] = []
        self._window_start = clock()
        self._window_sent = 0

    def tick(self) -> int:
        """Send everything due soon; returns how many were sent. No-op before sync."""
        if not self.watcher.synced:
            return 0
        now = self.clock()
        self._roll_window(now)
        self._announce(now)
        sent = 0
        for due in self.watcher.due(now + self.ahead):
            if self.stop.is_set():  # SIGTERM mid-backlog: put the rest back and leave
                self.watcher.queue.upsert(due)
                continue
            try:
                sent += self._dispatch(due, now)
            except TemporaryError as exc:  # broker down, or the API for in-process sends
                log.warning("deferring %s: %s", due.target.name, exc)
                self.watcher.queue.upsert(Due(due.target, now + IDLE_WAIT_S * 5))
        self.sent += sent
        return sent

    def _announce(self, now: float) -> None:
        """Heads-up for deletions within their rule's ``notify_before`` (apply mode)."""
        for notice in self.watcher.notices.pop_until(now):
            if self.notify is None or self.dry_run:
                continue
            rule = self.settings.rule(notice.target.rule)
            due_at = notice.due_at + (rule.notify_before or 0.0)
            if due_at > now:
                self.notify(notice.target, due_at)

    def _roll_window(self, now: float) -> None:
        if now - self._window_start >= self.settings.resync:
            self._window_start, self._window_sent = now, 0
            known = {uid for uid in self._dry_sent if self.watcher.known(uid) is not None}
            self._dry_sent = {uid: rv for uid, rv in self._dry_sent.items() if uid in known}

    def _dispatch(self, due: Due, now: float) -> int:
        target = due.target
        if self.dry_run and self._dry_sent.get(target.uid) == target.resource_version:
            return 0  # already dry-run at this resourceVersion: nothing new to say
        countdown = max(0.0, due.due_at - now)
        failures = self.claims.failures(target.uid)
        if failures > due.backoff_for:  # a new failure since this due time was computed
            cfg = self.settings
            countdown += full_jitter(
                failures, base=cfg.backoff_base, cap=cfg.backoff_cap, rng=self.rng
            )
        if countdown > self.ahead:
            self.watcher.queue.upsert(Due(target, now + countdown, failures))  # wait locally
            return 0
        if self._window_sent >= self.settings.max_deletions_per_run:
            window_end = self._window_start + self.settings.resync
            self.watcher.queue.upsert(Due(target, max(due.due_at, window_end), failures))
            return 0
        if not self.claims.claim(target.uid, int(countdown + INFLIGHT_MARGIN_S)):
            return 0  # already queued by an earlier announcement
        try:
            self.send(target, countdown)
        except TemporaryError:
            # Not sent: a claim left behind would make the deferred retry look
            # "already queued" and skip the object until the claim expired.
            self.claims.release(target.uid)
            raise
        self._window_sent += 1
        if self.dry_run:
            self._dry_sent[target.uid] = target.resource_version
        return 1

    def wait_time(self) -> float:
        """Seconds until the next object enters the dispatch horizon (capped)."""
        next_due = self.watcher.queue.next_due()
        if next_due is None or not self.watcher.synced:
            return IDLE_WAIT_S
        return min(IDLE_WAIT_S, max(0.0, next_due - self.ahead - self.clock()))

    def start_informers(self, stop: threading.Event) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=i.run, args=(stop,), name=f"informer-{i.resource}", daemon=True)
            for i in self.watcher.all_informers
        ]
        for thread in threads:
            thread.start()
        return threads

    def informers_alive(self) -> bool:
        """False once an informer thread died of an unexpected error (readiness check)."""
        return all(thread.is_alive() for thread in self._threads)

    def run(self, stop: threading.Event) -> None:
        """Run informers in threads and dispatch in this one until *stop* is set."""
        self.stop = stop
        threads = self._threads = self.start_informers(stop)
        while not stop.is_set():
            fatal = next((i.fatal for i in self.watcher.all_informers if i.fatal), None)
            if fatal is not None:
                stop.set()
                raise fatal
            if not self.informers_alive():
                # Its cache would go stale while /readyz still said "synced": exit so the
                # pod restarts with a fresh LIST instead of silently missing due objects.
                stop.set()
                dead = ", ".join(t.name for t in threads if not t.is_alive())
                raise TemporaryError(f"informer thread died ({dead}); restart to relist")
            self.tick()
            stop.wait(self.wait_time())
        # Informers hold nothing worth flushing; a thread blocked in a WATCH read must not
        # hold shutdown past the pod's grace period, so wait only briefly (daemon threads).
        for thread in threads:
            thread.join(timeout=1.0)
