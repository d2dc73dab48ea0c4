"""Third hostile pass (helper-25) over set runs applied batch by batch: a run whose last
result was written by a worker killed before packing it; the run's own outbox left by a
worker killed (or cut by the soft time limit) between applying the run's end and
sending; a run's end that lost every WATCH race."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from opsq.core import keys
from opsq.core.runs import RunStore, encode_result, result_key
from opsq.core.settings import load_settings
from opsq.engines.history.recorder import HistoryRecorder
from opsq.engines.monitor.setrun import finish
from opsq.engines.monitor.store import MonitorStore
from producers.probes import ProbeProducer
from tests.monitor.conftest import TargetServer, wait_for, write_config
from tests.support.receivers import HttpReceiver
from tests.support.workers import Worker, queue_length


def test_a_run_whose_last_result_was_written_by_a_killed_worker_is_still_packed(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """The worker that probed the run's only batch wrote both results (the flush that
    completed the run) and was killed -9 before ``finalize`` packed it. The batch comes
    back (acks_late, visibility timeout): delivery 2 finds every result stored, probes
    nothing, writes nothing, so nothing ever calls ``finalize``: the run is applied
    (its end is due, the delivery wrote nothing) but never packed, ``finished_at``
    never set. ``opsq status``/``opsq runs`` show it running for good and its results
    stay in the live hash (never compacted), as after no other way of completing."""
    env = write_config(tmp_path / "opsq.yaml", {
        "probes": {"batch_size": 10, "sets": {"web": {
            "failure_threshold": 1, "success_threshold": 1,
            "targets": [{"name": "a", "url": f"{target_server.url}/svc"},
                        {"name": "b", "url": f"{target_server.url}/svc"}],
        }}},
    })  # fmt: skip
    settings = load_settings(env["OPSQ_CONFIG"], redis_url=redis_url)
    producer = ProbeProducer(settings)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run = producer.submit_set("web")
        store = RunStore(client)
        meta = store.run_meta(run.run_id)
        # The killed worker's part: delivery 1 counted, both results written, not packed.
        client.hincrby(keys.run_attempts(run.run_id), "b0", 1)
        entries = []
        for index, name in enumerate(("a", "b")):
            result = {"name": name, "url": f"{target_server.url}/svc", "up": True,
                      "status_code": 200, "duration_s": 0.001}  # fmt: skip
            entries.append((result_key(index), encode_result(result, index, meta.created_at),
                            True))  # fmt: skip
        outcome = store.record(run.run_id, entries)
        assert outcome.needs_finalize
        start_worker(env=env)  # takes the batch back
        producer.wait_set(run, timeout=60)
        assert client.exists(keys.monitor_applied(run.run_id))
        assert store.progress(run.run_id).finished, (
            f"run {run.run_id} applied but never packed: meta {store.run_meta(run.run_id).raw}"
        )
    finally:
        producer.close()
        client.close()


def test_the_run_outbox_left_by_a_worker_cut_after_applying_the_runs_end_is_sent(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """No beat, no ``--wait`` (beat-less use of ``opsq probe --set``; seen in a kill -9
    chaos run: the batch with the slow targets wrote the run's last result, applied
    the run's end, then hit ``probes.soft_time_limit`` inside ``finish_run`` before
    sending; ``Reject(requeue=True)``). The worker of the run's only batch recorded its
    result and applied the run's end (a: up -> down, its firing job in the run's own
    outbox ``<run>``, the run closed), then died before sending. The batch comes back:
    every result is stored, it writes nothing, so it calls ``finish_run``, which finds
    the run applied (no spec) and returns before flushing: the docstring's "in every
    case the run's outbox is flushed, so a crash between applying and sending loses
    nothing" does not hold, and a's firing notification is never sent."""
    target_server.codes["/down"] = 503
    env = write_config(tmp_path / "opsq.yaml", {
        "probes": {"batch_size": 10, "sets": {"web": {
            "failure_threshold": 1, "success_threshold": 1, "notify": ["hook"],
            "targets": [{"name": "a", "url": f"{target_server.url}/down"}],
        }}},
        "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}},
    })  # fmt: skip
    settings = load_settings(env["OPSQ_CONFIG"], redis_url=redis_url)
    producer = ProbeProducer(settings)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run = producer.submit_set("web")
        store = RunStore(client)
        meta = store.run_meta(run.run_id)
        # The cut worker's part: delivery 1, a's result, the run's end applied, not sent.
        client.hincrby(keys.run_attempts(run.run_id), "b0", 1)
        result = {"name": "a", "url": f"{target_server.url}/down", "up": False,
                  "status_code": 503, "error_kind": "http", "error": "HTTP 503",
                  "duration_s": 0.001}  # fmt: skip
        store.record(run.run_id, [(result_key(0), encode_result(result, 0, meta.created_at),
                                   False)])  # fmt: skip
        monitor = MonitorStore(client, settings.alerts, HistoryRecorder(settings.history))
        done = finish(monitor, store, run.run_id, at_deadline=False, now=time.time())
        assert done is not None
        assert done.outcome.applied
        assert client.llen(keys.monitor_outbox(run.run_id)) == 1
        start_worker(env=env)  # takes the batch back: nothing to probe, calls finish_run
        wait_for(lambda: queue_length(redis_url, "probes") == 0
                 and not client.hlen("unacked"), 30, "batch taken back")  # fmt: skip
        assert receiver.wait_for(
            lambda r: any(x.key.endswith(":firing") for x in r.accepted), timeout=20
        ), (  # fmt: skip
            "a's firing notification was never sent; left in "
            f"{client.zrange(keys.MONITOR_OUTBOXES, 0, -1)}"
        )
    finally:
        producer.close()
        client.close()


def test_a_run_whose_end_lost_every_watch_race_is_still_closed(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """No beat. While the run's only batch is applied, the set's firing hash changes
    without pause (other workers applying batches of the set's other runs: here one
    client writing a field of its own). The batch's own apply gives up after
    WATCH_ATTEMPTS, "left to the run's end"; the run's end, in the same task, then
    raises RuntimeError("... retry later"), which ``opsq.probe_batch`` neither retries
    nor requeues: the batch is acknowledged as failed and, since 5cdfe20, no other
    delivery calls ``finish_run``. Once the writes stop the run must still be applied
    (its marker set); it stays open for good."""
    env = write_config(tmp_path / "opsq.yaml", {
        "probes": {"batch_size": 10, "sets": {"web": {
            "failure_threshold": 1, "success_threshold": 1,
            "targets": [{"name": "a", "url": f"{target_server.url}/svc"}],
        }}},
    })  # fmt: skip
    settings = load_settings(env["OPSQ_CONFIG"], redis_url=redis_url)
    producer = ProbeProducer(settings)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stop = threading.Event()

    def hammer() -> None:
        writer = redis.Redis.from_url(redis_url)
        n = 0
        while not stop.is_set():
            writer.hset(keys.monitor_firing("web"), "other|x", n)
            n += 1
        writer.hdel(keys.monitor_firing("web"), "other|x")
        writer.close()

    thread = threading.Thread(target=hammer, daemon=True)
    try:
        thread.start()
        run = producer.submit_set("web")
        worker = start_worker(env=env)
        wait_for(lambda: RunStore(client).progress(run.run_id).complete
                 and "opsq.probe_batch" in worker.log()
                 and any(word in worker.log() for word in ("succeeded", "raised", "etry")),
                 30, "batch done")  # fmt: skip
        stop.set()
        thread.join(10)
        log = worker.log()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not client.exists(keys.monitor_applied(run.run_id)):
            time.sleep(0.2)
        assert client.exists(keys.monitor_applied(run.run_id)), (
            f"run {run.run_id} complete but never applied; worker log tail: {log[-600:]}"
        )
    finally:
        stop.set()
        producer.close()
        client.close()
