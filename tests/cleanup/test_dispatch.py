"""Due-time dispatch of `opsq watch`: ordering, horizon, dedupe, backoff and the cap."""

from __future__ import annotations

from typing import Any

import redis

from opsq.core import keys
from opsq.engines.cleanup.executor import Target
from opsq.engines.cleanup.kube import Kube
from opsq.engines.cleanup.watcher import Due, DueQueue, Watcher
from producers.watch import DISPATCH_AHEAD_S, RedisClaims, WatchProducer
from tests.cleanup.conftest import settings
from tests.cleanup.objects import job

HOUR = 3600.0


def _target(uid: str, rule: str = "finished-jobs") -> Target:
    return Target(rule, "batch/v1/jobs", "ns", f"job-{uid}", uid, "1", "job-finished")


def test_due_queue_pops_in_due_order_and_latest_upsert_wins() -> None:
    queue = DueQueue()
    queue.upsert(Due(_target("a"), 30))
    queue.upsert(Due(_target("b"), 10))
    queue.upsert(Due(_target("a"), 5))  # re-judged: now due earlier
    queue.upsert(Due(_target("c"), 20))
    queue.remove("finished-jobs", "c")  # deleted meanwhile
    assert queue.next_due() == 5
    assert [d.target.uid for d in queue.pop_until(15)] == ["a", "b"]
    assert len(queue) == 0
    assert queue.next_due() is None


class Clock:
    def __init__(self) -> None:
        self.now = 10 * HOUR

    def __call__(self) -> float:
        return self.now


def _producer(
    redis_client: redis.Redis, **cfg: Any
) -> tuple[WatchProducer, list[tuple[Target, float]], Clock]:
    cleanup = settings(**cfg)
    clock = Clock()
    watcher = Watcher(cleanup, Kube(api_client=None), clock=clock)
    (informer,) = watcher.informers
    informer.synced = True
    sent: list[tuple[Target, float]] = []
    producer = WatchProducer(
        cleanup, watcher, lambda t, c: sent.append((t, c)), RedisClaims(redis_client), clock=clock,
        rng=lambda: 1.0,
    )  # fmt: skip
    return producer, sent, clock


def _announce(producer: WatchProducer, name: str, finished: float) -> dict[str, Any]:
    obj = job(name, namespace="ns", created=0, finished=finished)
    producer.watcher.informers[0]._put(obj)  # what a watch event does to the cache
    producer.watcher.on_object(producer.watcher.settings.rules[0], obj)
    return obj


def test_objects_are_sent_only_near_their_due_time_with_a_bounded_countdown(
    redis_client: redis.Redis,
) -> None:
    producer, sent, clock = _producer(redis_client)
    _announce(producer, "later", finished=clock.now - HOUR + 600)  # due in 10 minutes
    _announce(producer, "soon", finished=clock.now - HOUR + 10)  # due in 10 s
    assert producer.tick() == 1
    ((target, countdown),) = sent
    assert target.name == "soon"
    assert 0 < countdown <= DISPATCH_AHEAD_S < keys.VISIBILITY_TIMEOUT_S
    clock.now += 600
    assert producer.tick() == 1
    assert sent[-1][0].name == "later"


def test_in_flight_claim_dedupes_reannounced_objects(redis_client: redis.Redis) -> None:
    producer, sent, clock = _producer(redis_client)
    obj = _announce(producer, "j", finished=clock.now - 2 * HOUR)
    assert producer.tick() == 1
    producer.watcher.on_object(producer.watcher.settings.rules[0], obj)  # resync
    assert producer.tick() == 0
    assert redis_client.ttl(keys.cleanup_inflight(obj["metadata"]["uid"])) > 0
    assert len(sent) == 1


def test_failed_objects_back_off_before_being_sent_again(redis_client: redis.Redis) -> None:
    producer, sent, clock = _producer(redis_client, backoff_base=20, backoff_cap=600)
    obj = _announce(producer, "flaky", finished=clock.now - 2 * HOUR)
    redis_client.set(keys.cleanup_backoff(obj["metadata"]["uid"]), 3)  # three failures so far
    assert producer.tick() == 0  # 20 * 2**3 = 160 s of backoff: held locally
    clock.now += 170
    assert producer.tick() == 1
    assert sent[0][0].name == "flaky"


def test_max_deletions_per_run_caps_each_resync_window(redis_client: redis.Redis) -> None:
    producer, sent, clock = _producer(redis_client, max_deletions_per_run=2, resync=600)
    for i in range(5):
        _announce(producer, f"j{i}", finished=clock.now - 2 * HOUR)
    assert producer.tick() == 2
    assert producer.tick() == 0
    clock.now += 600
    assert producer.tick() == 2
    assert len(sent) == 4
