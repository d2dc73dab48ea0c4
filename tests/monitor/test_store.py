"""Applying set runs to target state in a real Redis: exactly once, in the documented shape."""

from __future__ import annotations

import gc
import threading
from typing import Any

import orjson
import pytest
import redis

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.history import HistorySettings
from opsq.core.config.probes import ProbeSet, Target
from opsq.core.errors import TemporaryError
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.setrun import finish_part
from opsq.engines.monitor.spec import RunSpec, build_spec
from opsq.engines.monitor.state import TargetState
from opsq.engines.monitor.store import MonitorStore

ALERTS = AlertsSettings.model_validate(
    {"notifiers": {"hook": {"kind": "webhook", "url": "http://127.0.0.1:1/h"}}}
)
TARGETS = [Target(name="api", url="http://api/"), Target(name="db", url="tcp://db:5432")]
SET = ProbeSet(targets=[t.model_dump(mode="json") for t in TARGETS], failure_threshold=1,
               success_threshold=1, notify=("hook",), locations=["a", "b", "c"])  # fmt: skip


def results(api_up_at: set[str], locations: tuple[str, ...] = ("a", "b", "c")) -> list[dict]:
    out = []
    for loc in locations:
        out.append(
            {
                "name": "api",
                "url": "http://api/",
                "location": loc,
                "up": loc in api_up_at,
                "error_kind": "connect",
                "error": "refused",
            }
        )
        out.append({"name": "db", "url": "tcp://db:5432", "location": loc, "up": True})
    return out  # fmt: skip


def test_concurrent_finishers_apply_a_run_once(redis_client: redis.Redis) -> None:
    """Eight threads finishing the same run at once: one applies, one transition each,
    one outbox entry per transition and notifier, and the applied marker is set."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("web", SET, TARGETS, created_at=100.0)
    store.register("r1", spec)
    outcomes = []
    barrier = threading.Barrier(8)

    def finish() -> None:
        barrier.wait()
        outcomes.append(store.apply("r1", spec, results(api_up_at={"a"}), now=101.0))

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(o.applied for o in outcomes) == 1
    stream = redis_client.xrange(keys.monitor_transitions("web"))
    assert sorted(f["to"] for _, f in stream) == ["down", "up"]  # api down (2 of 3), db up
    jobs = store.outbox("r1")
    assert [(j["notifier"], j["message"]["event"]) for j in jobs] == [("hook", "firing")]
    assert redis_client.exists(keys.monitor_applied("r1"))
    assert redis_client.zscore(keys.MONITOR_OPEN_RUNS, "r1") is None
    # The spec goes with the apply (a week of them per set run was gigabytes under beat).
    assert not redis_client.exists(keys.monitor_spec("r1"))


def test_state_and_streams_have_the_documented_shape(redis_client: redis.Redis) -> None:
    """State hash per set, transition fields, and one verdicts entry per run with each
    location's verdict (a missing location reported as missing)."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("web", SET, TARGETS, created_at=100.0)
    store.apply("r1", spec, results(api_up_at=set(), locations=("a", "b")), now=101.0)
    state = orjson.loads(redis_client.hget(keys.monitor_state("web"), "api|http://api/"))
    assert (state["state"], state["reason"], state["since"]) == ("down", "connect", 101.0)
    assert state["locations"]["c"]["verdict"] == "missing"
    (_, fields), *_ = [t for t in redis_client.xrange(keys.monitor_transitions("web"))
                       if t[1]["name"] == "api"]  # fmt: skip
    assert {
        "id",
        "target",
        "name",
        "url",
        "from",
        "to",
        "at",
        "reason",
        "detail",
        "run_id",
        "locations",
    } <= set(fields)
    assert (fields["from"], fields["to"], fields["reason"]) == ("unknown", "down", "connect")
    ((_, entry),) = redis_client.xrange(keys.MONITOR_VERDICTS)
    verdicts = orjson.loads(entry["verdicts"])
    assert verdicts["api|http://api/"] == ["down", "connect", {"a": "down", "b": "down",
                                                               "c": "missing"}]  # fmt: skip


def test_a_run_without_quorum_changes_nothing(redis_client: redis.Redis) -> None:
    """One location of three answering (quorum 2): unknown, no transition, no alert."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("web", SET, TARGETS, created_at=100.0)
    outcome = store.apply("r1", spec, results(api_up_at=set(), locations=("a",)), now=101.0)
    assert outcome.applied
    assert outcome.transitions == []
    assert outcome.jobs == []
    assert {v.verdict for v in outcome.verdicts.values()} == {"unknown"}


def test_a_spec_keeps_only_targets_that_differ_and_survives_redis() -> None:
    """Targets that set nothing of their own share the set's spec; one that sets a
    threshold, a warning line or its own (even empty) notify list gets its own; the spec
    loads back equal from its stored form."""
    targets = [
        Target(name="plain", url="http://a/"),
        Target(name="slow", url="http://b/", expect={"degraded_latency": 0.5}),
        Target(name="quiet", url="http://c/", notify=[]),
        Target(name="strict", url="http://d/", failure_threshold=5),
    ]
    spec = build_spec("web", SET, targets, created_at=1.0)
    assert sorted(spec.overrides) == ["quiet|http://c/", "slow|http://b/", "strict|http://d/"]
    assert spec.target("plain|http://a/") == spec.defaults
    assert spec.target("quiet|http://c/").notify == ()
    assert spec.target("slow|http://b/").lines.degraded_latency == 0.5
    assert spec.target("strict|http://d/").thresholds.failure == 5
    assert RunSpec.loads(spec.dumps()) == spec
    head = RunSpec.loads(spec.dumps_head())
    assert (head.names, head.size, head.overrides, head.overridden) == ({}, 4, {}, 3)
    assert head.for_batch(spec.names, spec.dumps_overrides()) == spec


class _Participant:
    """What a participant needs beside ``prepare`` and ``write`` (no history here)."""

    def watch_keys(self, set_name: str) -> tuple[str, ...]:
        return ()

    def records(self, spec: RunSpec) -> bool:
        return True

    def prepare_paused(self, pipe: Any, spec: RunSpec) -> None:
        return

    def write_paused(self, pipe: Any, prepared: Any, **_: Any) -> None:
        return


class _GcWatcher(_Participant):
    """A participant that notes whether the cyclic GC runs while a run is applied, and
    can fail the apply (the GC must come back on then too)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[bool] = []

    def prepare(
        self, pipe: Any, spec: RunSpec, results: Any, now: float, *, whole: bool = True
    ) -> None:
        self.seen.append(gc.isenabled())
        if self.fail:
            raise RuntimeError("participant failed")

    def write(self, pipe: Any, prepared: Any, *, states: dict[str, TargetState], **_: Any) -> None:
        self.seen.append(gc.isenabled())


def test_the_gc_is_paused_while_a_run_is_applied_and_back_on_after(
    redis_client: redis.Redis,
) -> None:
    """Applying pauses the cyclic GC (a full collection per few runs cost half an apply)
    and switches it back on, also when the apply fails; a caller's own pause is kept."""
    watcher = _GcWatcher()
    store = MonitorStore(redis_client, ALERTS, watcher)
    spec = build_spec("web", SET, TARGETS, created_at=100.0)
    assert store.apply("r1", spec, results(api_up_at={"a", "b"}), now=101.0).applied
    assert watcher.seen == [False, False]
    assert gc.isenabled()
    failing = MonitorStore(redis_client, ALERTS, _GcWatcher(fail=True))
    with pytest.raises(RuntimeError, match="participant failed"):
        failing.apply("r2", spec, results(api_up_at={"a"}), now=102.0)
    assert gc.isenabled()
    gc.disable()
    try:
        store.apply("r3", spec, results(api_up_at={"a"}), now=103.0)
        assert not gc.isenabled()
    finally:
        gc.enable()


ONE_PLACE = ProbeSet(targets=[{"name": f"t{i}", "url": f"http://t{i}/"} for i in range(4)],
                     failure_threshold=1, success_threshold=1, notify=("hook",))  # fmt: skip
FOUR = [Target(name=f"t{i}", url=f"http://t{i}/") for i in range(4)]


def one_place_results(down: set[int], which: range | list[int] = range(4)) -> list[dict]:
    return [{"name": f"t{i}", "url": f"http://t{i}/", "up": i not in down,
             "error_kind": None if i not in down else "connect",
             "error": None if i not in down else "refused"} for i in which]  # fmt: skip


def batch_spec(store: MonitorStore, run_id: str, batch: list[dict]) -> RunSpec:
    head = store.head(run_id)
    assert head is not None
    assert (head.names, head.size) == ({}, 4)
    names = {f"{r['name']}|{r['url']}": (r["name"], r["url"]) for r in batch}
    return store.batch_spec(run_id, head, names)


def test_batches_are_applied_once_each_and_the_end_applies_only_what_is_left(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """A run's first batch is applied as soon as it is in (a second copy of it applies
    nothing); of the second batch only one result was in this worker's memory (the
    other was written by a delivery that died): the run's end applies that one target
    alone. Every target moved once, with one transition each, and closing the run
    leaves no spec, head or part counter behind."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("one", ONE_PLACE, FOUR, created_at=100.0)
    store.register("r1", spec)
    first = one_place_results(down={0}, which=[0, 1])
    outcome = store.apply_part("r1", "r1#0", batch_spec(store, "r1", first), first, now=101.0)
    assert outcome.applied
    assert sorted(c.to_state for c in outcome.transitions) == ["down", "up"]
    assert [j["message"]["event"] for j in store.outbox("r1#0")] == ["firing"]
    again = store.apply_part("r1", "r1#0", batch_spec(store, "r1", first), first, now=101.5)
    assert not again.applied
    second = one_place_results(down=set(), which=[2])
    assert store.apply_part("r1", "r1#1", batch_spec(store, "r1", second), second,
                            now=102.0).applied  # fmt: skip
    assert store.parts_done("r1") == 3
    end = store.apply("r1", spec, one_place_results(down={0}), now=103.0)
    assert end.applied
    assert [c.target for c in end.transitions] == ["t3|http://t3/"]
    stream = redis_client.xrange(keys.monitor_transitions("one"))
    assert sorted(f["target"] for _, f in stream) == [f"t{i}|http://t{i}/" for i in range(4)]
    states = {
        k: orjson.loads(v) for k, v in redis_client.hgetall(keys.monitor_state("one")).items()
    }
    assert {k: (s["state"], s["recent"], s["last_run"]) for k, s in states.items()} == {
        "t0|http://t0/": ("down", ["down"], "r1"), "t1|http://t1/": ("up", ["up"], "r1"),
        "t2|http://t2/": ("up", ["up"], "r1"), "t3|http://t3/": ("up", ["up"], "r1"),
    }  # fmt: skip
    parts = [f["part"] for _, f in redis_client.xrange(keys.MONITOR_VERDICTS)]
    assert parts == ["r1#0", "r1#1", ""]
    assert redis_client.exists(keys.monitor_applied("r1"))
    for gone in (keys.monitor_spec("r1"), keys.monitor_spec_head("r1"), keys.monitor_parts("r1")):
        assert not redis_client.exists(gone), gone
    assert not store.apply_part("r1", "r1#1", batch_spec_or_none(store), second, now=104).applied


def batch_spec_or_none(store: MonitorStore) -> RunSpec:
    """A closed run has no head: a late batch brings its own (it is refused anyway)."""
    assert store.head("r1") is None
    return build_spec("one", ONE_PLACE, FOUR[2:3], created_at=100.0)


def test_a_run_whose_batches_applied_every_target_is_closed_without_its_results(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """Four threads apply the run's two batches at once, each twice: every target once,
    the count of applied targets is exact, and the run's end, given no results at all,
    only closes the run (nothing is judged: no target becomes missing)."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("one", ONE_PLACE, FOUR, created_at=100.0)
    store.register("r2", spec)
    batches = [one_place_results(down={1}, which=[0, 1]), one_place_results(down={1}, which=[2, 3])]
    barrier = threading.Barrier(4)
    outcomes = []

    def apply(number: int) -> None:
        batch = batches[number % 2]
        barrier.wait()
        outcomes.append(store.apply_part("r2", f"r2#{number % 2}", batch_spec(store, "r2", batch),
                                         batch, now=101.0))  # fmt: skip

    threads = [threading.Thread(target=apply, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(o.applied for o in outcomes) == 2
    assert store.parts_done("r2") == 4
    assert len(redis_client.xrange(keys.monitor_transitions("one"))) == 4
    head = store.head("r2")
    assert head is not None
    end = store.apply("r2", head, [], now=102.0)
    assert end.applied
    assert (end.transitions, end.verdicts) == ([], {})
    states = [orjson.loads(v) for v in redis_client.hgetall(keys.monitor_state("one")).values()]
    assert sorted(s["state"] for s in states) == ["down", "up", "up", "up"]
    assert redis_client.exists(keys.monitor_applied("r2"))


def test_a_run_from_several_locations_is_not_applied_batch_by_batch(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """A target's verdict needs every location's result: one location's batch applies
    nothing (the run's end or deadline does, with missing locations)."""
    store = MonitorStore(redis_client, ALERTS)
    store.register("r3", build_spec("web", SET, TARGETS, created_at=100.0))
    batch = results(api_up_at=set(), locations=("a",))
    assert finish_part(store, "r3", "0", batch, now=101.0) is None
    assert not redis_client.exists(keys.monitor_state("web"))
    assert store.head("r3") is not None


def test_a_set_without_history_keeps_state_and_alerts_only(redis_client: redis.Redis) -> None:
    """``history: false`` on a set: its runs (whole, or batch by batch) move state and
    plan notifications, and write no history key; a set with history records it."""
    store = MonitorStore(redis_client, ALERTS, HistoryRecorder(HistorySettings()))
    quiet = ONE_PLACE.model_copy(update={"history": False})
    spec = build_spec("quiet", quiet, FOUR, created_at=100.0)
    assert not RunSpec.loads(spec.dumps_head()).history
    store.register("q1", spec)
    batch = one_place_results(down={0}, which=[0, 1])
    assert store.apply_part("q1", "q1#0", batch_spec(store, "q1", batch), batch, now=101.0).applied
    outcome = store.apply("q1", spec, one_place_results(down={0}), now=102.0)
    assert outcome.applied
    assert len(outcome.transitions) == 2
    assert redis_client.hlen(keys.monitor_state("quiet")) == 4
    assert store.outbox("q1#0")
    assert not redis_client.keys("opsq:history:*")
    loud = build_spec("loud", ONE_PLACE, FOUR, created_at=100.0)
    store.register("l1", loud)
    assert store.apply("l1", loud, one_place_results(down={0}), now=101.0).applied
    assert redis_client.keys(keys.history_raw("loud", "*"))
    assert not redis_client.keys(keys.history_raw("quiet", "*"))


class _Meddler(_Participant):
    """A participant that changes the set's state from another connection every time a
    transaction reads it: every EXEC then fails its WATCH, as with a busy set."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.calls = 0

    def prepare(
        self, pipe: Any, spec: RunSpec, results: Any, now: float, *, whole: bool = True
    ) -> None:
        self.calls += 1
        self.client.hset(keys.monitor_state(spec.set), "meddle", self.calls)

    def write(self, pipe: Any, prepared: Any, **_: Any) -> None:
        return


def test_a_batch_that_keeps_losing_its_watch_is_left_to_the_runs_end(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Every attempt loses the race: a batch gives up quietly (its targets are applied
    at the run's end: nothing lost, the batch's task does not fail); the run's end
    itself raises a temporary error (its task retries)."""
    other = redis.Redis.from_url(redis_url, decode_responses=True)
    meddler = _Meddler(other)
    store = MonitorStore(redis_client, ALERTS, meddler)
    spec = build_spec("one", ONE_PLACE, FOUR, created_at=100.0)
    store.register("m1", spec)
    batch = one_place_results(down=set(), which=[0, 1])
    outcome = store.apply_part("m1", "m1#0", batch_spec(store, "m1", batch), batch, now=101.0)
    assert not outcome.applied
    assert meddler.calls == 20
    assert store.parts_done("m1") == 0
    with pytest.raises(TemporaryError, match="kept changing"):
        store.apply("m1", spec, one_place_results(down=set()), now=102.0)
    assert MonitorStore(redis_client, ALERTS).apply(
        "m1", spec, one_place_results(down=set()), now=103.0).applied  # fmt: skip
    other.close()
