"""The ``opsq.cleanup_object`` task: a few lines around the cleanup executor.

The worker re-judges the object itself (see :mod:`opsq.engines.cleanup.executor`):
a DELETE with the planned uid+resourceVersion as preconditions, and on 409 a fresh GET
and re-evaluation of the rule. It maps the engine's errors to Celery:

- :class:`TemporaryError` (429, 5xx, timeouts, Redis down) -> ``self.retry`` with
  exponential backoff and full jitter; when retries are exhausted the outcome is a
  recorded failure and the object's backoff counter grows, so ``opsq watch`` waits
  longer before sending it again;
- :class:`PermanentError` (403, 422) -> a failed outcome, never retried.

A task sent by `opsq cleanup` carries ``batch`` and ``deadline``: past the deadline,
or once the command cancelled its batch (it gave up waiting, or was interrupted), the
task skips with reason ``cancelled`` instead of deleting; the check runs right before
the DELETE. Every real deletion goes to the audit stream.

The in-flight key that ``opsq watch`` set to dedupe the object is cleared when the
task finishes either way. The kube client is built lazily in each pool process (after
the fork), from ``cleanup.kubeconfig`` / ``OPSQ_CLEANUP__KUBECONFIG`` or the standard
sources.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from opsq.core import keys, signatures
from opsq.core.backoff import full_jitter
from opsq.core.errors import RedisCommandError, RedisUnavailable, TemporaryError
from opsq.core.redis_errors import redis_errors
from opsq.engines.cleanup.audit import RedisAudit, identity
from opsq.engines.cleanup.executor import Executor, Target, count, outcome_of
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.planner import Guards
from opsq.engines.cleanup.ratelimit import RedisRateLimiter
from opsq.engines.cleanup.usage import LiveUsage, namespace_lister
from tasks.app import app, settings

log = logging.getLogger(__name__)

BACKOFF_TTL_S = 24 * 3600
"""A per-object failure count is forgotten after a day without failures."""


@functools.cache
def _redis() -> redis.Redis[Any]:
    return redis.Redis.from_url(settings.broker_url)


@functools.cache
def _executor() -> Executor:
    cfg = settings.cleanup
    kube = Kube.connect(cfg.kubeconfig, cfg.context, request_timeout=cfg.request_timeout)
    limiter = RedisRateLimiter(_redis(), cfg.delete_rate)
    guards = Guards(OwnerResolver(kube), LiveUsage(namespace_lister(kube, cfg.page_size)))
    audit = RedisAudit(_redis(), retention=cfg.audit_retention, actor=identity("worker"))
    # Celery owns the retry loop here: one quick in-process retry, then self.retry.
    return Executor(
        kube, cfg, guards=guards, limiter=limiter, audit=audit if cfg.audit else None, retries=1
    )


def _proceed(batch: str | None, deadline: float | None) -> Callable[[], bool]:
    """Still wanted? Not past the sender's deadline, and its batch not cancelled."""

    def proceed() -> bool:
        if deadline is not None and time.time() > deadline:
            return False
        if batch is None:
            return True
        with redis_errors(f"check whether batch {batch} was cancelled"):
            return not _redis().exists(keys.cleanup_cancelled(batch))

    return proceed


def _finish(uid: str, *, failed: bool) -> None:
    """Clear the in-flight claim and update the failure count: best effort.

    The object's fate is already decided when this runs; a Redis blip here must not
    turn a done deletion into a task error. The claim expires by its TTL anyway.
    """
    pipe = _redis().pipeline()
    pipe.delete(keys.cleanup_inflight(uid))
    if failed:
        pipe.incr(keys.cleanup_backoff(uid))
        pipe.expire(keys.cleanup_backoff(uid), BACKOFF_TTL_S)
    else:
        pipe.delete(keys.cleanup_backoff(uid))
    try:
        with redis_errors(f"clear the in-flight claim of {uid}"):
            pipe.execute()
    except RedisUnavailable as exc:
        log.warning("%s", exc)
    except RedisCommandError as exc:  # a bug: loud, but the outcome is already decided
        log.error("%s", exc)


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    name=signatures.CLEANUP_OBJECT, bind=True, max_retries=settings.cleanup.retries
)
def cleanup_object(
    self: Any,
    *,
    rule: str,
    resource: str,
    namespace: str,
    name: str,
    uid: str,
    dry_run: bool,
    resource_version: str | None = None,
    reason: str = "",
    kind: str = "",
    judged_by: str = "",
    judged_at: float | None = None,
    batch: str | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    target = Target(
        rule, resource, namespace, name, uid, resource_version, reason, kind, judged_by, judged_at
    )
    try:
        outcome = _executor().execute(target, dry_run=dry_run, proceed=_proceed(batch, deadline))
    except TemporaryError as exc:
        if self.request.retries < self.max_retries:
            cfg = settings.cleanup
            delay = full_jitter(
                self.request.retries, base=cfg.backoff_base, cap=cfg.backoff_cap, at_least=exc.delay
            )
            # A countdown past the visibility timeout would be redelivered early (kombu#1306);
            # the configured one, which the broker uses, not the package default.
            delay = min(delay, settings.visibility_timeout / 2)
            raise self.retry(exc=exc, countdown=delay) from exc
        outcome = count(outcome_of(target, "failed", "unavailable", str(exc)))
    _finish(uid, failed=outcome.result == "failed")
    return outcome.to_json()
