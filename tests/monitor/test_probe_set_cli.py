"""``opsq probe --set NAME``: a configured set run by hand updates target state as a
beat run does; bad invocations exit 2 naming what to fix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.monitor.conftest import TargetServer, target_state, write_config
from tests.pipeline.conftest import run_cli
from tests.support.workers import Worker


def test_a_set_run_by_hand_moves_target_state(
    redis_url: str, tmp_path: Path, target_server: TargetServer,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    """A set without locations (the `probes` queue, location `default`): the first run
    makes svc up; after the server fails it, one run (failure_threshold 1) makes it down
    with reason `status`, and the CLI exits 1 with the failing result in its JSON."""
    svc = {"name": "svc", "url": f"{target_server.url}/svc", "timeout": "2s"}
    env = write_config(tmp_path / "opsq.yaml", {"probes": {"sets": {"web": {
        "interval": 3600, "failure_threshold": 1, "targets": [svc]}}}})  # fmt: skip
    start_worker(env=env, concurrency=1)
    args = ["probe", "--set", "web", "--wait", "--output", "json", "--timeout", "60"]

    first = run_cli(args, redis_url, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["probe_set"] == "web"
    state = target_state(redis_url, "web", "svc")
    assert state is not None
    assert state.state == "up"

    target_server.codes["/svc"] = 500
    second = run_cli(args, redis_url, env=env)
    assert second.returncode == 1, second.stderr
    (result,) = json.loads(second.stdout)["results"]
    assert (result["up"], result["status_code"]) == (False, 500)
    state = target_state(redis_url, "web", "svc")
    assert state is not None
    assert (state.state, state.reason) == ("down", "status")
    assert state.last_run == json.loads(second.stdout)["run_id"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["probe"], "give a TARGETS_FILE or --set NAME"),
        (["probe", "targets.yaml", "--set", "web"], "give a TARGETS_FILE or --set NAME"),
        (["probe", "--set", "api"], "probe set 'api' is not defined under probes.sets of the "
                                    "config (known: web)"),
    ],
)  # fmt: skip
def test_probe_needs_one_known_source(
    args: list[str], expected: str, tmp_path: Path, redis_url: str
) -> None:
    """Neither or both of a file and --set, or an unknown set: exit 2 with the fix, and
    nothing is submitted."""
    env = write_config(tmp_path / "opsq.yaml", {"probes": {"sets": {"web": {
        "targets": [{"name": "a", "url": "http://127.0.0.1:1/"}]}}}})  # fmt: skip
    done = run_cli(args, redis_url, env=env)
    assert done.returncode == 2
    assert expected in done.stderr
    listed = run_cli(["runs", "list", "--output", "json"], redis_url, env=env)
    assert json.loads(listed.stdout) == []
