"""Two beat replicas: only the RedBeat lock holder fires; a standby takes over after kill -9.

Real ``celery -A tasks beat`` processes against the session's private Redis. Every
task message carries ``origin`` = ``gen<pid>@host`` of the process that sent it, so
the queue itself shows which beat fired each entry. The lock timeout is lowered
through the ``beat.lock_timeout`` setting so the failover happens within the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from opsq.core import keys, signatures
from opsq.core.redis_server import free_port
from tests.deploy.util import wait_for

ROOT = Path(__file__).resolve().parents[2]
LOCK_TIMEOUT_S = 4


class Beat:
    def __init__(self, name: str, redis_url: str, tmp_path: Path) -> None:
        self.log_path = tmp_path / f"beat-{name}.log"
        self.port = free_port()
        # Never probed (no worker consumes the queue), but settings check that it exists.
        (tmp_path / "unused.yaml").write_text("targets: [{name: a, url: 'http://127.0.0.1:1/'}]\n")
        env = {
            **os.environ,
            "OPSQ_REDIS_URL": redis_url,
            "OPSQ_DATA_DIR": str(tmp_path / f"data-{name}"),
            "OPSQ_BEAT__LOCK_TIMEOUT": str(LOCK_TIMEOUT_S),
            "OPSQ_BEAT__MAX_LOOP_INTERVAL": "1",
            "OPSQ_PROBES__SETS__T__FILE": str(tmp_path / "unused.yaml"),
            "OPSQ_PROBES__SETS__T__INTERVAL": "1",
            "OPSQ_METRICS__PORT": str(self.port),
            "OPSQ_LOG_FORMAT": "json",
        }
        argv = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
                "--pidfile=", "-s", str(tmp_path / f"schedule-{name}")]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def has_lock(self) -> bool:
        return '"msg": "beat: Acquired lock"' in self.log()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except OSError as exc:
            return getattr(exc, "code", 0), str(exc)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def origins(client: redis.Redis) -> list[str]:
    """Senders (``gen<pid>``) of the probe-set messages in the queue, oldest first.

    kombu publishes with LPUSH (workers BRPOP), so the list's head is the newest.
    """
    out = []
    for raw in client.lrange(keys.QUEUE_PROBES, 0, -1):
        headers = json.loads(raw)["headers"]
        if headers["task"] == signatures.PROBE_SET:
            out.append(headers["origin"].split("@")[0])
    return out[::-1]


@pytest.mark.slow
def test_only_the_lock_holder_fires_and_a_standby_takes_over(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Beat A fires alone while B waits; after kill -9 of A, B takes the lock and fires."""
    a = Beat("a", redis_url, tmp_path)
    b: Beat | None = None
    try:
        assert wait_for(a.has_lock, 30), a.log()
        b = Beat("b", redis_url, tmp_path)
        assert wait_for(lambda: len(origins(redis_client)) >= 3, 30), a.log()
        assert not b.has_lock(), "the standby must wait while the leader renews its lock"
        assert set(origins(redis_client)) == {f"gen{a.proc.pid}"}
        assert b.proc.poll() is None
        # The standby is alive for Kubernetes while it waits for the lock.
        assert wait_for(lambda: b.get("/healthz")[0] == 200, 30), b.log()
        status, metrics = a.get("/metrics")
        assert status == 200
        assert 'opsq_beat_sent_total{task="opsq.probe_set"}' in metrics
        assert a.get("/readyz")[0] == 200

        fired_by_a = len(origins(redis_client))
        a.kill9()
        assert wait_for(b.has_lock, LOCK_TIMEOUT_S * 5), b.log()
        assert wait_for(lambda: f"gen{b.proc.pid}" in origins(redis_client), 30), b.log()
        senders = origins(redis_client)
        assert set(senders) == {f"gen{a.proc.pid}", f"gen{b.proc.pid}"}
        assert senders[:fired_by_a] == [f"gen{a.proc.pid}"] * fired_by_a
        # JSON logs from Celery's own loggers too (tasks.observability), one object a line.
        records = [json.loads(line) for line in b.log().splitlines() if line.startswith("{")]
        assert any(r["msg"] == "beat: Acquired lock" for r in records)
    finally:
        a.stop()
        if b is not None:
            b.stop()
