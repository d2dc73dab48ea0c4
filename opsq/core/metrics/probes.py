"""Probe metrics: defined once here, recorded by the probe engine.

Labels are bounded on purpose: ``group`` comes from the targets file and ``kind`` /
``phase`` / ``result`` are small fixed sets. URL labels are unbounded (one series per
target), so they live in separate ``opsq_probe_url_*`` families that are only written
when the user opts in (``metrics.url_labels``): the always-on families keep the same
names, types and label sets whatever the setting, and dashboards never break.

In multiprocess mode (Celery prefork children, ``PROMETHEUS_MULTIPROC_DIR`` set before
import) counters and histograms are summed across processes by the collector; the
in-flight gauge uses ``livesum`` so a dead child's probes stop counting.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# HTTP latencies: 5 ms (local) to 30 s (the longest sensible deadline in practice).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PROBE_TOTAL = Counter("opsq_probe_total", "Probes finished, by verdict.", ["group", "result"])
PROBE_DURATION = Histogram(
    "opsq_probe_duration_seconds",
    "Whole-probe duration including retries and backoff (not rate-limit waits).",
    ["group"],
    buckets=LATENCY_BUCKETS,
)
PROBE_PHASE_DURATION = Histogram(
    "opsq_probe_phase_duration_seconds",
    "Duration of one phase (ratelimit, dns, connect, tls, ttfb, transfer) of a probe's last "
    "attempt.",
    ["group", "phase"],
    buckets=LATENCY_BUCKETS,
)
PROBE_RETRIES = Counter("opsq_probe_retries_total", "Probe attempts beyond the first.", ["group"])
PROBE_FAILURES = Counter(
    "opsq_probe_failures_total", "Probes that ended down, by error kind.", ["group", "kind"]
)
PROBES_IN_FLIGHT = Gauge(
    "opsq_probes_in_flight", "Probes running now.", multiprocess_mode="livesum"
)
# Per worker process: the earliest expiry among the group's certificates seen within
# CERT_MEMORY_S; the scrape takes the minimum over live processes. Alert on
# `opsq_probe_cert_expiry_timestamp_seconds - time() < 14 * 86400`.
PROBE_CERT_EXPIRY = Gauge(
    "opsq_probe_cert_expiry_timestamp_seconds",
    "Earliest certificate expiry (epoch seconds) in the chains of the group's HTTPS "
    "targets probed in the last hour.",
    ["group"],
    multiprocess_mode="livemin",
)

# Opt-in, unbounded: one series per target URL.
PROBE_URL_TOTAL = Counter(
    "opsq_probe_url_total", "Probes finished per URL (opt-in).", ["group", "url", "result"]
)
PROBE_URL_DURATION = Histogram(
    "opsq_probe_url_duration_seconds",
    "Whole-probe duration per URL (opt-in).",
    ["group", "url"],
    buckets=LATENCY_BUCKETS,
)
PROBE_URL_CERT_EXPIRY = Gauge(
    "opsq_probe_url_cert_expiry_timestamp_seconds",
    "Earliest certificate expiry (epoch seconds) in the chain per URL, last probe (opt-in).",
    ["group", "url"],
    multiprocess_mode="livemostrecent",
)
