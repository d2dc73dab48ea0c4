"""Probe metrics written in batches: same families and values, far fewer writes.

Recording a probe touches about eleven metric values (verdict counter, duration
histogram, one histogram per phase, the in-flight gauge twice). In multiprocess mode
(Celery prefork) every one of them is a locked write into an mmap'd file plus an
``os.getpid()`` check, about 9% of a worker's CPU per probe once the rest of the
path got cheap (py-spy on ``bench/probes.py``). :class:`MetricTally` adds the
numbers up in plain Python and writes the sums: one counter increment per label set,
one increment per histogram bucket touched, one gauge change, per flush.

Flushes happen when :meth:`ProbeEngine.probe_many` returns, after every single
:meth:`ProbeEngine.probe`, and otherwise at most :data:`FLUSH_AFTER_S` after the first
unwritten change (a timer on the running loop), so a scrape never sees values older
than that while a slow batch is still running.

The certificate expiry gauge is a minimum, not a sum: :class:`CertExpiries` keeps the
latest chain expiry per URL of each group (probed within :data:`CERT_MEMORY_S`) and a
flush writes each changed group's earliest one. Forgetting after an hour lets a renewed
certificate raise the value even in a process that no longer probes the old one; a
group with nothing left reads ``+Inf`` ("no certificate seen"), which no expiry alert
fires on.

A histogram's sum and buckets are written through ``prometheus_client``'s child
attributes (``_sum``, ``_buckets``, ``_upper_bounds``, unchanged since 0.4); if a
release renames them, :func:`observe_many` falls back to one ``observe`` per value.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Histogram

from opsq.core.metrics import probes as metrics
from opsq.core.redact import redact_url
from opsq.engines.probe.result import ProbeResult

FLUSH_AFTER_S = 0.5
"""Longest a recorded value waits before it is written to the metric."""
CERT_MEMORY_S = 3600.0
"""A certificate not seen again for this long no longer counts for its group."""
_SWEEP_EVERY_S = 60.0


def observe_many(child: Any, values: Sequence[float]) -> None:
    """``child.observe(v)`` for every value, as one write per bucket touched."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    counts: dict[int, int] = defaultdict(int)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # first bound >= value, as observe
    for index, count in counts.items():
        buckets[index].inc(count)
    total.inc(sum(values))


class CertExpiries:
    """Per group: the latest chain expiry of each URL; the group's gauge is the earliest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, dict[str, tuple[float, float]]] = {}
        self._dirty: set[str] = set()
        self._swept = clock()

    def record(self, group: str, url: str, expires_at: float) -> None:
        self._seen.setdefault(group, {})[url] = (expires_at, self._clock())
        self._dirty.add(group)

    def changed(self) -> dict[str, float]:
        """Groups whose earliest expiry may have moved, with its value (+Inf: none)."""
        now = self._clock()
        if now - self._swept >= _SWEEP_EVERY_S:
            self._swept = now
            self._dirty.update(self._seen)
        dirty, self._dirty = self._dirty, set()
        return {group: self._earliest(group, now - CERT_MEMORY_S) for group in dirty}

    def _earliest(self, group: str, cutoff: float) -> float:
        entries = self._seen.get(group, {})
        fresh = {url: entry for url, entry in entries.items() if entry[1] >= cutoff}
        if fresh:
            self._seen[group] = fresh
        else:
            self._seen.pop(group, None)
        return min((expiry for expiry, _ in fresh.values()), default=math.inf)


class MetricTally:
    """Accumulates probe metrics and writes them on :meth:`flush`."""

    def __init__(self, *, url_labels: bool) -> None:
        self._url_labels = url_labels
        self._counts: dict[tuple[Counter, tuple[str, ...]], float] = defaultdict(float)
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = defaultdict(list)
        self._in_flight = 0
        self._certs = CertExpiries()
        self._url_certs: dict[tuple[str, str], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def started(self) -> None:
        self._in_flight += 1
        self._schedule()

    def stopped(self) -> None:
        """A probe left flight (finished or cancelled)."""
        self._in_flight -= 1
        self._schedule()

    def finished(self, result: ProbeResult) -> None:
        """Count one finished probe's verdict, duration, phases, retries, failure."""
        group = result.group
        verdict = "up" if result.up else "down"
        self._counts[(metrics.PROBE_TOTAL, (group, verdict))] += 1
        self._observed[(metrics.PROBE_DURATION, (group,))].append(result.duration_s)
        for phase, seconds in result.phases.items():
            self._observed[(metrics.PROBE_PHASE_DURATION, (group, phase))].append(seconds)
        if result.attempts > 1:
            self._counts[(metrics.PROBE_RETRIES, (group,))] += result.attempts - 1
        if result.error_kind is not None:
            self._counts[(metrics.PROBE_FAILURES, (group, result.error_kind))] += 1
        if result.cert_expires_at is not None:
            self._certs.record(group, result.url, result.cert_expires_at)
        if self._url_labels:
            url = redact_url(result.url)  # /metrics is printed too: no ?token= in a label
            self._counts[(metrics.PROBE_URL_TOTAL, (group, url, verdict))] += 1
            self._observed[(metrics.PROBE_URL_DURATION, (group, url))].append(result.duration_s)
            if result.cert_expires_at is not None:
                self._url_certs[(group, url)] = result.cert_expires_at
        self._schedule()

    def flush(self) -> None:
        """Write everything accumulated so far (synchronous, cheap when empty)."""
        if self._timer is not None and self._timer_loop and not self._timer_loop.is_closed():
            self._timer.cancel()
        self._timer = self._timer_loop = None
        counts, self._counts = self._counts, defaultdict(float)
        observed, self._observed = self._observed, defaultdict(list)
        for (counter, labels), amount in counts.items():
            counter.labels(*labels).inc(amount)
        for (histogram, labels), values in observed.items():
            observe_many(histogram.labels(*labels), values)
        if self._in_flight:
            metrics.PROBES_IN_FLIGHT.inc(self._in_flight)
            self._in_flight = 0
        for group, expiry in self._certs.changed().items():
            metrics.PROBE_CERT_EXPIRY.labels(group).set(expiry)
        url_certs, self._url_certs = self._url_certs, {}
        for (group, url), expiry in url_certs.items():
            metrics.PROBE_URL_CERT_EXPIRY.labels(group, url).set(expiry)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_loop is not loop:  # a new loop: old timer lost
            self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)
            self._timer_loop = loop
