"""Metrics of the beat process (``celery -A tasks beat``).

Only the RedBeat lock holder sends anything, so on a standby replica the counter stays
at zero: ``sum by (pod) (rate(opsq_beat_sent_total[5m]))`` shows which replica leads.
"""

from __future__ import annotations

from prometheus_client import Counter

BEAT_SENT = Counter(
    "opsq_beat_sent_total",
    "Tasks sent by this beat process for schedule entries, by task name.",
    ["task"],
)
