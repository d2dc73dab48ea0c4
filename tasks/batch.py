"""Execute one probe batch: the asyncio half of the ``opsq.probe_batch`` task.

No Celery here (the task in :mod:`tasks.probes` maps this module's outcomes and errors
to ack, retry or reject). Each pool process keeps one :class:`BatchRunner`: one event
loop, one asyncio Redis client, one :class:`ProbeEngine`, reused by every batch the
process runs. Creating them per task (``asyncio.run``) costs a new connection pool,
a new HTTP session and re-loading the Lua scripts for every batch.

A batch, step by step:

1. Refuse a run that does not exist (expired or never created): permanent. A batch of
   a run that is already complete (a late redelivery) does nothing.
2. Count this delivery of the batch in Redis. Past ``max_redeliveries`` the batch is a
   poison pill: its remaining targets are reported down ("gave up after N
   deliveries") so the run still completes, and the give-up is counted.
3. Skip targets that already have a result (a redelivery after a worker died only
   probes what the dead worker had not finished).
4. Probe the rest with the engine; every result is written as soon as it exists by a
   background flusher that batches whatever accumulated during the previous write
   into one idempotent Lua call (pipelining without a fixed delay). A write that finds
   every result of the run present packs the run (:meth:`AsyncRunStore.finalize`),
   which also runs the completion hooks, once per run.
5. A batch deadline a little below Celery's soft time limit turns probes still
   running into "down: batch deadline exceeded" results instead of losing them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import ValidationError

from opsq.core import aio
from opsq.core.config.probes import ON_WORKER, Target
from opsq.core.errors import PermanentError
from opsq.core.metrics import pipeline as metrics
from opsq.core.ratelimit import RedisTokenBucket, limiter_client
from opsq.core.runs import AsyncRunStore, RunMeta, encode_result, result_key
from opsq.core.settings import Settings
from opsq.core.targets import TARGETS
from opsq.engines.probe import ErrorKind, ProbeEngine, ProbeResult

log = logging.getLogger(__name__)

Outcome = Literal["done", "gave_up"]
_DEADLINE_MARGIN = 0.9
"""The batch deadline is this fraction of the soft time limit, leaving time to write."""


@dataclass(frozen=True)
class BatchRequest:
    run_id: str
    batch_id: str
    offset: int
    targets: tuple[Target, ...]
    location: str | None = None
    """The location this copy of the batch probes from (its results are kept apart)."""

    @classmethod
    def parse(
        cls, run_id: str, batch_id: str, offset: int, raw: Sequence[Any],
        location: str | None = None,
    ) -> BatchRequest:  # fmt: skip
        try:
            # One call for the whole batch; files named by targets were checked at load.
            targets = tuple(TARGETS.validate_python(raw, context=ON_WORKER))
        except ValidationError as exc:
            raise PermanentError(f"batch {run_id}/{batch_id} has an invalid target: {exc}") from exc
        return cls(run_id, batch_id, offset, targets, location)


@dataclass(frozen=True)
class BatchReport:
    outcome: Outcome
    delivery: int
    probed: int
    skipped: int
    written: int
    results: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)
    """What this delivery probed, as recorded (the monitor applies a set run's batch
    from these, without reading them back); not part of :meth:`to_dict`."""
    run_complete: bool = field(default=False, compare=False)
    """This delivery found every result of the run stored (it wrote the last, or came
    late): the run's end is due. Not part of :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _REPORT_FIELDS}


def synthetic_down(target: Target, error: str, kind: ErrorKind) -> ProbeResult:
    """A result for a target the engine never finished (gave up, deadline)."""
    return ProbeResult(
        name=target.name,
        url=target.url,
        group=target.group,
        up=False,
        status_code=None,
        attempts=0,
        duration_s=0.0,
        phases={},
        error=error,
        error_kind=kind,
        cert_days_left=None,
        started_at=time.time(),
    )


_RESULT_FIELDS = tuple(f.name for f in fields(ProbeResult))
_REPORT_FIELDS = tuple(
    f.name for f in fields(BatchReport) if f.name not in ("results", "run_complete")
)


def _as_dict(result: ProbeResult) -> dict[str, Any]:
    """``result.to_dict()`` without its deep copy: 4 us instead of 15 per probe, and the
    dict is serialised at once (the shared ``phases`` dict is never mutated)."""
    return {name: getattr(result, name) for name in _RESULT_FIELDS}


def _delivery_id(req: BatchRequest) -> str:
    """Deliveries are counted per copy of a batch: each location's apart."""
    return req.batch_id if req.location is None else f"{req.batch_id}@{req.location}"


class ResultRecorder:
    """Writes results as they arrive; each flush takes everything queued meanwhile."""

    def __init__(
        self, store: AsyncRunStore, meta: RunMeta, index: dict[str, int],
        location: str | None = None,
    ) -> None:  # fmt: skip
        self._store = store
        self._meta = meta
        self._index = index
        self._location = location
        self._queue: list[tuple[str, str, bool]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.written = 0
        self.recorded: set[str] = set()
        self.results: list[dict[str, Any]] = []
        """The results this delivery wrote (a flush whose write found some already
        stored, by another copy of the batch, adds none: the run's end applies those)."""
        self._pending: list[dict[str, Any]] = []
        self.run_complete = False
        self._task = asyncio.create_task(self._flush_loop(), name=f"recorder-{meta.run_id}")

    def add(self, result: ProbeResult) -> None:
        """The engine's ``on_result`` callback: queue, never block the event loop."""
        key = f"{result.name}|{result.url}"
        if key not in self._index or key in self.recorded:
            log.error("result for unknown or repeated target %r ignored", key)
            return
        self.recorded.add(key)
        index = self._index[key]
        fields = _as_dict(result)
        if self._location is not None:
            fields["location"] = self._location
        stored = encode_result(fields, index, self._meta.created_at)
        self._pending.append(fields)
        self._queue.append((result_key(index, self._location), stored, result.up))
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            entries, self._queue = self._queue, []
            results, self._pending = self._pending, []
            if entries:
                outcome = await self._store.record(self._meta, entries)
                self.written += outcome.added
                if outcome.added == len(entries):
                    self.results += results
                metrics.RESULTS_WRITTEN.inc(outcome.added)
                self.run_complete = self.run_complete or outcome.needs_finalize
                if outcome.needs_finalize and await self._store.finalize(self._meta.run_id):
                    metrics.RUNS_COMPLETED.inc()
            if self._closing and not self._queue:
                return

    async def close(self) -> None:
        """Flush what is queued; re-raise a write failure (Redis down -> retry)."""
        self._closing = True
        self._wake.set()
        await self._task


class BatchRunner:
    """One per pool process: a persistent event loop with its client and engine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.loop = aio.new_event_loop()  # uvloop when installed
        self._client: aioredis.Redis[str] | None = None
        self._limiter_client: aioredis.Redis[Any] | None = None
        self._engine: ProbeEngine | None = None

    def run(self, request: BatchRequest) -> BatchReport:
        with aio.relaxed_gc():  # see opsq.core.aio: the collector is a large cost
            return self.loop.run_until_complete(self._run(request))

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self._aclose())
            self.loop.close()

    async def _aclose(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()
        for client in (self._client, self._limiter_client):
            if client is not None:
                await client.aclose()  # type: ignore[union-attr]  # stubs predate aclose

    def _resources(self) -> tuple[AsyncRunStore, ProbeEngine]:
        # Created inside the loop on first use: clients bind to the running loop.
        if self._client is None or self._engine is None:
            probes = self.settings.probes
            self._client = aioredis.Redis.from_url(
                self.settings.broker_url, decode_responses=True, socket_timeout=10
            )
            limiter = None
            if probes.per_host_rate > 0:
                # Its own pool, one connection per probe slot: every probe in flight may
                # be in its one limiter call at once, and none waits for a connection.
                self._limiter_client = limiter_client(
                    self.settings.broker_url, max_in_flight=probes.concurrency
                )
                limiter = RedisTokenBucket(
                    self._limiter_client, rate=probes.per_host_rate, burst=probes.per_host_burst
                )
            self._engine = ProbeEngine(
                concurrency=probes.concurrency,
                per_host_concurrency=probes.per_host_concurrency,
                rate_limiter=limiter,
                url_labels=self.settings.metrics.url_labels,
                source_address=probes.source_address,
            )
        return AsyncRunStore(self._client), self._engine

    async def _run(self, req: BatchRequest) -> BatchReport:
        store, engine = self._resources()
        meta = await store.run_meta(req.run_id)
        if not meta.raw:
            raise PermanentError(f"run {req.run_id} is unknown or expired; batch dropped")
        if meta.finished_at is not None:  # a late redelivery: every result is stored
            metrics.RESULTS_SKIPPED.inc(len(req.targets))
            return BatchReport("done", 0, 0, len(req.targets), 0, run_complete=True)
        delivery = await store.count_delivery(meta, _delivery_id(req))
        if delivery > 1:
            metrics.BATCH_REDELIVERIES.inc()
        index = {t.key: req.offset + i for i, t in enumerate(req.targets)}
        where = req.location
        stored = await store.existing(req.run_id, [result_key(i, where) for i in index.values()])
        todo = [t for t in req.targets if result_key(index[t.key], where) not in stored]
        metrics.RESULTS_SKIPPED.inc(len(req.targets) - len(todo))
        recorder = ResultRecorder(store, meta, index, where)
        outcome: Outcome = "done"
        try:
            if delivery > self.settings.probes.max_redeliveries + 1:
                outcome = "gave_up"
                log.warning("batch %s/%s: giving up after %d deliveries", req.run_id,
                            req.batch_id, delivery - 1)  # fmt: skip
                metrics.BATCHES_ABANDONED.inc()
                error = f"gave up after {delivery - 1} deliveries"
                for target in todo:
                    recorder.add(synthetic_down(target, error, "other"))
            else:
                await self._probe(engine, todo, recorder)
        finally:
            await recorder.close()
        if not todo and await store.finalize(req.run_id):
            # Every result of this copy was stored already: the copy that wrote the run's
            # last result may have died before packing it (nothing else would).
            metrics.RUNS_COMPLETED.inc()
            recorder.run_complete = True
        return BatchReport(outcome, delivery, len(todo), len(stored), recorder.written,
                           recorder.results, run_complete=recorder.run_complete)  # fmt: skip

    async def _probe(
        self, engine: ProbeEngine, todo: list[Target], recorder: ResultRecorder
    ) -> None:
        deadline = self.settings.probes.soft_time_limit * _DEADLINE_MARGIN
        try:
            async with asyncio.timeout(deadline):
                await engine.probe_many(todo, on_result=recorder.add)
        except TimeoutError:
            error = f"batch deadline ({deadline:g}s, from probes.soft_time_limit) exceeded"
            for target in todo:
                if target.key not in recorder.recorded:
                    recorder.add(synthetic_down(target, error, "timeout"))
