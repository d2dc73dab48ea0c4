"""End to end: `opsq up --demo` as a newcomer runs it, then SIGTERM.

One `opsq up --demo` subprocess (free ports, a temporary data dir, no Redis URL so the
embedded valkey-server starts) is shared by the tests of this module, which run in
file order; the last one stops it. Its config also turns on the log agent and shipper
(a log file in the temporary dir, a file sink) and the cleanup watcher, pointed at the
fake Kubernetes API server with a token bound to the Role the Helm chart renders. Proved:

- the demo probe set produces a finished run with both up and down targets;
- a line appended to a log file reaches the shipper's sink;
- the watcher works with exactly the chart's RBAC (no 403) and dry-run cleanup runs;
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
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsq.core.procs import group_members
from opsq.core.redis_server import free_port
from opsq.core.runs import RunStore
from tests.cleanup.objects import pod
from tests.deploy.chart import render_chart
from tests.deploy.util import processes_with_env, wait_for
from tests.fakekube.server import FakeKube
from tests.support.tools import require_tool

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
    app_log: Path = Path()
    sink: Path = Path()
    kube: FakeKube | None = None
    session: str = ""
    pgids: list[int] = field(default_factory=list)
    groups: dict[str, int] = field(default_factory=dict)

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
        self.session, self.pgids, self.groups = pids["session"], pids["pgids"], pids["children"]

    def supervisor_metric(self, name: str, child: str) -> float | None:
        url = next(u for u in self.metrics_urls if "supervisor" in self.url_owner(u))
        for line in http_get(url)[1].decode().splitlines():
            if line.startswith(f'{name}{{child="{child}"}} '):
                return float(line.split()[-1])
        return None

    def url_owner(self, url: str) -> str:
        """The banner line (child name first) that announced *url*."""
        return next(line.split()[0] for line in self.output().splitlines() if url in line)


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
    except OSError:  # not listening yet, or a child restarting: callers poll
        return 0, b""


CLEANUP = {"rules": [{"name": "old-pods", "resource": "v1/pods", "when": {"older_than": "1h"}}]}


def chart_watcher_kubeconfig(kube: FakeKube, path: Path) -> Path:
    """A kubeconfig whose token is bound to the watcher Role the chart renders."""
    issued = kube.auth.load_documents(render_chart({"cleanup": CLEANUP}))
    tokens = [token for token, user in issued if "opsq-watcher" in str(user)]
    assert len(tokens) == 1, issued
    return kube.kubeconfig(path, tokens[0])


def write_config(work: Path, kube: FakeKube) -> Path:
    (work / "applogs").mkdir()
    (work / "applogs" / "app.log").write_text("first line\n")
    config = {
        "logs": {
            "agent": {"paths": [str(work / "applogs" / "*.log")],
                      "checkpoint_dir": str(work / "checkpoints")},
            "shipper": {"sink": {"type": "file", "path": str(work / "shipped.jsonl")}},
        },
        "cleanup": {**CLEANUP, "kubeconfig": str(chart_watcher_kubeconfig(kube, work / "kc"))},
    }  # fmt: skip
    path = work / "opsq.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, fake_kube_server: FakeKube) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("up")
    data_dir = work / "data"
    fake_kube_server.reset()
    fake_kube_server.create("v1/pods", pod("old", created=0.0), "default")
    config = write_config(work, fake_kube_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSQ_")}
    argv = [
        sys.executable, "-m", "opsq", "up", "--demo", "--config", str(config),
        "--data-dir", str(data_dir),
        "--redis-port", "0", "--metrics-port", "0", "--flower-port", str(free_port()),
        "--stop-timeout", str(STOP_TIMEOUT_S),
    ]  # fmt: skip
    out_path = work / "up.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Up(proc, out_path, data_dir, app_log=work / "applogs" / "app.log",
                 sink=work / "shipped.jsonl", kube=fake_kube_server)  # fmt: skip
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
        fake_kube_server.reset()


def demo_summary(redis_url: str) -> dict[str, Any] | None:
    store = RunStore.from_url(redis_url)
    try:
        for run in store.list_runs(100):
            if run["up"] and run["down"] and run["finished_at"] is not None:
                return store.summary(run["run_id"])
    finally:
        store.close()
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
    # The first run is queued as soon as a worker is ready, not at beat's first tick.
    assert "demo: first run of the demo probe set queued" in up.output()


def test_banner_commands_list_the_demo_run_from_another_shell(up: Up) -> None:
    """The banner's follow-up lines (an export for the non-default Redis port, then
    `runs list`), pasted into a fresh shell in the directory `opsq up` ran in, with no
    OPSQ_* variable and no virtualenv on PATH, list the demo run."""
    lines = up.output().splitlines()
    start = next(i for i, line in enumerate(lines) if "from another shell" in line)
    commands = [line.split("#")[0].strip() for line in lines[start + 1 : start + 3]]
    assert commands[0] == f"export OPSQ_REDIS_URL={up.redis_url}", lines[start:]
    assert " runs list" in commands[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    listed = subprocess.run(
        ["bash", "-c", "\n".join(commands)],
        cwd=up.out_path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "demo" in listed.stdout, listed.stdout


def test_agent_and_shipper_carry_a_log_line_to_the_sink(up: Up) -> None:
    """Configured log paths start agent + shipper; an appended line reaches the file sink."""
    with up.app_log.open("a") as log:
        log.write("second line\n")

    def shipped() -> list[str]:
        if not up.sink.exists():
            return []
        return [json.loads(line)["line"] for line in up.sink.read_text().splitlines()]

    assert wait_for(lambda: "second line" in shipped(), 60), up.output()
    assert shipped().count("first line") == 1


def test_watcher_runs_with_the_charts_rbac_and_dry_runs_cleanup(up: Up) -> None:
    """Cleanup rules start the watcher; with the chart's Role it lists and watches pods
    without a single 403, the old pod is a would-delete in dry run, and stays."""
    assert up.kube is not None

    def would_delete() -> bool:
        return any("would_delete" in http_get(url)[1].decode() for url in up.metrics_urls)

    assert wait_for(would_delete, 60), up.output()
    codes = {code for (_verb, _resource, code) in up.kube.request_counts()}
    assert 403 not in codes
    assert up.kube.get("v1/pods", "old", "default")["metadata"]["name"] == "old"


def test_flower_rejects_anonymous_and_accepts_the_printed_credentials(up: Up) -> None:
    """401 without credentials, 401 with a wrong password, 200 with the printed ones."""
    assert http_get(f"{up.flower_url}/tasks")[0] == 401
    assert http_get(f"{up.flower_url}/api/workers")[0] == 401
    assert http_get(f"{up.flower_url}/tasks", (up.flower_user, "wrong"))[0] == 401
    assert http_get(f"{up.flower_url}/tasks", (up.flower_user, up.flower_password))[0] == 200


def test_status_page_from_the_banner_is_private_and_shows_the_demo_set(up: Up) -> None:
    """The banner's status page answers 401 without credentials; with the printed ones
    it lists the demo set's targets with their states once a run is applied."""
    found = re.search(r"web\s+(http://\S+)\s+status page, user '([^']+)', password (\S+)",
                      up.output())  # fmt: skip
    assert found is not None, up.output()
    url, user, password = found.groups()
    assert http_get(url)[0] == 401
    assert wait_for(lambda: b'data-state="up"' in http_get(url, (user, password))[1], 90)
    page = http_get(url, (user, password))[1].decode()
    assert ">healthy<" in page
    assert 'data-state="down"' in page
    ps = subprocess.run(
        [require_tool("ps"), "-eo", "args"], capture_output=True, text=True, check=True
    )
    assert password not in ps.stdout


def test_password_is_not_visible_in_the_process_list(up: Up) -> None:
    """No process's command line carries Flower's password."""
    ps = subprocess.run(
        [require_tool("ps"), "-eo", "args"], capture_output=True, text=True, check=True
    )
    assert up.flower_password not in ps.stdout


@pytest.mark.timeout(300)  # each Chromium start takes seconds on a loaded machine
def test_headless_chromium_sees_opsq_tasks_in_flower(up: Up) -> None:
    """A real browser logged in to Flower lists opsq.probe_set and opsq.probe_batch."""
    chromium = require_tool("chromium")
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
    dumps: list[subprocess.CompletedProcess[str]] = []

    def dump_lists_the_tasks() -> bool:
        # The table is filled by an XHR (/tasks/datatable): on a loaded machine it can
        # miss the virtual time budget, so a page without rows is loaded again.
        dumps.append(
            subprocess.run(
                [*common, "--dump-dom", f"{url}/tasks"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        )
        return "opsq.probe_batch" in dumps[-1].stdout

    assert wait_for(dump_lists_the_tasks, 150), dumps[-1].stderr[-2000:]
    assert "opsq.probe_set" in dumps[-1].stdout
    shot = ARTIFACTS / "flower-tasks.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", f"{url}/tasks"], capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000, "the screenshot should show the task table"
    print(f"screenshot: {shot}")


def test_every_metrics_endpoint_passes_promtool(up: Up) -> None:
    """Each announced /metrics (workers) and Flower's /metrics is valid exposition format,
    and every /readyz answers (the supervisor's with Redis memory in it)."""
    promtool = require_tool("promtool")
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
    # The supervisor's /readyz reports Redis memory against its limit (warned past 80%).
    supervisor = next(u for u in up.metrics_urls if "supervisor" in up.url_owner(u))
    ready = json.loads(http_get(supervisor.removesuffix("/metrics") + "/readyz")[1])
    assert ready["children"] is True
    assert ready["redis_memory"]["used_bytes"] > 0


def finished_runs(redis_url: str) -> int:
    store = RunStore.from_url(redis_url)
    try:
        return sum(1 for run in store.list_runs(1000) if run["finished_at"] is not None)
    finally:
        store.close()


def test_a_killed_worker_is_restarted_and_work_continues(up: Up) -> None:
    """kill -9 of worker-1's whole group: the supervisor restarts it (metric says so) and
    the next beat tick's run still finishes."""
    old_group = up.groups["worker-1"]
    os.killpg(old_group, signal.SIGKILL)
    assert wait_for(
        lambda: up.supervisor_metric("opsq_up_child_restarts_total", "worker-1") == 1.0, 60
    ), up.output()
    assert "worker-1 exited with code -9" in up.output()
    pids = json.loads((up.data_dir / "up.pids").read_text())
    assert pids["children"]["worker-1"] != old_group
    assert up.supervisor_metric("opsq_up_child_up", "worker-1") == 1.0
    before = finished_runs(up.redis_url)
    assert wait_for(lambda: finished_runs(up.redis_url) > before, 90), up.output()


def test_sigterm_stops_everything_within_the_bound_and_leaves_nothing(up: Up) -> None:
    """SIGTERM: `opsq up` exits 0 within its stop bound; no process of the run survives."""
    up.parse_banner()  # pick up the restarted worker's process group
    assert up.pgids
    assert processes_with_env(f"OPSQ_UP_SESSION={up.session}")
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(STOP_TIMEOUT_S + 10) == 0, up.output()
    assert "opsq up: stopped" in up.output()
    assert all(group_members(pgid) == [] for pgid in up.pgids)
    assert processes_with_env(f"OPSQ_UP_SESSION={up.session}") == []
    assert not (up.data_dir / "up.pids").exists()
