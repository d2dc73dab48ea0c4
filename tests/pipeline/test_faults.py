"""Nothing lost, nothing counted twice: kill -9 mid-batch, and poison batches.

Both start workers with a short visibility timeout and short time limits (through the
same ``OPSQ_*`` variables an operator would use) so redelivery happens in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from opsq.core import keys
from opsq.core.redis_server import RedisServer
from opsq.core.runs import RunStore
from tests.pipeline.conftest import LocalHTTP, run_cli, write_targets
from tests.support.workers import Worker

FAST_REDELIVERY = {
    "OPSQ_VISIBILITY_TIMEOUT": "6",
    "OPSQ_PROBES__SOFT_TIME_LIMIT": "4",
    "OPSQ_PROBES__TIME_LIMIT": "5",
}


def _submit(redis_url: str, path: Path, batch_size: int) -> str:
    proc = run_cli(
        ["probe", str(path)], redis_url, env={"OPSQ_PROBES__BATCH_SIZE": str(batch_size)}
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _fast_and_slow(
    http_server: LocalHTTP, n: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """*n* targets that answer at once (``/ok``) and *n* that take 2 s (``/slow``)."""
    fast = [{"name": f"fast{i}", "url": f"{http_server.url}/ok?i={i}"} for i in range(n)]
    slow = [{"name": f"slow{i}", "url": f"{http_server.url}/slow?delay=2&i={i}"}
            for i in range(n)]  # fmt: skip
    return fast, slow


def _summary(client: redis.Redis, run_id: str, timeout: float) -> dict[str, Any]:
    store = RunStore(client)
    _wait_for(lambda: store.progress(run_id).finished, timeout, "the run to complete")
    summary = store.summary(run_id)
    assert summary is not None
    return summary


@pytest.mark.slow
def test_kill_9_mid_batch_every_target_gets_exactly_one_result(
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """Fast targets finish, slow ones are in flight when the whole worker is killed.

    The redelivered batch must skip the finished targets (each /ok path is requested
    exactly once) and probe only the rest; the aggregate has one result per target.
    """
    fast, slow = _fast_and_slow(http_server, 5)
    path = write_targets(tmp_path / "t.yaml", fast + slow, timeout="3s")
    first = start_worker(env=FAST_REDELIVERY)
    run_id = _submit(redis_url, path, batch_size=10)

    results = keys.run_results(run_id)
    _wait_for(lambda: redis_client.hlen(results) == 5, 30, "the fast results")
    assert http_server.hits["/slow"] > 0  # the slow probes are in flight right now
    first.kill9()
    assert redis_client.hlen(results) == 5

    start_worker(env=FAST_REDELIVERY)
    summary = _summary(redis_client, run_id, timeout=60)
    names = [r["name"] for r in summary["results"]]
    assert names == [t["name"] for t in fast + slow]  # one result each, none twice
    assert (summary["total"], summary["up"], summary["down"]) == (10, 10, 0)
    assert redis_client.hget(keys.run_attempts(run_id), "b0") == "2"
    assert http_server.hits["/ok"] == 5  # finished targets were not probed again


@pytest.mark.slow
def test_poison_batch_is_given_up_after_max_redeliveries(
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """A batch whose process dies every time is abandoned after N redeliveries.

    Each delivery's pool process is killed with SIGKILL; ``reject_on_worker_lost``
    requeues the message at once. With ``max_redeliveries: 2`` the fourth delivery
    reports the unfinished targets down instead of probing, so the run completes.
    """
    targets = [
        {"name": "done-first", "url": f"{http_server.url}/ok"},
        {"name": "hangs", "url": f"{http_server.url}/slow?delay=30", "timeout": "60s"},
    ]
    path = write_targets(tmp_path / "t.yaml", targets)
    env = {
        "OPSQ_PROBES__MAX_REDELIVERIES": "2",
        "OPSQ_PROBES__SOFT_TIME_LIMIT": "100",
        "OPSQ_PROBES__TIME_LIMIT": "110",
    }
    worker = start_worker(env=env)
    run_id = _submit(redis_url, path, batch_size=2)
    deliveries = keys.run_attempts(run_id)
    for delivery in (1, 2, 3):
        _wait_for(lambda d=delivery: redis_client.hget(deliveries, "b0") == str(d)
                  and http_server.hits["/slow"] >= d, 30, f"delivery {delivery}")  # fmt: skip
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)

    summary = _summary(redis_client, run_id, timeout=30)
    by_name = {r["name"]: r for r in summary["results"]}
    assert by_name["done-first"]["up"] is True
    assert by_name["hangs"]["up"] is False
    assert by_name["hangs"]["error"] == "gave up after 3 deliveries"
    assert redis_client.hget(deliveries, "b0") == "4"
    assert http_server.hits["/ok"] == 1
    assert http_server.hits["/slow"] == 3  # the fourth delivery probed nothing


@pytest.mark.slow
def test_batch_deadline_reports_still_running_probes_down(
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """A probe allowed longer than the batch may run is cut at 90% of the soft limit."""
    targets = [
        {"name": "quick", "url": f"{http_server.url}/ok"},
        {"name": "stuck", "url": f"{http_server.url}/slow?delay=20", "timeout": "60s"},
    ]
    path = write_targets(tmp_path / "t.yaml", targets)
    start_worker(env={"OPSQ_PROBES__SOFT_TIME_LIMIT": "2", "OPSQ_PROBES__TIME_LIMIT": "4"})
    run_id = _submit(redis_url, path, batch_size=2)
    summary = _summary(redis_client, run_id, timeout=30)
    by_name = {r["name"]: r for r in summary["results"]}
    assert by_name["quick"]["up"] is True
    assert by_name["stuck"]["up"] is False
    assert by_name["stuck"]["error_kind"] == "timeout"
    assert (
        "batch deadline (1.8s, from probes.soft_time_limit) exceeded" in by_name["stuck"]["error"]
    )
    assert redis_client.hget(keys.run_attempts(run_id), "b0") == "1"  # no redelivery needed


@pytest.mark.slow
def test_redis_outage_mid_batch_retries_and_loses_nothing(
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_server: RedisServer,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """Redis dies while probes are in flight and comes back (AOF) seconds later.

    ``opsq probe --wait`` runs throughout. The slow results cannot be written: the
    batch maps that to a TemporaryError and asks Celery to retry. The retry cannot be
    published either (Redis is gone), so the message stays un-acknowledged in the AOF
    and comes back after the visibility timeout; the run completes with exactly one
    result per target, the finished ones are not probed again, and the waiting CLI
    prints the summary.
    """
    fast, slow = _fast_and_slow(http_server, 3)
    path = write_targets(tmp_path / "t.yaml", fast + slow, timeout="5s")
    worker = start_worker(env=FAST_REDELIVERY)
    waiting = subprocess.Popen(
        [sys.executable, "-c", "from opsq.cli.main import main; raise SystemExit(main())",
         "probe", str(path), "--wait", "--output", "json", "--timeout", "90"],
        env={**os.environ, "OPSQ_REDIS_URL": redis_url, "OPSQ_PROBES__BATCH_SIZE": "6"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    _wait_for(lambda: client.zcard(keys.RUNS_INDEX) == 1, 30, "the run")
    run_id = client.zrange(keys.RUNS_INDEX, 0, 0)[0]
    _wait_for(lambda: client.hlen(keys.run_results(run_id)) == 3, 30, "the fast results")
    time.sleep(1.2)  # appendfsync everysec: let the AOF hold what was acknowledged
    redis_server.kill9()
    time.sleep(4)  # the slow probes finish while Redis is gone
    redis_server.start()
    # Celery's main process may itself die on the broker loss (an AttributeError in
    # kombu's restore of unacked messages): a supervisor restarts it, so does this test.
    start_worker(env=FAST_REDELIVERY)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    summary = _summary(client, run_id, timeout=60)
    assert [r["name"] for r in summary["results"]] == [t["name"] for t in fast + slow]
    assert (summary["up"], summary["down"]) == (6, 0)
    assert http_server.hits["/ok"] == 3
    assert "retrying" in worker.log()
    # `opsq probe --wait` kept polling through the outage and printed the same summary.
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert json.loads(out)["results"] == summary["results"]


@pytest.mark.slow
def test_a_retry_that_cannot_be_published_hands_the_batch_back(
    start_worker: Callable[..., Worker],
    redis_client: redis.Redis,
    redis_url: str,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """Redis refuses writes (OOM at ``maxmemory``, as during a restart it refuses
    connections) while a batch is in flight, and the worker stays up.

    The batch's result write fails, so it asks Celery to retry, and the retry cannot be
    published either. Celery then rejects the message *without* requeue, which deletes
    it from kombu's ``unacked`` hash (deletes pass under OOM; after a restart they pass
    once Redis answers): the batch was gone and the run never completed (hostile check
    89 F5: a 4 s Redis restart under two live workers left 191 of 3,000 targets without
    a result). Now the message is handed back and the run completes. (Under OOM kombu's
    requeue is refused too and Celery's main process exits on it: a supervisor restarts
    it, this test starts a second worker, and the message, never deleted, returns after
    the visibility timeout.)
    """
    fast, slow = _fast_and_slow(http_server, 3)
    path = write_targets(tmp_path / "t.yaml", fast + slow, timeout="5s")
    worker = start_worker(env=FAST_REDELIVERY)
    run_id = _submit(redis_url, path, batch_size=6)
    _wait_for(lambda: redis_client.hlen(keys.run_results(run_id)) == 3, 30, "the fast results")
    redis_client.config_set("maxmemory", "1")  # every write refused, deletes allowed
    try:
        _wait_for(lambda: "retry not published" in worker.log()
                  or "reject requeue=False" in worker.log(), 30, "the failed retry")  # fmt: skip
        time.sleep(1)  # the main process acts on the reject
    finally:
        redis_client.config_set("maxmemory", "0")
    start_worker(env=FAST_REDELIVERY)  # as a supervisor would, should the first have exited
    summary = _summary(redis_client, run_id, timeout=60)
    assert (summary["up"], summary["down"]) == (6, 0)
    assert http_server.hits["/ok"] == 3  # the finished ones were not probed again
