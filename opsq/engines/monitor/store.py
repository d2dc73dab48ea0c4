"""Target state in Redis, applied exactly once per run; the outbox of notifications.

What is stored (every name is in :mod:`opsq.core.keys`):

- ``opsq:monitor:state:<set>`` hash, field ``name|url`` -> :class:`~.state.TargetState`
  JSON (``state``, ``since``, ``reason``, ``detail``, ``recent`` verdicts, ``last_run``,
  ``last_verdict``, per-location results of the last run, ``transition_id``).
- ``opsq:monitor:transitions:<set>`` stream, one entry per transition, fields ``id``,
  ``target`` (``name|url``), ``name``, ``url``, ``from``, ``to``, ``at`` (epoch s),
  ``reason`` (category), ``detail``, ``run_id``, ``locations`` (JSON: location ->
  {verdict, reason, detail, duration_s, status_code}). Trimmed by time (MINID).
- ``opsq:monitor:verdicts`` stream, one entry per applied batch or run end: ``set``,
  ``run_id``, ``part``, ``at``, ``verdicts`` (JSON: ``name|url`` -> [verdict, reason,
  {location: verdict}]) of the targets it applied.
- ``opsq:monitor:firing:<set>`` hash ``name|url|notifier`` -> firing entry while a
  target is down or degraded (:mod:`.alerting`).
- While a run is open: its spec, the spec's head (no target names) and
  ``opsq:monitor:parts:<run>``, the set of targets the run has applied.

**Exactly once, batch by batch.** :meth:`MonitorStore.apply_part` applies one batch
as soon as its worker recorded it (:func:`.setrun.finish_part`);
:meth:`MonitorStore.apply` applies what is left at the run's end (or deadline) and
closes the run. Both read, under ``WATCH``, the run's applied set and the states of
the targets not in it, compute their transitions in Python (:mod:`.state`, pure) and
write, in one ``MULTI``: the states, the transitions, a verdicts entry, the firing
entries, the notification jobs (outbox), the targets added to the applied set, and,
at the end, the marker ``opsq:monitor:applied:<run>``. A second finisher (a
redelivered batch, two workers completing at once, the tick at the deadline) finds
its targets applied or the marker set, or loses the WATCH race, retries and then
does. So a run moves each target's state once - even a run overtaken by a newer one,
which :func:`.state.advance` then leaves alone - and a crash before EXEC leaves the
targets for the next finisher.

**Outbox.** Jobs are written with the state change (one outbox per batch, and the
run's own), sent as Celery tasks afterwards, and removed once sent (only what was
read: a second copy of a batch may have appended meanwhile); a crash in between
leaves them for the tick. A job sent twice is harmless: delivery is keyed
(:mod:`.delivery`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
import redis

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.probes import DEFAULT_LOCATION
from opsq.core.errors import TemporaryError
from opsq.core.redis_errors import redis_errors
from opsq.engines.monitor import alerting
from opsq.engines.monitor.maintenance import active_window
from opsq.engines.monitor.spec import RunSpec
from opsq.engines.monitor.state import TargetState, Transition, advance
from opsq.engines.monitor.verdict import LocationResult, TargetVerdict, combine, judge_result

log = logging.getLogger(__name__)
WATCH_ATTEMPTS = 20
"""Optimistic transactions retried this often when another writer touched the same set."""
OUTBOX_STALE_S = 30.0
"""The tick sends outboxes older than this (a finisher died before sending them)."""


@dataclass
class _Firing:
    """The firing entries of a set while a run is applied, and the changes to write."""

    current: dict[str, alerting.FiringEntry]
    writes: dict[str, alerting.FiringEntry | None] = field(default_factory=dict)


@dataclass
class ApplyOutcome:
    applied: bool
    transitions: list[Transition] = field(default_factory=list)
    jobs: list[alerting.Job] = field(default_factory=list)
    verdicts: dict[str, TargetVerdict] = field(default_factory=dict)
    silenced: int = 0
    """Transitions a maintenance window kept from being notified."""
    superseded: list[str] = field(default_factory=list)
    """Ids of the transitions this run's transitions replaced (see keys.notify_over)."""


def verdicts_of(spec: RunSpec, results: Iterable[Mapping[str, Any]]) -> dict[str, TargetVerdict]:
    """Every target's verdict from a run's stored results (absent locations: missing)."""
    per_target: dict[str, dict[str, LocationResult]] = {}
    lines = None if spec.overrides else spec.defaults.lines  # None: per target
    for result in results:
        key = f"{result.get('name')}|{result.get('url')}"
        location = str(result.get("location") or DEFAULT_LOCATION)
        judged = judge_result(result, lines or spec.target(key).lines)
        found = per_target.get(key)
        if found is None:
            per_target[key] = {location: judged}
        else:
            found[location] = judged
    none: dict[str, LocationResult] = {}
    locations, quorum = spec.locations, spec.quorum
    return {key: combine(per_target.get(key, none), locations, quorum) for key in spec.names}


class PartDeferred(Exception):
    """Raised by a participant's ``prepare`` for a batch it cannot take alone (history
    seals an hour over every target of the set): the run's end applies the batch."""


class Participant(Protocol):
    """Writes more in the transaction that applies a run (history, :mod:`opsq.engines.history`):
    reads its *watch_keys* under the same WATCH in :meth:`prepare`, queues its writes in
    the same MULTI in :meth:`write`, so it sees each run exactly once too."""

    def watch_keys(self, set_name: str) -> tuple[str, ...]: ...

    def records(self, spec: RunSpec) -> bool:
        """Whether the run is recorded (``prepare``/``write``) or paused (``*_paused``)."""

    def prepare(
        self, pipe: Any, spec: RunSpec, results: Sequence[Mapping[str, Any]], now: float, *,
        whole: bool = True,
    ) -> Any: ...  # fmt: skip

    def write(
        self, pipe: Any, prepared: Any, *, spec: RunSpec, states: Mapping[str, TargetState],
        verdicts: Mapping[str, TargetVerdict], transitions: Sequence[Transition], now: float,
    ) -> None: ...  # fmt: skip

    def prepare_paused(self, pipe: Any, spec: RunSpec) -> Any:
        """For a set that records no history (``history: false``), under the WATCH."""

    def write_paused(
        self, pipe: Any, prepared: Any, *, spec: RunSpec, transitions: Sequence[Transition]
    ) -> None:
        """For a set that records no history, in the MULTI."""


class MonitorStore:
    """Synchronous access: the Celery adapters and the CLI each hold one."""

    def __init__(
        self, client: redis.Redis[str], alerts: AlertsSettings,
        participant: Participant | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.alerts = alerts
        self.participant = participant

    # --- runs ---------------------------------------------------------------------------
    @redis_errors("register a set run for monitoring")
    def register(self, run_id: str, spec: RunSpec) -> None:
        """Before the first batch is sent: the spec, and the run among the open ones."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(keys.monitor_spec(run_id), spec.dumps(), ex=keys.RUN_TTL_S)
        pipe.set(keys.monitor_spec_head(run_id), spec.dumps_head(), ex=keys.RUN_TTL_S)
        if spec.overrides:
            overrides = cast(dict[str | bytes, Any], spec.dumps_overrides())
            pipe.hset(keys.monitor_spec_over(run_id), mapping=overrides)
            pipe.expire(keys.monitor_spec_over(run_id), keys.RUN_TTL_S)
        pipe.zadd(keys.MONITOR_OPEN_RUNS, {run_id: spec.deadline_at})
        pipe.sadd(keys.MONITOR_SETS, spec.set)
        pipe.execute()

    @redis_errors("read a run's monitoring spec")
    def spec(self, run_id: str) -> RunSpec | None:
        raw = self.client.get(keys.monitor_spec(run_id))
        return RunSpec.loads(raw) if raw is not None else None

    @redis_errors("read a run's monitoring spec")
    def head(self, run_id: str) -> RunSpec | None:
        """The spec without target names (:meth:`apply_part` adds a batch's); None when
        the run is no set run, or applied already."""
        raw = self.client.get(keys.monitor_spec_head(run_id))
        return RunSpec.loads(raw) if raw is not None else None

    @redis_errors("read a batch's monitoring spec")
    def batch_spec(self, run_id: str, head: RunSpec, names: dict[str, tuple[str, str]]) -> RunSpec:
        """*head* over one batch's targets, with their own overrides (only theirs)."""
        found: dict[str, str] = {}
        if head.overridden and names:
            wanted = list(names)
            values = self.client.hmget(keys.monitor_spec_over(run_id), wanted)
            found = {k: v for k, v in zip(wanted, values, strict=True) if v}
        return head.for_batch(names, found)

    @redis_errors("count a run's targets applied batch by batch")
    def parts_done(self, run_id: str) -> int:
        return int(self.client.scard(keys.monitor_parts(run_id)))

    @redis_errors("list set runs past their deadline")
    def overdue(self, now: float, limit: int = 100) -> list[str]:
        return list(self.client.zrangebyscore(keys.MONITOR_OPEN_RUNS, "-inf", now, 0, limit))

    def apply(
        self, run_id: str, spec: RunSpec, results: Sequence[Mapping[str, Any]], *, now: float
    ) -> ApplyOutcome:
        """Apply the run's verdicts to the set's states, once (see the module docstring),
        and close the run. Targets a batch of the run applied already are left alone;
        when every target was, the results are not judged at all."""
        with _gc_paused():
            return self._apply(run_id, spec, results, now, part=None)

    def apply_part(
        self, run_id: str, part: str, spec: RunSpec, results: Sequence[Mapping[str, Any]], *,
        now: float,
    ) -> ApplyOutcome:  # fmt: skip
        """Apply one batch of a run as soon as its results are in (*spec*: the run's head
        over the batch's targets, *part*: names the batch). Each target is applied once:
        the batch adds its targets to the run's applied set, so a second copy of it, and
        the run's end, leave them alone. Not applied (the run's end applies these
        targets) when the run is closed, or a participant needs the whole run."""
        with _gc_paused():
            return self._apply(run_id, spec, results, now, part=part)

    def _apply(
        self, run_id: str, spec: RunSpec, results: Sequence[Mapping[str, Any]], now: float,
        part: str | None,
    ) -> ApplyOutcome:  # fmt: skip
        judged: list[dict[str, TargetVerdict]] = []

        def judge() -> dict[str, TargetVerdict]:  # once, and only when needed
            if not judged:
                judged.append(verdicts_of(spec, results))
            return judged[0]

        with redis_errors(f"apply run {run_id} to the state of set {spec.set}"):
            for _ in range(WATCH_ATTEMPTS):
                try:
                    return self._apply_once(run_id, spec, judge, results, now=now, part=part)
                except redis.WatchError:
                    continue
        if part is not None:  # many workers applying batches of one set: the end does it
            log.warning("run %s, batch %s: state of set %s kept changing; left to the "
                        "run's end", run_id, part, spec.set)  # fmt: skip
            return ApplyOutcome(applied=False)
        # Temporary: the run's task retries (no other delivery would close the run).
        raise TemporaryError(f"run {run_id}: state of set {spec.set} kept changing; "
                             "retrying later")  # fmt: skip

    def _apply_once(
        self, run_id: str, spec: RunSpec, judge: Callable[[], dict[str, TargetVerdict]],
        results: Sequence[Mapping[str, Any]], *, now: float, part: str | None,
    ) -> ApplyOutcome:  # fmt: skip
        state_key, parts_key = keys.monitor_state(spec.set), keys.monitor_parts(run_id)
        extra = self.participant.watch_keys(spec.set) if self.participant else ()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.monitor_applied(run_id), parts_key, state_key,
                       keys.monitor_firing(spec.set), *extra)  # fmt: skip
            todo = self._todo(pipe, run_id, spec, judge, part)
            if todo is None:
                pipe.unwatch()
                return ApplyOutcome(applied=False)
            try:
                joined = (self._prepare_participant(pipe, spec, results, now=now, part=part)
                          if todo else None)  # fmt: skip
            except PartDeferred:
                pipe.unwatch()
                return ApplyOutcome(applied=False)
            states = self._load_states(pipe, state_key, spec, todo)
            outcome = self._advance(run_id, spec, states, todo, now)
            firing = self._firing(pipe, spec, outcome.transitions)
            for change in outcome.transitions:
                outcome.silenced += self._plan(spec, change, firing, outcome.jobs, now=now)
            pipe.multi()
            self._write(pipe, run_id, spec, states=states, outcome=outcome,
                        firing_writes=firing.writes, now=now, part=part)  # fmt: skip
            if part is None:
                self._close_run(pipe, run_id, now)
            else:
                pipe.sadd(parts_key, *todo)
                pipe.expire(parts_key, keys.RUN_TTL_S)
            if todo and self.participant is not None:
                self._write_participant(pipe, joined, spec, states, outcome, now=now)
            pipe.execute()
        return outcome

    @staticmethod
    def _todo(
        pipe: Any, run_id: str, spec: RunSpec, judge: Callable[[], dict[str, TargetVerdict]],
        part: str | None,
    ) -> dict[str, TargetVerdict] | None:  # fmt: skip
        """The verdicts of the targets this run has not applied yet (read under the
        WATCH): empty when the run's end has only to close the run; None when there is
        nothing to do (the run is closed, or this batch was applied)."""
        if pipe.exists(keys.monitor_applied(run_id)):
            return None
        parts_key = keys.monitor_parts(run_id)
        if part is None and _count(pipe.scard(parts_key)) >= spec.size > 0:
            return {}  # every target was applied batch by batch: nothing is judged
        verdicts = judge()
        names = list(verdicts)
        done = pipe.smismember(parts_key, names) if names else []
        todo = {k: verdicts[k] for k, seen in zip(names, done, strict=True) if not seen}
        return None if part is not None and not todo else todo

    def _prepare_participant(
        self, pipe: Any, spec: RunSpec, results: Sequence[Mapping[str, Any]], *, now: float,
        part: str | None,
    ) -> Any:  # fmt: skip
        if self.participant is None:
            return None
        if not self.participant.records(spec):  # no history: only open incidents end
            return self.participant.prepare_paused(pipe, spec)
        return self.participant.prepare(pipe, spec, results, now, whole=part is None)

    def _write_participant(
        self, pipe: Any, joined: Any, spec: RunSpec, states: Mapping[str, TargetState],
        outcome: ApplyOutcome, *, now: float,
    ) -> None:  # fmt: skip
        assert self.participant is not None
        if not self.participant.records(spec):
            self.participant.write_paused(pipe, joined, spec=spec,
                                          transitions=outcome.transitions)  # fmt: skip
            return
        self.participant.write(pipe, joined, spec=spec, states=states, verdicts=outcome.verdicts,
                               transitions=outcome.transitions, now=now)  # fmt: skip

    @staticmethod
    def _advance(
        run_id: str, spec: RunSpec, states: dict[str, TargetState],
        verdicts: dict[str, TargetVerdict], now: float,
    ) -> ApplyOutcome:  # fmt: skip
        """Every target's new state (in *states*) and the run's transitions (pure)."""
        outcome = ApplyOutcome(applied=True, verdicts=verdicts)
        shared = None if spec.overrides else spec.defaults.thresholds  # None: per target
        for key, verdict in verdicts.items():
            previous = states[key].transition_id
            state, change = advance(
                states[key], verdict, shared or spec.target(key).thresholds, set_name=spec.set,
                target_key=key, run_id=run_id, run_at=spec.created_at, now=now,
            )  # fmt: skip
            states[key] = state
            if change is not None:
                outcome.transitions.append(change)
                outcome.superseded += [previous] if previous else []
        return outcome

    @staticmethod
    def _firing(pipe: Any, spec: RunSpec, changes: Sequence[Transition]) -> _Firing:
        """The firing entries of the targets that changed (read under the WATCH)."""
        fields = [f"{c.target}|{n}" for c in changes for n in spec.target(c.target).notify]
        if not fields:
            return _Firing({})
        raw = pipe.hmget(keys.monitor_firing(spec.set), fields)
        found = {name: value for name, value in zip(fields, raw, strict=True) if value}
        return _Firing({k: alerting.FiringEntry.from_dict(orjson.loads(v))
                        for k, v in found.items()})  # fmt: skip

    @staticmethod
    def _load_states(
        pipe: Any, state_key: str, spec: RunSpec, todo: Mapping[str, Any]
    ) -> dict[str, TargetState]:
        """The stored states of the targets in *todo* (a new target: ``unknown``)."""
        names = list(todo)
        raw = pipe.hmget(state_key, names) if names else []
        states = {}
        for key, value in zip(names, raw, strict=True):
            name, url = spec.names[key]
            states[key] = (TargetState.from_dict(orjson.loads(value)) if value is not None
                           else TargetState(name=name, url=url))  # fmt: skip
        return states

    def _plan(
        self, spec: RunSpec, change: Transition, firing: _Firing, jobs: list[alerting.Job], *,
        now: float,
    ) -> bool:  # fmt: skip
        """Plan the notifications of one transition; True when a window silenced it."""
        window = active_window(self.alerts.maintenance, spec.set, change.name, now)
        if window is not None:
            log.info(
                "%s/%s: %s -> %s during maintenance window %s: not notified",
                spec.set,
                change.name,
                change.from_state,
                change.to_state,
                window.name,
            )
        for notifier in spec.target(change.target).notify:
            config = self.alerts.notifiers.get(notifier)
            if config is None:
                log.error("%s/%s: notifier %r is not configured; transition not sent",
                          spec.set, change.name, notifier)  # fmt: skip
                continue
            field_name = f"{change.target}|{notifier}"
            new_jobs, entry = alerting.on_transition(
                change.to_dict(), notifier, config, firing.current.get(field_name),
                silenced=window is not None, now=now,
            )  # fmt: skip
            jobs.extend(new_jobs)
            firing.writes[field_name] = entry
        return window is not None

    def _write(
        self, pipe: Any, run_id: str, spec: RunSpec, *, states: dict[str, TargetState],
        outcome: ApplyOutcome, firing_writes: dict[str, alerting.FiringEntry | None],
        now: float, part: str | None,
    ) -> None:  # fmt: skip
        if states:
            pipe.hset(
                keys.monitor_state(spec.set),
                mapping={k: orjson.dumps(s) for k, s in states.items()},
            )
        stream = keys.monitor_transitions(spec.set)
        for change in outcome.transitions:
            pipe.xadd(stream, _transition_fields(change))
        for old in outcome.superseded:
            pipe.set(keys.notify_over(old), now, ex=keys.NOTIFY_DONE_TTL_S)
        if outcome.transitions:
            pipe.xtrim(stream, minid=_minid(now, self.alerts.transition_retention),
                       approximate=True)  # fmt: skip
        if outcome.verdicts:
            pipe.xadd(keys.MONITOR_VERDICTS, {
                "set": spec.set, "run_id": run_id, "at": now, "part": part or "",
                "verdicts": orjson.dumps({k: [v.verdict, v.reason, {loc: r.verdict for loc, r
                                              in v.locations.items()}]
                                          for k, v in outcome.verdicts.items()}),
            })  # fmt: skip
            pipe.xtrim(keys.MONITOR_VERDICTS, approximate=True,
                       minid=_minid(now, keys.MONITOR_VERDICTS_RETENTION_S))  # fmt: skip
        firing_key = keys.monitor_firing(spec.set)
        for name, entry in firing_writes.items():
            if entry is None:
                pipe.hdel(firing_key, name)
            else:
                pipe.hset(firing_key, name, orjson.dumps(entry))
        self._queue_jobs(pipe, part or run_id, outcome.jobs, now)

    @staticmethod
    def _close_run(pipe: Any, run_id: str, now: float) -> None:
        """The run is applied: its marker; the spec is needed no more, and kept for
        RUN_TTL_S it was the largest thing a beat run left in Redis (94 KB per
        1,000-target run, ~1.9 GB a week at one run per 30 s). A late finisher finds
        no spec and returns; the tick flushes an outbox a crash left behind."""
        pipe.set(keys.monitor_applied(run_id), now, ex=keys.RUN_TTL_S)
        pipe.delete(keys.monitor_spec(run_id), keys.monitor_spec_head(run_id),
                    keys.monitor_spec_over(run_id), keys.monitor_parts(run_id))  # fmt: skip
        pipe.zrem(keys.MONITOR_OPEN_RUNS, run_id)

    @staticmethod
    def _queue_jobs(pipe: Any, owner: str, jobs: Sequence[alerting.Job], now: float) -> None:
        if jobs:
            pipe.rpush(keys.monitor_outbox(owner), *(orjson.dumps(j.to_dict()) for j in jobs))
            pipe.expire(keys.monitor_outbox(owner), keys.RUN_TTL_S)
            pipe.zadd(keys.MONITOR_OUTBOXES, {owner: now})

    # --- reminders, re-posts, notifications after a window ------------------------------
    def tick(self, now: float) -> list[str]:
        """Queue what :func:`.alerting.on_tick` finds due; returns the outbox owners."""
        owners = []
        for set_name in self.sets():
            with redis_errors(f"check firing alerts of set {set_name}"):
                for _ in range(WATCH_ATTEMPTS):
                    try:
                        owner = self._tick_set(set_name, now)
                        break
                    except redis.WatchError:
                        continue
                else:
                    log.warning("set %s: firing alerts kept changing; next tick", set_name)
                    owner = None
            if owner is not None:
                owners.append(owner)
        return owners

    def _tick_set(self, set_name: str, now: float) -> str | None:
        firing_key = keys.monitor_firing(set_name)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(firing_key)
            entries = cast(dict[str, str], pipe.hgetall(firing_key))
            jobs: list[alerting.Job] = []
            updates: dict[str | bytes, bytes | float | int | str] = {}
            for field_name, raw in entries.items():
                target_key, _, notifier = field_name.rpartition("|")
                config = self.alerts.notifiers.get(notifier)
                if config is None:
                    continue
                entry = alerting.FiringEntry.from_dict(orjson.loads(raw))
                name = str(entry.transition.get("name", target_key))
                silenced = active_window(self.alerts.maintenance, set_name, name, now)
                due = alerting.on_tick(entry, notifier, config, silenced=silenced is not None,
                                       now=now)  # fmt: skip
                if due:
                    jobs.extend(due)
                    updates[field_name] = orjson.dumps(entry)
            if not jobs:
                pipe.unwatch()
                return None
            owner = f"tick:{set_name}:{int(now * 1000)}"
            pipe.multi()
            pipe.hset(firing_key, mapping=updates)
            self._queue_jobs(pipe, owner, jobs, now)
            pipe.execute()
        return owner

    # --- outbox -------------------------------------------------------------------------
    @redis_errors("read a notification outbox")
    def outbox(self, owner: str) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self.client.lrange(keys.monitor_outbox(owner), 0, -1)]

    @redis_errors("clear a notification outbox")
    def clear_outbox(self, owner: str, sent: int) -> None:
        """Remove the first *sent* jobs (what :meth:`outbox` returned and was sent); the
        outbox goes when nothing is left. A job appended meanwhile (a second copy of a
        batch applying into the same outbox) stays for its own sender or the tick."""
        self._clear(keys=[keys.monitor_outbox(owner), keys.MONITOR_OUTBOXES], args=[sent, owner])

    @property
    def _clear(self) -> Any:
        return self.client.register_script(_CLEAR_OUTBOX_LUA)

    @redis_errors("list a run's notification outboxes")
    def outboxes_of(self, run_id: str) -> list[str]:
        """The outboxes of a run not sent yet: its own and its batches' (``<run>#...``)."""
        owners = self.client.zrange(keys.MONITOR_OUTBOXES, 0, -1)
        return [o for o in owners if o == run_id or o.startswith(f"{run_id}#")]

    @redis_errors("list notification outboxes left behind")
    def stale_outboxes(self, now: float) -> list[str]:
        return list(self.client.zrangebyscore(keys.MONITOR_OUTBOXES, "-inf", now - OUTBOX_STALE_S))

    # --- status -------------------------------------------------------------------------
    @redis_errors("list the sets with target state")
    def sets(self) -> list[str]:
        return sorted(self.client.smembers(keys.MONITOR_SETS))

    @redis_errors("read target states")
    def states(self, set_names: Sequence[str]) -> dict[str, list[TargetState]]:
        pipe = self.client.pipeline(transaction=False)
        for name in set_names:
            pipe.hgetall(keys.monitor_state(name))
        found = {}
        for name, raw in zip(set_names, pipe.execute(), strict=True):
            found[name] = sorted((TargetState.from_dict(orjson.loads(v)) for v in raw.values()),
                                 key=lambda s: (s.name, s.url))  # fmt: skip
        return found

    @redis_errors("read transitions")
    def transitions(self, set_name: str, count: int = 100) -> list[dict[str, str]]:
        """The set's latest transitions, newest first (stream fields, strings)."""
        return [fields for _, fields in self.client.xrevrange(
            keys.monitor_transitions(set_name), count=count)]  # fmt: skip


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off while a run is applied. Applying allocates ~10 containers per
    target, none of them in a cycle, so a 3,000-target run set off a full collection of
    the worker's heap in about one apply of three (+60 ms measured, half the apply);
    what is left is collected when it is switched back on."""
    if not gc.isenabled():  # a caller paused it already: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _transition_fields(change: Transition) -> dict[str, str | float]:
    return {
        "id": change.id, "target": change.target, "name": change.name, "url": change.url,
        "from": change.from_state, "to": change.to_state, "at": change.at,
        "reason": change.reason, "detail": change.detail or "", "run_id": change.run_id,
        "locations": orjson.dumps(change.locations).decode(),
    }  # fmt: skip


_CLEAR_OUTBOX_LUA = """
redis.call('LTRIM', KEYS[1], ARGV[1], -1)
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""


def _count(value: Any) -> int:
    """A counter as read through a pipeline under WATCH (None: not set)."""
    return int(value or 0)


def _minid(now: float, retention: float) -> int:
    """The oldest stream id to keep: entry ids are millisecond timestamps (XADD ``*``)."""
    return max(0, int((now - retention) * 1000))
