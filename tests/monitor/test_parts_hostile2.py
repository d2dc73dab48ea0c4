"""Second hostile pass over applying a set run batch by batch: a batch outbox a killed
worker left, reads per batch that grow with the set (open incidents, overrides), history
switched off globally, the notify task's soft time limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from opsq.core import keys
from opsq.core.config.history import HistorySettings
from opsq.core.config.probes import ProbeSet, Target
from opsq.core.runs import RunStore, encode_result, result_key
from opsq.core.settings import load_settings
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.setrun import finish_part
from opsq.engines.monitor.spec import build_spec
from opsq.engines.monitor.store import MonitorStore
from producers.probes import ProbeProducer
from tests.monitor.conftest import TargetServer, write_config
from tests.monitor.test_parts_hostile import ALERTS, FOUR, HOUR, ONE_PLACE, T0, one_place_results
from tests.support.receivers import HttpReceiver
from tests.support.workers import Worker


def test_wait_sends_the_batch_outbox_a_killed_worker_left_in_a_run_that_completed(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """``opsq probe --set web --wait`` by hand, no beat. The worker that probed batch b0
    (target a, down) recorded it and applied it (a: up -> down, its firing job in the
    outbox ``<run>#b0``), then was killed -9 before sending that outbox. b0 comes back
    (visibility timeout): its result is stored, so the redelivery has nothing to apply
    and sends nothing; b1 completes the run, whose end only closes it. The wait returns
    as soon as the run is applied: nobody ever sends a's firing notification (only a
    beat tick would, 30 s later; there is none). It must reach the receiver."""
    target_server.codes["/down"] = 503
    env = write_config(tmp_path / "opsq.yaml", {
        "probes": {"batch_size": 1, "sets": {"web": {
            "failure_threshold": 1, "success_threshold": 1, "notify": ["hook"],
            "targets": [{"name": "a", "url": f"{target_server.url}/down"},
                        {"name": "b", "url": f"{target_server.url}/svc"}],
        }}},
        "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}},
    })  # fmt: skip
    settings = load_settings(env["OPSQ_CONFIG"], redis_url=redis_url)
    producer = ProbeProducer(settings)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run = producer.submit_set("web")
        # The killed worker's part: b0 probed, recorded and applied; not sent.
        result = {"name": "a", "url": f"{target_server.url}/down", "up": False,
                  "status_code": 503, "error_kind": "http", "error": "HTTP 503",
                  "duration_s": 0.001}  # fmt: skip
        meta = RunStore(client).run_meta(run.run_id)
        RunStore(client).record(run.run_id, [
            (result_key(0), encode_result(result, 0, meta.created_at), False)])  # fmt: skip
        monitor = MonitorStore(client, settings.alerts, HistoryRecorder(settings.history))
        part = finish_part(monitor, run.run_id, "b0", [result], now=time.time())
        assert part is not None
        assert part.outcome.applied
        assert part.outcome.jobs
        assert client.llen(keys.monitor_outbox(f"{run.run_id}#b0")) == 1
        start_worker(env=env)  # takes b0 (already recorded) and b1
        producer.wait_set(run, timeout=60)
        assert client.exists(keys.monitor_applied(run.run_id))
        assert receiver.wait_for(
            lambda r: any(x.key.endswith(":firing") for x in r.accepted), timeout=20
        ), (  # fmt: skip
            "a's firing notification was never sent; left in "
            f"{client.zrange(keys.MONITOR_OUTBOXES, 0, -1)}"
        )
    finally:
        producer.close()
        client.close()


def test_an_incident_does_not_stay_open_across_a_spell_with_history_disabled_globally(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """As with a set's own ``history: false``, but switched off for every set
    (``history.enabled: false``, README: "an incident open when it was switched off
    still ends when its target recovers"): t0 goes down while history is recorded (an
    incident opens), recovers while history is disabled, and is still up when it is
    enabled again. The workers built the monitor without the history participant then
    (``tasks.alerts._monitor``), so nothing ended the incident: it stayed "ongoing" on
    the status page for good. Now they pass it a recorder that records nothing but
    ends open incidents."""
    hist, off = HistoryRecorder(HistorySettings()), HistoryRecorder(HistorySettings(enabled=False))
    for number, (participant, down) in enumerate([(hist, {0}), (off, set()), (hist, set())]):
        store = MonitorStore(redis_client, ALERTS, participant)
        run_id = f"g{number}"
        spec = build_spec("one", ONE_PLACE, FOUR, created_at=HOUR + 10 * number)
        store.register(run_id, spec)
        assert store.apply(run_id, spec, one_place_results(down=down),
                           now=HOUR + 10 * number + 1).applied  # fmt: skip
    state = orjson.loads(redis_client.hget(keys.monitor_state("one"), T0))
    assert state["state"] == "up"
    assert redis_client.hget(keys.history_open("one"), T0) is None, "incident still open"


@pytest.mark.parametrize("history", [True, False])
def test_one_batch_does_not_read_every_open_incident_of_its_set(
    redis_client: redis.Redis, history: bool,
) -> None:  # fmt: skip
    """A 5,000-target set in a major outage: every target down, an incident open for
    each. Each later run is applied batch by batch (50 targets), and each batch read
    the set's whole open-incidents hash under the WATCH (``_PREPARE_PART_LUA`` returns
    ``HGETALL open``; with ``history: false``, ``prepare_paused`` does the same) and
    parsed all 5,000 of them: a run reads (batches x open incidents), quadratic in the
    set's size. Measured off this test: 20,000 targets still down, one run applied
    batch by batch took 36 s of worker time against 1.1 s applied whole. Here: one
    batch of 50 must not make Redis send ~2 MB (every open incident of the set)."""
    n = 5000
    targets = [{"name": f"t{i}", "url": f"http://t{i}.example/health"} for i in range(n)]
    probe_set = ProbeSet(targets=targets, failure_threshold=1, success_threshold=1)
    every = [Target(**t) for t in targets]
    down = [{**t, "up": False, "error_kind": "connect", "error": "refused"} for t in targets]
    store = MonitorStore(redis_client, ALERTS, HistoryRecorder(HistorySettings()))
    first = build_spec("big", probe_set, every, created_at=HOUR + 1)
    store.register("o1", first)
    assert store.apply("o1", first, down, now=HOUR + 2).applied
    assert redis_client.hlen(keys.history_open("big")) == n
    later = probe_set.model_copy(update={"history": history})
    spec = build_spec("big", later, every, created_at=HOUR + 10)
    store.register("o2", spec)
    batch = down[:50]
    part = spec.with_names({f"{r['name']}|{r['url']}": (r["name"], r["url"]) for r in batch})
    before = int(redis_client.info("stats")["total_net_output_bytes"])
    assert store.apply_part("o2", "o2#b0", part, batch, now=HOUR + 11).applied
    sent = int(redis_client.info("stats")["total_net_output_bytes"]) - before
    assert sent < 256_000, f"one 50-target batch made Redis send {sent:,} bytes"


def test_one_batch_does_not_read_every_target_override_of_its_set(
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    """A 5,000-target set whose targets each set something of their own (here
    ``failure_threshold``; a target's ``notify`` or ``expect`` does the same): every
    target is an override in the run's spec, and the head, "a few hundred bytes for
    most sets", carries them all (~800 KB here). Each batch reads and parses the whole
    head (``finish_part``; ``finish`` reads it again after every batch): a run reads
    (batches x targets). Measured off this test: 20,000 such targets, one run applied
    batch by batch took 56 s and 1.3 GB of Redis output against 1.3 s without
    overrides. One batch of 50 must not make Redis send the whole set's overrides."""
    n = 5000
    targets = [{"name": f"t{i}", "url": f"http://t{i}.example/health", "failure_threshold": 2}
               for i in range(n)]  # fmt: skip
    probe_set = ProbeSet(targets=targets, failure_threshold=1, success_threshold=1)
    spec = build_spec("big", probe_set, [Target(**t) for t in targets], created_at=HOUR + 1)
    store = MonitorStore(redis_client, ALERTS, HistoryRecorder(HistorySettings()))
    store.register("v1", spec)
    batch = [{"name": f"t{i}", "url": f"http://t{i}.example/health", "up": True}
             for i in range(50)]  # fmt: skip
    before = int(redis_client.info("stats")["total_net_output_bytes"])
    part = finish_part(store, "v1", "b0", batch, now=HOUR + 2)
    sent = int(redis_client.info("stats")["total_net_output_bytes"]) - before
    assert part is not None
    assert part.outcome.applied
    assert sent < 256_000, f"one 50-target batch made Redis send {sent:,} bytes"


def test_a_receiver_answering_within_the_notifier_timeout_gets_one_request(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """The notifier's ``timeout`` is 20 s; the receiver answers its first request
    after 6 s. The workers run with ``probes.soft_time_limit: 4s`` (valid: nothing ties
    it to the notifiers' timeouts), which Celery applies to ``opsq.notify`` too: the
    send is cut at 4 s, "retried", and the receiver, which had the whole request
    (it processes it: most webhooks never look at whether the client stayed), gets it
    a second time. The notifier's timeout says opsq waits up to 20 s for an answer."""
    receiver = HttpReceiver(hold=threading.Event()).start()
    try:
        target_server.codes["/down"] = 503
        env = {"OPSQ_PROBES__SOFT_TIME_LIMIT": "4", "OPSQ_PROBES__TIME_LIMIT": "5",
               **write_config(tmp_path / "opsq.yaml", {
            "probes": {"sets": {"web": {
                "failure_threshold": 1, "success_threshold": 1, "notify": ["hook"],
                "targets": [{"name": "a", "url": f"{target_server.url}/down"}]}}},
            "alerts": {"notifiers": {"hook": {"kind": "webhook", "timeout": "20s",
                                              "url": f"{receiver.url}/hook"}}},
        })}  # fmt: skip
        start_worker(env=env)
        settings = load_settings(env["OPSQ_CONFIG"], redis_url=redis_url)
        producer = ProbeProducer(settings)
        try:
            producer.wait_set(producer.submit_set("web"), timeout=60)
        finally:
            producer.close()
        assert receiver.wait_for(lambda r: len(r.received) >= 1, timeout=30)
        time.sleep(6)  # the receiver's answer takes 6 s
        receiver.hold.set()
        assert receiver.wait_for(lambda r: len(r.accepted) >= 1, timeout=60)
        time.sleep(2)
        keys_seen = [r.key for r in receiver.received]
        assert len(keys_seen) == 1, f"the receiver got {len(keys_seen)} requests: {keys_seen}"
    finally:
        receiver.stop()
