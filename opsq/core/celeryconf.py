"""Celery configuration shared by workers (``tasks``) and producers.

A plain dict so the core needs no Celery import. Choices that protect work:

- JSON only: pickle in a broker is remote code execution for anyone who can write
  to Redis.
- ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged after the task
  finished, and a worker killed mid-task hands it back instead of losing it.
- ``visibility_timeout`` (``settings.visibility_timeout``, validated to exceed
  ``probes.time_limit``), so a slow batch is not redelivered while still running.
- RedBeat is the default beat scheduler: plain ``celery -A tasks beat`` takes a Redis
  lock, so a second beat replica waits instead of firing every entry twice.
- prefetch 1: a long batch does not hold other batches hostage on one worker.
"""

from __future__ import annotations

from typing import Any

from opsq.core import keys, signatures
from opsq.core.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for messages whose visibility timeout expired only every
        # interval * throttle seconds (100 s by default): scan every few seconds instead,
        # so a batch of a worker killed with -9 is back in the queue soon after it is due.
        "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout // 4))),
        "unacked_restore_throttle": 1,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_routes": signatures.ROUTES,
        "task_default_queue": keys.QUEUE_PROBES,
        "task_soft_time_limit": settings.probes.soft_time_limit,
        "task_time_limit": settings.probes.time_limit,
        "result_expires": keys.CELERY_RESULT_TTL_S,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_scheduler": "tasks.beat.LockedRedBeatScheduler",
        "redbeat_redis_url": settings.broker_url,
        "redbeat_key_prefix": keys.REDBEAT_PREFIX,
        "redbeat_lock_timeout": settings.beat.lock_timeout,
        "beat_max_loop_interval": settings.beat.max_loop_interval,
    }
