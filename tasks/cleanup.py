"""The ``opsq.cleanup_object`` task: a few lines around the cleanup executor.

The worker re-judges the object itself (see :mod:`opsq.engines.cleanup.executor`):
a DELETE with the planned uid+resourceVersion as preconditions, and on 409 a fresh GET
and re-evaluation of the rule. It maps the engine's errors to Celery:

- :class:`TemporaryError` (429, 5xx, timeouts, Redis down) -> ``self.retry`` with
  exponential backoff and full jitter; when retries are exhausted the outcome is a
  recorded failure and the object's backoff counter grows, so ``opsq watch`` waits
  longer before sending it again;
- :class:`PermanentError` (403, 422) -> a failed outcome, never retried.

The in-flight key that ``opsq watch`` set to dedupe the object is cleared when the
task finishes either way. The kube client is built lazily in each pool process (after
the fork), from ``cleanup.kubeconfig`` / ``OPSQ_CLEANUP__KUBECONFIG`` or the standard
sources.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis

from opsq.core import keys, signatures
from opsq.core.backoff import full_jitter
from opsq.core.errors import RedisCommandError, RedisUnavailable, TemporaryError
from opsq.core.redis_errors import redis_errors
from opsq.engines.cleanup.executor import Executor, Target, count, outcome_of
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.owners import OwnerResolver
from opsq.engines.cleanup.ratelimit import RedisRateLimiter
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
    # Celery owns the retry loop here: one quick in-process retry, then self.retry.
    return Executor(kube, cfg, owners=OwnerResolver(kube), limiter=limiter, retries=1)


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
) -> dict[str, Any]:
    target = Target(rule, resource, namespace, name, uid, resource_version, reason)
    try:
        outcome = _executor().execute(target, dry_run=dry_run)
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
