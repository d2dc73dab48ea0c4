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
QUEUE_ALERTS = "alerts"
"""Notification tasks: their own queue, so a slow receiver never delays probe batches."""
ALL_QUEUES = (QUEUE_PROBES, QUEUE_CLEANUP, QUEUE_ALERTS)
"""A worker started without ``-Q`` consumes all of these (``task_create_missing_queues``).
Location queues (``probes.<location>``) are not among them: a worker joins a location
explicitly with ``-Q probes.<location>``."""


def location_queue(location: str) -> str:
    """The queue of one probing location (``probes.eu-west``)."""
    return f"{QUEUE_PROBES}.{location}"


# Celery's Redis transport re-delivers an un-acked message after this many seconds.
# It must exceed the longest batch (hard time limit) or a slow batch is delivered twice
# while still running, and any ``countdown``/``eta`` must stay below it (kombu#1306:
# delayed tasks are held un-acked and would be redelivered early).
VISIBILITY_TIMEOUT_S = 3600

# --- probe runs --------------------------------------------------------------------------
# How long each run is kept is a setting (runs.retention, on-demand and beat apart); the
# layout of these keys is documented in opsq/core/runs.py.
RUN_TTL_S = 7 * 24 * 3600
"""The longest a run-related key lives (the monitor's per-run spec and markers); run
data itself follows ``runs.retention``."""
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

# --- monitoring: target state, transitions, alerts (see opsq.engines.monitor) ------------
MONITOR_SETS = f"{PREFIX}:monitor:sets"
"""Set of probe set names that have target state (``opsq status`` lists them)."""


def monitor_state(set_name: str) -> str:
    """Hash target key (``name|url``) -> state JSON. One hash per set: one HGETALL for
    ``opsq status``, and one WATCH covers a set's whole state when a run is applied."""
    return f"{PREFIX}:monitor:state:{set_name}"


def monitor_transitions(set_name: str) -> str:
    """Stream of the set's transitions, trimmed by time (``alerts.transition_retention``)."""
    return f"{PREFIX}:monitor:transitions:{set_name}"


MONITOR_VERDICTS = f"{PREFIX}:monitor:verdicts"
"""Stream, one entry per applied run: every target's verdict and per-location results.
For a consumer following runs as they are applied (XREAD); trimmed by time
(MONITOR_VERDICTS_RETENTION_S). History does not read it: it records every verdict in
the same transaction (``opsq:history:raw:*``), and owns the raw verdicts' retention."""
MONITOR_VERDICTS_RETENTION_S = 15 * 60
"""Short: the verdicts are kept per target by history (``history.raw_retention``); a
6 h copy here cost ~100 MB for 1,000 targets probed every 30 s."""


def monitor_applied(run_id: str) -> str:
    """Set once a run's verdicts are applied (in the same MULTI): exactly once per run."""
    return f"{PREFIX}:monitor:applied:{run_id}"


def monitor_spec(run_id: str) -> str:
    """JSON: set, locations, quorum, deadline, thresholds and notifiers of a set run."""
    return f"{PREFIX}:monitor:spec:{run_id}"


def monitor_spec_head(run_id: str) -> str:
    """The spec without its target names (small): what applying one batch reads."""
    return f"{PREFIX}:monitor:spec-head:{run_id}"


def monitor_spec_over(run_id: str) -> str:
    """Hash target key -> its own thresholds, notifiers and warning lines (targets that
    differ from their set): a batch reads its targets' alone."""
    return f"{PREFIX}:monitor:spec-over:{run_id}"


def monitor_parts(run_id: str) -> str:
    """Set of the target keys a set run has applied (in the MULTIs that applied them)."""
    return f"{PREFIX}:monitor:parts:{run_id}"


MONITOR_OPEN_RUNS = f"{PREFIX}:monitor:open"
"""Sorted set run_id -> deadline: set runs not applied yet. The alerts tick applies a
run past its deadline with the locations that never answered marked missing."""


def monitor_firing(set_name: str) -> str:
    """Hash ``target key|notifier`` -> firing entry JSON while a target is down/degraded."""
    return f"{PREFIX}:monitor:firing:{set_name}"


def monitor_outbox(owner: str) -> str:
    """List of notification jobs written with the state change that caused them, sent
    as Celery tasks afterwards and then deleted: a crash in between loses nothing."""
    return f"{PREFIX}:monitor:outbox:{owner}"


MONITOR_OUTBOXES = f"{PREFIX}:monitor:outboxes"
"""Sorted set outbox owner -> creation time; the tick flushes outboxes left behind."""


def notify_done(key: str) -> str:
    """Set after a notification was delivered: a redelivered task sends a key once."""
    return f"{PREFIX}:notify:done:{key}"


def notify_claim(key: str) -> str:
    """A short lease while one task delivers a key, so two copies never send at once."""
    return f"{PREFIX}:notify:claim:{key}"


def notify_over(transition_id: str) -> str:
    """Set when a target's next transition replaced this one: its firing messages,
    re-posts and reminders still queued or retrying are stale and not sent."""
    return f"{PREFIX}:notify:over:{transition_id}"


NOTIFY_DONE_TTL_S = 7 * 24 * 3600
"""Delivered keys are remembered a week: longer than any redelivery or retry chain."""

# --- history: raw verdicts, rollups, incidents (see opsq.engines.history.recorder) ------


def history_raw(set_name: str, target: str) -> str:
    """Stream per (set, target): one packed entry per applied run, id = the run's ms.
    Trimmed by time on every XADD (MINID = now - ``history.raw_retention``)."""
    return f"{PREFIX}:history:raw:{set_name}:{target}"


def history_acc(set_name: str) -> str:
    """Hash target key -> the live hour's and day's accumulators (JSON). Read and
    written with the set's state in the monitor's transaction: exactly once per run."""
    return f"{PREFIX}:history:acc:{set_name}"


def history_roster(set_name: str) -> str:
    """Hash target key -> roster id: the target's position in the set's rollup blobs.
    Append-only, so a blob written an hour or 90 days ago still reads right."""
    return f"{PREFIX}:history:roster:{set_name}"


def history_hour(set_name: str, hour: int) -> str:
    """String: every target's rollup of one hour (epoch hours), positional by roster."""
    return f"{PREFIX}:history:hour:{set_name}:{hour}"


def history_hour_hist(set_name: str, hour: int) -> str:
    """String: every target's rollup of one hour with its latency histogram, kept while
    the hour can be in a 24 h window (HISTORY_FULL_HOURS); the 24 h p50/p95 merge these.
    ``history_hour`` keeps the hour's summary (no histogram) for the whole retention."""
    return f"{PREFIX}:history:hour-hist:{set_name}:{hour}"


def history_recent(set_name: str) -> str:
    """Sorted set epoch hour -> hour end: the ``hour-hist`` blobs that exist; trimmed by
    time when an hour is sealed (ZRANGEBYSCORE up to the end of the current hour minus
    HISTORY_FULL_HOURS)."""
    return f"{PREFIX}:history:recent:{set_name}"


HISTORY_FULL_HOURS = 25
"""Sealed hours keep their histogram blob this long: the 24 h window (the current hour
and 23 before it), plus one for a reader whose clock is behind the workers'."""


def history_day(set_name: str, day: int) -> str:
    """String: every target's rollup of one UTC day (epoch days), positional by roster."""
    return f"{PREFIX}:history:day:{set_name}:{day}"


def history_periods(set_name: str) -> str:
    """Sorted set ``h<hour>``/``d<day>`` -> period end (epoch s): which blobs exist, and
    what trimming by time removes (ZRANGEBYSCORE up to now - ``history.retention``)."""
    return f"{PREFIX}:history:periods:{set_name}"


def history_incidents(set_name: str) -> str:
    """Hash incident id -> incident JSON (start, end, state, reason, locations)."""
    return f"{PREFIX}:history:incidents:{set_name}"


def history_incident_starts(set_name: str) -> str:
    """Sorted set incident id -> start time: time-range reads and trimming by time."""
    return f"{PREFIX}:history:incident-starts:{set_name}"


def history_open(set_name: str) -> str:
    """Hash target key -> id of the target's open incident."""
    return f"{PREFIX}:history:open:{set_name}"


HISTORY_BACKSTOP_S = 86400
"""History keys also get a TTL this much past their retention (refreshed hourly), so a
set that stops running does not keep its history forever; trimming by the clock of the
runs is what normally removes data."""

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


def cleanup_audit() -> str:
    """Stream of every real deletion (rule, object, uid, who judged it, when); trimmed by
    age with XADD MINID to ``cleanup.audit_retention``, read by `opsq cleanup audit`."""
    return f"{PREFIX}:cleanup:audit"


def cleanup_cancelled(batch: str) -> str:
    """Set when the `opsq cleanup` that sent *batch* gave up (timeout, Ctrl-C): its queued
    tasks skip instead of deleting. Expires with the batch's tasks (Celery ``expires``)."""
    return f"{PREFIX}:cleanup:cancelled:{batch}"


# --- logs --------------------------------------------------------------------------------
LOG_STREAM = f"{PREFIX}:logs"
LOG_GROUP = "shippers"


def dead_letter(stream: str) -> str:
    """Entries a sink refused, that do not decode, or whose deliveries kept dying are moved
    here (and acknowledged); trimmed by age to ``logs.shipper.dead_retention``, moved back
    by ``opsq ship replay --from-dead``."""
    return f"{stream}:dead"


def log_attempts(stream: str, group: str) -> str:
    """Hash: entry id -> sink writes by *group* that started and never finished (the
    shipper died during them). In Redis so it survives restarts; a finished write (even a
    failed one: the sink's outage is not the entry's fault) takes its count back, and the
    field goes with the entry's XACK. Past ``max_deliveries``: dead-lettered."""
    return f"{stream}:attempts:{group}"
