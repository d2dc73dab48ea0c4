"""A probe set with ``locations``: every batch goes to each location's queue, and the
run holds one result per (target, location), apart, until the monitor applies it.

Real workers join locations the way the README says (``-Q probes.<location>``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import redis
import yaml

from opsq.core import keys, signatures
from opsq.core.runs import RunStore
from opsq.core.settings import load_settings
from producers.probes import close_producer_app, producer_app
from tests.pipeline.conftest import LocalHTTP
from tests.support.workers import Worker


def test_a_set_with_two_locations_is_probed_from_both(
    start_worker: Callable[..., Worker],
    redis_url: str,
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """Three targets, locations a and b: six results, each target once per location,
    in file order; deliveries are counted per location; the monitor sees both."""
    config = tmp_path / "opsq.yaml"
    targets = [{"name": f"t{i}", "url": f"{http_server.url}/ok?i={i}"} for i in range(3)]
    config.write_text(yaml.safe_dump({"probes": {"sets": {"web": {
        "targets": targets, "interval": 3600, "locations": ["a", "b"]}}}}))  # fmt: skip
    env = {"OPSQ_CONFIG": str(config)}
    start_worker(queues=f"{keys.QUEUE_PROBES},{keys.location_queue('a')}", env=env)
    start_worker(queues=keys.location_queue("b"), env=env)
    app = producer_app(load_settings(config, redis_url=redis_url))
    try:
        app.send_task(signatures.PROBE_SET, kwargs={"name": "web"})
    finally:
        close_producer_app(app)

    store = RunStore(redis_client)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        (runs := store.list_runs()) and store.progress(runs[0]["run_id"]).finished
    ):
        time.sleep(0.1)
    run_id = store.list_runs()[0]["run_id"]
    summary = store.summary(run_id)
    assert summary is not None
    assert (summary["total"], summary["up"], summary["pending"]) == (6, 6, 0)
    assert [(r["name"], r["location"]) for r in summary["results"]] == [
        (f"t{i}", loc) for i in range(3) for loc in ("a", "b")
    ]
    assert http_server.hits["/ok"] == 6
    deliveries = redis_client.hgetall(keys.run_attempts(run_id))
    assert deliveries == {"b0@a": "1", "b0@b": "1"}
    while time.monotonic() < deadline and not redis_client.exists(keys.monitor_applied(run_id)):
        time.sleep(0.1)
    state = json.loads(redis_client.hget(keys.monitor_state("web"), f"t0|{targets[0]['url']}"))
    assert set(state["locations"]) == {"a", "b"}
