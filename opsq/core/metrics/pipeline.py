"""Worker-level metrics of the probe pipeline (batches, deliveries, results, runs).

The per-probe numbers (up/down, latency, phases) are recorded by the engine in
:mod:`opsq.core.metrics.probes`; these count what the Celery adapter does around it.
All are counters or histograms, which prometheus_client's multiprocess mode sums over
the prefork pool's processes without any extra configuration.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BATCHES = Counter(
    "opsq_batches_total",
    "Probe batches finished by this worker, by outcome (done, gave_up, retry, failed).",
    ["outcome"],
)
BATCH_REDELIVERIES = Counter(
    "opsq_batch_redeliveries_total",
    "Batch executions that were a redelivery (a previous delivery died or timed out).",
)
BATCHES_ABANDONED = Counter(
    "opsq_batches_abandoned_total",
    "Batches given up after probes.max_redeliveries; their remaining targets are "
    "reported down with 'gave up after N deliveries'.",
)
BATCH_DURATION = Histogram(
    "opsq_batch_duration_seconds",
    "Wall time of one batch execution, from start to the last result written.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RESULTS_WRITTEN = Counter(
    "opsq_results_written_total",
    "Probe results stored for the first time (idempotent writes that added a result).",
)
RESULTS_SKIPPED = Counter(
    "opsq_results_skipped_total",
    "Targets skipped by a redelivered batch because their result was already stored.",
)
RUNS_COMPLETED = Counter(
    "opsq_runs_completed_total",
    "Runs whose last result was written by this worker (the summary was built here).",
)
RATELIMIT_ERRORS = Counter(
    "opsq_ratelimit_errors_total",
    "Per-host rate limit checks that failed open because Redis could not answer.",
)
