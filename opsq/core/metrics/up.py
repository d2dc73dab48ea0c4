"""Metrics of the ``opsq up`` supervisor itself.

A child that keeps crashing is restarted with backoff and would otherwise go unnoticed
behind a healthy-looking banner; these make it visible to the same Prometheus.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CHILD_UP = Gauge("opsq_up_child_up", "1 while the supervised child is running, else 0.", ["child"])
CHILD_RESTARTS = Counter(
    "opsq_up_child_restarts_total",
    "Restarts of a supervised child after it exited on its own.",
    ["child"],
)
