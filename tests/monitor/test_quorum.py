"""Quorum across locations, end to end: three real workers, one per location queue, each
bound to its own loopback address with ``probes.source_address``, and a target server
that fails requests from chosen source addresses. Runs are made by hand with
``opsq probe --set web --wait`` (the CLI as a user runs it); thresholds are 1, the most
sensitive setting, so a single mis-judged verdict would change the state at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from opsq.core import keys
from tests.monitor.conftest import TargetServer, target_state, wait_for, write_config
from tests.pipeline.conftest import run_cli
from tests.support.receivers import HttpReceiver
from tests.support.workers import Worker

SOURCE = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
DEADLINE_S = 60
"""A location with no result this long after a run started is missing: long, so a
loaded machine never makes a live location miss a run..."""
LAST_DEADLINE_S = 5
"""...and short for the run that waits for the stopped location (the deadline travels
with each run, from the config the submitting CLI read)."""


def probe_set(env: dict[str, str], redis_url: str) -> dict[str, Any]:
    """One run of set web by hand; its JSON summary."""
    done = run_cli(["probe", "--set", "web", "--wait", "--output", "json"], redis_url, env=env)
    assert done.returncode in (0, 1), done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def by_location(summary: dict[str, Any]) -> dict[str, tuple[bool, int | None]]:
    return {r["location"]: (r["up"], r["status_code"]) for r in summary["results"]}


def alerts_drained(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return not (client.llen(keys.QUEUE_ALERTS) or client.hlen("unacked")
                    or client.zcard(keys.MONITOR_OUTBOXES))  # fmt: skip
    finally:
        client.close()


def transitions(redis_url: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [(f["from"], f["to"]) for _, f in client.xrange(keys.monitor_transitions("web"))]
    finally:
        client.close()


@pytest.mark.slow
def test_quorum_of_three_locations_bound_to_their_own_addresses(
    redis_url: str, tmp_path: Path, target_server: TargetServer, receiver: HttpReceiver,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """Failing from one location of three changes nothing and alerts nobody; failing
    from two turns the target down and alerts once (with each location's result); a
    stopped location's worker is reported `missing`, is not counted as failing, and
    does not make the target flap. Each location probed from its own source address,
    and each location's result is in the JSON summary, `opsq runs show` and
    `opsq status`."""

    def config(deadline: float) -> dict[str, str]:
        return write_config(tmp_path / "opsq.yaml", {
            "probes": {"sets": {"web": {
                "interval": 3600, "deadline": deadline, "locations": ["a", "b", "c"],
                "failure_threshold": 1, "success_threshold": 1, "notify": ["hook"],
                "targets": [{"name": "svc", "url": f"{target_server.url}/svc",
                             "timeout": "2s"}]}}},
            "alerts": {"notifiers": {"hook": {"kind": "webhook", "url": f"{receiver.url}/hook"}}},
        })  # fmt: skip

    env = config(DEADLINE_S)
    queues = {loc: keys.location_queue(loc) for loc in SOURCE}
    queues["a"] += f",{keys.QUEUE_ALERTS}"  # a consumes notifications too; c is stopped later
    workers = {
        loc: start_worker(queues=queues[loc], concurrency=1,
                          env={**env, "OPSQ_PROBES__SOURCE_ADDRESS": SOURCE[loc]})
        for loc in SOURCE
    }  # fmt: skip

    first = probe_set(env, redis_url)
    assert by_location(first) == {"a": (True, 200), "b": (True, 200), "c": (True, 200)}
    assert set(target_server.hits) == set(SOURCE.values())  # each from its own address

    target_server.failing_from = {SOURCE["a"]}
    one = probe_set(env, redis_url)
    assert by_location(one) == {"a": (False, 503), "b": (True, 200), "c": (True, 200)}
    state = target_state(redis_url, "web", "svc")
    assert state is not None
    assert (state.state, state.last_verdict) == ("up", "up")
    assert transitions(redis_url) == [("unknown", "up")]

    target_server.failing_from = {SOURCE["a"], SOURCE["b"]}
    two = probe_set(env, redis_url)
    assert by_location(two) == {"a": (False, 503), "b": (False, 503), "c": (True, 200)}
    assert receiver.wait_for(lambda r: len(r.accepted) >= 1, 60)
    (fired,) = [x.json for x in receiver.accepted]
    assert (fired["event"], fired["labels"]["state"]) == ("firing", "down")
    verdicts = {k: v["verdict"] for k, v in fired["transition"]["locations"].items()}
    assert verdicts == {"a": "down", "b": "down", "c": "up"}

    target_server.failing_from = set()
    probe_set(env, redis_url)
    assert receiver.wait_for(lambda r: len(r.accepted) >= 2, 60)
    assert [x.json["event"] for x in receiver.accepted] == ["firing", "resolved"]

    workers["c"].stop()
    config(LAST_DEADLINE_S)
    target_server.failing_from = {SOURCE["a"]}
    late = probe_set(env, redis_url)
    assert by_location(late) == {"a": (False, 503), "b": (True, 200)}  # c: no result
    assert late["pending"] == 1
    state = target_state(redis_url, "web", "svc")
    assert state is not None
    assert (state.state, state.last_run) == ("up", late["run_id"])
    assert {k: v["verdict"] for k, v in state.locations.items()} == {
        "a": "down", "b": "up", "c": "missing"}  # fmt: skip
    assert transitions(redis_url) == [("unknown", "up"), ("up", "down"), ("down", "up")]
    for failing in ({SOURCE["b"]}, {SOURCE["a"]}):  # no flapping while c stays away
        target_server.failing_from = failing
        again = probe_set(env, redis_url)
        state = target_state(redis_url, "web", "svc")
        assert state is not None
        assert (state.state, state.last_run) == ("up", again["run_id"])
        assert state.locations["c"]["verdict"] == "missing"
    assert transitions(redis_url) == [("unknown", "up"), ("up", "down"), ("down", "up")]

    shown = run_cli(["runs", "show", late["run_id"]], redis_url, env=env)
    assert shown.returncode == 1  # a result never came
    rows = {tuple(line.split()[2:4]) for line in shown.stdout.splitlines()[1:] if line}
    assert {("a", "DOWN"), ("b", "up"), ("c", "MISSING")} <= rows, shown.stdout
    status = run_cli(["status", "--set", "web"], redis_url, env=env)
    assert "a=down b=up c=missing" in status.stdout, status.stdout
    wait_for(lambda: alerts_drained(redis_url), 30, "alerts queue and outboxes drained")
    assert len(receiver.received) == 2  # the firing and the resolved message, nothing else
