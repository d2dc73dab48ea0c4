"""Nothing lost, nothing counted twice: kill -9 mid-batch, and poison batches.

Both start workers with a short visibility timeout and short time limits (through the
same ``OPSQ_*`` variables an operator would use) so redelivery happens in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from opsq.core import keys
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


def _summary(client: redis.Redis, run_id: str, timeout: float) -> dict[str, object]:
    _wait_for(lambda: client.exists(keys.run_summary(run_id)) == 1, timeout, "the summary")
    return json.loads(client.get(keys.run_summary(run_id)))


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
    fast = [{"name": f"fast{i}", "url": f"{http_server.url}/ok?i={i}"} for i in range(5)]
    slow = [{"name": f"slow{i}", "url": f"{http_server.url}/slow?delay=2&i={i}"}
            for i in range(5)]  # fmt: skip
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
