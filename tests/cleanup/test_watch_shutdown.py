"""`opsq watch --local` stops within its grace on SIGTERM, API down or not (defect 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cleanup.conftest import JOBS, add
from tests.cleanup.objects import job
from tests.fakekube.server import FakeKube

DAY = 86400.0
GRACE = 3.0
BACKLOG = 500
HANG = GRACE + 2


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, f"opsq watch exited early waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["up", "503", "hanging"])
def test_sigterm_mid_backlog_stops_within_the_grace_period(
    fake_kube: FakeKube,
    kubeconfig_path: Callable[..., Path],
    write_config: Callable[..., Path],
    tmp_path: Path,
    api: str,
) -> None:
    hung_at = 0.0
    """500 due Jobs at 20 deletions/s (25 s of work): SIGTERM after the first deletions must
    end the process within `shutdown_grace` (main kept going for 44 s, and with the API
    down for over 90 s, ignoring a second SIGTERM too)."""
    now = time.time()
    for i in range(BACKLOG):
        add(fake_kube, job(f"j{i:03d}", namespace="team-a", created=now - DAY, finished=now - DAY))
    config = write_config(delete_rate=20, shutdown_grace=GRACE, watch_timeout=5)
    log_path = tmp_path / "watch.log"
    env = {**os.environ, "OPSQ_CLEANUP__METRICS_PORT": "0", "OPSQ_CONFIG": str(config)}
    argv = [sys.executable, "-m", "opsq", "watch", "--local", "--apply",
            "--kubeconfig", str(kubeconfig_path())]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: fake_kube.count("delete", "jobs.batch") >= 5, proc, "deletions")
        if api == "503":
            fake_kube.inject_fault(503, verb="delete", count=None)
        elif api == "hanging":  # longer than the grace, so only the watchdog can end it
            fake_kube.inject_fault(200, verb="delete", count=None, delay=HANG)
            hung_at = time.monotonic()
        if api != "up":
            time.sleep(1.0)  # let the executor get into its retries / the stuck request
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE + 5)  # the feature: gone within the grace (+ start-up slack)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if api == "hanging":  # the fake's handler is still asleep: let it finish here,
            fake_kube.clear_faults()  # not in (and be counted by) the next test
            time.sleep(max(0.0, hung_at + HANG + 0.5 - time.monotonic()))
    assert code in (0, 1), log_path.read_text()[-2000:]
    if api == "hanging":
        assert "did not stop within shutdown_grace" in log_path.read_text()
    assert len(fake_kube.list(JOBS, "team-a")) > 0  # it stopped mid-backlog
    assert "Traceback" not in log_path.read_text()
