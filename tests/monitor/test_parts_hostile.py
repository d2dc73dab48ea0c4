"""Hostile tests of applying a set run batch by batch (``MonitorStore.apply_part``):
each run moves each target once, records history once, and loses no notification."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from opsq.core import keys
from opsq.core.config.history import HistorySettings
from opsq.engines.history.recorder import HistoryRecorder, LiveEntry
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore
from tests.monitor.conftest import TargetServer, wait_for, write_config
from tests.monitor.test_store import ALERTS, FOUR, ONE_PLACE, batch_spec, one_place_results
from tests.support.workers import Worker

HOUR = float(int(time.time() // 3600) * 3600)
"""The start of this hour: every apply below is in one hour, and recent enough that the
verdicts stream (trimmed to 15 minutes before ``now``) keeps what the tests read."""
T0 = "t0|http://t0/"


def hour_runs(client: redis.Redis, set_name: str, key: str) -> int:
    entry = LiveEntry.loads(client.hget(keys.history_acc(set_name), key))
    return entry.hour.up + entry.hour.degraded + entry.hour.down + entry.hour.unknown


def test_an_older_run_overtaken_by_the_next_is_recorded_once_in_history(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """Two overlapping runs of one set (slow targets, short interval): r1's first batch
    is applied, then r2 (newer) applies the same targets, then r1 reaches its deadline
    with its second batch never applied. r1's deadline apply must not judge t0/t1 again:
    each run's verdict of t0 is one raw history entry and one run in the hour's
    rollup (two in all), as when every run was applied whole."""
    store = MonitorStore(redis_client, ALERTS, HistoryRecorder(HistorySettings()))
    r1 = build_spec("one", ONE_PLACE, FOUR, created_at=HOUR + 10)
    r2 = build_spec("one", ONE_PLACE, FOUR, created_at=HOUR + 40)
    store.register("r1", r1)
    store.register("r2", r2)
    first = one_place_results(down=set(), which=[0, 1])
    assert store.apply_part("r1", "r1#0", batch_spec(store, "r1", first), first,
                            now=HOUR + 20).applied  # fmt: skip
    assert store.apply_part("r2", "r2#0", batch_spec(store, "r2", first), first,
                            now=HOUR + 41).applied  # fmt: skip
    # r1's deadline: t2 and t3 never answered in time (the tick applies what is stored).
    assert store.apply("r1", r1, first, now=HOUR + 42).applied
    assert redis_client.xlen(keys.history_raw("one", T0)) == 2
    assert hour_runs(redis_client, "one", T0) == 2
    verdicts = [orjson.loads(f["verdicts"]) for _, f in redis_client.xrange(keys.MONITOR_VERDICTS)]
    assert sum(T0 in v for v in verdicts) == 2


def test_an_outbox_being_sent_loses_no_job_a_second_copy_of_its_batch_adds(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """Two copies of one batch (a redelivery while the first still runs: the second
    probed only what the first had not recorded yet) apply disjoint targets, both into
    the outbox ``r1#0``. The first copy's ``send_outbox`` has read the outbox (one
    firing job) when the second copy's transaction adds its own; then the first copy
    clears the outbox. Every firing job must still be sent by someone: here t1's is in
    neither what was read nor what is left."""
    store = MonitorStore(redis_client, ALERTS)
    spec = build_spec("one", ONE_PLACE, FOUR, created_at=100.0)
    store.register("r1", spec)
    mine = one_place_results(down={0}, which=[0])
    theirs = one_place_results(down={1}, which=[1])
    assert store.apply_part("r1", "r1#0", batch_spec(store, "r1", mine), mine, now=101.0).applied
    sent = store.outbox("r1#0")  # send_outbox: read the jobs (and queue them as tasks) ...
    assert store.apply_part("r1", "r1#0", batch_spec(store, "r1", theirs), theirs,
                            now=101.1).applied  # fmt: skip
    store.clear_outbox("r1#0", len(sent))  # ... then delete what was read
    left = store.outbox("r1#0")
    firing = {j["message"]["labels"]["target"] for j in [*sent, *left]}
    assert firing == {"t0", "t1"}


@pytest.mark.slow
def test_a_set_whose_runs_outlast_the_interval_records_each_run_once(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker], start_beat: Callable[[dict[str, str]], None],
) -> None:  # fmt: skip
    """Beat runs a set every 2 s whose two slow targets take 6 s: each run's fast batch
    is applied as soon as it is probed, the next run's fast batch overtakes it, and
    the alerts tick applies the run at its deadline (5 s) with the slow targets still
    out. Each (run, target) is one verdicts entry and one raw history entry."""
    target_server.slow_s = 6.0
    env = {"OPSQ_PROBES__BATCH_SIZE": "2", **write_config(tmp_path / "opsq.yaml", {
        "probes": {"sets": {"web": {
            "interval": "2s", "deadline": "5s", "failure_threshold": 1,
            "success_threshold": 1,
            "targets": [{"name": "f0", "url": f"{target_server.url}/svc"},
                        {"name": "f1", "url": f"{target_server.url}/svc"},
                        {"name": "s2", "url": f"{target_server.url}/slow", "timeout": "10s"},
                        {"name": "s3", "url": f"{target_server.url}/slow", "timeout": "10s"}],
        }}},
        "alerts": {"tick_interval": "1s"},
    })}  # fmt: skip
    start_worker(env=env, concurrency=6)
    start_beat(env)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    fast = f"f0|{target_server.url}/svc"
    try:
        wait_for(lambda: len(client.keys(keys.monitor_applied("*"))) >= 4, 90, "4 runs applied")
        pipe = client.pipeline(transaction=True)  # one snapshot: both are written in one MULTI
        pipe.xrange(keys.MONITOR_VERDICTS)
        pipe.xlen(keys.history_raw("web", fast))
        entries, raw = pipe.execute()
    finally:
        client.close()
    applied = Counter(f["run_id"] for _, f in entries if fast in orjson.loads(f["verdicts"]))
    assert set(applied.values()) == {1}, applied
    assert raw == len(applied)


def test_an_incident_does_not_stay_open_across_a_spell_without_history(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """t0 goes down while the set records history (an incident opens), recovers while
    the set has ``history: false``, and is still up when history is switched back on:
    the status page must not show t0's incident as ongoing (it ended; at the latest
    when history saw t0 up again)."""
    store = MonitorStore(redis_client, ALERTS, HistoryRecorder(HistorySettings()))
    quiet = ONE_PLACE.model_copy(update={"history": False})
    for number, (probe_set, down) in enumerate([(ONE_PLACE, {0}), (quiet, set()),
                                                (ONE_PLACE, set())]):  # fmt: skip
        run_id = f"h{number}"
        spec = build_spec("one", probe_set, FOUR, created_at=HOUR + 10 * number)
        store.register(run_id, spec)
        assert store.apply(run_id, spec, one_place_results(down=down),
                           now=HOUR + 10 * number + 1).applied  # fmt: skip
    state = orjson.loads(redis_client.hget(keys.monitor_state("one"), T0))
    assert state["state"] == "up"
    assert redis_client.hget(keys.history_open("one"), T0) is None
