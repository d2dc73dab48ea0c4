"""`celery -A tasks beat` (RedBeat by default) runs the configured probe sets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml

from opsq.core import keys
from opsq.core.runs import RunStore
from tests.pipeline.conftest import LocalHTTP
from tests.support.workers import ROOT, Worker


@pytest.fixture
def start_beat(redis_url: str, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], None]]:
    procs: list[subprocess.Popen[bytes]] = []

    def _start(env: dict[str, str]) -> None:
        log = (tmp_path / "beat.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OPSQ_REDIS_URL": redis_url, **env},
        ))  # fmt: skip

    yield _start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_beat_runs_a_configured_probe_set_on_its_interval(
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], None],
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    targets_file = tmp_path / "web.yaml"
    targets_file.write_text(yaml.safe_dump({"targets": [
        {"name": "home", "url": f"{http_server.url}/ok"},
        {"name": "broken", "url": f"{http_server.url}/fail"},
    ]}))  # fmt: skip
    config = tmp_path / "opsq.yaml"
    config.write_text(yaml.safe_dump({"probes": {"sets": {
        "web": {"file": "web.yaml", "interval": 1},  # relative to the config file
        "inline": {"targets": [{"name": "inline", "url": f"{http_server.url}/ok"}],
                   "interval": 1},
    }}}))  # fmt: skip
    env = {"OPSQ_CONFIG": str(config), "OPSQ_RUNS__RETENTION__BEAT": "10m"}
    start_worker(env=env)
    start_beat(env)

    def runs_of(set_name: str) -> list[str]:
        ids = redis_client.zrange(keys.RUNS_INDEX, 0, -1)
        return [i for i in ids if redis_client.hget(keys.run_meta(i), "probe_set") == set_name]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(runs_of("web")) < 2 or not runs_of("inline")):
        time.sleep(0.2)
    web_runs = runs_of("web")
    assert len(web_runs) >= 2, (tmp_path / "beat.log").read_text()
    assert runs_of("inline")
    store = RunStore(redis_client)
    while time.monotonic() < deadline and not store.progress(web_runs[0]).finished:
        time.sleep(0.1)
    summary = store.summary(web_runs[0])
    assert summary is not None
    assert (summary["total"], summary["up"], summary["down"]) == (2, 1, 1)
    assert (summary["kind"], summary["probe_set"]) == ("beat", "web")
    # Beat runs keep the beat retention (10 minutes here), not the on-demand week.
    assert 0 < redis_client.ttl(keys.run_meta(web_runs[0])) <= 600
    assert 0 < redis_client.ttl(keys.run_packed(web_runs[0])) <= 600
    assert "scheduler -> tasks.beat.LockedRedBeatScheduler" in (tmp_path / "beat.log").read_text()


@pytest.mark.slow
def test_a_second_beat_never_rewrites_the_schedule_of_the_beat_running_it(
    start_worker: Callable[..., Worker],
    start_beat: Callable[[dict[str, str]], None],
    redis_client: redis.Redis,
    http_server: LocalHTTP,
    tmp_path: Path,
) -> None:
    """A beat started with another config (a standby replica, or one started by hand)
    waits for the lock; before, RedBeat wrote its schedule at start, without the lock,
    deleting the running beat's `probe-set:web` and `alerts-tick`: the set silently
    stopped running (hostile check 89 F6)."""
    config = tmp_path / "opsq.yaml"
    config.write_text(yaml.safe_dump({"probes": {"sets": {"web": {
        "targets": [{"name": "home", "url": f"{http_server.url}/ok"}], "interval": 1,
    }}}}))  # fmt: skip
    env = {"OPSQ_CONFIG": str(config), "OPSQ_RUNS__RETENTION__BEAT": "10m"}
    start_worker(env=env)
    start_beat(env)
    log = tmp_path / "beat.log"

    def web_runs() -> int:
        ids = redis_client.zrange(keys.RUNS_INDEX, 0, -1)
        return sum(redis_client.hget(keys.run_meta(i), "probe_set") == "web" for i in ids)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and web_runs() == 0:
        time.sleep(0.2)
    assert web_runs() > 0, log.read_text()
    (tmp_path / "other.yaml").write_text("probes: {sets: {}}\n")
    start_beat({"OPSQ_CONFIG": str(tmp_path / "other.yaml")})
    while time.monotonic() < deadline and log.read_text().count("beat: Starting...") < 2:
        time.sleep(0.1)
    assert log.read_text().count("beat: Starting...") == 2, log.read_text()
    before = web_runs()
    while time.monotonic() < deadline and web_runs() < before + 3:
        time.sleep(0.2)
    assert web_runs() >= before + 3, log.read_text()
    assert redis_client.exists(f"{keys.REDBEAT_PREFIX}probe-set:web")
