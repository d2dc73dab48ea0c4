"""Metrics of the log agent (``opsq agent``), defined once here.

Counters are process totals (one agent per node, no prefork pool, so the default
registry is enough). ``opsq_agent_lag_bytes`` is labelled by path: the set of paths
is bounded by the operator's globs, and a released file's series is removed so a
node that rotates hourly does not accumulate dead series.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LINES_READ = Counter("opsq_agent_lines_read_total", "Lines (records) read from files.")
BYTES_READ = Counter("opsq_agent_bytes_read_total", "Bytes read from files.")
ENTRIES_SENT = Counter(
    "opsq_agent_entries_sent_total", "Stream entries acknowledged by Redis (XADD replied)."
)
LINES_DROPPED = Counter(
    "opsq_agent_lines_dropped_total",
    "Lines not delivered: queue_full (on_full: drop).",
    ["reason"],
)
BYTES_LOST = Counter(
    "opsq_agent_bytes_lost",
    "Bytes of files the agent could not read before they were gone, by reason: "
    "copy_not_found (copytruncate without a findable copy: at least these bytes), "
    "rotated_grace and max_open_deleted (rotated or deleted files released unread).",
    ["reason"],
)
ENTRIES_TRIMMED = Counter(
    "opsq_agent_entries_trimmed_total",
    "Stream entries removed by the user-set hard cap (logs.agent.maxlen).",
)
LINES_TRUNCATED = Counter(
    "opsq_agent_lines_truncated_total", "Lines longer than max_line_bytes, cut to that size."
)
INVALID_ENCODING = Counter(
    "opsq_agent_invalid_encoding_total",
    "Lines holding invalid UTF-8 or NUL bytes (shipped as raw bytes).",
)
ROTATIONS = Counter(
    "opsq_agent_rotations_total",
    "File rotations seen, by kind (rename, copytruncate, delete, new).",
    ["kind"],
)
FILES_WATCHED = Gauge("opsq_agent_files_watched", "Files currently open for reading.")
LAG_BYTES = Gauge(
    "opsq_agent_lag_bytes", "File size minus the acknowledged checkpoint offset.", ["path"]
)


def path_label(path: str) -> str:
    """A file path as a label value: bytes that are not UTF-8 (kept in the str as
    surrogate escapes) become ``\\xNN``, so the exposition can always be encoded
    (an invalid name once made /metrics answer nothing at all)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


SEND_ERRORS = Counter(
    "opsq_agent_send_errors_total", "Failed XADD round trips (Redis down, OOM, timeout)."
)
CHECKPOINT_ERRORS = Counter(
    "opsq_agent_checkpoint_errors_total",
    "Checkpoint files found corrupt (moved aside) or that could not be written.",
)

# --- Kubernetes: runtime formats, pod identity, pod metadata --------------------------
DECODE_ERRORS = Counter(
    "opsq_agent_decode_errors_total",
    "Lines of a cri/docker file that did not parse (shipped as they are, time and stream '-').",
    ["format"],
)
PARTIALS_FLUSHED = Counter(
    "opsq_agent_partials_flushed_total",
    "Runtime partial lines shipped unfinished (partial_timeout passed, or the file was released).",
)
FILES_EXCLUDED = Counter(
    "opsq_agent_files_excluded_total",
    "Pod log files not read: namespace filter or the pod's opt-out annotation.",
    ["reason"],
)
METADATA_ERRORS = Counter(
    "opsq_agent_metadata_errors_total",
    "Failed LIST/WATCH of this node's pods (forbidden, unavailable, expired); records "
    "ship without labels meanwhile.",
    ["reason"],
)
METADATA_SYNCED = Gauge(
    "opsq_agent_metadata_synced", "1 once the pod informer's first LIST completed."
)
