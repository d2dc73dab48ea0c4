"""Celery adapters of the monitor: run completion, notification delivery, the alerts tick.

Thin, as every task module: the decisions live in :mod:`opsq.engines.monitor` and
:mod:`opsq.engines.alerts`.

- :func:`finish_part` is called by ``opsq.probe_batch`` after every batch: for a set
  run probed from one location it applies that batch's verdicts at once (the run's
  end then has little left) and sends the batch's notifications.
- :func:`finish_run` is called by ``opsq.probe_batch`` after every batch of a set run
  (and by the tick for runs past their deadline): when the run is complete it applies
  the verdicts to target state, exactly once (:mod:`opsq.engines.monitor.store`), then
  sends the notification jobs of its outbox as ``opsq.notify`` tasks.
- ``opsq.notify`` (queue ``alerts``) delivers one job: ``acks_late`` and
  ``reject_on_worker_lost`` so a killed worker's job comes back, a key so it is sent
  once (:mod:`opsq.engines.alerts.delivery`); temporary failures (and a send still
  waiting at the task's soft time limit) retry with full-jitter backoff up to
  ``alerts.max_retries``, then the job is dropped, counted and logged.
- ``opsq.alerts_tick`` (beat, every ``alerts.tick_interval``): applies runs whose
  deadline passed (locations that never answered are ``missing``), sends reminders and
  Alertmanager re-posts, flushes outboxes a crashed worker left behind, and drops
  expired batches from the queues of locations no worker consumes.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from opsq.core import keys, signatures
from opsq.core.backoff import full_jitter
from opsq.core.errors import PermanentError, TemporaryError
from opsq.core.metrics import alerts as metrics
from opsq.core.runs import RunStore
from opsq.engines.alerts import deliver, task_time_limits
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.queues import drop_expired
from opsq.engines.monitor.setrun import Finished, finish, part_owner
from opsq.engines.monitor.setrun import finish_part as finish_part_of
from opsq.engines.monitor.spec import RunSpec
from opsq.engines.monitor.store import ApplyOutcome, MonitorStore
from tasks.app import app, settings
from tasks.retrying import retry_or_requeue

log = logging.getLogger(__name__)


@functools.cache
def _client() -> redis.Redis[str]:
    return redis.Redis.from_url(settings.broker_url, decode_responses=True, socket_timeout=10)


def _monitor() -> MonitorStore:
    # History (raw verdicts, rollups, incidents) is written in the same transaction; with
    # history.enabled false the recorder only ends incidents that were open.
    return MonitorStore(_client(), settings.alerts, HistoryRecorder(settings.history))


def finish_run(run_id: str, *, at_deadline: bool = False, now: float | None = None) -> bool:
    """Apply a complete (or overdue) set run once and send its notifications.

    Returns True when this call applied the run. A run that is not a set run, not yet
    complete (and not overdue), or already applied is left alone; in every case the
    run's outbox is flushed, so a crash between applying and sending loses nothing.
    """
    monitor = _monitor()
    now = time.time() if now is None else now
    done = finish(monitor, RunStore(_client()), run_id, at_deadline=at_deadline, now=now)
    if done is not None and done.outcome.applied:
        record_applied(done)
    # Whatever happened: a worker cut after applying the run (or a batch) and before
    # sending left its outbox here, and only this, the tick or --wait would send it.
    for owner in monitor.outboxes_of(run_id):
        send_outbox(monitor, owner)
    return done is not None and done.outcome.applied


_HEADS: dict[str, RunSpec | None] = {}
"""Spec heads of recent runs in this process (a run's head never changes; None: no set
run, or closed): one GET per run and process instead of one per batch."""
HEADS_KEPT = 32


def _head(monitor: MonitorStore, run_id: str) -> RunSpec | None:
    if run_id not in _HEADS:
        while len(_HEADS) >= HEADS_KEPT:
            del _HEADS[next(iter(_HEADS))]
        _HEADS[run_id] = monitor.head(run_id)
    return _HEADS[run_id]


def finish_part(
    run_id: str, batch_id: str, results: list[dict[str, Any]], *, redelivered: bool
) -> bool:
    """Apply one batch of a set run from the results just recorded, and send its
    notifications; True when this call applied it (see :func:`.setrun.finish_part`)."""
    monitor = _monitor()
    head = _head(monitor, run_id) if results else None
    done = finish_part_of(monitor, run_id, batch_id, results, now=time.time(), head=head)
    if done is not None and done.outcome.applied:
        record_transitions(done.spec, done.outcome)
    # Also when this copy applied nothing but is a redelivery: a copy of this batch
    # killed after applying it left its notifications here.
    if redelivered or (done is not None and done.outcome.jobs):
        send_outbox(monitor, part_owner(run_id, batch_id))
    return done is not None and done.outcome.applied


def record_applied(done: Finished) -> None:
    """Metrics and log lines of a run this process applied."""
    metrics.RUNS_APPLIED.labels("complete" if done.progress.complete else "deadline").inc()
    record_transitions(done.spec, done.outcome)


def record_transitions(spec: RunSpec, outcome: ApplyOutcome) -> None:
    """Metrics and log lines of the transitions this process applied."""
    for change in outcome.transitions:
        metrics.TRANSITIONS.labels(spec.set, change.to_state).inc()
        log.warning("%s/%s: %s -> %s (%s) in run %s", spec.set, change.name,
                    change.from_state, change.to_state, change.reason, change.run_id)  # fmt: skip
    if outcome.silenced:
        metrics.SILENCED.labels(spec.set).inc(outcome.silenced)


def send_outbox(monitor: MonitorStore, owner: str) -> int:
    """Send every job of an outbox as an ``opsq.notify`` task, then delete the outbox."""
    jobs = monitor.outbox(owner)
    for job in jobs:
        notify.apply_async(kwargs=job)
    if jobs:
        monitor.clear_outbox(owner, len(jobs))
    return len(jobs)


def retry_countdown(retries: int, hint: float | None) -> float:
    """Full jitter, never longer than a quarter of the visibility timeout (kombu#1306)."""
    cap = min(settings.alerts.retry_backoff_cap, settings.visibility_timeout / 4)
    delay = full_jitter(retries, base=settings.alerts.retry_backoff_base, cap=cap,
                        at_least=hint)  # fmt: skip
    return min(delay, cap)


def retry_or_drop(
    task: Task, notifier: str, key: str, exc: TemporaryError, *, cause: BaseException
) -> dict[str, Any]:
    """Retry a temporary failure with backoff (raises), or, with the retries used up,
    count and log the notification as dropped."""
    if task.request.retries >= task.max_retries:
        metrics.NOTIFICATIONS.labels(notifier, "dropped").inc()
        log.error("notification %s dropped after %d retries: %s", key, task.request.retries,
                  exc)  # fmt: skip
        return {"result": "dropped", "error": str(exc)}
    metrics.NOTIFICATIONS.labels(notifier, "retried").inc()
    countdown = retry_countdown(task.request.retries, exc.delay)
    log.warning("notification %s: %s; retry in %.1fs", key, exc, countdown)
    raise retry_or_requeue(task, exc, countdown) from cause


SEND_SOFT_LIMIT_S, SEND_LIMIT_S = task_time_limits(settings.alerts)


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    name=signatures.NOTIFY, bind=True, acks_late=True, reject_on_worker_lost=True,
    max_retries=settings.alerts.max_retries, soft_time_limit=SEND_SOFT_LIMIT_S,
    time_limit=SEND_LIMIT_S,
)  # fmt: skip
def notify(self: Task, notifier: str, message: dict[str, Any]) -> dict[str, Any]:
    """Deliver one notification job (see the module docstring)."""
    key = message.get("key", "?")
    try:
        outcome = deliver(_client(), settings.alerts, {"notifier": notifier, "message": message},
                          task_id=self.request.id or key)  # fmt: skip
    except SoftTimeLimitExceeded as exc:  # a receiver that accepts and never answers
        return retry_or_drop(self, notifier, key, TemporaryError(
            f"no answer within the task's soft time limit ({SEND_SOFT_LIMIT_S:g}s)"),
            cause=exc)  # fmt: skip
    except TemporaryError as exc:
        return retry_or_drop(self, notifier, key, exc, cause=exc)
    except PermanentError as exc:
        metrics.NOTIFICATIONS.labels(notifier, "failed").inc()
        log.error("notification %s failed, not retried: %s", key, exc)
        return {"result": "failed", "error": str(exc)}
    metrics.NOTIFICATIONS.labels(notifier, outcome.result).inc()
    if outcome.result == "superseded":
        log.warning("notification %s via %s dropped: the target changed state since (the "
                    "later transition is notified instead)", key, notifier)  # fmt: skip
    answer = outcome.delivery.answer if outcome.delivery else ""
    log.info("notification %s via %s: %s %s", key, notifier, outcome.result, answer)
    return {"result": outcome.result, "answer": answer}


@app.task(name=signatures.ALERTS_TICK, acks_late=True)  # type: ignore[untyped-decorator]
def alerts_tick() -> dict[str, int]:
    """Beat's periodic pass; see :func:`tick`."""
    return tick(time.time())


def tick(now: float) -> dict[str, int]:
    """Overdue runs, reminders and re-posts, stale outboxes; *now* injectable for tests."""
    monitor = _monitor()
    overdue = monitor.overdue(now)
    for run_id in overdue:
        finish_run(run_id, at_deadline=True, now=now)
    owners = monitor.tick(now)
    stale = [owner for owner in monitor.stale_outboxes(now) if owner not in owners]
    sent = sum(send_outbox(monitor, owner) for owner in [*owners, *stale])
    return {"overdue_runs": len(overdue), "sent": sent, "expired_batches": drop_batches(now)}


def drop_batches(now: float) -> int:
    """Expired batches left in location queues (a stopped location; see the engine)."""
    locations = sorted({loc for s in settings.probes.sets.values() for loc in s.locations or ()})
    dropped, client = 0, _client()
    for location in locations:
        queue = keys.location_queue(location)
        count = drop_expired(client, queue, now)
        if count:
            log.warning("%s: dropped %d expired batch(es) no worker took (is a worker "
                        "running with -Q %s?)", queue, count, queue)  # fmt: skip
        dropped += count
    return dropped
