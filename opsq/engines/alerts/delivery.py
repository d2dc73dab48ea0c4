"""Deliver a notification job at most once per key after a success.

A job is ``{"notifier": name, "message": Message dict}``; ``message.key`` identifies it
(one per transition or reminder, and notifier). Two Redis keys make redelivered or
duplicated tasks safe:

- ``opsq:notify:done:<key>`` is set after the receiver accepted the message; a task
  that finds it does nothing (``duplicate``).
- ``opsq:notify:claim:<key>`` is a lease (:mod:`opsq.core.claims`) held while one
  task sends, so two copies of a job never send at the same time, not even two copies
  of one task (same id) that kombu runs at once after a visibility timeout. A task
  redelivered after its worker was killed on this host finds the holder's process gone
  and takes the claim over at once; a live holder, or one on another host, is waited
  for (the task retries) until the lease runs out: ``CLAIM_TIMEOUTS`` times the
  notifier's timeout (a send has connect, write and read phases, each with that
  timeout) plus a margin.

The remaining window: a worker killed after the receiver accepted the message but
before ``done`` was written. The redelivered task sends again with the same key, in
the ``Idempotency-Key`` header (webhook, Slack) or the Message-ID (email), so the
receiver can drop it; Alertmanager merges identical alerts by design. Sending twice
in that window is the choice: losing an alert is worse than a duplicate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import redis

from opsq.core import claims, keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.errors import ConfigError, PermanentError, TemporaryError
from opsq.core.redis_errors import redis_errors
from opsq.engines.alerts.message import Message
from opsq.engines.alerts.notifiers import Delivery, send

log = logging.getLogger(__name__)
CLAIM_MARGIN_S = 30.0
CLAIM_TIMEOUTS = 4


def task_time_limits(alerts: AlertsSettings) -> tuple[float, float]:
    """(soft, hard) time limits of one notification task: room for the slowest
    notifier's whole send (connect, write and read, each with its ``timeout``), inside
    its delivery lease. Not the probes' limits, which Celery would apply otherwise: a
    send cut before the notifier's timeout was retried while the receiver had it."""
    slowest = max((n.timeout for n in alerts.notifiers.values()), default=10.0)
    soft = CLAIM_TIMEOUTS * slowest + CLAIM_MARGIN_S / 2
    return soft, soft + CLAIM_MARGIN_S / 4


STALE_EVENTS = ("firing", "reminder")
"""What a later transition of the target makes stale; ``resolved`` never is."""


@dataclass(frozen=True)
class DeliveryOutcome:
    result: Literal["sent", "duplicate", "superseded"]
    delivery: Delivery | None = None


def send_via(
    alerts: AlertsSettings, notifier: str, message: Message, *, now: float | None = None
) -> Delivery:
    """Send *message* through the notifier named *notifier* now, in this process.

    The engine-level API for other parts of opsq (``opsq alerts test``, the cleanup's
    ``notify_before`` heads-ups): no Celery, no idempotency bookkeeping. Raises
    ConfigError for an unknown notifier, TemporaryError / PermanentError from sending.
    """
    config = alerts.notifiers.get(notifier)
    if config is None:
        known = ", ".join(sorted(alerts.notifiers)) or "none configured"
        raise ConfigError(f"notifier {notifier!r} is not defined under alerts.notifiers "
                          f"(known: {known})")  # fmt: skip
    return send(notifier, config, message, now=now)


def deliver(
    client: redis.Redis[str], alerts: AlertsSettings, job: dict[str, Any], *, task_id: str,
    now: float | None = None,
) -> DeliveryOutcome:  # fmt: skip
    """Send one job unless its key was already delivered; see the module docstring."""
    notifier = str(job["notifier"])
    message = Message.from_dict(job["message"])
    config = alerts.notifiers.get(notifier)
    if config is None:
        raise PermanentError(f"notifier {notifier!r} is no longer configured; message "
                             f"{message.key} dropped")  # fmt: skip
    done, claim = keys.notify_done(message.key), keys.notify_claim(message.key)
    token = claims.holder_token(task_id)
    with redis_errors(f"check delivery of {message.key}"):
        if client.exists(done):
            return DeliveryOutcome("duplicate")
        if _superseded(client, message):
            return DeliveryOutcome("superseded")
        lease = int(CLAIM_TIMEOUTS * config.timeout + CLAIM_MARGIN_S)
        try:
            previous = claims.acquire(client, claim, token, lease)
        except claims.ClaimHeld as held:
            raise TemporaryError(f"{message.key} is being delivered by another task "
                                 f"({held})", delay=held.ttl) from held  # fmt: skip
        if previous is not None:
            log.info("%s: took over the claim of %s (its process is gone)", message.key,
                     previous.rsplit(" ", 3)[0])  # fmt: skip
        if client.exists(done):  # delivered between the first look and the claim
            claims.release(client, claim, token)
            return DeliveryOutcome("duplicate")
    try:
        delivery = send(notifier, config, message, now=now)
    except Exception:
        with redis_errors(f"release the delivery lease of {message.key}"):
            claims.release(client, claim, token)
        raise
    with redis_errors(f"record delivery of {message.key}"):
        client.set(done, now or time.time(), ex=keys.NOTIFY_DONE_TTL_S)
        claims.release(client, claim, token)
    return DeliveryOutcome("sent", delivery)


def _superseded(client: redis.Redis[str], message: Message) -> bool:
    """A firing message, re-post or reminder whose target has changed state since.

    Sent late (retried through a receiver outage, or redelivered an hour after a worker
    died) it arrived after the resolved message and left the channel saying "DOWN"
    about a target that was up, or re-opened the alert in Alertmanager. The later
    transition's own message says where the target is now."""
    transition = message.data.get("transition")
    if message.event not in STALE_EVENTS or not isinstance(transition, dict):
        return False
    return bool(client.exists(keys.notify_over(str(transition.get("id")))))
