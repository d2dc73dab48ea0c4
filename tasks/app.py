"""The Celery application for workers and beat.

Settings come from the environment and ``OPSQ_CONFIG`` (there are no CLI flags on
``celery -A tasks worker``). A worker started without ``-Q`` consumes every queue in
:data:`opsq.core.keys.ALL_QUEUES`.
"""

from __future__ import annotations

import sys

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]  # kombu ships no stubs for it

from opsq.core import keys
from opsq.core.celeryconf import celery_config
from opsq.core.errors import ConfigError
from opsq.core.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        raise SystemExit(2) from exc


settings = _settings()
app = Celery("opsq")
app.conf.update(celery_config(settings))
app.conf.task_queues = [Queue(name) for name in keys.ALL_QUEUES]  # type: ignore[no-untyped-call]
app.conf.include = ["tasks.probes", "tasks.cleanup"]
