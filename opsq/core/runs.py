"""Probe runs in Redis: submission, idempotent result writes, progress, compact storage.

A *run* is one execution of a targets file (``opsq probe``) or of a probe set (beat).
This module alone knows how a run is stored; the CLI, producers, beat and workers go
through its functions (:class:`RunStore` synchronous, :class:`AsyncRunStore` for the
worker's event loop), so the format can change in one place.

Storage (key names in :mod:`opsq.core.keys`, ``<id>`` is the run id):

``run:<id>:meta`` (hash)
    ``v`` (format, 2), ``total`` (results expected), ``targets``, ``created_at``,
    ``kind`` (``on_demand`` | ``beat``), ``retention`` (seconds), ``source``,
    ``batches``, ``probe_set`` (set runs), ``locations`` (comma-separated, only when
    every target is probed from several locations), ``deadline_at`` (set runs: a
    location with no result by then is missing); ``up`` and ``down``, counted as
    results arrive; ``finished_at`` once the run is complete.
``run:<id>:results`` (hash, while the run is in progress)
    field :func:`result_key` (the target's index in the file, ``"17"``, or
    ``"17@eu-west"`` for one location's result), value the compact result below.
``run:<id>:packed`` (list, once complete)
    every result in file order, :data:`CHUNK` per element, each element a
    zlib-compressed JSON array of compact results. Completion writes it and deletes
    the live hash.
``run:<id>:deliveries`` (hash)
    batch id -> deliveries, to bound redeliveries (a few bytes per batch).
``runs`` (zset id -> created_at) and ``runs:expiry`` (zset id -> expiry time)
    the index behind ``opsq runs list``; an entry leaves when its run expires.

A compact result (:func:`encode_result`) is a JSON object with one-letter names that
leaves out nulls and defaults: ``i`` index, ``n`` name, ``r`` url, ``g`` group (absent:
``default``), ``l`` location, ``u`` up (1/0), ``s`` status code, ``a`` attempts, ``d``
duration (µs), ``p`` phases (name -> µs), ``e`` error, ``k`` error kind, ``c`` days left
on the certificate, ``t`` probe start (ms after the run's ``created_at``). Any other
field of the engine's result is kept under its own name, so a new field needs no
change here. :func:`decode_result` restores the full names.

Why this shape:

- **Submitted whole.** :meth:`RunStore.submit` registers the run and pushes all its
  batches (task messages from :mod:`opsq.core.celerymsg`) in one MULTI/EXEC: a worker
  never sees a batch of an unknown run, and a run is never half-enqueued.
- **Idempotent by construction.** Results are written with ``HSETNX`` keyed by (run,
  target[, location]) in one Lua script that also counts up/down for what was new and
  returns where the run stands. A batch redelivered after a worker died re-writes
  nothing it already wrote, so counts never double.
- **Completed once.** A write that finds every result present packs them; a Lua script
  stores the packed form only if no one has (``finished_at`` unset), and only the
  caller whose script stored it runs the completion hooks (:func:`on_run_complete`):
  once per run, unless that worker dies between the two. If the worker that wrote the
  last result dies before packing, the redelivered batch packs (its writes find every
  result present); readers read the live hash meanwhile.
- **Compact and bounded.** Results are stored once (the summary no longer repeats
  them) and packed; see the README for bytes per run. Every key expires after the
  run's retention (``runs.retention``, separate for on-demand and beat runs), counted
  from creation and again from completion.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

import orjson
import redis
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE

from opsq.core import celerymsg, keys, signatures
from opsq.core.redact import redact_text, redact_url
from opsq.core.redis_errors import redis_errors
from opsq.core.targets import EncodedBatch

log = logging.getLogger(__name__)

FORMAT = 2
CHUNK = 1000
"""Results per packed element, and per read when streaming a run."""
READ_AHEAD = 8
"""Chunks requested per pipelined round trip when reading a run."""
ZLIB_LEVEL = 6
PUSH_GROUP = 200
"""Messages per LPUSH inside the submit transaction (keeps each command a few MB)."""
LEGACY_RETENTION_S = 7 * 24 * 3600
"""What every run was kept before retention was configurable (format 1 runs)."""
Kind = Literal["on_demand", "beat"]

T = TypeVar("T")

# KEYS: results, meta. ARGV: ttl, then (field, value, up 1/0) triples.
# Returns {added, done, total, finished 1/0}.
_RECORD_LUA = """
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '-1')
if redis.call('HEXISTS', KEYS[2], 'finished_at') == 1 then
  return {0, total, total, 1}
end
local added, up = 0, 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    added = added + 1
    if ARGV[i + 2] == '1' then up = up + 1 end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if total >= 0 and added > 0 then
  redis.call('HINCRBY', KEYS[2], 'up', up)
  redis.call('HINCRBY', KEYS[2], 'down', added - up)
end
return {added, redis.call('HLEN', KEYS[1]), total, 0}
"""

# KEYS: meta, results, packed, expiry index.
# ARGV: retention, now, run id, then the packed chunks. Returns 1 if it stored them.
_FINALIZE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then
  return 0
end
local ttl = tonumber(ARGV[1])
redis.call('DEL', KEYS[3])
for i = 4, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[2], 'chunks', #ARGV - 3)
redis.call('EXPIRE', KEYS[1], ttl)
if #ARGV > 3 then
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[4], 'XX', tonumber(ARGV[2]) + ttl, ARGV[3])
return 1
"""

# KEYS: index, expiry index. ARGV: now. Drops index entries of expired runs.
_TRIM_LUA = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 500)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""


# --- the compact result ----------------------------------------------------------------

_SHORT = {
    "name": "n", "url": "r", "group": "g", "location": "l", "up": "u", "status_code": "s",
    "attempts": "a", "duration_s": "d", "phases": "p", "error": "e", "error_kind": "k",
    "cert_days_left": "c", "started_at": "t",
}  # fmt: skip
_NOT_STORED = frozenset({"index", "recorded_at"})
OUTPUT_FIELDS = (
    "name", "url", "group", "up", "status_code", "attempts", "duration_s", "phases",
    "error", "error_kind", "cert_days_left", "started_at",
)  # fmt: skip
"""The fields of each result in summaries (``location`` and new fields follow when set)."""


def result_key(index: int, location: str | None = None) -> str:
    """The field of one result in the live hash: ``"17"`` or ``"17@eu-west"``."""
    return str(index) if location is None else f"{index}@{location}"


def encode_result(result: Mapping[str, Any], index: int, created_at: float) -> str:
    """The stored (compact) form of one engine result; *created_at* is the run's."""
    out: dict[str, Any] = {"i": index, "n": result["name"], "r": result["url"]}
    out["u"] = 1 if result.get("up") else 0
    for name, value in result.items():
        if value is None or name in _NOT_STORED or name in ("name", "url", "up"):
            continue
        short = _SHORT.get(name)
        if short is None:
            out[name] = value
        elif name == "duration_s":
            out["d"] = round(value * 1e6)
        elif name == "phases":
            if value:
                out["p"] = {phase: round(s * 1e6) for phase, s in value.items()}
        elif name == "started_at":
            out["t"] = round((value - created_at) * 1000)
        elif name != "group" or value != "default":
            out[short] = value
    return orjson.dumps(out).decode()


def decode_result(stored: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """The full result (``OUTPUT_FIELDS`` first) from its compact form."""
    get = stored.get
    out: dict[str, Any] = {
        "name": get("n"),
        "url": get("r"),
        "group": get("g", "default"),
        "up": bool(get("u")),
        "status_code": get("s"),
        "attempts": get("a", 0),
        "duration_s": get("d", 0) / 1e6,
        "phases": {phase: us / 1e6 for phase, us in (get("p") or {}).items()},
        "error": get("e"),
        "error_kind": get("k"),
        "cert_days_left": get("c"),
        "started_at": None,
    }
    started = get("t")
    if started is not None:
        out["started_at"] = round(created_at + started / 1000, 3)
    if "l" in stored:
        out["location"] = stored["l"]
    for name, value in stored.items():
        if len(name) > 1:
            out[name] = value
    return out


def printable_result(stored: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """A compact result as it is printed: decoded, secrets in URL and error redacted."""
    result = decode_result(stored, created_at)
    result["url"] = redact_url(str(result["url"] or ""))
    error = result.get("error")
    if isinstance(error, str):
        result["error"] = redact_text(error)
    return result


def _pack(raw_results: Sequence[str]) -> bytes:
    return zlib.compress(("[" + ",".join(raw_results) + "]").encode(), ZLIB_LEVEL)


def _unpack(chunk: bytes) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], orjson.loads(zlib.decompress(chunk)))


# --- runs, progress and views ---------------------------------------------------------


def new_run_id() -> str:
    """Sortable by start time, unique without coordination: ``20260101T120000-1a2b3c``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunMeta:
    """A run's meta hash, parsed."""

    run_id: str
    raw: Mapping[str, str]

    @property
    def total(self) -> int:
        return int(self.raw.get("total", -1))

    @property
    def created_at(self) -> float:
        return float(self.raw.get("created_at", 0) or 0)

    @property
    def retention(self) -> int:
        return int(float(self.raw.get("retention", LEGACY_RETENTION_S)))

    @property
    def finished_at(self) -> float | None:
        value = self.raw.get("finished_at")
        return None if value is None else float(value)

    @property
    def locations(self) -> list[str | None]:
        text = self.raw.get("locations", "")
        return [loc for loc in text.split(",") if loc] or [None]

    def result_keys(self) -> list[str]:
        """Every result field of the run, in file order (each target's locations together)."""
        targets = int(self.raw.get("targets", self.total))
        locations = self.locations
        if locations == [None]:
            return [str(i) for i in range(targets)]
        return [result_key(i, loc) for i in range(targets) for loc in locations]

    def header(self, done: int, now: float | None = None) -> dict[str, Any]:
        """The summary fields that come before the results."""
        finished = self.finished_at
        end = finished if finished is not None else (now or time.time())
        total = self.total
        done = total if finished is not None else done
        header: dict[str, Any] = {
            "run_id": self.run_id,
            "source": self.raw.get("source", ""),
            "kind": self.raw.get("kind", "on_demand"),
            "probe_set": self.raw.get("probe_set"),
            "total": total,
            "done": done,
            "pending": max(0, total - done),
            "up": int(self.raw.get("up", 0)),
            "down": int(self.raw.get("down", 0)),
            "created_at": self.created_at,
            "finished_at": finished,
            "duration_s": round(max(0.0, end - self.created_at), 3),
        }
        if self.raw.get("locations"):  # every target from each; results carry `location`
            header["locations"] = self.locations
        if self.raw.get("deadline_at"):  # a set run: a location silent by then is missing
            header["deadline_at"] = float(self.raw["deadline_at"])
        return header


@dataclass(frozen=True)
class WriteOutcome:
    """What one idempotent write did: how many were new, and where the run stands."""

    added: int
    done: int
    total: int
    finished: bool = False

    @classmethod
    def from_reply(cls, reply: object) -> WriteOutcome:
        added, done, total, finished = (int(x) for x in cast(list[int], reply))
        return cls(added, done, total, bool(finished))

    @property
    def needs_finalize(self) -> bool:
        """Every result is present but the run is not packed yet."""
        return not self.finished and self.total >= 0 and self.done >= self.total


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    finished: bool = False

    @property
    def complete(self) -> bool:
        return self.finished or (self.total >= 0 and self.done >= self.total)


@dataclass(frozen=True)
class CompletedRun:
    """What the completion hooks receive: the run's meta and its results, decoded."""

    meta: RunMeta
    results: list[dict[str, Any]] = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.meta.run_id


CompletionHook = Callable[[CompletedRun], "Awaitable[None] | None"]
_HOOKS: list[CompletionHook] = []


def on_run_complete(hook: CompletionHook) -> CompletionHook:
    """Register *hook* (sync or async) to run once per run, in the worker that packs it.

    A hook that raises is logged; the run stays complete (packing is not undone).
    """
    _HOOKS.append(hook)
    return hook


async def _run_hooks(run: CompletedRun) -> None:
    for hook in list(_HOOKS):
        try:
            outcome = hook(run)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("run %s: completion hook %r failed", run.run_id, hook)


# --- errors --------------------------------------------------------------------------


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
    run_id: str, ttl: int, entries: Sequence[tuple[str, str, bool]]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the record script for these (result key, value, up) triples."""
    args: list[str | int] = [ttl]
    for key, value, up in entries:
        args.extend((key, value, 1 if up else 0))
    return [keys.run_results(run_id), keys.run_meta(run_id)], args


def _finalize_keys(run_id: str) -> list[str]:
    return [
        keys.run_meta(run_id),
        keys.run_results(run_id),
        keys.run_packed(run_id),
        keys.RUNS_EXPIRY,
    ]


# --- submission ------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    run_id: str
    total: int
    batches: int


@dataclass(frozen=True)
class RunPlan:
    """A run ready to submit: its identity, retention and task messages per queue."""

    run_id: str
    kind: Kind
    retention: int
    targets: int
    messages: Sequence[tuple[str, bytes]]
    """(queue, message): one message per batch, per location when there are several."""
    meta: Mapping[str, str]
    locations: tuple[str, ...] = ()
    """Every target is probed from each (queue ``probes.<location>``); () for one."""

    def meta_fields(self, now: float) -> dict[str, str | int | float]:
        fields: dict[str, str | int | float] = {
            "v": FORMAT, "total": self.targets * max(1, len(self.locations)),
            "targets": self.targets, "created_at": now, "kind": self.kind,
            "retention": self.retention, "batches": len(self.messages), "up": 0, "down": 0,
        }  # fmt: skip
        if self.locations:
            fields["locations"] = ",".join(self.locations)
        fields.update(self.meta)
        return fields


def batch_message(
    run_id: str, number: int, batch: EncodedBatch, *, location: str | None = None,
    expires: float | None = None,
) -> tuple[str, bytes]:  # fmt: skip
    """(queue, task message) of one batch (``opsq.probe_batch``; see :mod:`signatures`):
    the ``probes`` queue, or ``probes.<location>`` with ``location`` in its kwargs."""
    batch_id = f"b{number}"
    kwargs: dict[str, object] = {
        "run_id": run_id,
        "batch_id": batch_id,
        "offset": batch.offset,
        "targets": orjson.Fragment(batch.targets_json),
    }
    queue = keys.QUEUE_PROBES
    if location is not None:
        kwargs["location"] = location
        queue = keys.location_queue(location)
    described = f"{{'run_id': {run_id!r}, 'batch_id': {batch_id!r}, 'offset': {batch.offset}, "
    described += f"'targets': <{batch.count} targets>"
    described += f", 'location': {location!r}}}" if location is not None else "}"
    message = celerymsg.task_message(
        signatures.PROBE_BATCH, orjson.dumps(kwargs), queue=queue, kwargsrepr=described,
        expires=expires,
    )  # fmt: skip
    return queue, message


def plan_run(
    batches: Sequence[EncodedBatch],
    *,
    kind: Kind,
    retention: float,
    locations: Sequence[str] | None = None,
    expires: float | None = None,
    **meta: str,
) -> RunPlan:
    """Give a validated targets file a run id and encode its batches as task messages.

    With *locations*, every batch goes to each location's queue and the run expects one
    result per (target, location). *expires* (epoch seconds): a batch still queued then
    is dropped by the worker instead of run (Celery's ``expires``).
    """
    run_id = new_run_id()
    where: list[str | None] = list(locations) if locations else [None]
    messages = [
        batch_message(run_id, n, batch, location=loc, expires=expires)
        for loc in where
        for n, batch in enumerate(batches)
    ]
    total = sum(batch.count for batch in batches)
    return RunPlan(run_id, kind, int(retention), total, messages, meta, tuple(locations or ()))


def _by_queue(messages: Sequence[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = {}
    for queue, message in messages:
        grouped.setdefault(queue, []).append(message)
    return grouped


# --- the synchronous store -------------------------------------------------------------


class RunStore:
    """Synchronous access for the CLI, producers and beat (one short call per action)."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self.client = client
        self._hint = _url_hint(client)
        self._record = client.register_script(_RECORD_LUA)

    @classmethod
    def from_url(cls, url: str) -> RunStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10))

    def close(self) -> None:
        self.client.close()

    def submit(self, plan: RunPlan) -> Submitted:
        """Register the run and enqueue all its batches in one transaction."""
        now = time.time()
        meta_key = keys.run_meta(plan.run_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(meta_key, mapping=cast(Any, plan.meta_fields(now)))
        pipe.expire(meta_key, plan.retention)
        pipe.zadd(keys.RUNS_INDEX, {plan.run_id: now})
        pipe.zadd(keys.RUNS_EXPIRY, {plan.run_id: now + plan.retention})
        pipe.eval(_TRIM_LUA, 2, keys.RUNS_INDEX, keys.RUNS_EXPIRY, now)
        for queue, messages in _by_queue(plan.messages).items():
            for start in range(0, len(messages), PUSH_GROUP):
                pipe.lpush(queue, *messages[start : start + PUSH_GROUP])
        _redis_call(self._hint, pipe.execute)
        return Submitted(plan.run_id, plan.targets, len(plan.messages))

    def record(self, run_id: str, entries: Sequence[tuple[str, str, bool]]) -> WriteOutcome:
        """Write (result key, compact result, up) triples; existing keys stay untouched.

        Packing a completed run is the worker's job (:meth:`AsyncRunStore.finalize`).
        """
        ttl = self.run_meta(run_id).retention
        script_keys, args = _record_call(run_id, ttl, entries)
        raw = _redis_call(self._hint, lambda: self._record(keys=script_keys, args=args))
        return WriteOutcome.from_reply(raw)

    def run_meta(self, run_id: str) -> RunMeta:
        raw = _redis_call(self._hint, lambda: self.client.hgetall(keys.run_meta(run_id)))
        return RunMeta(run_id, raw)

    def progress(self, run_id: str) -> Progress:
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(keys.run_results(run_id))
        pipe.hmget(keys.run_meta(run_id), ["total", "finished_at"])
        done, (total, finished) = _redis_call(self._hint, pipe.execute)
        total_n = int(total) if total is not None else -1
        if finished is not None:
            return Progress(total_n, total_n, finished=True)
        return Progress(int(done), total_n)

    def open(self, run_id: str) -> RunView | None:
        """A reader of the run (header and streamed results), or None if unknown/expired."""
        meta = self.run_meta(run_id)
        if not meta.raw or "v" not in meta.raw:
            return None  # unknown, expired, or stored by an older opsq (see summary())
        done = _redis_call(self._hint, lambda: self.client.hlen(keys.run_results(run_id)))
        return RunView(self, meta, int(done))

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The whole summary in memory (header and results); None if unknown or expired."""
        view = self.open(run_id)
        if view is None:
            return _legacy_summary(self, run_id)
        return {**view.header, "results": list(view.results())}

    def results(self, run_id: str) -> list[dict[str, Any]]:
        """Every stored result of the run, decoded, not redacted (the monitor judges them
        when a set run completes); empty for an unknown or expired run."""
        view = self.open(run_id)
        return [] if view is None else list(view.results(redacted=False))

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Most recent runs first: the summary header of each (no results)."""
        ids = _redis_call(self._hint, lambda: self.client.zrevrange(keys.RUNS_INDEX, 0, limit - 1))
        pipe = self.client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(keys.run_meta(run_id))
            pipe.hlen(keys.run_results(run_id))
        replies = _redis_call(self._hint, pipe.execute)
        now = time.time()
        runs = []
        for run_id, raw, done in zip(ids, replies[::2], replies[1::2], strict=True):
            if not raw:  # expired meta: the index entry outlived it until the next trim
                continue
            header = RunMeta(run_id, raw).header(int(done), now)
            legacy = _legacy_summary(self, run_id) if "v" not in raw else None
            if legacy is not None:
                header.update({k: v for k, v in legacy.items() if k in header})
                header["finished_at"] = header["created_at"] + header["duration_s"]
            runs.append(header)
        return runs


class RunView:
    """One run as a reader sees it: the header now, the results streamed in file order."""

    def __init__(self, store: RunStore, meta: RunMeta, done: int) -> None:
        self._store = store
        self.meta = meta
        self.header = meta.header(done)

    @property
    def complete(self) -> bool:
        return bool(self.header["pending"] == 0)

    def results(self, *, redacted: bool = True) -> Iterator[dict[str, Any]]:
        """Every stored result in file order, CHUNK at a time (pending ones are absent).

        *redacted* (for printing): secrets in URLs and error messages are masked.
        """
        created = self.meta.created_at
        decode = printable_result if redacted else decode_result
        for compact in self._compact():
            yield decode(compact, created)

    def _compact(self) -> Iterator[dict[str, Any]]:
        if self.meta.finished_at is not None:
            yield from self._packed(0)
            return
        fields = self.meta.result_keys()
        for start in range(0, len(fields), CHUNK * READ_AHEAD):
            replies = self._live_round(fields[start : start + CHUNK * READ_AHEAD])
            finished = replies[-1] is not None
            if finished:  # packed while we read: the rest is in the packed list
                yield from self._packed(start // CHUNK)
                return
            for values in replies[:-1]:
                yield from (orjson.loads(v) for v in values if v is not None)

    def _live_round(self, fields: list[str]) -> list[Any]:
        """HMGETs of up to READ_AHEAD chunks, and ``finished_at``, in one atomic round."""
        pipe = self._store.client.pipeline(transaction=True)
        for start in range(0, len(fields), CHUNK):
            pipe.hmget(keys.run_results(self.meta.run_id), fields[start : start + CHUNK])
        pipe.hget(keys.run_meta(self.meta.run_id), "finished_at")
        replies: list[Any] = _redis_call(self._store._hint, pipe.execute)
        return replies

    def _packed(self, first: int) -> Iterator[dict[str, Any]]:
        start = first
        while True:
            chunks = self._packed_chunks(start, start + READ_AHEAD - 1)
            for chunk in chunks:
                yield from _unpack(chunk)
            if len(chunks) < READ_AHEAD:
                return
            start += READ_AHEAD

    def _packed_chunks(self, start: int, end: int) -> list[bytes]:
        """Packed elements *start*..*end* as bytes (the client decodes everything else)."""
        key = keys.run_packed(self.meta.run_id)
        lrange = self._store.client.execute_command
        return cast(
            list[bytes],
            _redis_call(
                self._store._hint,
                lambda: lrange("LRANGE", key, start, end, **{NEVER_DECODE: []}),
            ),
        )


def _legacy_summary(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """A run stored before format 2 kept its whole summary as one JSON string."""
    raw = _redis_call(store._hint, lambda: store.client.get(keys.run_summary(run_id)))
    return None if raw is None else cast(dict[str, Any], orjson.loads(raw))


# --- the worker's store ----------------------------------------------------------------


class AsyncRunStore:
    """The worker's side: asyncio client, batched idempotent writes, packing at the end."""

    def __init__(self, client: aioredis.Redis[str]) -> None:
        self.client = client
        self._hint = _url_hint(client)
        self._record = client.register_script(_RECORD_LUA)
        self._finalize = client.register_script(_FINALIZE_LUA)

    async def run_meta(self, run_id: str) -> RunMeta:
        raw = await _aredis_call(self._hint, lambda: self.client.hgetall(keys.run_meta(run_id)))
        return RunMeta(run_id, raw)

    async def count_delivery(self, meta: RunMeta, batch_id: str) -> int:
        """Increment and return how many times this batch has started executing."""
        key = keys.run_attempts(meta.run_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(key, batch_id, 1)
        pipe.expire(key, meta.retention)
        count, _ = await _aredis_call(self._hint, pipe.execute)
        return int(count)

    async def existing(self, run_id: str, result_keys: Sequence[str]) -> set[str]:
        """Which of these results are already stored (a redelivery skips them).

        One HMGET instead of a pipeline of HEXISTS: one command to parse instead of
        one per target (a first delivery, the usual case, gets back only nils)."""
        if not result_keys:
            return set()
        values = await _aredis_call(
            self._hint, lambda: self.client.hmget(keys.run_results(run_id), list(result_keys))
        )
        return {key for key, value in zip(result_keys, values, strict=True) if value is not None}

    async def record(self, meta: RunMeta, entries: Sequence[tuple[str, str, bool]]) -> WriteOutcome:
        """Write (result key, compact result, up) triples; existing keys stay untouched."""
        script_keys, args = _record_call(meta.run_id, meta.retention, entries)
        raw = await _aredis_call(self._hint, lambda: self._record(keys=script_keys, args=args))
        return WriteOutcome.from_reply(raw)

    async def finalize(self, run_id: str) -> CompletedRun | None:
        """Pack a run whose results are all present; None if another caller did (or not
        every result is there after all). The caller that packs runs the hooks."""
        meta = await self.run_meta(run_id)
        if not meta.raw or meta.finished_at is not None:
            return None
        raw_chunks = await self._read_live(meta)
        if raw_chunks is None:
            return None
        packed = [_pack(chunk) for chunk in raw_chunks]
        args: list[bytes | str | int | float] = [meta.retention, time.time(), run_id, *packed]
        stored = await _aredis_call(
            self._hint, lambda: self._finalize(keys=_finalize_keys(run_id), args=args)
        )
        if not stored:
            return None
        run = CompletedRun(await self.run_meta(run_id), [])
        if _HOOKS:
            created = meta.created_at
            results = [decode_result(orjson.loads(v), created) for c in raw_chunks for v in c]
            run = CompletedRun(run.meta, results)
            await _run_hooks(run)
        return run

    async def _read_live(self, meta: RunMeta) -> list[list[str]] | None:
        """Every live result in file order, CHUNK per list; None if any is missing."""
        fields = meta.result_keys()
        chunks: list[list[str]] = []
        for start in range(0, len(fields), CHUNK * READ_AHEAD):
            pipe = self.client.pipeline(transaction=False)
            for first in range(start, min(start + CHUNK * READ_AHEAD, len(fields)), CHUNK):
                pipe.hmget(keys.run_results(meta.run_id), fields[first : first + CHUNK])
            for values in await _aredis_call(self._hint, pipe.execute):
                if any(v is None for v in values):
                    return None
                chunks.append(values)
        return chunks


def record_entries(
    results: Iterable[Mapping[str, Any]], created_at: float
) -> list[tuple[str, str, bool]]:
    """(result key, compact result, up) triples for results that carry their ``index``."""
    return [
        (
            result_key(int(r["index"]), r.get("location")),
            encode_result(r, int(r["index"]), created_at),
            bool(r.get("up")),
        )
        for r in results
    ]
