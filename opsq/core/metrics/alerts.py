"""Metrics of target state and notifications.

Labels are bounded: ``notifier`` and ``set`` come from the config, ``kind`` from the
four notifier kinds, ``result`` and ``to`` from fixed vocabularies; never target URLs.
"""

from __future__ import annotations

from prometheus_client import Counter

TRANSITIONS = Counter(
    "opsq_target_transitions_total",
    "Target state changes applied, by probe set and new state (up, degraded, down).",
    ["set", "to"],
)
RUNS_APPLIED = Counter(
    "opsq_monitor_runs_applied_total",
    "Set runs whose verdicts were applied to target state, by how they ended "
    "(complete: every location answered; deadline: applied at the deadline with missing ones).",
    ["how"],
)
NOTIFICATIONS = Counter(
    "opsq_notifications_total",
    "Notification deliveries by notifier and result: sent, retried (temporary failure), "
    "failed (permanent, not retried), dropped (retries exhausted), duplicate (already sent), "
    "superseded (the target changed state before it could be sent).",
    ["notifier", "result"],
)
SILENCED = Counter(
    "opsq_notifications_silenced_total",
    "Transitions not notified because a maintenance window covered the target.",
    ["set"],
)
