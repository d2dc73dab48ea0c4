"""End to end: real beat runs, a real worker, ``opsq web``, and headless Chromium.

Beat runs probe set ``web`` every second against a local HTTP server: ``api`` answers
200, ``broken`` 503, ``flappy`` 503 for its first runs and then 200, and ``secret``
carries a password and a token in its URL. Once a few runs are applied, beat and the
worker stop (so nothing moves), ``opsq web`` starts as a user starts it, and Chromium
loads the overview and flappy's page. The DOM must show each target's state and its
uptimes, which must equal a brute-force count over the raw verdicts in Redis, and no
secret. Screenshots go to ``artifacts/`` (the README's picture is one of them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis

from opsq.core import keys
from opsq.engines.history import raw, windows
from opsq.web.badges import format_percent
from tests.history.webproc import start_web
from tests.monitor.conftest import TargetServer, wait_for, write_config
from tests.support.tools import require_tool
from tests.support.workers import ROOT, Worker

ARTIFACTS = ROOT / "artifacts"
PASSWORD = "browser-test-password"
pytestmark = pytest.mark.slow


def start_beat(redis_url: str, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (tmp_path / "beat.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            **os.environ,
            "OPSQ_REDIS_URL": redis_url,
            "OPSQ_DATA_DIR": str(tmp_path / "beat-data"),
            "OPSQ_METRICS__PORT": "0",
            **env,
        },
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def samples(client: redis.Redis, name: str, url: str) -> list[raw.Sample]:
    entries = client.xrange(keys.history_raw("web", f"{name}|{url}"))
    return [raw.decode(entry_id, fields) for entry_id, fields in entries]


def brute_uptime(found: list[raw.Sample], window: str, now: float) -> float | None:
    kind, span = windows.periods(window, now)
    start = span.start * (3600 if kind == "h" else 86400)
    states = [s.state for s in found if s.at >= start and s.state in ("up", "degraded", "down")]
    return sum(s != "down" for s in states) / len(states) if states else None


class Rows(HTMLParser):
    """Per target row of the overview: data-state and the uptime cells by window."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: dict[str, str] | None = None
        self._cell: str | None = None
        self._name = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-target-id"):
            self._row = {"state": found.get("data-state") or ""}
        elif self._row is not None and tag == "td" and found.get("data-window"):
            self._cell = found["data-window"]
        elif self._row is not None and tag == "a":
            self._name = True

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row[self._cell] = data.strip()
        elif self._row is not None and self._name:
            self._row["name"] = data.strip()
            self._name = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._row.get("name", "?")] = self._row
            self._row = None


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("chromium")
    argv = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--window-size=1400,1000",
        *extra,
        url,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_browser_shows_states_and_uptimes_of_real_beat_runs(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    """Chromium's DOM of the overview and of a target page shows the states and uptimes
    the beat runs produced (equal to a brute-force count over the raw verdicts), the
    target page its incident, and no page shows the password or the token."""
    require_tool("chromium")
    server = TargetServer()
    server.codes.update({"/down": 503, "/flap": 503})
    host = server.url.removeprefix("http://")
    urls = {
        "api": f"{server.url}/svc",
        "broken": f"{server.url}/down",
        "flappy": f"{server.url}/flap",
        "secret": f"http://user:hunter2@{host}/svc?token=s3cret",
    }
    env = write_config(
        tmp_path / "opsq.yaml",
        {
            "probes": {
                "sets": {
                    "web": {
                        "interval": 1,
                        "failure_threshold": 1,
                        "success_threshold": 1,
                        "targets": [
                            {"name": n, "url": u, "timeout": "2s"} for n, u in urls.items()
                        ],
                    }
                }
            }
        },
    )
    client = redis.Redis.from_url(redis_url)
    worker = start_worker(env=env)
    beat = start_beat(redis_url, tmp_path, env)
    try:
        wait_for(lambda: len(samples(client, "flappy", urls["flappy"])) >= 3, 90, "3 runs")
        server.codes["/flap"] = 200
        wait_for(
            lambda: (
                [s.state for s in samples(client, "flappy", urls["flappy"])][-2:] == ["up", "up"]
            ),
            60,
            "flappy up twice",
        )
    finally:
        stop(beat)
    wait_for(lambda: not client.zcard(keys.MONITOR_OPEN_RUNS), 30, "runs applied")
    worker.stop()
    server.stop()
    now = time.time()
    found = {name: samples(client, name, url) for name, url in urls.items()}
    web = start_web(redis_url, tmp_path, {"OPSQ_WEB__PASSWORD": PASSWORD})
    try:
        base = web.url.replace("http://", f"http://opsq:{PASSWORD}@")
        dom = chromium(f"{base}/", tmp_path / "profile", "--dump-dom")
        rows = Rows()
        rows.feed(dom.stdout)
        assert set(rows.rows) == set(urls), dom.stderr[-2000:]
        expected_state = {"api": "up", "broken": "down", "flappy": "up", "secret": "up"}
        for name, row in rows.rows.items():
            assert row["state"] == expected_state[name]
            assert row["state"] == found[name][-1].state
            for window in ("24h", "7d", "30d"):
                assert row[window] == format_percent(brute_uptime(found[name], window, now)), (
                    name,
                    window,
                )
        assert rows.rows["flappy"]["24h"] not in ("100%", "0.00%")
        for secret in ("hunter2", "s3cret"):
            assert secret not in dom.stdout
        target_id = re.search(r'href="/sets/web/([0-9a-f]+)">flappy<', dom.stdout)
        assert target_id is not None
        page = chromium(
            f"{base}/sets/web/{target_id.group(1)}", tmp_path / "profile", "--dump-dom"
        ).stdout
        assert '<span class="pill up" id="state">up</span>' in page
        for window in ("24h", "7d", "30d", "90d"):
            cell = re.search(rf'data-window="{window}">([^<]+)<', page)
            assert cell is not None
            assert cell.group(1) == format_percent(brute_uptime(found["flappy"], window, now))
        assert page.count('class="incident"') == 1
        assert "<polygon" in page  # the latency-by-phase chart has data
        ARTIFACTS.mkdir(exist_ok=True)
        shots = {
            "status-overview.png": f"{base}/",
            "status-target.png": f"{base}/sets/web/{target_id.group(1)}",
        }
        for file_name, url in shots.items():
            chromium(url, tmp_path / "profile", f"--screenshot={ARTIFACTS / file_name}")
            assert (ARTIFACTS / file_name).stat().st_size > 10_000, file_name
    finally:
        web.stop()
        client.close()
