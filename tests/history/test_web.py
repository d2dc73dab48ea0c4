"""``opsq web`` as a process: access rules, no secrets, bounded Redis round trips, API shape.

History comes from real applied runs (:class:`tests.history.sim.Sim`) in the session's
valkey-server; the server is ``python -m opsq web`` configured through its environment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsq.core.config.history import HistorySettings
from tests.history.sim import SECRETS, Sim
from tests.history.webproc import WebProc, start_web

PASSWORD = "pa55-word-for-tests"


def fill(redis_url: str, names: tuple[str, ...], set_name: str = "web") -> Sim:
    """Two days of runs every 20 minutes; 'bad' fails for an hour every 10 hours."""
    sim = Sim(redis_url, HistorySettings(), names=names, set_name=set_name)
    now = time.time() - 2 * 86400
    while now < time.time():
        sim.run(now, lambda n, run, t: (not (n == "bad" and run % 30 < 3), 0.02 + run % 7 / 100))
        now += 1200
    return sim


@pytest.fixture
def private(redis_url: str, tmp_path: Path) -> Iterator[tuple[WebProc, Sim]]:
    sim = fill(redis_url, ("good", "bad"))
    web = start_web(redis_url, tmp_path, {"OPSQ_WEB__PASSWORD": PASSWORD})
    yield web, sim
    web.stop()
    sim.close()


@pytest.fixture
def public(redis_url: str, tmp_path: Path) -> Iterator[tuple[WebProc, Sim]]:
    sim = fill(redis_url, ("good", "bad"))
    web = start_web(redis_url, tmp_path, {"OPSQ_WEB__PUBLIC": "true"})
    yield web, sim
    web.stop()
    sim.close()


def every_path(web: WebProc) -> list[str]:
    """The overview, then every target's page, API answers and badges."""
    _, _, body = web.get("/")
    ids = sorted(set(re.findall(r'data-target-id="([0-9a-f]+)"', body.decode())))
    assert len(ids) == 2
    paths = ["/", "/api/v1/status", "/api/v1/targets", "/api/v1/incidents"]
    for target in ids:
        base = f"web/{target}"
        paths += [
            f"/sets/{base}",
            f"/api/v1/targets/{base}",
            f"/badge/{base}/state.svg",
            f"/api/v1/targets/{base}/history",
            f"/badge/{base}/uptime.svg?window=7d",
            f"/api/v1/targets/{base}/history?resolution=hour&from=0",
        ]
    return paths


def test_private_by_default_401_without_the_password(private: tuple[WebProc, Sim]) -> None:
    """Every page, API route and badge answers 401 (with a Basic challenge) without
    credentials and with a wrong password, 200 with the configured ones; probes and
    metrics stay open and say nothing about targets."""
    web, _ = private
    for path in every_path(web):
        status, headers, _ = web.get(path, auth=False)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Basic")
        assert web.get(path, auth=("opsq", "wrong"))[0] == 401, path
        assert web.get(path)[0] == 200, path
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, body = web.get(path, auth=False)
        assert status == 200, path
        assert b"good" not in body
        assert b"example" not in body


def test_no_write_endpoint_without_auth(private: tuple[WebProc, Sim]) -> None:
    """POST/PUT/PATCH/DELETE anywhere: 401 without credentials, 405 with them."""
    web, _ = private
    for path in ("/", "/api/v1/targets", "/api/v1/status", "/api/v1/incidents"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert web.get(path, auth=False, method=method)[0] == 401, (method, path)
            assert web.get(path, method=method)[0] == 405, (method, path)


def test_public_mode_is_read_only_and_shows_no_secret(public: tuple[WebProc, Sim]) -> None:
    """web.public: every page, API answer and badge without a password; no target's
    password (user info) or token (query) in any of them; writes are 405."""
    web, _ = public
    paths = every_path(web)
    for path in paths:
        status, _, body = web.get(path, auth=False)
        assert status == 200, path
        for secret in SECRETS:
            assert secret.encode() not in body, (path, secret)
    _, _, target = web.get(paths[4], auth=False)
    assert re.search(rb"http://user:\*\*\*@(good|bad)\.example/health<", target)
    for method in ("POST", "PUT", "DELETE"):
        assert web.get("/api/v1/targets", auth=False, method=method)[0] == 405


def test_a_page_costs_a_bounded_number_of_round_trips(
    redis_url: str, tmp_path: Path, private: tuple[WebProc, Sim]
) -> None:
    """The overview costs 3 Redis round trips whether a set has 2 targets or 2 sets hold
    42; a target page 3 plus the id lookup; a repeated request within the cache time
    costs none."""
    web, _ = private
    small = web.get("/")[1]
    assert (small["X-Opsq-Cache"], small["X-Opsq-Redis-Roundtrips"]) == ("miss", "3")
    assert web.get("/")[1]["X-Opsq-Cache"] == "hit"
    assert web.get("/")[1]["X-Opsq-Redis-Roundtrips"] == "0"
    fill(redis_url, tuple(f"svc{i}" for i in range(40)), set_name="api").close()
    again = start_web(redis_url, tmp_path, {"OPSQ_WEB__PASSWORD": PASSWORD})
    try:
        status, headers, body = again.get("/")
        assert status == 200
        assert body.count(b'data-target-id="') == 42
        assert headers["X-Opsq-Redis-Roundtrips"] == "3"
        target = re.search(rb'href="/sets/api/([0-9a-f]+)"', body).group(1).decode()  # type: ignore[union-attr]
        headers = again.get(f"/sets/api/{target}")[1]
        assert int(headers["X-Opsq-Redis-Roundtrips"]) <= 4
    finally:
        again.stop()


def test_api_fields_are_the_documented_ones(private: tuple[WebProc, Sim]) -> None:
    """Status, targets, one target, history (raw and hourly) and incidents carry the
    field names the README documents, with the runs' states and uptimes."""
    web, _ = private
    status = json.loads(web.get("/api/v1/status")[2])
    assert set(status) == {"generated_at", "sets", "totals", "open_incidents"}
    assert status["totals"]["targets"] == 2
    targets = json.loads(web.get("/api/v1/targets")[2])["targets"]
    assert set(targets[0]) == {
        "id",
        "set",
        "name",
        "url",
        "state",
        "since",
        "reason",
        "detail",
        "last_run_at",
        "uptime",
        "latency_24h",
        "locations",
        "open_incident",
    }
    bad = next(t for t in targets if t["name"] == "bad")
    assert set(bad["uptime"]) == {"24h", "7d", "30d"}
    assert 0 < bad["uptime"]["7d"] < 1
    assert set(bad["latency_24h"]) == {"p50_s", "p95_s", "mean_s", "max_s", "count"}
    one = json.loads(web.get(f"/api/v1/targets/web/{bad['id']}")[2])["target"]
    assert set(one["uptime"]) == {"24h", "7d", "30d", "90d"}
    raw = json.loads(web.get(f"/api/v1/targets/web/{bad['id']}/history")[2])
    assert raw["resolution"] == "raw"
    assert set(raw["points"][0]) == {
        "at",
        "state",
        "verdict",
        "up",
        "reason",
        "latency_s",
        "status_code",
        "phases",
        "locations",
    }
    hourly = json.loads(web.get(f"/api/v1/targets/web/{bad['id']}/history?resolution=hour")[2])
    assert set(hourly["points"][0]) == {
        "start",
        "end",
        "runs",
        "up",
        "degraded",
        "down",
        "unknown",
        "uptime",
        "latency",
    }
    incidents = json.loads(web.get("/api/v1/incidents")[2])["incidents"]
    assert incidents
    assert set(incidents[0]) == {
        "id",
        "set",
        "target_id",
        "name",
        "url",
        "state",
        "started_at",
        "ended_at",
        "open",
        "duration_s",
        "reason",
        "detail",
        "locations",
    }
    assert web.get("/api/v1/targets/web/nope")[0] == 404
    assert web.get(f"/api/v1/targets/web/{bad['id']}/history?resolution=week")[0] == 400


def test_private_without_a_password_refuses_to_start(redis_url: str) -> None:
    """No web.password and not public: exit 2 naming the field and the fix."""
    env = {"OPSQ_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "opsq", "web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "web.password" in done.stderr
    assert "web.public" in done.stderr
