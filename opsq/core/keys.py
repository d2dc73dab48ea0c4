"""Every Redis name opsq uses, in one place, each with the reason for its value.

Queue names, key prefixes, stream and group names, TTLs and limits live here so that
producers, workers and agents (which never import each other) agree on them, and so
an operator can read in one file what opsq stores in Redis.
"""

from __future__ import annotations

PREFIX = "opsq"

# --- Celery queues -----------------------------------------------------------------------
QUEUE_PROBES = "probes"
QUEUE_CLEANUP = "cleanup"
ALL_QUEUES = (QUEUE_PROBES, QUEUE_CLEANUP)
"""A worker started without ``-Q`` consumes all of these (``task_create_missing_queues``)."""

# Celery's Redis transport re-delivers an un-acked message after this many seconds.
# It must exceed the longest batch (hard time limit) or a slow batch is delivered twice
# while still running, and any ``countdown``/``eta`` must stay below it (kombu#1306:
# delayed tasks are held un-acked and would be redelivered early).
VISIBILITY_TIMEOUT_S = 3600

# --- probe runs --------------------------------------------------------------------------
# How long each run is kept is a setting (runs.retention, on-demand and beat apart); the
# layout of these keys is documented in opsq/core/runs.py.
CELERY_RESULT_TTL_S = 24 * 3600
"""Celery task results (cleanup waits on them; probe batches store none): read within
seconds, so a day is plenty, and a week of them grew Redis under beat."""


def run_results(run_id: str) -> str:
    """Hash result-key -> compact result while the run is in progress (HSETNX: idempotent)."""
    return f"{PREFIX}:run:{run_id}:results"


def run_meta(run_id: str) -> str:
    """Hash with the run's total, up/down counts, times, kind, retention and source."""
    return f"{PREFIX}:run:{run_id}:meta"


def run_packed(run_id: str) -> str:
    """List of zlib-compressed chunks of results, written once the run is complete."""
    return f"{PREFIX}:run:{run_id}:packed"


def run_summary(run_id: str) -> str:
    """Read-only: the whole summary JSON of a run stored before format 2."""
    return f"{PREFIX}:run:{run_id}:summary"


def run_attempts(run_id: str) -> str:
    """Hash batch-id -> delivery count, to bound redeliveries of a poison batch."""
    return f"{PREFIX}:run:{run_id}:deliveries"


RUNS_INDEX = f"{PREFIX}:runs"
"""Sorted set run_id -> start time, so `opsq runs list` can show recent runs."""
RUNS_EXPIRY = f"{PREFIX}:runs:expiry"
"""Sorted set run_id -> expiry time: index entries leave when their run expires, each
run by its own retention (beat runs long before on-demand ones)."""


def host_bucket(host: str) -> str:
    """Token bucket shared by all workers for one probed host."""
    return f"{PREFIX}:ratelimit:{host}"


def host_slots(host: str) -> str:
    """Per-host concurrency semaphore shared by all workers (a counter with expiry)."""
    return f"{PREFIX}:hostslots:{host}"


HOST_SLOT_TTL_S = 120
"""A crashed worker's slot reservations expire instead of blocking the host forever."""

# --- beat --------------------------------------------------------------------------------
REDBEAT_PREFIX = f"{PREFIX}:redbeat:"
REDBEAT_LOCK_TIMEOUT_S = 30
"""A standby beat takes over within this many seconds (RedBeat's default is 25 min)."""

# --- kubernetes cleanup ------------------------------------------------------------------


def cleanup_inflight(uid: str) -> str:
    """Set while a delete for this object UID is queued; dedupes informer enqueues."""
    return f"{PREFIX}:cleanup:inflight:{uid}"


def cleanup_backoff(uid: str) -> str:
    """Failure count for one object UID, for per-key exponential backoff."""
    return f"{PREFIX}:cleanup:backoff:{uid}"


def cleanup_rate() -> str:
    """Token bucket bounding deletions per second across all cleanup workers."""
    return f"{PREFIX}:cleanup:rate"


# --- logs --------------------------------------------------------------------------------
LOG_STREAM = f"{PREFIX}:logs"
LOG_GROUP = "shippers"


def dead_letter(stream: str) -> str:
    """Entries delivered too many times are moved here and acknowledged."""
    return f"{stream}:dead"
