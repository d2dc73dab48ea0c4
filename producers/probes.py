"""Submit probe runs and wait for their summary: the producer side of the pipeline.

Producers never import ``tasks``: batches are sent *by name* through a private Celery
app built from the same :func:`~opsq.core.celeryconf.celery_config` the workers use
(JSON only, same routes), so the two sides share nothing but names and Redis.

The run is registered in Redis before the first batch is published (a worker refuses
batches of unknown runs), and waiting is polling the run's progress counter — one
``HLEN`` per tick, cheap even for 10,000 targets — until every target has a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from opsq.core import signatures
from opsq.core.celeryconf import celery_config
from opsq.core.config.probes import Target
from opsq.core.errors import RedisUnavailable
from opsq.core.redact import redact_url
from opsq.core.redis_errors import redis_errors
from opsq.core.runs import Progress, RunStore, Submitted, batch_repr, submit_run
from opsq.core.settings import Settings

POLL_INTERVAL_S = 0.2
REDIS_OUTAGE_TOLERANCE_S = 60.0
"""How long ``--wait`` keeps polling through a Redis outage before giving up."""
_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
"""A broker blip is retried briefly; a dead broker fails the command, not hangs it."""


def producer_app(settings: Settings) -> Celery:
    """A send-only Celery app (never the workers' ``tasks.app``)."""
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
    """Create runs, enqueue their batches, follow them to the summary."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = RunStore.from_url(settings.broker_url)
        self._app: Celery | None = None

    def close(self) -> None:
        """Close the Redis client and, if a batch was sent, the broker connections."""
        self.store.close()
        if self._app is not None:
            close_producer_app(self._app)
            self._app = None

    def submit(self, targets: Sequence[Target], *, source: str) -> Submitted:
        return submit_run(
            self.store,
            targets,
            batch_size=self.settings.probes.batch_size,
            send=self._send,
            source=source,
        )

    def _send(self, kwargs: dict[str, Any]) -> None:
        if self._app is None:
            self._app = producer_app(self.settings)
        with redis_errors("publish a probe batch", where=redact_url(self.settings.broker_url)):
            self._app.send_task(
                signatures.PROBE_BATCH,
                kwargs=kwargs,
                kwargsrepr=batch_repr(kwargs),
                retry=True,
                retry_policy=_PUBLISH_RETRY,
            )

    def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run is complete (or *timeout*), then return its summary.

        On timeout the summary is partial: ``pending`` says how many targets have no
        result yet.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failing_since: float | None = None
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
                time.sleep(POLL_INTERVAL_S * 5)
                continue
            if on_progress is not None:
                on_progress(progress)
            if progress.complete or progress.total < 0:
                break  # total < 0: the run's meta is gone (expired or deleted)
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        summary = self.store.summary(run_id)
        if summary is None:
            raise RedisUnavailable(f"run {run_id} disappeared from Redis (expired or deleted)")
        return summary
