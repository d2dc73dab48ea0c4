"""Task names and routing: the only contract between producers and workers.

Producers send tasks *by name* (``app.send_task``) so they never import ``tasks``;
workers register their tasks under exactly these names.
"""

from __future__ import annotations

from opsq.core import keys

PROBE_BATCH = "opsq.probe_batch"
"""kwargs: run_id, batch_id, offset (index of the first target in the run), targets
(Target dicts without their defaults)."""

PROBE_SET = "opsq.probe_set"
"""Beat entry point. kwargs: name (a probe set from the config)."""

CLEANUP_OBJECT = "opsq.cleanup_object"
"""kwargs: rule, resource, namespace, name, uid, dry_run; optional resource_version,
reason, kind, judged_by, judged_at (audit trail), batch and deadline (sent by `opsq
cleanup`: the task skips once past the deadline or when the batch was cancelled)."""

NOTIFY = "opsq.notify"
"""kwargs: notifier (a name from alerts.notifiers), message (opsq.engines.alerts.Message
as a dict; its ``key`` makes delivery idempotent). Retried with backoff."""

ALERTS_TICK = "opsq.alerts_tick"
"""Beat entry, no kwargs: runs past their deadline, reminders, re-posts, stale outboxes."""

ROUTES = {
    PROBE_BATCH: {"queue": keys.QUEUE_PROBES},
    PROBE_SET: {"queue": keys.QUEUE_PROBES},
    CLEANUP_OBJECT: {"queue": keys.QUEUE_CLEANUP},
    NOTIFY: {"queue": keys.QUEUE_ALERTS},
    ALERTS_TICK: {"queue": keys.QUEUE_ALERTS},
}
