"""Probe runs in Redis: creation, idempotent result writes, progress and the summary.

A *run* is one execution of a targets file. Its state is three keys (see
:mod:`opsq.core.keys`): a meta hash (total, creation time, source), a results hash
keyed by target (``name|url``), and, once every target has a result, the aggregated
summary. Why this shape:

- **Idempotent by construction.** Results are written with ``HSETNX`` keyed by
  (run, target), inside one Lua script that also returns the new count. A batch
  redelivered after a worker died re-writes nothing it already wrote, so totals never
  double-count, and the one write that brings the count to ``total`` is the only one
  that sees "just completed" — that writer builds the summary.
- **Anyone can finish a run.** The summary is a pure function of meta + results
  (:func:`build_summary`), stored with ``SET NX``. If the completing worker dies before
  storing it, the next reader (``opsq probe --wait``, ``opsq runs show``) builds it.
- **Everything expires** after :data:`keys.RUN_TTL_S`; the index is trimmed on create.

The same Lua scripts serve the synchronous client (CLI, producers) and the asyncio
client (the worker's hot path), so both write exactly the same way.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
import redis
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.config.probes import Target
from opsq.core.redact import redact_text, redact_url
from opsq.core.redis_errors import redis_errors

# JSON through orjson: the worker encodes every result and the completing worker
# decodes a whole run; orjson does both several times faster than the json module
# (same JSON for these plain values; non-ASCII stays UTF-8 instead of \u escapes).
SUMMARY_FIELDS = (
    "name", "url", "group", "up", "status_code", "attempts", "duration_s", "cert_days_left",
)  # fmt: skip

# KEYS: results, meta. ARGV: ttl, then field/value pairs. Returns {added, done, total}.
_RECORD_LUA = """
local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '-1')
return {added, redis.call('HLEN', KEYS[1]), total}
"""

T = TypeVar("T")


@dataclass(frozen=True)
class WriteOutcome:
    """What one idempotent write did: how many were new, and where the run stands."""

    added: int
    done: int
    total: int

    @classmethod
    def from_reply(cls, reply: object) -> WriteOutcome:
        added, done, total = (int(x) for x in cast(list[int], reply))
        return cls(added, done, total)

    @property
    def completed_now(self) -> bool:
        """True for exactly one write per run: the one that brought done to total."""
        return self.added > 0 and self.done == self.total


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.total >= 0 and self.done >= self.total


def new_run_id() -> str:
    """Sortable by start time, unique without coordination: ``20260101T120000-1a2b3c``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def encode_result(result: Mapping[str, Any], index: int) -> str:
    """The stored form of one result: the engine's dict plus its place in the run."""
    return orjson.dumps({**result, "index": index, "recorded_at": time.time()}).decode()


def build_summary(
    run_id: str, meta: Mapping[str, str], raw_results: Iterable[str]
) -> dict[str, Any]:
    """Aggregate a run's results (pure; complete or not) in targets-file order."""
    stored = sorted((orjson.loads(r) for r in raw_results), key=lambda r: r.get("index", 0))
    created = float(meta.get("created_at", 0) or 0)
    finished = max((float(r.get("recorded_at", created)) for r in stored), default=created)
    total = int(meta.get("total", len(stored)))
    up = sum(1 for r in stored if r.get("up"))
    return {
        "run_id": run_id,
        "source": meta.get("source", ""),
        "total": total,
        "done": len(stored),
        "pending": max(0, total - len(stored)),
        "up": up,
        "down": len(stored) - up,
        "created_at": created,
        "duration_s": round(max(0.0, finished - created), 3),
        "results": [_summary_entry(r) for r in stored],
    }


def _summary_entry(stored: Mapping[str, Any]) -> dict[str, Any]:
    """One result as it is printed: secrets in its URL and error message redacted."""
    entry = {field: stored.get(field) for field in SUMMARY_FIELDS}
    entry["url"] = redact_url(str(entry["url"] or ""))
    entry["phases"] = stored.get("phases") or {}
    error = stored.get("error")
    entry["error"] = redact_text(error) if isinstance(error, str) else error
    entry["error_kind"] = stored.get("error_kind")
    return entry


def _redis_call(url_hint: str, call: Callable[[], T]) -> T:
    """Run a redis-py call under the Redis error policy (:mod:`opsq.core.redis_errors`)."""
    with redis_errors("run storage", where=url_hint):
        return call()


async def _aredis_call(url_hint: str, call: Callable[[], Awaitable[T]]) -> T:
    """The asyncio twin of :func:`_redis_call`."""
    with redis_errors("run storage", where=url_hint):
        return await call()


def _url_hint(client: redis.Redis[str] | aioredis.Redis[str]) -> str:
    kwargs = client.connection_pool.connection_kwargs
    host, port = kwargs.get("host", "?"), kwargs.get("port", "?")
    return redact_url(f"redis://{host}:{port}/{kwargs.get('db', 0)}")


def _record_call(
    run_id: str, entries: Sequence[tuple[str, str]]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the record script for these (target key, result) pairs."""
    args: list[str | int] = [keys.RUN_TTL_S]
    args.extend(item for pair in entries for item in pair)
    return [keys.run_results(run_id), keys.run_meta(run_id)], args


class RunStore:
    """Synchronous access for producers and the CLI (one short call per action)."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self.client = client
        self._hint = _url_hint(client)
        self._record = client.register_script(_RECORD_LUA)

    @classmethod
    def from_url(cls, url: str) -> RunStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10))

    def close(self) -> None:
        self.client.close()

    def create_run(self, run_id: str, total: int, **meta: str) -> None:
        """Register a run before any batch is enqueued (workers refuse unknown runs)."""
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        fields: dict[str | bytes, str | float] = {"total": total, "created_at": now}
        fields.update(meta)
        pipe.hset(keys.run_meta(run_id), mapping=fields)
        pipe.expire(keys.run_meta(run_id), keys.RUN_TTL_S)
        pipe.zadd(keys.RUNS_INDEX, {run_id: now})
        pipe.zremrangebyscore(keys.RUNS_INDEX, "-inf", now - keys.RUN_TTL_S)
        _redis_call(self._hint, pipe.execute)

    def record(self, run_id: str, entries: Sequence[tuple[str, str]]) -> WriteOutcome:
        """Write (target key, encoded result) pairs; existing keys are left untouched."""
        script_keys, args = _record_call(run_id, entries)
        raw = _redis_call(self._hint, lambda: self._record(keys=script_keys, args=args))
        outcome = WriteOutcome.from_reply(raw)
        if outcome.completed_now:
            self.summary(run_id)
        return outcome

    def meta(self, run_id: str) -> dict[str, str]:
        return _redis_call(self._hint, lambda: self.client.hgetall(keys.run_meta(run_id)))

    def progress(self, run_id: str) -> Progress:
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(keys.run_results(run_id))
        pipe.hget(keys.run_meta(run_id), "total")
        done, total = _redis_call(self._hint, pipe.execute)
        return Progress(int(done), int(total) if total is not None else -1)

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The stored summary; built and stored if the run is complete; None if unknown.

        An incomplete run gets a partial summary (``pending`` > 0) that is not stored.
        """
        stored = _redis_call(self._hint, lambda: self.client.get(keys.run_summary(run_id)))
        if stored is not None:
            return cast(dict[str, Any], orjson.loads(stored))
        meta = self.meta(run_id)
        if not meta:
            return None
        raw = _redis_call(self._hint, lambda: self.client.hvals(keys.run_results(run_id)))
        summary = build_summary(run_id, meta, raw)
        if summary["pending"] == 0:
            _redis_call(
                self._hint,
                lambda: self.client.set(
                    keys.run_summary(run_id), orjson.dumps(summary), nx=True, ex=keys.RUN_TTL_S
                ),
            )
        return summary

    def results(self, run_id: str) -> list[dict[str, Any]]:
        """Every stored result of the run, decoded (for the monitor's run-completion hook)."""
        raw = _redis_call(self._hint, lambda: self.client.hvals(keys.run_results(run_id)))
        return [orjson.loads(r) for r in raw]

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Most recent runs first, with their progress."""
        ids = _redis_call(self._hint, lambda: self.client.zrevrange(keys.RUNS_INDEX, 0, limit - 1))
        pipe = self.client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(keys.run_meta(run_id))
            pipe.hlen(keys.run_results(run_id))
        replies = _redis_call(self._hint, pipe.execute)
        runs = []
        for run_id, meta, done in zip(ids, replies[::2], replies[1::2], strict=True):
            if meta:  # expired meta: the index entry outlived it
                runs.append({"run_id": run_id, "done": int(done), **meta})
        return runs


class AsyncRunStore:
    """The worker's side: asyncio client, batched idempotent writes, delivery counts."""

    def __init__(self, client: aioredis.Redis[str]) -> None:
        self.client = client
        self._hint = _url_hint(client)
        self._record = client.register_script(_RECORD_LUA)

    async def meta(self, run_id: str) -> dict[str, str]:
        return cast(
            dict[str, str],
            await _aredis_call(self._hint, lambda: self.client.hgetall(keys.run_meta(run_id))),
        )

    async def count_delivery(self, run_id: str, batch_id: str) -> int:
        """Increment and return how many times this batch has started executing."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(keys.run_attempts(run_id), batch_id, 1)
        pipe.expire(keys.run_attempts(run_id), keys.RUN_TTL_S)
        count, _ = await _aredis_call(self._hint, pipe.execute)
        return int(count)

    async def existing(self, run_id: str, target_keys: Sequence[str]) -> set[str]:
        """Which of these targets already have a result (a redelivery skips them).

        One HMGET instead of a pipeline of HEXISTS: one command to parse instead of
        one per target (a first delivery, the usual case, gets back only nils)."""
        if not target_keys:
            return set()
        values = await _aredis_call(
            self._hint, lambda: self.client.hmget(keys.run_results(run_id), list(target_keys))
        )
        return {key for key, value in zip(target_keys, values, strict=True) if value is not None}

    async def record(self, run_id: str, entries: Sequence[tuple[str, str]]) -> WriteOutcome:
        script_keys, args = _record_call(run_id, entries)
        raw = await _aredis_call(self._hint, lambda: self._record(keys=script_keys, args=args))
        outcome = WriteOutcome.from_reply(raw)
        if outcome.completed_now:
            await self.store_summary(run_id)
        return outcome

    async def store_summary(self, run_id: str) -> dict[str, Any]:
        meta = await self.meta(run_id)
        raw = await _aredis_call(self._hint, lambda: self.client.hvals(keys.run_results(run_id)))
        summary = build_summary(run_id, meta, raw)
        await _aredis_call(
            self._hint,
            lambda: self.client.set(
                keys.run_summary(run_id), orjson.dumps(summary), nx=True, ex=keys.RUN_TTL_S
            ),
        )
        return summary


@dataclass(frozen=True)
class Submitted:
    run_id: str
    total: int
    batches: int


def batch_payloads(run_id: str, targets: Sequence[Target], batch_size: int) -> list[dict[str, Any]]:
    """Split *targets* into task kwargs; ``offset`` keeps the targets-file order."""
    payloads = []
    for number, start in enumerate(range(0, len(targets), batch_size)):
        chunk = targets[start : start + batch_size]
        payloads.append(
            {
                "run_id": run_id,
                "batch_id": f"b{number}",
                "offset": start,
                # Defaults are left out: the worker re-applies them when validating.
                "targets": [t.model_dump(mode="json", exclude_defaults=True) for t in chunk],
            }
        )
    return payloads


def batch_repr(payload: Mapping[str, Any]) -> str:
    """What Celery logs and Flower shows for a batch (``kwargsrepr``): no target URLs,
    which may carry tokens, and no 1 KiB repr of a hundred targets per message."""
    targets = payload.get("targets") or []
    return (
        f"{{'run_id': {payload.get('run_id')!r}, 'batch_id': {payload.get('batch_id')!r}, "
        f"'offset': {payload.get('offset')!r}, 'targets': '<{len(targets)} targets>'}}"
    )


def submit_run(
    store: RunStore,
    targets: Sequence[Target],
    *,
    batch_size: int,
    send: Callable[[dict[str, Any]], object],
    **meta: str,
) -> Submitted:
    """Create the run, then hand each batch to *send* (``app.send_task`` by name).

    The run exists before any batch does, so a worker never sees a batch of an
    unknown run; a producer that dies half-way leaves a run that stays incomplete
    (visible in ``opsq runs list``) rather than a report that claims success.
    """
    run_id = new_run_id()
    payloads = batch_payloads(run_id, targets, batch_size)
    store.create_run(run_id, len(targets), batches=str(len(payloads)), **meta)
    for payload in payloads:
        send(payload)
    return Submitted(run_id, len(targets), len(payloads))
