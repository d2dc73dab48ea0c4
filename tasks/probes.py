"""Celery adapters for probing: ``opsq.probe_batch`` and the beat entry ``opsq.probe_set``.

Thin on purpose: parse kwargs, hand the batch to this process's
:class:`~tasks.batch.BatchRunner`, and map what comes back:

- :class:`~opsq.core.errors.TemporaryError` (Redis unavailable) -> ``self.retry`` with
  capped exponential backoff and full jitter (:mod:`opsq.core.backoff`). The countdown
  stays well below the broker's visibility timeout (kombu#1306: a delayed message is
  held un-acked and would be redelivered).
- :class:`~opsq.core.errors.PermanentError` (unknown run, invalid payload) -> failure.
- Celery's soft time limit (a backstop: the batch has its own, earlier deadline) ->
  reject with requeue, so the redelivery counter, not luck, bounds a batch that hangs.

Delivery guarantees come from the task options: ``acks_late`` (ack after the batch is
written), ``reject_on_worker_lost`` (a killed pool process hands the message back),
``acks_on_timeout=False`` (a hard time limit requeues too); redeliveries are bounded by
``probes.max_redeliveries`` in :mod:`tasks.batch`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown

from opsq.core import signatures
from opsq.core.backoff import full_jitter
from opsq.core.errors import ConfigError, PermanentError, TemporaryError
from opsq.core.metrics import pipeline as metrics
from opsq.core.runs import RunStore
from opsq.engines.monitor.setrun import submit_set
from tasks.alerts import finish_part, finish_run
from tasks.app import app, settings
from tasks.batch import BatchRequest, BatchRunner
from tasks.retrying import retry_or_requeue

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_CAP_S = 60.0
MAX_RETRIES = 60
"""About an hour of Redis outage at the cap before a batch is failed."""

_runner: BatchRunner | None = None


def runner() -> BatchRunner:
    """This pool process's runner, created after the fork (loops do not survive fork)."""
    global _runner  # noqa: PLW0603 - one runner per process is the point
    if _runner is None or _runner.pid != os.getpid():
        _runner = BatchRunner(settings)
    return _runner


def reset_runner() -> None:
    """Drop a runner whose loop was interrupted (a signal landed mid-callback)."""
    global _runner
    stale, _runner = _runner, None
    if stale is not None and stale.pid == os.getpid():
        try:
            stale.close()
        except Exception:
            log.debug("closing an interrupted runner failed", exc_info=True)


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _close_runner(**_: Any) -> None:
    if _runner is not None and _runner.pid == os.getpid():
        _runner.close()


def retry_countdown(retries: int) -> float:
    """Full jitter (workers retrying after one Redis blip must not return in lockstep),
    capped well below the visibility timeout (kombu#1306)."""
    cap = min(RETRY_CAP_S, settings.visibility_timeout / 4)
    return full_jitter(retries, base=RETRY_BASE_S, cap=cap)


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    name=signatures.PROBE_BATCH,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    acks_on_timeout=False,
    ignore_result=True,  # the run store holds results; a Celery result per batch grew Redis
    rate_limit=settings.probes.task_rate_limit,
    soft_time_limit=settings.probes.soft_time_limit,
    time_limit=settings.probes.time_limit,
    max_retries=MAX_RETRIES,
)
def probe_batch(
    self: Task,
    run_id: str,
    batch_id: str,
    targets: list[dict[str, Any]],
    offset: int = 0,
    *,
    location: str | None = None,
) -> dict[str, Any]:
    """Probe one batch of a run (from *location*, for a set probed from several) and
    store every result (see :mod:`tasks.batch`)."""
    started = time.monotonic()
    try:
        report = runner().run(BatchRequest.parse(run_id, batch_id, offset, targets, location))
        # This batch's verdicts at once; the rest of a set run's, once, when it is complete
        # (or when this delivery wrote nothing: a copy that died may have completed it).
        finish_part(run_id, batch_id, report.results, redelivered=report.delivery != 1)
        if report.run_complete or not report.results:
            finish_run(run_id)
    except TemporaryError as exc:
        metrics.BATCHES.labels("retry").inc()
        log.warning("batch %s/%s: %s; retrying", run_id, batch_id, exc)
        raise retry_or_requeue(self, exc, retry_countdown(self.request.retries)) from exc
    except PermanentError:
        metrics.BATCHES.labels("failed").inc()
        raise
    except SoftTimeLimitExceeded as exc:
        reset_runner()
        metrics.BATCHES.labels("requeued").inc()
        raise Reject(f"batch {run_id}/{batch_id} hit the soft time limit", requeue=True) from exc
    metrics.BATCHES.labels(report.outcome).inc()
    metrics.BATCH_DURATION.observe(time.monotonic() - started)
    return report.to_dict()


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    name=signatures.PROBE_SET, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def probe_set(name: str) -> dict[str, Any]:
    """Beat's entry point: run the probe set *name* from the config as a new run.

    Submitted as ``opsq probe --set`` does it (:func:`opsq.engines.monitor.setrun.submit_set`:
    bulk validation, the monitor's spec, every batch in one transaction, to each
    location's queue when the set has locations), with the beat retention. A bad file
    or notifier fails the tick, permanently."""
    store = RunStore.from_url(settings.broker_url)
    try:
        run = submit_set(settings, name, store, kind="beat")
    except ConfigError as exc:
        raise PermanentError(str(exc)) from exc
    finally:
        store.close()
    log.info("probe set %s: run %s, %d targets", name, run.run_id, run.submitted.total)
    return {"run_id": run.run_id, "total": run.submitted.total}
