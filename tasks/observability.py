"""Logging and the observe endpoints for every ``celery -A tasks ...`` process.

- **Logging.** With ``log_format: json``, connecting ``celery.signals.setup_logging``
  tells Celery not to install its own handlers and opsq's
  :func:`~opsq.core.logsetup.setup_logging` is used instead, so workers and beat write
  the same JSON lines as every other opsq process. With ``text`` Celery keeps its
  familiar format (people and tests read ``ForkPoolWorker-1] Task ... succeeded``),
  and its handlers are wrapped to redact. Either way a Redis URL with a password in a
  connection error never reaches a log.
- **Beat.** ``beat_init`` starts an :class:`~opsq.core.observe.ObserveServer` on
  ``metrics.port``: /healthz for liveness, /readyz checks Redis (RedBeat keeps its lock
  and schedule there), /metrics counts what this beat sent. The worker's own server is
  started in :mod:`tasks.app`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    before_task_publish,
    setup_logging,
)

from opsq.core.logsetup import redact_handlers
from opsq.core.logsetup import setup_logging as opsq_logging
from opsq.core.metrics.beat import BEAT_SENT
from opsq.core.observe import ObserveServer
from tasks.app import observe_or_exit, settings

log = logging.getLogger("opsq.beat")
_servers: list[ObserveServer] = []


def _json_logging(**_: Any) -> None:
    opsq_logging(settings.log_level, settings.log_format)


def _redact_celery_handlers(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        redact_handlers(logger)


if settings.log_format == "json":
    setup_logging.connect(_json_logging, weak=False)
else:
    after_setup_logger.connect(_redact_celery_handlers, weak=False)
    after_setup_task_logger.connect(_redact_celery_handlers, weak=False)


def _count_sent(sender: str | None = None, **_: Any) -> None:
    BEAT_SENT.labels(sender or "unknown").inc()


@beat_init.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _start_beat_observe(**_: Any) -> None:
    # Connected here, not at import: workers publish tasks too and must not count them.
    before_task_publish.connect(_count_sent, weak=False)
    server = observe_or_exit("beat").start()
    _servers.append(server)
    log.warning("opsq beat metrics on http://%s:%d/metrics", settings.metrics.bind, server.port)
