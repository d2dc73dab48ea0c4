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

import functools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown

from opsq.core import signatures
from opsq.core.backoff import full_jitter
from opsq.core.config.probes import Target
from opsq.core.errors import ConfigError, PermanentError, TemporaryError
from opsq.core.metrics import pipeline as metrics
from opsq.core.runs import RunStore, plan_run
from opsq.core.settings import check_notifier_refs, config_path
from opsq.core.targets import EncodedBatch, encode_targets, load_batches
from opsq.engines.monitor.spec import RunSpec, build_spec
from opsq.engines.monitor.store import MonitorStore
from tasks.alerts import finish_run
from tasks.app import app, settings
from tasks.batch import BatchRequest, BatchRunner

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
        finish_run(run_id)  # a set run's verdicts, once, when its last batch is in
    except TemporaryError as exc:
        metrics.BATCHES.labels("retry").inc()
        log.warning("batch %s/%s: %s; retrying", run_id, batch_id, exc)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
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

    The set is loaded and submitted the way ``opsq probe`` does it (bulk validation,
    every batch in one transaction), with the beat retention; a set with ``locations``
    sends every batch to each location's queue, to expire at the run's deadline."""
    probe_set_config = settings.probes.sets.get(name)
    if probe_set_config is None:
        raise PermanentError(f"probe set {name!r} is not in probes.sets of the config")
    source = str(probe_set_config.file or f"probes.sets.{name}")
    targets: list[Target] = []
    batches = _set_batches(name, targets)
    spec = _spec(name, targets)
    locations = probe_set_config.locations
    plan = plan_run(
        batches, kind="beat", retention=settings.runs.retention.beat, locations=locations,
        # A location's batches still queued at the deadline are dropped: it is "missing".
        expires=spec.deadline_at if locations else None, source=source, probe_set=name,
    )  # fmt: skip
    MonitorStore(_monitor_client(), settings.alerts).register(plan.run_id, spec)
    store = RunStore.from_url(settings.broker_url)
    try:
        submitted = store.submit(plan)
    finally:
        store.close()
    log.info("probe set %s: run %s, %d targets", name, submitted.run_id, submitted.total)
    return {"run_id": submitted.run_id, "total": submitted.total}


def _set_batches(name: str, collect: list[Target]) -> list[EncodedBatch]:
    """The set's targets, validated and encoded (and kept in *collect* for the monitor's
    spec); a bad file fails the tick, permanently."""
    probe_set_config = settings.probes.sets[name]
    size = settings.probes.batch_size
    if probe_set_config.file is None:  # inline targets: validated with the config
        collect.extend(probe_set_config.targets or [])
        return encode_targets(collect, size)
    try:
        return load_batches(_resolve(probe_set_config.file), size, collect=collect)
    except ConfigError as exc:
        raise PermanentError(str(exc)) from exc


def _spec(name: str, targets: Sequence[Target]) -> RunSpec:
    """The monitor's spec of a run (thresholds, notifiers, locations, quorum, deadline):
    registered before any batch exists, since a batch may complete the run."""
    check_target_notifiers(name, targets)
    return build_spec(name, settings.probes.sets[name], targets, created_at=time.time())


def check_target_notifiers(name: str, targets: Sequence[Target]) -> None:
    """A file set's targets may name notifiers too: refuse the run if one is unknown."""
    for index, target in enumerate(targets):
        try:
            check_notifier_refs(target.notify or (), settings.alerts.notifiers,
                                f"probes.sets.{name} targets[{index}].notify")  # fmt: skip
        except ValueError as exc:
            raise PermanentError(str(exc)) from exc


@functools.cache
def _monitor_client() -> redis.Redis[str]:
    return redis.Redis.from_url(settings.broker_url, decode_responses=True, socket_timeout=10)


def _resolve(file: str) -> Path:
    """A relative set file is relative to the config file that names it."""
    path = Path(file)
    config = config_path()
    if path.is_absolute() or config is None:
        return path
    return config.parent / path
