"""Metrics of the log shipper (``opsq ship``) and of the stream it consumes.

Counters tell what happened to entries (acknowledged after the sink confirmed them,
or moved to the dead-letter stream); gauges are refreshed every ``trim_interval`` from
Redis so a dashboard sees the backlog (``opsq_stream_pending``) even when no shipper
is making progress. The append-to-sink histogram measures from the stream entry's id
timestamp (when Redis accepted the agent's XADD) to the sink confirming the write, so
it covers queueing in Redis, the shipper's batching and the sink itself.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ENTRIES = Counter(
    "opsq_shipper_entries_total",
    "Stream entries finished by the shipper, by result (acked, dead_lettered, gone).",
    ["result"],
)
RECORDS = Counter(
    "opsq_shipper_records_total",
    "Records (lines) written to the sink and acknowledged in the stream.",
)
SINK_ERRORS = Counter(
    "opsq_shipper_sink_errors_total",
    "Failed sink writes (each is retried with backoff; nothing is acknowledged).",
    ["sink"],
)
CLAIMED = Counter(
    "opsq_shipper_claimed_total",
    "Entries taken over from idle consumers with XAUTOCLAIM.",
)
DEAD_LETTERED = Counter(
    "opsq_shipper_dead_lettered_total",
    "Entries moved to the dead-letter stream, by reason (poison, max_deliveries, rejected).",
    ["reason"],
)
STREAM_LENGTH = Gauge(
    "opsq_stream_length",
    "Entries in the log stream (XLEN), refreshed every trim_interval.",
    ["stream"],
    multiprocess_mode="max",
)
STREAM_PENDING = Gauge(
    "opsq_stream_pending",
    "Entries delivered to the group but not yet acknowledged, refreshed every trim_interval.",
    ["stream", "group"],
    multiprocess_mode="max",
)
TRIMMED = Counter(
    "opsq_stream_trimmed_total",
    "Entries removed by retention (XTRIM MINID at the consumer groups' progress).",
    ["stream"],
)
SINK_APPEND_SECONDS = Histogram(
    "opsq_shipper_sink_append_seconds",
    "Seconds from the entry's stream id timestamp to the sink confirming the write.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
