"""Metrics of the Kubernetes cleanup: what was deleted, skipped or failed, and what it cost.

``opsq_kube_api_requests_total`` is the number the benchmark optimises: requests to the
API server by verb and HTTP code (``error`` when no response arrived). Labels are
bounded: resources and rules come from the config, reasons from a fixed vocabulary in
:mod:`opsq.engines.cleanup.planner`, never object names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CLEANUP_OBJECTS = Counter(
    "opsq_cleanup_objects_total",
    "Objects handled by the cleanup, by outcome (deleted, skipped, failed) and reason.",
    ["resource", "rule", "result", "reason"],
)
TERMINATING_SEEN = Counter(
    "opsq_cleanup_terminating_seen_total",
    "Objects found already terminating (deletionTimestamp set); never deleted again.",
    ["resource", "rule"],
)
KUBE_API_REQUESTS = Counter(
    "opsq_kube_api_requests_total",
    "Requests to the Kubernetes API server by verb and HTTP status code.",
    ["verb", "code"],
)
WATCH_RESTARTS = Counter(
    "opsq_watch_restarts_total",
    "WATCH requests re-opened from the last seen resourceVersion (timeout, stream end).",
    ["resource"],
)
WATCH_RELISTS = Counter(
    "opsq_watch_relists_total",
    "Full LISTs done by the informer (first sync, 410 Expired, periodic relist).",
    ["resource"],
)
INFORMER_CACHE_OBJECTS = Gauge(
    "opsq_informer_cache_objects",
    "Objects held in the informer's local cache.",
    ["resource"],
    multiprocess_mode="livesum",
)
