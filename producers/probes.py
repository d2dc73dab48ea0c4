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
from typing import TYPE_CHECKING

from opsq.core.config.probes import Target
from opsq.core.errors import RedisUnavailable
from opsq.core.runs import Progress, RunStore, RunView, Submitted, plan_run
from opsq.core.settings import Settings
from opsq.core.targets import EncodedBatch, encode_targets, load_batches

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
        view = self.store.open(run_id)
        if view is None:
            raise RedisUnavailable(f"run {run_id} disappeared from Redis (expired or deleted)")
        return view
