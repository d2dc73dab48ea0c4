"""Reading history for the status page and the API, in a bounded number of round trips.

Every public method costs a fixed number of Redis round trips whatever the number of
targets (each one pipeline; :data:`ROUNDTRIPS` counts them per request):

- :meth:`HistoryReader.overview`: 3 (the sets; every set's state, live accumulators,
  roster and blob index; the blobs the windows need that are not cached yet);
- :meth:`HistoryReader.target`: 3 (the set's target keys; the target's state, live
  entry, raw window, open incident and the set's blob index and incident ids; blobs
  and incidents);
- :meth:`HistoryReader.history` and :meth:`HistoryReader.incidents`: 2-3.

Sealed blobs never change, so they are decoded once and kept (least recently used
first out); the live accumulators and states are read on every call. Uptime comes from
rollups only (:mod:`.windows`), never from a scan of raw verdicts.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from opsq.core import keys
from opsq.core.redact import redact_text, redact_url
from opsq.engines.history import raw, windows
from opsq.engines.history.incidents import Incident
from opsq.engines.history.recorder import PERIOD_FIELD, LiveEntry
from opsq.engines.history.rollup import Acc, decode_blob

OVERVIEW_WINDOWS = ("24h", "7d", "30d")
TARGET_WINDOWS = ("24h", "7d", "30d", "90d")
SEVERITY = {"down": 0, "degraded": 1, "unknown": 2, "up": 3}
INCIDENTS_MAX = 500
"""A page or an API answer lists at most this many incidents (newest first)."""


class Counter:
    def __init__(self) -> None:
        self.value = 0


ROUNDTRIPS: ContextVar[Counter | None] = ContextVar("opsq_history_roundtrips", default=None)
"""Set a :class:`Counter` here to count the Redis round trips of one request."""
TOTAL_ROUNDTRIPS = Counter()


def target_id(key: str) -> str:
    """A target's id in URLs: short, stable, and free of the URL's secrets."""
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def display_url(url: str) -> str:
    """A target URL as pages and the API show it: user info redacted, and no query or
    fragment (where tokens travel; a status page has no use for them)."""
    return redact_url(url.split("#", 1)[0].split("?", 1)[0])


def natural(text: str) -> list[Any]:
    """Sort key: ``svc2`` before ``svc10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class SetData:
    """One set as read in one round trip."""

    name: str
    states: dict[str, dict[str, Any]]
    """target key -> the monitor's state JSON (as ``monitor.state.TargetState``)."""
    live: dict[str, LiveEntry]
    roster: dict[str, int]
    members: set[str]
    open: dict[str, Incident]
    recent: set[int] = field(default_factory=set)
    """Hours that still have their histogram blob (``hour-hist``): the 24 h window
    merges those; older hours are summaries."""

    def blob_key(self, member: str) -> str:
        return _blob_key(self.name, member, self.recent)


@dataclass
class TargetView:
    """What the page and the API show for one target."""

    id: str
    set: str
    name: str
    url: str
    state: str
    since: float
    reason: str
    detail: str | None
    last_run_at: float
    uptime: dict[str, float | None]
    latency: Acc
    spark: list[float | None]
    locations: dict[str, Any] = field(default_factory=dict)
    open_incident: Incident | None = None
    days: list[tuple[int, Acc | None]] = field(default_factory=list)
    """The last 90 days' rollups (oldest first); filled for the target page only."""

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "set": self.set,
            "name": self.name,
            "url": self.url,
            "state": self.state,
            "since": self.since or None,
            "reason": self.reason,
            "detail": self.detail,
            "last_run_at": self.last_run_at or None,
            "uptime": self.uptime,
            "latency_24h": {
                "p50_s": self.latency.quantile(0.5),
                "p95_s": self.latency.quantile(0.95),
                "mean_s": self.latency.mean(),
                "max_s": self.latency.lat_max or None,
                "count": self.latency.n_lat,
            },
            "locations": self.locations,
            "open_incident": incident_api(self.open_incident) if self.open_incident else None,
        }


def incident_api(incident: Incident, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "id": incident.id,
        "set": incident.set,
        "target_id": target_id(incident.target),
        "name": incident.name,
        "url": display_url(incident.url),
        "state": incident.state,
        "started_at": incident.started_at,
        "ended_at": incident.ended_at,
        "open": incident.ended_at is None,
        "duration_s": incident.duration(now),
        "reason": incident.reason,
        "detail": redact_text(incident.detail) if incident.detail else None,
        "locations": incident.locations,
    }


def rollup_api(kind: str, acc: Acc) -> dict[str, Any]:
    length = windows.HOUR_S if kind == "h" else windows.DAY_S
    return {
        "start": acc.period * length,
        "end": (acc.period + 1) * length,
        "runs": acc.runs,
        "up": acc.up,
        "degraded": acc.degraded,
        "down": acc.down,
        "unknown": acc.unknown,
        "uptime": acc.uptime(),
        "latency": {
            "count": acc.n_lat,
            "mean_s": acc.mean(),
            "max_s": acc.lat_max or None,
            "p50_s": acc.quantile(0.5),
            "p95_s": acc.quantile(0.95),
        },
    }


class HistoryReader:
    """Async reads for ``opsq web`` (a ``redis.asyncio`` client without decoding)."""

    def __init__(self, client: aioredis.Redis[bytes], *, cache_blobs: int = 512) -> None:
        self.client = client
        self._blobs: OrderedDict[str, dict[int, Acc]] = OrderedDict()
        self._cache_blobs = cache_blobs
        self._sealed: dict[str, tuple[Any, dict[int, windows.TargetWindows]]] = {}

    async def _run(self, pipe: Any) -> list[Any]:
        """Execute one pipeline: one round trip."""
        self._count()
        return list(await pipe.execute())

    @staticmethod
    def _count() -> None:
        counter = ROUNDTRIPS.get()
        if counter is not None:
            counter.value += 1
        TOTAL_ROUNDTRIPS.value += 1

    @staticmethod
    def _raw(
        pipe: Any, set_name: str, key: str, *, start: float, end: float, count: int = 100_000
    ) -> None:
        """Queue a read of the raw verdicts in [start, end]."""
        pipe.xrange(
            keys.history_raw(set_name, key),
            min=str(int(start * 1000)),
            max=str(int(end * 1000)),
            count=count,
        )

    # --- overview ---------------------------------------------------------------------
    async def sets(self) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(keys.MONITOR_SETS)
        (found,) = await self._run(pipe)
        return sorted(_text(s) for s in found)

    async def overview(self, now: float) -> list[tuple[str, list[TargetView]]]:
        """Every set and target, worst state first, with uptime and a sparkline."""
        names = await self.sets()
        sets = await self._read_sets(names, now - windows.DAY_S * 31)
        await self._refresh_sealed(sets, now)
        result = []
        schedule = windows.plan(OVERVIEW_WINDOWS, now)
        for data in sets:
            sealed = self._sealed[data.name][1]
            views = [
                self._overview_view(data, key, state, sealed=sealed, schedule=schedule, now=now)
                for key, state in data.states.items()
            ]
            views.sort(key=lambda v: (SEVERITY.get(v.state, 2), natural(v.name), v.url))
            result.append((data.name, views))
        return result

    async def _refresh_sealed(self, sets: Sequence[SetData], now: float) -> None:
        """Recompute a set's numbers over sealed blobs when the hour or its blobs changed
        (once an hour); only then are blobs read (the third round trip)."""
        schedule = windows.plan(OVERVIEW_WINDOWS, now)
        stale = []
        for data in sets:
            present = frozenset(data.blob_key(m) for m in schedule if m in data.members)
            key = (windows.current("h", now), windows.current("d", now), present)
            cached = self._sealed.get(data.name)
            if cached is None or cached[0] != key:
                stale.append((data, key))
        await self._load_blobs([k for _, key in stale for k in key[2]])
        for data, key in stale:
            blobs = {
                m: self._blobs[data.blob_key(m)]
                for m in schedule
                if m in data.members and data.blob_key(m) in self._blobs
            }
            self._sealed[data.name] = (key, windows.sealed_windows(blobs, OVERVIEW_WINDOWS, now))

    def _overview_view(
        self,
        data: SetData,
        key: str,
        state: dict[str, Any],
        *,
        sealed: dict[int, windows.TargetWindows],
        schedule: dict[str, list[str]],
        now: float,
    ) -> TargetView:
        roster_id = data.roster.get(key)
        live = data.live.get(key)
        numbers = windows.with_live(
            sealed.get(roster_id) if roster_id is not None else None,
            [("h", live.hour), ("d", live.day)] if live is not None else [],
            data.members,
            schedule,
            now,
        )
        uptime = {w: numbers.counts[w].uptime for w in OVERVIEW_WINDOWS}
        return self._make_view(
            data, key, state, uptime=uptime, latency=numbers.latency, spark=numbers.spark
        )

    async def _read_sets(self, names: Sequence[str], since: float) -> list[SetData]:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.monitor_state(name))
            pipe.hgetall(keys.history_acc(name))
            pipe.hgetall(keys.history_roster(name))
            pipe.zrangebyscore(keys.history_periods(name), since, "+inf")
            pipe.hgetall(keys.history_open(name))
            pipe.zrange(keys.history_recent(name), 0, -1)
        replies = await self._run(pipe) if names else []
        return [self._set_data(name, replies[i * 6 : (i + 1) * 6]) for i, name in enumerate(names)]

    @staticmethod
    def _set_data(name: str, replies: Sequence[Any]) -> SetData:
        states_raw, live_raw, roster_raw, members_raw, open_raw, recent_raw = replies
        return SetData(
            name=name,
            states={_text(k): orjson.loads(v) for k, v in states_raw.items()},
            live={
                _text(k): LiveEntry.loads(v)
                for k, v in live_raw.items()
                if _text(k) != PERIOD_FIELD
            },
            roster={_text(k): int(v) for k, v in roster_raw.items()},
            members={_text(m) for m in members_raw},
            open={_text(k): Incident.from_dict(orjson.loads(v)) for k, v in open_raw.items()},
            recent={int(h) for h in recent_raw},
        )

    async def _load_blobs(self, wanted: Iterable[str]) -> None:
        """Blobs (by key) into the cache, the missing ones in one round trip."""
        wanted = list(wanted)
        missing = sorted({k for k in wanted if k not in self._blobs})
        for key in wanted:
            if key in self._blobs:
                self._blobs.move_to_end(key)
        if not missing:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in missing:
            pipe.get(key)
        for key, blob in zip(missing, await self._run(pipe), strict=True):
            self._cache(key, blob)

    def _cache(self, key: str, blob: bytes | None) -> None:
        if blob is None:
            return  # trimmed meanwhile
        self._blobs[key] = dict(decode_blob(blob, _period_of(key)))
        while len(self._blobs) > self._cache_blobs:
            self._blobs.popitem(last=False)

    def _lookup(self, data: SetData, key: str) -> windows.Lookup:
        live = data.live.get(key)
        roster_id = data.roster.get(key)

        def lookup(kind: str, period: int) -> Acc | None:
            if live is not None:
                current = live.hour if kind == "h" else live.day
                if current.period == period and current.runs:
                    return current
            if roster_id is None:
                return None
            blob = self._blobs.get(data.blob_key(f"{kind}{period}"))
            return blob.get(roster_id) if blob is not None else None

        return lookup

    def _view(
        self, data: SetData, key: str, state: dict[str, Any], names: Sequence[str], now: float
    ) -> TargetView:
        """One target through the generic lookups (any window; the target page)."""
        lookup = self._lookup(data, key)
        uptime = {w: windows.counts(lookup, w, now).uptime for w in names}
        _, hours = windows.periods("24h", now)
        spark = []
        for hour in hours:
            acc = lookup("h", hour)
            spark.append(acc.mean() if acc is not None else None)
        latency = windows.merged(lookup, "24h", now)
        return self._make_view(data, key, state, uptime=uptime, latency=latency, spark=spark)

    @staticmethod
    def _make_view(
        data: SetData,
        key: str,
        state: dict[str, Any],
        *,
        uptime: dict[str, float | None],
        latency: Acc,
        spark: list[float | None],
    ) -> TargetView:
        detail = state.get("detail")
        return TargetView(
            id=target_id(key),
            set=data.name,
            name=str(state.get("name", "")),
            url=display_url(str(state.get("url", ""))),
            state=str(state.get("state", "unknown")),
            since=float(state.get("since") or 0.0),
            reason=str(state.get("reason") or ""),
            detail=redact_text(str(detail)) if detail else None,
            last_run_at=float(state.get("last_run_at") or 0.0),
            uptime=uptime,
            latency=latency,
            spark=spark,
            locations=_locations(state.get("locations") or {}),
            open_incident=data.open.get(key),
        )

    # --- one target ---------------------------------------------------------------------
    async def resolve(self, set_name: str, wanted_id: str) -> str | None:
        """The target key (``name|url``) behind an id, or None."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hkeys(keys.monitor_state(set_name))
        (found,) = await self._run(pipe)
        return next((_text(k) for k in found if target_id(_text(k)) == wanted_id), None)

    async def target(
        self, set_name: str, key: str, now: float, raw_since: float
    ) -> tuple[TargetView, list[raw.Sample], list[Incident]] | None:
        """The target's view (every window), its raw verdicts since *raw_since* and its
        incidents (newest first)."""

        def build(pipe: Any) -> None:
            pipe.hget(keys.monitor_state(set_name), key)
            pipe.hget(keys.history_acc(set_name), key)
            pipe.hget(keys.history_roster(set_name), key)
            pipe.zrangebyscore(keys.history_periods(set_name), now - windows.DAY_S * 91, "+inf")
            pipe.hget(keys.history_open(set_name), key)
            pipe.zrange(keys.history_recent(set_name), 0, -1)
            self._raw(pipe, set_name, key, start=raw_since, end=now + windows.DAY_S)
            pipe.zrevrangebyscore(
                keys.history_incident_starts(set_name),
                "+inf",
                now - windows.DAY_S * 366,
                start=0,
                num=INCIDENTS_MAX * 4,
            )

        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        replies = await self._run(pipe)
        state_raw, live_raw, roster_id, members, open_raw, recent, entries, ids = replies
        if state_raw is None:
            return None
        data = SetData(
            name=set_name,
            states={key: orjson.loads(state_raw)},
            live={key: LiveEntry.loads(live_raw)} if live_raw else {},
            roster={key: int(roster_id)} if roster_id is not None else {},
            members={_text(m) for m in members},
            open={key: Incident.from_dict(orjson.loads(open_raw))} if open_raw else {},
            recent={int(h) for h in recent},
        )
        wanted = windows.members(TARGET_WINDOWS, now) & data.members
        incidents = await self._blobs_and_incidents(
            set_name, [data.blob_key(m) for m in sorted(wanted)], ids, key
        )
        view = self._view(data, key, data.states[key], TARGET_WINDOWS, now)
        lookup = self._lookup(data, key)
        view.days = [(day, lookup("d", day)) for day in windows.periods("90d", now)[1]]
        samples = [raw.decode(entry_id, fields) for entry_id, fields in entries]
        return view, samples, incidents

    async def _blobs_and_incidents(
        self, set_name: str, wanted: Sequence[str], ids: Sequence[Any], key: str | None
    ) -> list[Incident]:
        """Blobs (by key) into the cache and incidents in one round trip."""
        missing = [k for k in wanted if k not in self._blobs]
        pipe = self.client.pipeline(transaction=False)
        for blob_key in missing:
            pipe.get(blob_key)
        if ids:
            pipe.hmget(keys.history_incidents(set_name), list(ids))
        if not missing and not ids:
            return []
        replies = await self._run(pipe)
        for blob_key, blob in zip(missing, replies, strict=False):
            self._cache(blob_key, blob)
        found = replies[len(missing)] if ids else []
        incidents = [Incident.from_dict(orjson.loads(v)) for v in found if v is not None]
        return [i for i in incidents if key is None or i.target == key][:INCIDENTS_MAX]

    # --- API: history and incidents --------------------------------------------------------
    async def raw_range(
        self, set_name: str, key: str, start: float, end: float, limit: int = 100_000
    ) -> list[raw.Sample]:
        pipe = self.client.pipeline(transaction=False)
        self._raw(pipe, set_name, key, start=start, end=end, count=limit)
        (entries,) = await self._run(pipe)
        return [raw.decode(entry_id, fields) for entry_id, fields in entries]

    async def rollups(
        self, set_name: str, key: str, kind: str, start: float, end: float
    ) -> list[Acc]:
        """Hourly (``h``) or daily (``d``) rollups of one target from *start* to *end*."""
        length = windows.HOUR_S if kind == "h" else windows.DAY_S
        first, last = int(start // length), int(end // length)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.history_acc(set_name), key)
        pipe.hget(keys.history_roster(set_name), key)
        pipe.zrangebyscore(keys.history_periods(set_name), start, "+inf")
        live_raw, roster_id, members = await self._run(pipe)
        wanted = {f"{kind}{p}" for p in range(first, last + 1)} & {_text(m) for m in members}
        await self._load_blobs([_blob_key(set_name, m) for m in wanted])
        data = SetData(
            set_name,
            {},
            {key: LiveEntry.loads(live_raw)} if live_raw else {},
            {key: int(roster_id)} if roster_id is not None else {},
            set(),
            {},
        )
        lookup = self._lookup(data, key)
        found = [lookup(kind, p) for p in range(first, last + 1)]
        return [acc for acc in found if acc is not None]

    async def incidents(
        self, set_names: Sequence[str], start: float, end: float, limit: int = INCIDENTS_MAX
    ) -> list[Incident]:
        """Incidents that started in [start, end], newest first."""
        pipe = self.client.pipeline(transaction=False)
        for name in set_names:
            pipe.zrevrangebyscore(
                keys.history_incident_starts(name), end, start, start=0, num=limit
            )
        id_lists = await self._run(pipe) if set_names else []
        pipe = self.client.pipeline(transaction=False)
        asked = [(name, ids) for name, ids in zip(set_names, id_lists, strict=True) if ids]
        for name, ids in asked:
            pipe.hmget(keys.history_incidents(name), list(ids))
        found = await self._run(pipe) if asked else []
        incidents = [Incident.from_dict(orjson.loads(v)) for values in found for v in values if v]
        incidents.sort(key=lambda i: i.started_at, reverse=True)
        return incidents[:limit]


def _blob_key(set_name: str, member: str, recent: set[int] | None = None) -> str:
    """The blob of a member (``h<hour>``/``d<day>``); an hour in *recent* is read from
    its histogram blob."""
    period = int(member[1:])
    if member.startswith("h"):
        if recent and period in recent:
            return keys.history_hour_hist(set_name, period)
        return keys.history_hour(set_name, period)
    return keys.history_day(set_name, period)


def _period_of(blob_key: str) -> int:
    return int(blob_key.rsplit(":", 1)[1])


def _locations(locations: Mapping[str, Any]) -> dict[str, Any]:
    """The last run's per-location results, details redacted."""
    shown = {}
    for name, result in locations.items():
        if isinstance(result, Mapping):
            item = dict(result)
            if item.get("detail"):
                item["detail"] = redact_text(str(item["detail"]))
            shown[name] = item
    return shown
