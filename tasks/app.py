"""The Celery application for workers and beat.

Settings come from the environment and ``OPSQ_CONFIG`` (there are no CLI flags on
``celery -A tasks worker``). A worker started without ``-Q`` consumes every queue in
:data:`opsq.core.keys.ALL_QUEUES`.

Order matters in this module: ``PROMETHEUS_MULTIPROC_DIR`` is set right after the
settings are read and before anything imports ``prometheus_client`` (which picks its
value storage at import), so every prefork pool process writes its metrics to
``<data_dir>/metrics`` and the main process serves their sum. The worker's main
process wipes that directory at start (values of a previous run must not be summed
in), starts the :class:`~opsq.core.observe.ObserveServer` once the pool is up, and
each pool process marks itself dead on exit so its live gauges disappear.

``celery -A tasks beat`` uses RedBeat (set in :mod:`opsq.core.celeryconf`): its
schedule is built from ``probes.sets`` here, and its Redis lock lets several beat
replicas run without firing an entry twice.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from opsq.core.errors import ConfigError
from opsq.core.metrics import enable_multiprocess, mark_process_dead
from opsq.core.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        raise SystemExit(2) from exc


settings = _settings()
METRICS_DIR = (settings.data_dir / "metrics").resolve()
enable_multiprocess(METRICS_DIR, wipe=False)

# Everything below may import prometheus_client.
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from celery.signals import (  # noqa: E402
    celeryd_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from kombu import Exchange, Queue  # type: ignore[attr-defined]  # noqa: E402  # kombu ships no stubs

from opsq.core import keys, redis_memory, signatures  # noqa: E402
from opsq.core.celeryconf import celery_config  # noqa: E402
from opsq.core.observe import ObserveServer, Report, bind_or_fail  # noqa: E402

log = logging.getLogger("opsq.worker")


def beat_schedule(current: Settings) -> dict[str, dict[str, Any]]:
    """One entry per probe set, and the alerts tick when there are sets; a missed tick
    expires instead of piling up."""
    schedule: dict[str, dict[str, Any]] = {
        f"probe-set:{name}": {
            "task": signatures.PROBE_SET,
            "schedule": probe_set.interval,
            "kwargs": {"name": name},
            "options": {"expires": probe_set.interval},
        }
        for name, probe_set in current.probes.sets.items()
    }
    if schedule:
        interval = current.alerts.tick_interval
        schedule["alerts-tick"] = {
            "task": signatures.ALERTS_TICK,
            "schedule": interval,
            "options": {"expires": interval},
        }
    return schedule


app = Celery("opsq")
app.conf.update(celery_config(settings))
# Each queue gets its own exchange and routing key (what Celery creates for a missing
# queue on the producer side). A bare Queue(name) would bind every queue to the default
# exchange with the default routing key, so one probe batch would land in every queue.
app.conf.task_queues = [
    Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
    for name in keys.ALL_QUEUES
]
app.conf.include = ["tasks.probes", "tasks.cleanup", "tasks.alerts"]
app.conf.beat_schedule = beat_schedule(settings)

_observe: ObserveServer | None = None


def _redis_ready() -> bool:
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


def observe_or_exit(process: str, reports: dict[str, Report] | None = None) -> ObserveServer:
    """Bind ``metrics.port`` now or exit 2 with the fix (see :mod:`opsq.core.observe`)."""
    try:
        return bind_or_fail(
            settings.metrics.bind,
            settings.metrics.port,
            process=process,
            ready_checks={"redis": _redis_ready},
            reports=reports,
        )
    except ConfigError as exc:
        log.critical("%s", exc)
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - also before logging is set up
        raise SystemExit(2) from exc  # Celery's signal dispatch re-raises only BaseException


@celeryd_init.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _fresh_metrics(**_: Any) -> None:
    """Worker main process, before the pool forks: start from empty metric files, and
    take the metrics port (a worker that cannot is refused here, before taking work)."""
    global _observe  # noqa: PLW0603 - one server per worker process
    enable_multiprocess(METRICS_DIR, wipe=True)
    _observe = observe_or_exit(
        "worker", {"redis_memory": lambda: redis_memory.report_for(settings.broker_url)}
    )


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _pool_process_start(**_: Any) -> None:
    if _observe is not None:
        _observe.forget()


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _start_observe(**_: Any) -> None:
    if _observe is not None:
        _observe.start()
        log.warning(
            "opsq worker metrics on http://%s:%d/metrics", settings.metrics.bind, _observe.port
        )


@worker_shutdown.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _stop_observe(**_: Any) -> None:
    if _observe is not None:
        _observe.stop()


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _pool_process_exit(**_: Any) -> None:
    mark_process_dead(os.getpid())


# Logging for worker and beat, and beat's observe endpoints (after `app` exists).
import tasks.observability  # noqa: E402, F401
