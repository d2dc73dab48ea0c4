"""Fixtures of the monitoring tests: a target server, receivers, Alertmanager, beat.

:class:`TargetServer` answers ``/svc`` with the status in ``codes`` (so a test turns a
target down and up again), ``/slow`` after ``slow_s`` seconds, and any path with 503
to clients whose source address is in ``failing_from`` (the quorum test binds workers
to 127.0.0.2-4 and fails chosen ones). :class:`Alertmanager` is Debian's
prometheus-alertmanager on a free port, with its own webhook receiver pointed at a
local :class:`HttpReceiver`, so a test sees what Alertmanager itself concluded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from opsq.core.config.alerts import AlertsSettings
from opsq.core.redis_server import free_port
from opsq.engines.monitor.state import TargetState
from opsq.engines.monitor.store import MonitorStore
from tests.support.receivers import HttpReceiver
from tests.support.tools import require_tool
from tests.support.workers import ROOT


class TargetServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.codes: dict[str, int] = {"/svc": 200}
        self.slow_s = 0.0
        self.failing_from: set[str] = set()
        self.hits: Counter[str] = Counter()
        self.httpd = ThreadingHTTPServer((host, 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                client = self.client_address[0]
                server.hits[client] += 1
                if self.path == "/slow":
                    time.sleep(server.slow_s)
                code = server.codes.get(self.path, 200)
                if client in server.failing_from:
                    code = 503
                body = b"ok\n" if code < 400 else b"failing\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def target_server() -> Iterator[TargetServer]:
    server = TargetServer()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


class Alertmanager:
    """prometheus-alertmanager on a free port; its webhook goes to ``receiver``."""

    def __init__(self, tmp_path: Path, receiver: HttpReceiver) -> None:
        binary = require_tool("prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "route": {"receiver": "opsq-test", "group_by": ["alertname", "opsq_target"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "opsq-test", "webhook_configs": [
                {"url": f"{receiver.url}/alertmanager", "send_resolved": True}]}],
        }  # fmt: skip
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (tmp_path / "alertmanager.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(self._ready, 30, "alertmanager ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts the API lists (active ones; resolved alerts drop out of the list)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        return list(response.json())

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Callable[[HttpReceiver], Alertmanager]]:
    started: list[Alertmanager] = []

    def _start(receiver: HttpReceiver) -> Alertmanager:
        started.append(Alertmanager(tmp_path, receiver))
        return started[-1]

    yield _start
    for am in started:
        am.stop()


@pytest.fixture
def start_beat(redis_url: str, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], None]]:
    """``celery -A tasks beat`` subprocesses (RedBeat), stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def _start(env: dict[str, str]) -> None:
        log = (tmp_path / "beat.log").open("ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OPSQ_REDIS_URL": redis_url,
                 "OPSQ_DATA_DIR": str(tmp_path / "beat-data"), "OPSQ_METRICS__PORT": "0",
                 **env},
        ))  # fmt: skip

    yield _start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll *check* until it returns something truthy; fail naming *what*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def target_state(redis_url: str, set_name: str, name: str) -> TargetState | None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = MonitorStore(client, AlertsSettings()).states([set_name])[set_name]
    finally:
        client.close()
    return next((s for s in found if s.name == name), None)


def write_config(path: Path, config: dict[str, Any]) -> dict[str, str]:
    """Write *config* as the opsq config file; return the env naming it."""
    path.write_text(yaml.safe_dump(config))
    return {"OPSQ_CONFIG": str(path)}
