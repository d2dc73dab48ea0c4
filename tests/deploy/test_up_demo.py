"""End to end: `opsq up --demo` as a newcomer runs it, then SIGTERM.

One `opsq up --demo` subprocess (free ports, a temporary data dir, no Redis URL so the
embedded valkey-server starts) is shared by the tests of this module, which run in
file order; the last one stops it. Proved here:

- the demo probe set produces a finished run with both up and down targets;
- Flower answers 401 without credentials and 200 with the printed ones, and a real
  headless Chromium logged in with them shows opsq's task names (screenshot kept in
  ``artifacts/``);
- every /metrics endpoint opsq up announces (and Flower's) passes ``promtool check
  metrics``; /healthz and /readyz answer 200;
- SIGTERM stops everything within the stop bound and leaves no process behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from opsq.core.procs import group_members
from opsq.core.redis_server import free_port
from tests.deploy.util import processes_with_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
STOP_TIMEOUT_S = 20

pytestmark = pytest.mark.slow


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    out_path: Path
    data_dir: Path
    redis_url: str = ""
    flower_url: str = ""
    flower_user: str = ""
    flower_password: str = ""
    metrics_urls: list[str] = field(default_factory=list)
    session: str = ""
    pgids: list[int] = field(default_factory=list)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def parse_banner(self) -> None:
        text = self.output()
        self.redis_url = re.search(r"redis\s+(redis://\S+)", text).group(1)  # type: ignore[union-attr]
        flower = re.search(r"flower\s+(http://\S+)\s+user '([^']+)', password (\S+)", text)
        assert flower is not None, text
        self.flower_url, self.flower_user, self.flower_password = flower.groups()
        self.metrics_urls = re.findall(r"(http://\S+/metrics)", text)
        pids = json.loads((self.data_dir / "up.pids").read_text())
        self.session, self.pgids = pids["session"], pids["pgids"]


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("up")
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    argv = [
        sys.executable, "-m", "opsq", "up", "--demo", "--data-dir", str(data_dir),
        "--redis-port", "0", "--metrics-port", "0", "--flower-port", str(free_port()),
        "--stop-timeout", str(STOP_TIMEOUT_S),
    ]  # fmt: skip
    out_path = work / "up.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Up(proc, out_path, data_dir)
    try:
        assert wait_for(lambda: "logs " in running.output() or proc.poll() is not None, 60)
        assert proc.poll() is None, running.output()
        running.parse_banner()
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pgid in running.pgids:
            for pid in group_members(pgid):
                os.kill(pid, signal.SIGKILL)


def demo_summary(redis_url: str) -> dict[str, object] | None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for key in client.scan_iter("opsq:run:*:summary"):
            summary = json.loads(client.get(key) or "{}")
            if summary.get("up") and summary.get("down") and summary.get("pending") == 0:
                return summary  # type: ignore[no-any-return]
    finally:
        client.close()
    return None


def test_demo_probe_results_appear_with_up_and_down_targets(up: Up) -> None:
    """Within a minute a finished demo run holds healthy (up) and failing (down) targets."""
    assert wait_for(lambda: demo_summary(up.redis_url) is not None, 90), up.output()
    summary = demo_summary(up.redis_url)
    assert summary is not None
    states = {r["name"]: r["up"] for r in summary["results"]}  # type: ignore[attr-defined]
    assert states["healthy"] is True
    assert states["failing"] is False
    assert states["flaky"] is True, "retries must turn the flaky endpoint's 503s into success"


def test_flower_rejects_anonymous_and_accepts_the_printed_credentials(up: Up) -> None:
    """401 without credentials, 401 with a wrong password, 200 with the printed ones."""
    assert http_get(f"{up.flower_url}/tasks")[0] == 401
    assert http_get(f"{up.flower_url}/api/workers")[0] == 401
    assert http_get(f"{up.flower_url}/tasks", (up.flower_user, "wrong"))[0] == 401
    assert http_get(f"{up.flower_url}/tasks", (up.flower_user, up.flower_password))[0] == 200


def test_password_is_not_visible_in_the_process_list(up: Up) -> None:
    """No process's command line carries Flower's password."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert up.flower_password not in ps.stdout


def test_headless_chromium_sees_opsq_tasks_in_flower(up: Up) -> None:
    """A real browser logged in to Flower lists opsq.probe_set and opsq.probe_batch."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian package chromium is required (.ci/run installs it)"
    assert wait_for(lambda: demo_summary(up.redis_url) is not None, 90)
    ARTIFACTS.mkdir(exist_ok=True)
    profile = up.data_dir.parent / "chromium-profile"
    url = up.flower_url.replace("http://", f"http://{up.flower_user}:{up.flower_password}@")
    common = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=8000",
        "--window-size=1400,900",
    ]  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", f"{url}/tasks"], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert "opsq.probe_batch" in dom.stdout, dom.stderr[-2000:]
    assert "opsq.probe_set" in dom.stdout
    shot = ARTIFACTS / "flower-tasks.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", f"{url}/tasks"], capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000, "the screenshot should show the task table"
    print(f"screenshot: {shot}")


def test_every_metrics_endpoint_passes_promtool(up: Up) -> None:
    """Each announced /metrics (workers) and Flower's /metrics is valid exposition format."""
    promtool = shutil.which("promtool")
    assert promtool, "Debian package prometheus is required (.ci/run installs it)"
    urls = [*up.metrics_urls, f"{up.flower_url}/metrics"]
    assert len(urls) >= 2
    for url in urls:
        status, body = http_get(url)
        assert status == 200, url
        assert body.strip(), url
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                               check=False)  # fmt: skip
        assert check.returncode == 0, (url, check.stdout, check.stderr)
    for url in up.metrics_urls:
        base = url.removesuffix("/metrics")
        assert http_get(f"{base}/healthz")[0] == 200
        assert http_get(f"{base}/readyz")[0] == 200


def test_sigterm_stops_everything_within_the_bound_and_leaves_nothing(up: Up) -> None:
    """SIGTERM: `opsq up` exits 0 within its stop bound; no process of the run survives."""
    assert up.pgids
    assert processes_with_env(f"OPSQ_UP_SESSION={up.session}")
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(STOP_TIMEOUT_S + 10) == 0, up.output()
    assert "opsq up: stopped" in up.output()
    assert all(group_members(pgid) == [] for pgid in up.pgids)
    assert processes_with_env(f"OPSQ_UP_SESSION={up.session}") == []
    assert not (up.data_dir / "up.pids").exists()
