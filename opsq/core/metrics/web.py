"""Metrics of ``opsq web``: answers, their cost in Redis round trips, and time.

``route`` is the route's pattern (``/sets/{set}/{id}``), never a concrete path, so the
label stays bounded whatever the number of targets.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "opsq_web_requests_total",
    "Answers of opsq web by route pattern and status.",
    ["route", "code"],
)
DURATION = Histogram(
    "opsq_web_request_duration_seconds",
    "Time to render an answer not served from the cache.",
    ["route"],
)
ROUNDTRIPS = Counter(
    "opsq_web_redis_roundtrips_total",
    "Redis round trips (one pipeline each) spent on answers not served from the cache.",
    ["route"],
)
