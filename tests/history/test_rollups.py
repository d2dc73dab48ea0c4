"""History through real runs and a real valkey-server, with an injectable clock.

Every run is applied by ``MonitorStore.apply`` (what the completing worker calls) with
the history recorder participating; the clock is the ``now`` the test passes, so hour,
day and retention boundaries are crossed in milliseconds of test time.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from opsq.core import keys
from opsq.core.config.alerts import AlertsSettings
from opsq.core.config.history import HistorySettings
from opsq.engines.history import windows
from opsq.engines.history.recorder import PERIOD_FIELD, HistoryRecorder
from opsq.engines.history.rollup import Acc
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore
from tests.history.sim import Sim, read

DAY = 86400.0
START = 1_767_225_600.0 - 7 * 60  # 2025-12-31 23:53 UTC: the first hour and day are partial


@pytest.fixture
def sim_factory(redis_url: str) -> Iterator[type[Sim]]:
    made: list[Sim] = []

    def make(**kwargs: object) -> Sim:
        sim = Sim(redis_url, **kwargs)  # type: ignore[arg-type]
        made.append(sim)
        return sim

    yield make  # type: ignore[misc]
    for sim in made:
        sim.close()


def scripted(name: str, run: int, now: float) -> tuple[bool, float]:
    """steady: always up; flappy: down in a 2 h stretch every 5 days and single runs;
    slow: up with long latency; dead: down from day 3."""
    rng = random.Random(f"{name}{run}")
    if name == "flappy":
        down = (now - START) % (5 * DAY) < 7200 or run % 37 == 0
        return not down, 0.04 * rng.uniform(0.5, 3)
    if name == "dead":
        return now - START < 3 * DAY, 0.2
    if name == "slow":
        return True, rng.uniform(1.0, 4.0)
    return True, rng.lognormvariate(-3, 0.4)


def brute_force(sim: Sim, name: str, window: str, now: float) -> float | None:
    """Uptime of *window* straight from the raw verdicts."""
    kind, span = windows.periods(window, now)
    start = span.start * (3600 if kind == "h" else DAY)
    states = [s.state for s in sim.raw_samples(name) if s.at >= start]
    judged = [s for s in states if s in ("up", "degraded", "down")]
    return sum(s != "down" for s in judged) / len(judged) if judged else None


def test_uptime_from_rollups_matches_brute_force_over_raw(sim_factory: type[Sim]) -> None:
    """33 days of runs at irregular intervals (17-43 min): at checkpoints across hour and
    day boundaries, uptime 24h/7d/30d/90d from rollups (the target page's lookups and
    the overview's one-pass summary alike) equals the brute-force figure over every raw
    verdict, for targets always up, flapping, slow and dead."""
    history = HistorySettings(raw_retention=40 * DAY, retention=40 * DAY)
    sim = sim_factory(history=history)
    rng = random.Random(13)
    now, checkpoints = START, [START + d * DAY + rng.uniform(0, DAY) for d in (0.9, 6, 12, 29, 33)]
    checked = 0
    while checkpoints:
        sim.run(now, scripted)
        now += rng.uniform(17 * 60, 43 * 60)
        if now >= checkpoints[0]:
            checkpoints.pop(0)
            at = sim.times[-1] + 1
            (_, overview), *_ = read(sim.url, lambda r, t=at: r.overview(t))
            for row in overview:
                for window in ("24h", "7d", "30d"):
                    assert row.uptime[window] == brute_force(sim, row.name, window, at), (
                        "overview",
                        row.name,
                        window,
                        at,
                    )
            for name in sim.names:
                found = read(sim.url, lambda r, n=name, t=at: r.target("web", sim.key(n), t, 0))
                view = found[0]
                for window in windows.WINDOWS:
                    assert view.uptime[window] == brute_force(sim, name, window, at), (
                        name,
                        window,
                        at,
                    )
                    checked += 1
    assert checked == 5 * 4 * 4
    flappy = read(sim.url, lambda r: r.target("web", sim.key("flappy"), now, 0))[0]
    assert 0 < (flappy.uptime["30d"] or 0) < 1


def test_an_hour_and_a_day_are_sealed_at_their_boundary(sim_factory: type[Sim]) -> None:
    """Runs at 23:59:58 (up), 23:59:59 (down) and 00:00:00 (up): the next day's first
    run seals hour 23 and the day with exactly those counts; the live hour holds one."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    midnight = 1_767_225_600.0
    script = {0: True, 1: False, 2: True}
    for offset in (-2.0, -1.0, 0.0):
        sim.run(midnight + offset, lambda n, run, t: (script[run], 0.05))
    key = sim.key("svc")
    hours = read(sim.url, lambda r: r.rollups("web", key, "h", midnight - 3600, midnight + 1))
    days = read(sim.url, lambda r: r.rollups("web", key, "d", midnight - DAY, midnight + 1))
    assert [(a.period, a.up, a.down) for a in hours] == [
        (int(midnight // 3600) - 1, 1, 1),
        (int(midnight // 3600), 1, 0),
    ]
    assert [(a.period, a.up, a.down) for a in days] == [
        (int(midnight // DAY) - 1, 1, 1),
        (int(midnight // DAY), 1, 0),
    ]
    assert sim.client.exists(keys.history_hour("web", int(midnight // 3600) - 1))
    assert sim.client.exists(keys.history_day("web", int(midnight // DAY) - 1))
    assert not sim.client.exists(keys.history_hour("web", int(midnight // 3600)))


def test_a_run_applied_twice_is_recorded_once(sim_factory: type[Sim]) -> None:
    """A second finisher of the same run (a redelivered batch) adds no raw entry and no
    count: history rides on the monitor's exactly-once transaction."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    sim.run(START, lambda n, run, t: (True, 0.05))
    spec = build_spec(sim.set_name, sim.probe_set, sim.targets, created_at=START)
    again = [{"name": "svc", "url": sim.targets[0].url, "up": True, "duration_s": 0.05}]
    assert not sim.store.apply("web-run-0", spec, again, now=START + 1).applied
    assert len(sim.raw_samples("svc")) == 1
    live = read(sim.url, lambda r: r.rollups("web", sim.key("svc"), "h", START, START))
    assert [a.up for a in live] == [1]


def test_trimming_by_time_removes_only_expired_data(sim_factory: type[Sim]) -> None:
    """Retention 1 day, raw 1 hour, 3.5 days of runs every 7 minutes: raw entries older
    than an hour are gone and every younger one is there; sealed hours and days whose
    end is older than the retention (at the last seal) are gone, every younger one is
    there; incidents that ended before the cutoff are gone, later ones kept."""
    history = HistorySettings(raw_retention=3600, retention=DAY)
    sim = sim_factory(history=history, names=("svc",))
    now, seal_times, hours, days = START, [], set(), set()
    while now < START + 3.5 * DAY:
        if sim.times and int(now // 3600) > int(sim.times[-1] // 3600):
            seal_times.append(now)
        sim.run(now, lambda n, run, t: (run % 40 != 5, 0.05))  # one down run in 40
        hours.add(int(now // 3600))
        days.add(int(now // DAY))
        now += 7 * 60
    last, sealed_at = sim.times[-1], seal_times[-1]
    # raw: exactly the runs of the last hour, oldest first
    kept = [s.at for s in sim.raw_samples("svc")]
    assert kept == [t for t in sim.times if int(t * 1000) >= int((last - 3600) * 1000)]
    # blobs: those ending at or after the cutoff of the last seal, and only those
    cutoff = sealed_at - DAY
    sealed_hours = {h for h in hours if h < int(sealed_at // 3600)}
    sealed_days = {d for d in days if d < int(sealed_at // DAY)}
    want = {f"h{h}" for h in sealed_hours if (h + 1) * 3600 >= cutoff}
    want |= {f"d{d}" for d in sealed_days if (d + 1) * DAY >= cutoff}
    assert set(sim.client.zrange(keys.history_periods("web"), 0, -1)) == want
    stored = {
        k.split(":")[2][0] + k.split(":")[-1]
        for k in sim.client.scan_iter("opsq:history:*:web:[0-9]*")
        if ":hour-hist:" not in k
    }
    assert stored == want
    # histogram blobs: the sealed hours of the last HISTORY_FULL_HOURS inside the
    # retention, and only those
    histograms = {
        int(k.rsplit(":", 1)[1]) for k in sim.client.scan_iter("opsq:history:hour-hist:web:*")
    }
    last_hour = int(sealed_at // 3600)
    assert histograms == {
        h for h in sealed_hours if h >= last_hour - keys.HISTORY_FULL_HOURS and f"h{h}" in want
    }
    assert {int(h) for h in sim.client.zrange(keys.history_recent("web"), 0, -1)} == histograms
    assert len(histograms) >= 20
    assert len(want) > 20
    # incidents: one per down run (thresholds 1/1), closed by the next run
    incidents = sim.client.hgetall(keys.history_incidents("web"))
    downs = [t for i, t in enumerate(sim.times) if i % 40 == 5]
    ends = [sim.times[sim.times.index(t) + 1] for t in downs]
    assert len(incidents) == sum(end >= cutoff for end in ends)
    assert len(incidents) < len(downs)


def test_incident_keeps_start_end_reason_and_locations(sim_factory: type[Sim]) -> None:
    """down at t1 (status), still down at t2, up at t3: one incident from t1 to t3 with
    duration t3 - t1, reason status and the location that saw it; while open it is in
    the target's open incident."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    script = {0: True, 1: False, 2: False, 3: True}
    times = [START, START + 60, START + 120, START + 180]
    for t in times[:3]:
        sim.run(t, lambda n, run, now: (script[run], 0.05))
    view = read(sim.url, lambda r: r.target("web", sim.key("svc"), times[2], 0))[0]
    assert view.open_incident is not None
    assert view.open_incident.ended_at is None
    sim.run(times[3], lambda n, run, now: (script[run], 0.05))
    view, _, incidents = read(sim.url, lambda r: r.target("web", sim.key("svc"), times[3], 0))
    assert view.open_incident is None
    (incident,) = incidents
    assert (incident.started_at, incident.ended_at, incident.state, incident.reason) == (
        times[1],
        times[3],
        "down",
        "status",
    )
    assert incident.duration(0) == 120
    assert incident.locations == ["default"]
    assert incident.transitions == 2


def test_latency_percentiles_from_rollups_are_close_to_raw(sim_factory: type[Sim]) -> None:
    """The 24h p50/p95 from hourly rollups lie within one bucket of the exact ones."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    now = START
    for _ in range(200):
        sim.run(now, lambda n, run, t: (True, random.Random(run).lognormvariate(-2.5, 0.5)))
        now += 300
    view = read(sim.url, lambda r: r.target("web", sim.key("svc"), now, 0))[0]
    exact = sorted(
        s.latency or 0 for s in sim.raw_samples("svc") if s.at >= (int(now // 3600) - 23) * 3600
    )
    for q in (0.5, 0.95):
        truth = exact[int(q * len(exact)) - 1]
        estimate = view.latency.quantile(q) or 0
        assert truth / 2**0.5 <= estimate <= truth * 2**0.5, (q, truth, estimate)


def test_old_hours_keep_p50_p95_and_the_24h_window_merges_histograms(
    sim_factory: type[Sim],
) -> None:
    """40 hours of runs: an hour older than 25 hours is a summary whose p50/p95 (API
    hourly point) are those of its histogram within a grid step (the histogram rebuilt
    here from the raw verdicts); the 24 h p50/p95 still merge the last hours'
    histograms (never None), from the histogram blobs."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    now = START
    while now < START + 40 * 3600:
        sim.run(now, lambda n, run, t: (True, random.Random(run).lognormvariate(-2.5, 0.5)))
        now += 60 if now < START + 2 * 3600 else 600
    first_hour = int(START // 3600) + 1
    (point,) = read(
        sim.url,
        lambda r: r.rollups("web", sim.key("svc"), "h", first_hour * 3600, first_hour * 3600),
    )
    assert point.hist == {}  # a summary, not a histogram
    assert point.summary is not None
    rebuilt = Acc(first_hour)
    for sample in sim.raw_samples("svc"):
        if int(sample.at // 3600) == first_hour:
            rebuilt.add(sample.state, sample.latency)
    assert (point.up, point.n_lat) == (rebuilt.up, rebuilt.n_lat) == (60, 60)
    for q in (0.5, 0.95):
        assert math.isclose(point.quantile(q) or 0, rebuilt.quantile(q) or 0, rel_tol=0.02)
    view = read(sim.url, lambda r: r.target("web", sim.key("svc"), now, 0))[0]
    assert view.latency.quantile(0.95) is not None
    assert view.latency.n_lat == len(
        [s for s in sim.raw_samples("svc") if s.at >= (int(now // 3600) - 23) * 3600]
    )
    recent = {int(h) for h in sim.client.zrange(keys.history_recent("web"), 0, -1)}
    assert set(windows.periods("24h", now)[1]) - {int(now // 3600)} <= recent


def test_the_monitors_verdicts_stream_is_a_short_tail_history_owns_raw_verdicts(
    sim_factory: type[Sim],
) -> None:
    """300 runs a minute apart: history keeps every raw verdict (raw retention 48 h),
    while the monitor's verdicts stream, trimmed 15 minutes behind the runs' clock, keeps
    at most one macro node (100 entries) beyond its last 15 minutes; with the former
    6 h it kept all 300. (The stream's ids are XADD ``*``, the wall clock, so the runs
    start now.)"""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    start = time.time()
    for run in range(300):
        sim.run(start + run * 60, lambda n, r, t: (True, 0.05))
    assert len(sim.raw_samples("svc")) == 300
    assert sim.client.xlen(keys.MONITOR_VERDICTS) <= 100 + 15


class CountingConnection(redis.Connection):
    """Counts round trips: one ``send_packed_command`` per request or pipeline."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def test_history_adds_one_round_trip_to_applying_a_run_even_when_sealing(
    sim_factory: type[Sim], redis_url: str
) -> None:
    """The recorder reads under the monitor's WATCH in one EVAL and writes in its MULTI:
    a run applied with history costs exactly one round trip more than without, for a
    usual run and for the run that seals an hour and a day (roster, expired periods,
    incidents and histograms read in that same EVAL), whatever the number of targets."""
    pool = redis.ConnectionPool.from_url(
        redis_url, decode_responses=True, connection_class=CountingConnection
    )
    counted = redis.Redis(connection_pool=pool)
    counted.ping()  # the connection's own handshake is not the apply's
    names = tuple(f"svc{i}" for i in range(30))
    on = sim_factory(history=HistorySettings(), names=names)
    off = sim_factory(history=HistorySettings(), names=names, set_name="peer")
    on.store = MonitorStore(counted, AlertsSettings(), HistoryRecorder(HistorySettings()))
    off.store = MonitorStore(counted, AlertsSettings())
    extra = []
    for now in (START, START + 60, START + 7 * 60 + 1, START + 8 * 60):  # the 3rd seals
        cost = []
        for sim in (on, off):
            before = CountingConnection.sent
            sim.run(now, lambda n, run, t: (run != 1, 0.05))
            cost.append(CountingConnection.sent - before)
        extra.append(cost[0] - cost[1])
    assert extra == [1, 1, 1, 1]
    assert on.client.exists(keys.history_day("web", int(START // DAY)))  # it did seal
    counted.close()


def test_an_hour_is_sealed_even_when_the_period_mark_is_wrong(sim_factory: type[Sim]) -> None:
    """The acc hash's ``@period`` mark only spares the seal's reads; entries of an older
    hour are sealed even under a mark that claims the new hour (a hand-edited or
    half-upgraded hash): the blob is written with the earlier run's counts."""
    sim = sim_factory(history=HistorySettings(), names=("svc",))
    sim.run(START, lambda n, run, t: (True, 0.05))
    later = START + 3600
    mark = f"{int(later // 3600)}:{int(later // DAY)}"
    sim.client.hset(keys.history_acc("web"), PERIOD_FIELD, mark)
    sim.run(later, lambda n, run, t: (True, 0.05))
    first_hour = int(START // 3600)
    assert sim.client.exists(keys.history_hour("web", first_hour))
    (point,) = read(
        sim.url,
        lambda r: r.rollups("web", sim.key("svc"), "h", first_hour * 3600, first_hour * 3600),
    )
    assert (point.period, point.up) == (first_hour, 1)


def test_batch_by_batch_records_the_same_history_as_whole_runs(sim_factory: type[Sim]) -> None:
    """The same 3 days of scripted runs applied whole (the run's end) and in 3 batches
    each (as workers apply a set run now): the raw verdicts, the hour and day rollups,
    the incidents and the states come out the same. The runs that turn an hour are
    left to the run's end (sealing takes every target); the others are closed with
    nothing left to apply."""
    history = HistorySettings(raw_retention=5 * DAY, retention=5 * DAY)
    names = ("steady", "flappy", "slow", "dead", "a", "b", "c")
    whole = sim_factory(history=history, names=names, set_name="whole")
    parts = sim_factory(history=history, names=names, set_name="parts", parts=3)
    rng = random.Random(7)
    now = START
    while now < START + 3 * DAY:
        for sim in (whole, parts):
            sim.run(now, scripted)
        now += rng.uniform(10 * 60, 25 * 60)
    assert True in parts.deferred
    assert parts.deferred.count(False) > parts.deferred.count(True)
    at = now + 1
    for name in names:
        assert parts.raw_samples(name) == whole.raw_samples(name), name
        for kind, span in (("h", 3600.0), ("d", DAY)):
            start = START - span
            got = read(parts.url, lambda r, k=kind, n=name, s=start: r.rollups(
                "parts", parts.key(n), k, s, at))  # fmt: skip
            want = read(whole.url, lambda r, k=kind, n=name, s=start: r.rollups(
                "whole", whole.key(n), k, s, at))  # fmt: skip
            assert got, (name, kind)
            assert got == want, (name, kind)
        got_view = read(parts.url, lambda r, n=name: r.target("parts", parts.key(n), at, 0))
        want_view = read(whole.url, lambda r, n=name: r.target("whole", whole.key(n), at, 0))
        assert got_view[0].uptime == want_view[0].uptime, name
        assert [(i.started_at, i.ended_at, i.state) for i in got_view[2]] == [
            (i.started_at, i.ended_at, i.state) for i in want_view[2]], name  # fmt: skip
    assert _states(parts) == _states(whole)
    assert not parts.client.keys(keys.monitor_parts("*"))
    assert not parts.client.keys(keys.monitor_spec_head("*"))


def _states(sim: Sim) -> dict[str, dict[str, Any]]:
    """The set's states without what names the run or set (ids differ between sims)."""
    ignored = ("last_run", "transition_id")
    raw_states = sim.client.hgetall(keys.monitor_state(sim.set_name))
    return {key: {f: v for f, v in orjson.loads(value).items() if f not in ignored}
            for key, value in raw_states.items()}  # fmt: skip
