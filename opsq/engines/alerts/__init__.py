"""Notifications: messages, notifiers (webhook, Slack, Alertmanager, email), delivery.

Plain Python with no Celery. The public API:

- :func:`send_via` (alerts settings, notifier name, :class:`Message`) sends now, in
  this process: ``opsq alerts test`` and the cleanup's heads-ups use it;
- :func:`notice` builds a free-form :class:`Message` (``event="notice"``);
- :func:`deliver` is what the ``opsq.notify`` task runs: keyed, at most once after a
  success. To send through the queue instead, send task ``opsq.notify``
  (:data:`opsq.core.signatures.NOTIFY`) with kwargs ``{"notifier": name, "message":
  message.to_dict()}``; it retries with backoff.
"""

from opsq.engines.alerts.delivery import DeliveryOutcome, deliver, send_via, task_time_limits
from opsq.engines.alerts.message import Message, notice, trial_message
from opsq.engines.alerts.notifiers import Delivery

__all__ = [
    "Delivery",
    "DeliveryOutcome",
    "Message",
    "deliver",
    "notice",
    "send_via",
    "task_time_limits",
    "trial_message",
]
