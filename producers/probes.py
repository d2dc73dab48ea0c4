"""Submit probe runs and wait for them: the producer side of the pipeline.

A targets file becomes a run in three steps (timed on the 2-core dev VM in the
README's probe benchmark): :func:`opsq.core.targets.load_batches` reads, validates and
encodes it; :func:`opsq.core.runs.plan_run` gives it a run id and task messages;
:meth:`RunStore.submit <opsq.core.runs.RunStore.submit>` registers the run and pushes
every batch in one Redis transaction. A bad file fails in the first step, before
anything reaches Redis. No Celery app is involved: the messages are built by
:mod:`opsq.core.celerymsg`, and producers never import ``tasks``.

Waiting is polling the run's progress (one pipelined ``HLEN`` + ``HMGET`` per tick,
cheap even for 100,000 targets) every 50 ms until the run is complete, then the
results are streamed from Redis in file order by :class:`~opsq.core.runs.RunView`.

:func:`producer_app` is the send-only Celery app other producers (cleanup, ``opsq
up``'s demo) use; Celery is imported only when it is called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from opsq.core import celerymsg, keys, signatures
from opsq.core.config.probes import Target
from opsq.core.errors import RedisUnavailable
from opsq.core.redis_errors import redis_errors
from opsq.core.runs import Progress, RunStore, RunView, Submitted, plan_run
from opsq.core.settings import Settings
from opsq.core.targets import EncodedBatch, encode_targets, load_batches
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.setrun import SetRun, finish, submit_set
from opsq.engines.monitor.store import MonitorStore

if TYPE_CHECKING:
    from celery import Celery

POLL_INTERVAL_S = 0.05
"""Progress is one cheap round trip: polling often costs nothing and ends the wait on time."""
UNPACKED_GRACE_S = 2.0
UNPACKED_GRACE_PER_RESULT_S = 1e-4
"""A complete run is packed by its last writer at once (0.5 s for 100,000 results); if
that worker died, read the live results after 2 s + 0.1 ms per result instead of
waiting for the redelivery to pack it."""
REDIS_OUTAGE_TOLERANCE_S = 60.0
"""How long ``--wait`` keeps polling through a Redis outage before giving up."""
DEADLINE_GRACE_S = 0.5
"""A set run still unapplied this long after its deadline is applied by ``--wait``
itself (a location never answered, and no beat tick applied it yet)."""


def producer_app(settings: Settings) -> Celery:
    """A send-only Celery app (never the workers' ``tasks.app``)."""
    from celery import Celery  # noqa: PLC0415 - `opsq probe` never pays for importing Celery

    from opsq.core.celeryconf import celery_config  # noqa: PLC0415

    app = Celery("opsq-producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def close_producer_app(app: Celery) -> None:
    """Close what sending opened that Celery's ``app.close()`` leaves open.

    send_task subscribes the app's result backend to each task's result channel on a
    pub/sub connection of its own. The publishing connections stay: they are kombu's
    process-wide pool, shared with (and reused by) any other app on the same broker.
    """
    app.backend.result_consumer.stop()
    app.close()


class ProbeProducer:
    """Create on-demand runs, enqueue their batches, follow them to the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = RunStore.from_url(settings.broker_url)
        self.load_seconds = 0.0
        """How long the last :meth:`submit_file` took to read, validate and encode."""

    def close(self) -> None:
        self.store.close()

    def submit_file(self, path: Path) -> Submitted:
        """Validate and encode the whole file, then submit it in one transaction."""
        began = time.perf_counter()
        batches = load_batches(path, self.settings.probes.batch_size)
        self.load_seconds = time.perf_counter() - began
        return self._submit(batches, str(path))

    def submit(self, targets: Sequence[Target], *, source: str) -> Submitted:
        batches = encode_targets(targets, self.settings.probes.batch_size)
        return self._submit(batches, source)

    def submit_set(self, name: str) -> SetRun:
        """One run of the configured probe set *name*, by hand (``opsq probe --set``):
        submitted as beat does it, so the workers update target state and alert."""
        began = time.perf_counter()
        run = submit_set(self.settings, name, self.store, kind="on_demand")
        self.load_seconds = time.perf_counter() - began
        return run

    def _submit(self, batches: list[EncodedBatch], source: str) -> Submitted:
        retention = self.settings.runs.retention.on_demand
        plan = plan_run(batches, kind="on_demand", retention=retention, source=source)
        return self.store.submit(plan)

    def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> RunView:
        """Poll until the run is complete (or *timeout*), then return a reader of it.

        On timeout the view is partial: ``pending`` says how many results are missing.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failing_since: float | None = None
        complete_since: float | None = None
        while True:
            try:
                progress = self.store.progress(run_id)
                failing_since = None
            except RedisUnavailable:
                # The run lives on in Redis (AOF) and the workers retry: so does waiting,
                # for a while.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > REDIS_OUTAGE_TOLERANCE_S:
                    raise
                time.sleep(POLL_INTERVAL_S * 20)
                continue
            if on_progress is not None:
                on_progress(progress)
            if progress.finished or progress.total < 0:
                break  # total < 0: the run's meta is gone (expired or deleted)
            if progress.complete:
                complete_since = complete_since or time.monotonic()
                grace = UNPACKED_GRACE_S + progress.total * UNPACKED_GRACE_PER_RESULT_S
                if time.monotonic() - complete_since > grace:
                    break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        return self._open(run_id)

    def _open(self, run_id: str) -> RunView:
        view = self.store.open(run_id)
        if view is None:
            raise RedisUnavailable(f"run {run_id} disappeared from Redis (expired or deleted)")
        return view

    def wait_set(
        self,
        run: SetRun,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> RunView:
        """Wait for a set run until its verdicts are applied to target state.

        The worker that writes the last result applies a complete run. A run still
        incomplete at its deadline (a location never answered: ``missing``) is applied
        here, with what arrived, unless the alerts tick did it first; its notifications
        go to the ``alerts`` queue as the tick would send them.
        """
        began = time.monotonic()
        until_deadline = max(0.0, run.spec.deadline_at - time.time())
        first = until_deadline if timeout is None else min(timeout, until_deadline)
        self.wait(run.run_id, timeout=first, on_progress=on_progress)
        while not self._applied(run.run_id):
            if time.time() >= run.spec.deadline_at + DEADLINE_GRACE_S:
                self.finish_at_deadline(run.run_id)
                break
            if timeout is not None and time.monotonic() - began >= timeout:
                break
            time.sleep(POLL_INTERVAL_S)
        if self._applied(run.run_id):
            self.flush_outboxes(run.run_id)
        return self._open(run.run_id)

    def _applied(self, run_id: str) -> bool:
        with redis_errors("check whether a set run was applied"):
            return bool(self.store.client.exists(keys.monitor_applied(run_id)))

    def finish_at_deadline(self, run_id: str) -> int:
        """Apply a set run past its deadline (once, whoever is first) and enqueue its
        notifications; returns how many were enqueued."""
        monitor = self._monitor()
        finish(monitor, self.store, run_id, at_deadline=True, now=time.time())
        return self.flush_outboxes(run_id, monitor)

    def flush_outboxes(self, run_id: str, monitor: MonitorStore | None = None) -> int:
        """Enqueue what a set run's outboxes still hold: its own, and its batches' that a
        worker killed between applying and sending left (without beat, nothing else
        would send them). A job enqueued twice is harmless: delivery is keyed."""
        monitor = monitor or self._monitor()
        return sum(enqueue_outbox(monitor, owner) for owner in monitor.outboxes_of(run_id))

    def _monitor(self) -> MonitorStore:
        history = HistoryRecorder(self.settings.history)
        return MonitorStore(self.store.client, self.settings.alerts, history)


def enqueue_outbox(monitor: MonitorStore, owner: str) -> int:
    """Push an outbox's notification jobs as ``opsq.notify`` tasks onto the ``alerts``
    queue (messages built without Celery, :mod:`opsq.core.celerymsg`), then clear it.
    A job pushed twice is harmless: delivery is keyed (:mod:`opsq.engines.alerts`)."""
    jobs = monitor.outbox(owner)
    if not jobs:
        return 0
    messages = [_notify_message(job) for job in jobs]
    with redis_errors("enqueue notifications"):
        monitor.client.lpush(keys.QUEUE_ALERTS, *messages)
    monitor.clear_outbox(owner, len(jobs))
    return len(jobs)


def _notify_message(job: dict[str, Any]) -> bytes:
    described = f"{{'notifier': {job['notifier']!r}, 'message': <{job['message']['key']}>}}"
    return celerymsg.task_message(
        signatures.NOTIFY, orjson.dumps(job), queue=keys.QUEUE_ALERTS, kwargsrepr=described
    )
