"""Recording history in the monitor's transaction: exactly once per run, bounded by time.

What is stored per probe set (every name in :mod:`opsq.core.keys`):

- ``opsq:history:raw:<set>:<target>``: stream, one packed entry per applied run
  (:mod:`.raw`), entry id = the run's apply time in ms; trimmed on every XADD with
  ``MINID = now - history.raw_retention``.
- ``opsq:history:acc:<set>``: hash target -> the live hour's and day's accumulators
  (:class:`.rollup.Acc`, JSON) and the last raw id; field ``@period`` marks the hour
  and day they are for.
- ``opsq:history:hour:<set>:<hour>`` / ``...:day:<set>:<day>``: one string per set and
  period holding every target's rollup record, positional by ``roster`` id
  (``opsq:history:roster:<set>``, append-only). A set's hour is **sealed** by the first
  run applied after it: the accumulators become the blob, the live ones start over.
  Hour blobs hold summaries (counts, p50, p95, max, mean); day blobs histograms.
- ``opsq:history:hour-hist:<set>:<hour>``: the hour with its histograms, kept 25 hours
  (``opsq:history:recent:<set>`` lists them) so the 24 h p50/p95 merge exactly.
- ``opsq:history:periods:<set>``: sorted set of the blobs by period end;
  ``opsq:history:incidents:<set>`` (hash) with ``incident-starts`` (sorted set) and
  ``open`` (hash target -> open incident).

**Exactly once.** :meth:`HistoryRecorder.prepare` reads the accumulators and open
incidents while the monitor holds its ``WATCH`` (they are in the watched keys; one
EVAL, one round trip, which also reads what sealing needs when the hour turned), and
:meth:`HistoryRecorder.write` queues every write in the monitor's ``MULTI`` beside the
run's applied marker. A redelivered batch or a second finisher finds the marker, or
loses the race and retries, exactly as the state does.

**Trimming by time, never from the middle.** Raw entries by ``MINID``; blobs and
incidents by sorted-set ranges older than ``history.retention`` (checked when an hour is
sealed), all by the clock of the runs (injectable: the tests drive it across hours,
days and the retention). Every key also gets a TTL a day past its retention, refreshed
hourly, so a set that stops running does not keep its history forever.

**Why blobs per set and period.** 90 days of hourly rollups are 2,160 records per
target. One key per record would cost ~70 bytes of key overhead each; one string per
(set, hour) costs one key per hour for all targets. A summary record is about 6 bytes
whatever the spread of the hour's latencies (a histogram record was 6-16), so 1,000
targets over 90 days take about 15 MB (``bench/history.py``). A page reads a handful
of blobs per set, not one key per target.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from opsq.core import keys
from opsq.core.config.history import HistorySettings
from opsq.core.config.probes import DEFAULT_LOCATION
from opsq.engines.history import raw
from opsq.engines.history.incidents import Incident, follow
from opsq.engines.history.rollup import Acc, encode_blob
from opsq.engines.monitor.spec import RunSpec
from opsq.engines.monitor.state import TargetState, Transition
from opsq.engines.monitor.store import PartDeferred
from opsq.engines.monitor.verdict import TargetVerdict

HOUR_S = 3600
DAY_S = 86400
Sealed = dict[int, dict[str, Acc]]
"""period -> target key -> the accumulator sealed into that period's blob."""
ByLocation = dict[str, dict[str, Mapping[str, Any]]]
"""target key -> location -> stored probe result."""


@dataclass
class LiveEntry:
    """One target's live accumulators in the acc hash."""

    hour: Acc
    day: Acc
    last_ms: int = 0

    def dumps(self) -> bytes:
        return orjson.dumps({"h": self.hour.to_list(), "d": self.day.to_list(), "ms": self.last_ms})

    @classmethod
    def loads(cls, raw_value: str | bytes) -> LiveEntry:
        data = orjson.loads(raw_value)
        return cls(Acc.from_list(data["h"]), Acc.from_list(data["d"]), int(data["ms"]))


@dataclass
class Prepared:
    """What :meth:`HistoryRecorder.prepare` read under the monitor's WATCH."""

    set: str
    hour: int
    day: int
    entries: dict[str, LiveEntry]
    open: dict[str, Incident]
    results: ByLocation
    roster: dict[str, int] | None = None
    """Read only when an hour or a day is sealed by this run."""
    cutoff: float = 0.0
    """Rollups and incidents that ended before this are expired."""
    expired_periods: list[str] = field(default_factory=list)
    expired_incidents: list[str] = field(default_factory=list)
    expired_recent: list[int] = field(default_factory=list)
    """Hours whose ``hour-hist`` blob is past ``HISTORY_FULL_HOURS``."""

    @property
    def sealing(self) -> bool:
        return self.roster is not None


def group_results(results: Sequence[Mapping[str, Any]]) -> ByLocation:
    """target key -> location -> stored probe result."""
    grouped: ByLocation = defaultdict(dict)
    for result in results:
        key = f"{result.get('name')}|{result.get('url')}"
        grouped[key][str(result.get("location") or DEFAULT_LOCATION)] = result
    return grouped


def sample_of(
    verdict: TargetVerdict, state: TargetState, results: Mapping[str, Mapping[str, Any]], at: float
) -> tuple[raw.Sample, float | None]:
    """The raw sample of one target in one run, and the latency its rollup counts (the
    median over the locations that answered; None when none did)."""
    if len(verdict.locations) == 1:
        return _sample_of_one(verdict, state, results, at)
    return _sample_of_many(verdict, state, results, at)


def _sample_of_many(
    verdict: TargetVerdict, state: TargetState, results: Mapping[str, Mapping[str, Any]], at: float
) -> tuple[raw.Sample, float | None]:
    timed = sorted(
        (
            (r.duration_s, name)
            for name, r in verdict.locations.items()
            if r.verdict != "missing" and r.duration_s is not None
        )
    )
    answered = [d for (d, name) in timed if verdict.locations[name].verdict in ("up", "degraded")]
    rollup_latency = (
        statistics.median(answered) if answered and verdict.verdict in ("up", "degraded") else None
    )
    latency, status, phases = None, None, {}
    if timed:
        latency, where = timed[len(timed) // 2]
        status = verdict.locations[where].status_code
        phases = {str(k): float(v) for k, v in (results.get(where, {}).get("phases") or {}).items()}
    locations = {}
    if len(verdict.locations) > 1:
        locations = {
            name: [r.verdict, r.reason, r.duration_s] for name, r in verdict.locations.items()
        }
    sample = raw.Sample(
        at=at,
        state=state.state,
        verdict=verdict.verdict,
        reason=verdict.reason,
        latency=latency,
        status=status,
        phases=phases,
        locations=locations,
    )
    return sample, rollup_latency


def _sample_of_one(
    verdict: TargetVerdict, state: TargetState, results: Mapping[str, Mapping[str, Any]], at: float
) -> tuple[raw.Sample, float | None]:
    """:func:`sample_of` for a set with one location (most sets): no sort, no median
    of one value, no per-location list. The recorder calls it once per target per run."""
    ((where, location),) = verdict.locations.items()
    latency = location.duration_s
    if location.verdict == "missing" or latency is None:
        sample = raw.Sample(at, state.state, verdict.verdict, verdict.reason)
        return sample, None
    answered = location.verdict in _ANSWERED and verdict.verdict in _ANSWERED
    phases = results.get(where, {}).get("phases") or {}
    sample = raw.Sample(
        at,
        state.state,
        verdict.verdict,
        verdict.reason,
        latency,
        location.status_code,
        {str(k): float(v) for k, v in phases.items()},
    )
    return sample, latency if answered else None


_ANSWERED = ("up", "degraded")


class HistoryRecorder:
    """Participates in :meth:`opsq.engines.monitor.store.MonitorStore.apply`."""

    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings

    def watch_keys(self, set_name: str) -> tuple[str, ...]:
        return keys.history_acc(set_name), keys.history_open(set_name)

    def records(self, spec: RunSpec) -> bool:
        """History is recorded for the run: on for opsq (``history.enabled``) and for
        its set (``history``). Otherwise only open incidents follow (``*_paused``)."""
        return self.settings.enabled and spec.history

    # --- reads, under WATCH ---------------------------------------------------------------
    def prepare(
        self, pipe: Any, spec: RunSpec, results: Sequence[Mapping[str, Any]], now: float, *,
        whole: bool = True,
    ) -> Prepared:  # fmt: skip
        """One round trip (:data:`_PREPARE_LUA`): the accumulators and open incidents,
        and, when the set's hour or day has turned, what sealing needs. For one batch of
        a run (not *whole*) only the batch's accumulators are read, and a turned hour
        raises :class:`PartDeferred`: sealing takes every target, at the run's end."""
        name = spec.set
        mark = f"{int(now // HOUR_S)}:{int(now // DAY_S)}"
        if not whole:
            return self._prepare_part(pipe, spec, results, now, mark)
        reply = self._read(pipe, name, now, mark)
        entries = {k: LiveEntry.loads(v) for k, v in _pairs(reply[0]).items() if k != PERIOD_FIELD}
        prepared = self._prepared(name, now, entries, _pairs(reply[1]), results)
        if any(e.hour.period < prepared.hour or e.day.period < prepared.day
               for e in entries.values()):  # fmt: skip
            if len(reply) == 2:  # the mark said current, the entries disagree: read again
                reply = self._read(pipe, name, now, "")
            self._seal_reads(prepared, reply[2:])
        return prepared

    def _prepare_part(
        self, pipe: Any, spec: RunSpec, results: Sequence[Mapping[str, Any]], now: float,
        mark: str,
    ) -> Prepared:  # fmt: skip
        names = list(spec.names)
        reply = pipe.eval(_PREPARE_PART_LUA, 2, keys.history_acc(spec.set),
                          keys.history_open(spec.set), mark, *names)  # fmt: skip
        if not reply:  # the hour or the day turned: seal at the end
            raise PartDeferred(f"set {spec.set}: history seals a period")
        entries = {k: LiveEntry.loads(v) for k, v in zip(names, reply[0], strict=True) if v}
        prepared = self._prepared(spec.set, now, entries, _found(names, reply[1]), results)
        if any(e.hour.period < prepared.hour or e.day.period < prepared.day
               for e in entries.values()):  # fmt: skip
            raise PartDeferred(f"set {spec.set}: an accumulator is of an earlier period")
        return prepared

    def _prepared(
        self, name: str, now: float, entries: dict[str, LiveEntry], open_raw: Mapping[str, str],
        results: Sequence[Mapping[str, Any]],
    ) -> Prepared:  # fmt: skip
        open_incidents = {k: Incident.from_dict(orjson.loads(v)) for k, v in open_raw.items()}
        # Time never runs backwards for a set: a worker whose clock is behind adds to
        # the newest period rather than reopening a sealed one.
        hour = max([int(now // HOUR_S), *(e.hour.period for e in entries.values())])
        day = max([int(now // DAY_S), *(e.day.period for e in entries.values())])
        prepared = Prepared(name, hour, day, entries, open_incidents, group_results(results))
        prepared.cutoff = now - self.settings.retention
        return prepared

    def _read(self, pipe: Any, name: str, now: float, mark: str) -> list[Any]:
        cutoff = now - self.settings.retention
        recent_cutoff = max((int(now // HOUR_S) - keys.HISTORY_FULL_HOURS) * HOUR_S, cutoff)
        return cast(
            list[Any],
            pipe.eval(
                _PREPARE_LUA,
                7,
                keys.history_acc(name),
                keys.history_open(name),
                keys.history_roster(name),
                keys.history_periods(name),
                keys.history_incident_starts(name),
                keys.history_incidents(name),
                keys.history_recent(name),
                mark,
                cutoff,
                recent_cutoff,
            ),
        )

    def _seal_reads(self, prepared: Prepared, replies: Sequence[Any]) -> None:
        roster, periods, candidates, values, recent = replies
        prepared.roster = {k: int(v) for k, v in _pairs(roster).items()}
        prepared.expired_periods = list(periods)
        prepared.expired_recent = [int(hour) for hour in recent]
        for incident_id, value in zip(candidates, values, strict=True):
            ended = orjson.loads(value).get("ended_at") if value else 0.0
            if ended is not None and ended < prepared.cutoff:
                prepared.expired_incidents.append(incident_id)

    # --- writes, queued in the MULTI ------------------------------------------------------
    def write(
        self,
        pipe: Any,
        prepared: Prepared,
        *,
        spec: RunSpec,
        states: Mapping[str, TargetState],
        verdicts: Mapping[str, TargetVerdict],
        transitions: Sequence[Transition],
        now: float,
    ) -> None:
        sealed_hours, sealed_days = self._roll_over(prepared)
        changed = set(sealed_hours_keys(sealed_hours)) | set(sealed_hours_keys(sealed_days))
        raw_cutoff = max(0, int((now - self.settings.raw_retention) * 1000))
        appends: list[tuple[str, int, dict[str, bytes]]] = []
        for key, verdict in verdicts.items():
            entry = prepared.entries.setdefault(
                key, LiveEntry(Acc(prepared.hour), Acc(prepared.day))
            )
            entry.last_ms = max(int(now * 1000), entry.last_ms + 1)
            sample, latency = sample_of(
                verdict, states[key], prepared.results.get(key, {}), entry.last_ms / 1000
            )
            entry.hour.add(sample.state, latency)
            entry.day.add(sample.state, latency)
            appends.append((keys.history_raw(spec.set, key), entry.last_ms, raw.encode(sample)))
            changed.add(key)
        _append_raw(pipe, appends, raw_cutoff)
        self._write_entries(pipe, prepared, spec, changed)
        self._write_incidents(pipe, prepared.set, prepared.open, transitions)
        if prepared.sealing:
            self._write_seal(pipe, prepared, spec=spec, hours=sealed_hours, days=sealed_days)

    @staticmethod
    def _roll_over(prepared: Prepared) -> tuple[Sealed, Sealed]:
        """Take every accumulator of a finished hour or day out of the live entries."""
        hours: Sealed = defaultdict(dict)
        days: Sealed = defaultdict(dict)
        for key, entry in prepared.entries.items():
            if entry.hour.period < prepared.hour:
                hours[entry.hour.period][key] = entry.hour
                entry.hour = Acc(prepared.hour)
            if entry.day.period < prepared.day:
                days[entry.day.period][key] = entry.day
                entry.day = Acc(prepared.day)
        return hours, days

    @staticmethod
    def _write_entries(pipe: Any, prepared: Prepared, spec: RunSpec, changed: set[str]) -> None:
        acc_key = keys.history_acc(prepared.set)
        empty = [
            k
            for k in changed
            if k not in spec.names
            and not prepared.entries[k].hour.runs
            and not prepared.entries[k].day.runs
        ]
        mapping: dict[str, bytes | str] = {
            k: prepared.entries[k].dumps() for k in changed if k not in empty
        }
        mapping[PERIOD_FIELD] = f"{prepared.hour}:{prepared.day}"
        pipe.hset(acc_key, mapping=mapping)
        if empty:
            pipe.hdel(acc_key, *empty)

    # --- a set that records no history (``history: false``) ------------------------------
    def prepare_paused(self, pipe: Any, spec: RunSpec) -> dict[str, Incident]:
        """Its open incidents, under the WATCH: one that was open when the set's history
        was switched off still ends when its target recovers (it stayed "ongoing" on the
        status page), and no new one opens."""
        names = list(spec.names)  # the run's (or batch's) targets, not the whole set's
        found = _found(names, pipe.hmget(keys.history_open(spec.set), names) if names else [])
        return {k: Incident.from_dict(orjson.loads(v)) for k, v in found.items()}

    def write_paused(
        self, pipe: Any, prepared: dict[str, Incident], *, spec: RunSpec,
        transitions: Sequence[Transition],
    ) -> None:  # fmt: skip
        followed = [change for change in transitions if change.target in prepared]
        self._write_incidents(pipe, spec.set, prepared, followed)

    @staticmethod
    def _write_incidents(
        pipe: Any, name: str, open_incidents: dict[str, Incident],
        transitions: Sequence[Transition],
    ) -> None:  # fmt: skip
        for change in transitions:
            incident = follow(open_incidents.get(change.target), change.to_dict())
            if incident is None:
                continue
            value = orjson.dumps(incident)
            pipe.hset(keys.history_incidents(name), incident.id, value)
            pipe.zadd(keys.history_incident_starts(name), {incident.id: incident.started_at})
            if incident.ended_at is None:
                pipe.hset(keys.history_open(name), change.target, value)
                open_incidents[change.target] = incident
            else:
                pipe.hdel(keys.history_open(name), change.target)
                open_incidents.pop(change.target, None)

    def _write_seal(
        self, pipe: Any, prepared: Prepared, *, spec: RunSpec, hours: Sealed, days: Sealed
    ) -> None:
        name = prepared.set
        roster = cast(dict[str, int], prepared.roster)
        fresh = {}
        for key in sorted({k for group in (*hours.values(), *days.values()) for k in group}):
            if key not in roster:
                roster[key] = fresh[key] = len(roster)
        if fresh:
            pipe.hset(keys.history_roster(name), mapping=fresh)
        order = sorted(roster, key=roster.__getitem__)
        ttl = int(self.settings.retention) + keys.HISTORY_BACKSTOP_S
        for period, accs in hours.items():
            queue_hour(
                pipe,
                name,
                period,
                [accs.get(k) for k in order],
                current_hour=prepared.hour,
                ttl=ttl,
            )
        for period, accs in days.items():
            queue_day(pipe, name, period, [accs.get(k) for k in order], ttl)
        self._trim(pipe, prepared)
        for key in (
            keys.history_acc(name),
            keys.history_roster(name),
            keys.history_open(name),
            keys.history_incidents(name),
            keys.history_incident_starts(name),
            keys.history_periods(name),
            keys.history_recent(name),
        ):
            pipe.expire(key, ttl)
        raw_ttl = int(self.settings.raw_retention) + keys.HISTORY_BACKSTOP_S
        for key in spec.names:
            pipe.expire(keys.history_raw(name, key), raw_ttl)

    @staticmethod
    def _trim(pipe: Any, prepared: Prepared) -> None:
        name = prepared.set
        for member in prepared.expired_periods:
            period = int(member[1:])
            pipe.delete(
                keys.history_hour(name, period)
                if member.startswith("h")
                else keys.history_day(name, period)
            )
        if prepared.expired_periods:
            pipe.zrem(keys.history_periods(name), *prepared.expired_periods)
        if prepared.expired_incidents:
            pipe.hdel(keys.history_incidents(name), *prepared.expired_incidents)
            pipe.zrem(keys.history_incident_starts(name), *prepared.expired_incidents)
        if prepared.expired_recent:
            pipe.delete(*(keys.history_hour_hist(name, h) for h in prepared.expired_recent))
            pipe.zrem(keys.history_recent(name), *prepared.expired_recent)


def queue_hour(
    pipe: Any, name: str, period: int, records: list[Acc | None], *, current_hour: int, ttl: int
) -> None:
    """Queue one sealed hour: its summary blob for the retention, and, while the hour
    can be in a 24 h window, its histogram blob (``hour-hist``, :mod:`.rollup`)."""
    pipe.set(keys.history_hour(name, period), encode_blob(records, summary=True), ex=ttl)
    pipe.zadd(keys.history_periods(name), {f"h{period}": (period + 1) * HOUR_S})
    if period >= current_hour - keys.HISTORY_FULL_HOURS:
        recent_ttl = keys.HISTORY_FULL_HOURS * HOUR_S + keys.HISTORY_BACKSTOP_S
        pipe.set(keys.history_hour_hist(name, period), encode_blob(records), ex=recent_ttl)
        pipe.zadd(keys.history_recent(name), {str(period): (period + 1) * HOUR_S})


def queue_day(pipe: Any, name: str, period: int, records: list[Acc | None], ttl: int) -> None:
    """Queue one sealed day: its full blob (histograms: 7-90 day windows merge days)."""
    pipe.set(keys.history_day(name, period), encode_blob(records), ex=ttl)
    pipe.zadd(keys.history_periods(name), {f"d{period}": (period + 1) * DAY_S})


PERIOD_FIELD = "@period"
"""Field of the acc hash: ``<hour>:<day>`` of the live accumulators (a target key always
holds a ``|``). :data:`_PREPARE_LUA` reads what sealing needs only when it differs."""

# Everything the recorder reads under the monitor's WATCH in one round trip (one EVAL;
# EVAL, not EVALSHA: no NOSCRIPT to handle). ARGV: the mark of the current hour and day,
# the retention cutoff, the ``hour-hist`` cutoff.
_PREPARE_LUA = """
local acc = redis.call('HGETALL', KEYS[1])
local open = redis.call('HGETALL', KEYS[2])
if redis.call('HGET', KEYS[1], '@period') == ARGV[1] then
  return {acc, open}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[2])
local values = {}
for i, id in ipairs(ids) do
  values[i] = redis.call('HGET', KEYS[6], id)
end
return {acc, open, redis.call('HGETALL', KEYS[3]),
        redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[2]), ids, values,
        redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', ARGV[3])}
"""


# One batch of a run: the batch's accumulators (ARGV[2..]) and its targets' open
# incidents (not the set's: in an outage every target has one), or an
# empty reply when the set's live period is not ARGV[1] (sealing is the run end's job);
# a set with no accumulators yet has nothing to seal.
_PREPARE_PART_LUA = """
local mark = redis.call('HGET', KEYS[1], '@period')
if mark ~= ARGV[1] and (mark or redis.call('EXISTS', KEYS[1]) == 1) then
  return {}
end
local values, open = {}, {}
for i = 2, #ARGV, 1000 do
  local last = math.min(i + 999, #ARGV)
  local got = redis.call('HMGET', KEYS[1], unpack(ARGV, i, last))
  local incidents = redis.call('HMGET', KEYS[2], unpack(ARGV, i, last))
  for j = 1, #got do
    values[#values + 1] = got[j]
    open[#open + 1] = incidents[j]
  end
end
return {values, open}
"""


def _found(names: Sequence[str], values: Sequence[Any]) -> dict[str, str]:
    """An HMGET reply as a dict of the fields that exist."""
    return {k: v for k, v in zip(names, values, strict=True) if v}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A HGETALL reply from a script (a flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


# One EVAL for a run's raw entries instead of one XADD each: with 1,000 targets redis-py
# spent more time packing 1,000 commands than the rest of the history write. EVAL (the
# script's text, cached by Redis) rather than EVALSHA: inside the monitor's MULTI a
# NOSCRIPT would fail this command alone and leave the run half recorded.
_APPEND_LUA = """
local minid = ARGV[1]
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 3
  if ARGV[at + 2] == '' then
    redis.call('XADD', key, 'MINID', '=', minid, ARGV[at], 'v', ARGV[at + 1])
  else
    redis.call('XADD', key, 'MINID', '=', minid, ARGV[at], 'v', ARGV[at + 1], 'l', ARGV[at + 2])
  end
end
return #KEYS
"""


def _append_raw(
    pipe: Any, appends: Sequence[tuple[str, int, dict[str, bytes]]], minid: int
) -> None:
    """Queue the raw entries of one run: XADD key MINID = minid <ms>-0 v ... [l ...]."""
    if not appends:
        return
    args: list[Any] = [minid]
    for _, ms, fields in appends:
        args += [f"{ms}-0", fields["v"], fields.get("l", b"")]
    pipe.eval(_APPEND_LUA, len(appends), *(key for key, _, _ in appends), *args)


def sealed_hours_keys(groups: Sealed) -> list[str]:
    return [key for group in groups.values() for key in group]
